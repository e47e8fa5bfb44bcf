"""Typed values of a config file, each refused with one line naming the file and the key
(config/load.py reads the file's structure with them)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ghitwork.config.model import ConfigError, close_match, kind_of, parse_http_address
from ghitwork.model.durations import (
    Budget,
    DurationError,
    SpendBudget,
    parse_budget,
    parse_duration,
    parse_spend,
)
from ghitwork.model.usage import Price

PRICE_KEYS = {"input", "output", "cached"}


class Values:
    """Validates values; every check names `self.file` and a key path."""

    def __init__(self, path: Path) -> None:
        self.file = str(path)
        self.base = path.parent

    def fail(self, key: str | None, message: str) -> ConfigError:
        return ConfigError(self.file, key, message)

    def table(self, value: object, key: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(key, f"expected a table, got {kind_of(value)}")
        return value

    def unknown(self, table: Mapping[str, Any], allowed: set[str], key: str) -> None:
        for name in table:
            if name not in allowed:
                where = f"{key}.{name}" if key else name
                hint = close_match(name, allowed)
                raise self.fail(where, f"unknown key{hint}")

    def string(self, value: object, key: str, *, empty: bool = False) -> str:
        if not isinstance(value, str) or (not empty and not value.strip()):
            raise self.fail(key, f"expected a non-empty string, got {kind_of(value)}")
        return value

    def strings(self, value: object, key: str) -> tuple[str, ...]:
        if (
            not isinstance(value, list)
            or not value
            or not all(isinstance(item, str) and item for item in value)
        ):
            raise self.fail(key, "expected a non-empty list of strings")
        for index, item in enumerate(value):
            self.spawnable(item, f"{key}[{index}]")
        return tuple(value)

    def spawnable(self, value: str, key: str) -> str:
        """What the OS refuses at spawn is refused here, by its key, not at the first run
        (where it would only fail that run): a NUL byte in an argument, a path or the
        environment."""
        if "\0" in value:
            raise self.fail(key, "contains a NUL byte (\\u0000), which no command can be given")
        return value

    def path(self, value: object, key: str) -> Path:
        text = self.spawnable(self.string(value, key), key)
        return (self.base / Path(text).expanduser()).resolve()

    def duration(self, value: object, key: str) -> float:
        try:
            return parse_duration(value)
        except DurationError as error:
            raise self.fail(key, str(error)) from None

    def budget(self, value: object, key: str) -> Budget:
        try:
            return parse_budget(value)
        except DurationError as error:
            raise self.fail(key, str(error)) from None

    def spend(
        self, table: Mapping[str, Any], name: str, key: str, default: SpendBudget | None
    ) -> SpendBudget | None:
        if name not in table:
            return default
        try:
            return parse_spend(table[name], tokens=name == "token_budget")
        except DurationError as error:
            raise self.fail(f"{key}.{name}", str(error)) from None

    def price(self, value: object, key: str) -> Price:
        table = self.table(value, key)
        self.unknown(table, PRICE_KEYS, key)
        prices: dict[str, float] = {}
        for name, amount in table.items():
            if isinstance(amount, bool) or not isinstance(amount, int | float) or amount < 0:
                raise self.fail(
                    f"{key}.{name}",
                    f"expected USD per million tokens (0 or more), got {kind_of(amount)}",
                )
            prices[name] = float(amount)
        for required in ("input", "output"):
            if required not in prices:
                raise self.fail(f"{key}.{required}", "missing (USD per million tokens)")
        return Price(prices["input"], prices["output"], prices.get("cached"))

    def attempts(self, value: object, key: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise self.fail(key, f"expected an integer 1 or more, got {kind_of(value)}")
        return value

    def positive(self, value: object, key: str) -> float:
        seconds = self.duration(value, key)
        if seconds <= 0:
            raise self.fail(key, f"{value!r} is not longer than zero")
        return seconds

    def regex(
        self, value: object, key: str, groups: tuple[str, ...] | None = None
    ) -> re.Pattern[str]:
        """A regular expression. Without `groups`: it must have a group (the session id);
        with `groups`: the named groups it may have, none of them required."""
        source = self.string(value, key)
        try:
            pattern = re.compile(source)
        except re.error as error:
            raise self.fail(key, f"not a valid regular expression: {error}") from None
        if groups is None:
            if pattern.groups < 1:
                raise self.fail(key, "needs a group for the session id, e.g. 'session id: (\\S+)'")
            return pattern
        for name in pattern.groupindex:
            if name not in groups:
                known = ", ".join(f"(?P<{g}>...)" for g in groups)
                raise self.fail(key, f"unknown named group {name!r} (known: {known})")
        return pattern

    def http(self, value: object, key: str) -> str:
        text = self.string(value, key)
        try:
            parse_http_address(text)
        except ValueError as error:
            raise self.fail(key, str(error)) from None
        return text
