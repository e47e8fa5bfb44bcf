"""Notifications (SPEC §13): the causes read from the state bus, a durable outbox in
state_dir, and sending through Apprise (the optional `notify` extra) off the dispatch path.

`notifier.Notifier` is what the daemon starts; apprise is imported only by `send`, in a
process of its own (this package imports nothing more, so that it starts quickly).
"""
