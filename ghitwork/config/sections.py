"""The config's newer sections, read like the rest (config/load.py's Reader builds on them):
an agent's conversations and workspaces (SPEC §12), the `[[notify]]` tables and the HTTP
control token (SPEC §13). Every mistake names the file and the key."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ghitwork.config.model import NOTIFY_CAUSES, Notify, close_match, kind_of
from ghitwork.config.values import Values
from ghitwork.model.conversations import AGENT, MODES, SLUG_PLACEHOLDER
from ghitwork.model.redact import MIN_LENGTH

NOTIFY_KEYS = {"url", "on", "agents"}


class Sections(Values):
    def conversations(self, table: Mapping[str, Any], key: str) -> dict[str, Any]:
        """SPEC §12: `conversations`, `concurrency` and the workspace keys."""
        mode = table.get("conversations", AGENT)
        if mode not in MODES:
            raise self.fail(
                f"{key}.conversations",
                f'expected "agent" (one conversation per agent) or "thread" (one per '
                f"thread), got {kind_of(mode)}",
            )
        workdir = str(table.get("workdir", "."))
        keep = None
        if "workspace_keep" in table:
            keep = self.positive(table["workspace_keep"], f"{key}.workspace_keep")
            if SLUG_PLACEHOLDER not in workdir:
                raise self.fail(
                    f"{key}.workspace_keep",
                    "removes idle workspaces, so workdir must be one per conversation "
                    '(use {conversation_slug} in it, e.g. "work/{conversation_slug}")',
                )
        return {
            "conversations": mode,
            "concurrency": self.attempts(table["concurrency"], f"{key}.concurrency")
            if "concurrency" in table
            else 1,
            "workspace_setup": self.strings(table["workspace_setup"], f"{key}.workspace_setup")
            if "workspace_setup" in table
            else None,
            "workspace_teardown": self.strings(
                table["workspace_teardown"], f"{key}.workspace_teardown"
            )
            if "workspace_teardown" in table
            else None,
            "workspace_keep": keep,
        }

    def notify(self, value: object, agents: set[str]) -> tuple[Notify, ...]:
        """The `[[notify]]` tables (SPEC §13)."""
        if not isinstance(value, list):
            raise self.fail("notify", "expected [[notify]] tables (an array of tables)")
        targets = []
        for index, raw in enumerate(value):
            key = f"notify[{index}]"
            table = self.table(raw, key)
            self.unknown(table, NOTIFY_KEYS, key)
            if "url" not in table:
                raise self.fail(f"{key}.url", "missing (an Apprise URL, e.g. json://host/path)")
            url = self.string(table["url"], f"{key}.url")
            if "://" not in url:
                raise self.fail(
                    f"{key}.url",
                    "not an Apprise URL (SCHEMA://...: slack://, discord://, mailto://, "
                    "ntfy://, json://HOST/PATH for any webhook)",
                )
            if "on" not in table:
                raise self.fail(f"{key}.on", f"missing; any of {', '.join(NOTIFY_CAUSES)}")
            on = self.strings(table["on"], f"{key}.on")
            for cause in on:
                if cause not in NOTIFY_CAUSES:
                    hint = close_match(cause, set(NOTIFY_CAUSES))
                    raise self.fail(f"{key}.on", f"unknown cause {cause!r}{hint}")
            only = None
            if "agents" in table:
                only = self.strings(table["agents"], f"{key}.agents")
                for name in only:
                    if name not in agents:
                        raise self.fail(f"{key}.agents", f"no agent {name!r} in this config")
            targets.append(Notify(url, frozenset(on), frozenset(only) if only else None))
        return tuple(targets)

    def http_control(self, top: Mapping[str, Any]) -> dict[str, Any]:
        """`http_token_file` (the control routes' token, read now) and `http_auth`."""
        auth = top.get("http_auth", "control")
        if auth not in ("control", "all"):
            raise self.fail(
                "ghit-work.http_auth",
                f'expected "control" (the token guards control routes) or "all" (reads '
                f"too), got {kind_of(auth)}",
            )
        if "http_token_file" not in top:
            if auth == "all":
                raise self.fail("ghit-work.http_auth", '"all" needs http_token_file')
            return {"http_auth": auth}
        path = self.path(top["http_token_file"], "ghit-work.http_token_file")
        try:
            token = path.read_text().strip()
        except OSError as error:
            raise self.fail(
                "ghit-work.http_token_file", f"{path}: {error.strerror or error}"
            ) from None
        except UnicodeDecodeError:
            raise self.fail("ghit-work.http_token_file", f"{path}: not UTF-8 text") from None
        if len(token) < MIN_LENGTH or any(c.isspace() for c in token):
            raise self.fail(
                "ghit-work.http_token_file",
                f"{path}: the token must be one word of at least {MIN_LENGTH} characters (so "
                "that every surface can redact it; `openssl rand -hex 32 > FILE` makes a "
                "strong one)",
            )
        return {"http_token_file": path, "http_token": token, "http_auth": auth}
