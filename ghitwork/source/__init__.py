"""The event source: the one shared tail-events subprocess (its command line, reading its
output into events, restarts with backoff inside the retry window) and ghit-work-replay, the
stand-in that replays recorded events.

May import: bus, config, system, model.
"""
