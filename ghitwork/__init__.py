"""ghit-work: wake coding agents up for the ghit events they subscribed to."""

__version__ = "0.1.0"
