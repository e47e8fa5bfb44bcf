"""The one redactor of every surface (model/redact.py), kept up to date from the bus."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from ghitwork.bus.changes import Change, ConfigApplied
from ghitwork.config.model import secret_values
from ghitwork.model.redact import Redactor


def follow_secrets(redactor: Redactor, environ: Mapping[str, str]) -> Callable[[Change], None]:
    """A state bus subscriber: at each ConfigApplied (start, reload), `redactor` takes the
    secrets of that config and `environ` (config.secret_values). Subscribe it before the
    surfaces, so that they redact a reload's new secrets from its first change on."""

    def on_change(change: Change) -> None:
        if isinstance(change, ConfigApplied):
            redactor.update(secret_values(environ, change.config))

    return on_change
