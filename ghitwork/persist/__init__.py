"""The durable state dir: one ghit-work per state dir (the lock), the snapshot and the
write-ahead journal, what they hold as data, and the redelivery request files.

May import: run, source, bus, config, system, model.
"""
