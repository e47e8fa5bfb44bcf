"""What an operator sees, built from the state bus: the status lines (one handler per Change
type), the one model every view reads (TUI, status, API, page, metrics) and its views, and the
status.json snapshot.

May import: flow, persist, run, source, bus, config, system, model.
"""
