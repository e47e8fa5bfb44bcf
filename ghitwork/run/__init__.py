"""One run of an agent: what it is (the spec: prompt, argv, environment), the process in its own
group (stdin, exit, output drain, timeout, stall), what its output says (session id, rate
limits, usage), and its logdir archive. It returns a value (RunResult, with its charge and any
fault) and never decides what that value means.

May import: config, system, model; never flow, bus or persist (import-linter).
"""
