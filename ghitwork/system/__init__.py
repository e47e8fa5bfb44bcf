"""What ghit-work asks of the operating system, below any policy: ending a process group
(SIGTERM, the grace, SIGKILL), recording the groups it started so the next start can end what a
crash left, owner-only files and directories, the C heap's free pages given back once quiet.

May import: model.
"""
