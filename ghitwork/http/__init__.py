"""The optional HTTP side (aiohttp, prometheus_client): health, the state API, metrics and the
status page, on the daemon's loop. Imported only by app, and only when `http` is set.

May import: observe and everything below it.
"""
