"""The program: the command line and its commands, the daemon that wires everything on one
asyncio loop (signals, supervision, reload, drain), what goes into the pipeline, how a stop
ends and the exit statuses, process-wide settings, PID 1 duty.

May import: everything. Its entry point (app/entry.py) holds the stop signals before any heavy
import, so this package's __init__ imports nothing.
"""
