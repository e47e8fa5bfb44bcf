"""Turn tail-events output into events.

ghit's docs do not say whether `tail-events` prints one JSON object per line or pretty-prints
each across lines, so the decoder accepts both, and blank lines between. The fast path is one
`json.loads` per line; only a line that does not parse alone starts collecting a multi-line
object, which ends when its braces balance. A `{` in column 0 while collecting starts a new
object (pretty-printers indent nested ones), so one truncated object never swallows the next.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple, TypedDict

import msgspec

MAX_OBJECT_BYTES = 64 * 1024 * 1024  # an event line (or pretty-printed object) up to 64 MiB
_ID = re.compile(rb'"id"\s*:\s*(-?\d+)')


class Event(NamedTuple):
    """One ghit event: the fields routing needs, and the object as printed. A NamedTuple:
    built once per event on the hot path, it costs a third of a frozen dataclass.

    The whole object (`data`) is parsed from `raw` when something asks for it (a prompt, a
    dead letter, a title on screen), not kept from the first read: a catch-up's queued events
    then hold their bytes rather than tens of Python objects each, which is a third less
    memory and time, and what a run parses it lets go at once."""

    id: int
    kind: str
    actor: str | None
    scopes: tuple[str, ...]
    given: dict[str, Any] | None  # the object, when it was parsed (or built) already
    # The JSON as printed, on one line (journaled and snapshotted verbatim; newlines of a
    # pretty-printed object are spaces, whitespace around it may be kept); empty when built
    # in code.
    raw: bytes = b""

    @property
    def data(self) -> dict[str, Any]:
        """The event object: `given`, or parsed from `raw` (a new dict each time)."""
        if self.given is not None:
            return self.given
        return _object(self.raw, self.id, self.kind)


def objects(events: Sequence[Event], fields: frozenset[str] | None = None) -> list[dict[str, Any]]:
    """The events' objects, parsed from the bytes they were printed as. With `fields` (what a
    prompt template reads, `prompt.PromptTemplate.fields`), each object holds those of its
    fields and no others: msgspec skips the rest without building them, which is most of the
    cost when a template reads a few fields of large events. An event built in code, with no
    bytes, or one msgspec refuses, is parsed whole by `Event.data`. (One decode per event:
    joining a batch's bytes to decode them in one call costs as much, in page faults.)"""
    decode = _objects_decoder(fields).decode
    try:
        parsed = list(map(decode, [event.raw for event in events]))
    except ValueError:  # msgspec's errors, and UnicodeDecodeError, are ValueErrors
        return [_read(event, decode) for event in events]
    return parsed


def _read(event: Event, decode: Callable[[bytes], dict[str, Any]]) -> dict[str, Any]:
    try:
        return decode(event.raw)
    except ValueError:
        return event.data


def _object(raw: bytes, ident: int, kind: str) -> dict[str, Any]:
    try:
        obj = parse_json(raw)
    except ValueError:  # bytes that are not UTF-8 (not from the decoder), or worse
        try:
            obj = json.loads(raw.decode("utf-8", "replace"))
        except ValueError:  # the routing fields at least
            obj = None
    return obj if isinstance(obj, dict) else {"id": ident, "kind": kind}


@functools.cache
def _objects_decoder(fields: frozenset[str] | None) -> Any:
    """msgspec's decoder of an event object, whole or holding only `fields`.
    msgspec rather than orjson: it builds a whole object in two thirds of the time, keeps
    integers of any size exact as json does (orjson makes floats of those over 64 bits), and
    skips unread fields."""
    import msgspec

    if fields is None:
        return msgspec.json.Decoder(dict[str, Any])
    typed_dict: Any = TypedDict  # built at run time, from the template's fields
    return msgspec.json.Decoder(typed_dict("Read", dict.fromkeys(fields, Any), total=False))


@functools.cache
def _one_decoder() -> Any:
    """msgspec's decoder of any JSON: as strict as orjson (no NaN, no lone surrogates, UTF-8
    only), several times faster than json, and exact, as json is, for integers of any size.
    Its errors are ValueErrors."""
    import msgspec

    return msgspec.json.Decoder()


def parse_json(data: bytes) -> Any:
    """JSON as json reads it (NaN, integers of any size), at msgspec's speed where it can."""
    try:
        return _one_decoder().decode(data)
    except ValueError:
        return json.loads(data)


@functools.cache
def _routing_decoder() -> Any:
    """msgspec's decoder of what routing reads of an event. msgspec skips the other fields
    without building them (a third of the cost of parsing the whole object); a value of
    another type fails the read's fast path, and `to_event` judges it line by line. Built on
    first use: the source makes its Decoder once tail-events has started, while tail-events
    starts too."""
    routing = _routing()
    return msgspec.json.Decoder(list[routing])  # type: ignore[valid-type]


@functools.cache
def _routing() -> Any:
    class Routing(msgspec.Struct, gc=False):
        id: int
        kind: str
        scopes: list[str] = []
        actor_user_username: str | None = None

    return Routing


@functools.cache
def _journal_decoder() -> Any:
    """A journal's routed event line, `{"to":[agents],"e":EVENT}`, the event's routing
    fields read as `_routing_decoder` reads them, any other field refused."""
    fields = [("to", list[str]), ("e", _routing())]
    line = msgspec.defstruct("Line", fields, gc=False, forbid_unknown_fields=True)
    return msgspec.json.Decoder(line)


def routed_of(line: bytes) -> tuple[list[str], Event] | None:
    """A routed event as persist/store.py journals it, `{"to":[agents],"e":EVENT}` on one
    line: its agents and the event (its bytes sliced from the line), decoded in one pass, a
    third of a restart's load. None for a line of another shape (read as any record)."""
    body = line.rstrip()
    at = body.find(b',"e":')  # the first: a string in the list before it cannot hold one
    if at < 0 or not body.startswith(b'{"to":[') or not body.endswith(b"}"):
        return None
    try:
        if not body.isascii():
            body.decode("utf-8")  # msgspec does not check the fields it skips
        value = _journal_decoder().decode(body)
    except ValueError:
        return None
    event = value.e
    if not event.kind:
        return None
    raw = body[at + 5 : -1].strip()
    return value.to, Event(
        event.id, event.kind, event.actor_user_username, tuple(event.scopes), None, raw
    )


class Malformed(msgspec.Struct, frozen=True):
    """Output that is not an event, with the reason and its first bytes."""

    reason: str
    excerpt: str


def excerpt(text: str | bytes, size: int = 80) -> str:
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    text = text.strip()
    short = text[:size] + ("…" if len(text) > size else "")
    return json.dumps(short, ensure_ascii=False)


def too_long(start: bytes) -> Malformed:
    """An event over MAX_OBJECT_BYTES, named by the id its first bytes show, if any."""
    found = _ID.search(start[:65536])
    what = f"event {int(found.group(1))}" if found else "an event"
    return Malformed(
        f"{what} is longer than {MAX_OBJECT_BYTES // 2**20} MiB: skipped", excerpt(start)
    )


def to_event(obj: object, raw: str | bytes) -> Event | Malformed:
    """Validate one decoded object: an integer `id` and a string `kind` are required."""
    if not isinstance(obj, dict):
        return Malformed("not a JSON object", excerpt(raw))
    ident = obj.get("id")
    if type(ident) is not int:  # bool is not an id
        return Malformed("no integer id", excerpt(raw))
    kind = obj.get("kind")
    if type(kind) is not str or not kind:
        return Malformed("no kind", excerpt(raw))
    actor = obj.get("actor_user_username")
    scopes = obj.get("scopes")
    if type(scopes) is list:
        scopes = tuple(scopes)
        if not all(type(scope) is str for scope in scopes):
            scopes = tuple(scope for scope in scopes if type(scope) is str)
    else:
        scopes = ()
    return Event(
        ident,
        kind,
        actor if type(actor) is str else None,
        scopes,
        obj,
        raw.encode() if isinstance(raw, str) else raw,
    )


def event_of(raw: bytes) -> Event | Malformed:
    """One event from its JSON on one line (as journaled), keeping its bytes and reading only
    what routing needs (as the Decoder does for tail-events' lines)."""
    try:
        if not raw.isascii():
            raw.decode("utf-8")  # msgspec does not check the fields it skips
        value = _routing_decoder().decode(b"[" + raw + b"]")[0]
        if value.kind:
            scopes = tuple(value.scopes)
            return Event(value.id, value.kind, value.actor_user_username, scopes, None, raw)
    except (ValueError, IndexError):
        pass
    try:
        return to_event(parse_json(raw), raw)
    except ValueError:
        return Malformed("not JSON", excerpt(raw))


class Decoder:
    """Feed it lines (bytes, newline included or not); it yields events and malformed input."""

    def __init__(self) -> None:
        self._routing = _routing_decoder()
        self._parts: list[bytes] = []
        self._size = 0
        self._depth = 0
        self._in_string = False
        self._escaped = False

    def decode(self, lines: Sequence[bytes]) -> list[Event | Malformed]:
        """Many lines at once (a catch-up brings thousands per read). When each line holds
        one event whose routing fields have the expected types, they are read as one array
        (msgspec, routing fields only); otherwise (blank, multi-line, malformed, odd fields)
        line by line through `feed`, which gives the same answer for each."""
        if not self._parts:
            joined = b"[" + b",".join(lines) + b"]"
            try:
                if not joined.isascii():
                    joined.decode("utf-8")  # msgspec does not check the fields it skips
                values = self._routing.decode(joined)
            except ValueError:  # msgspec's errors are ValueErrors
                values = None
            # A line holding two values, or none, would shift the pairs: then line by line.
            if values is not None and len(values) == len(lines):
                return self._events(values, lines)
        out: list[Event | Malformed] = []
        for line in lines:
            out.extend(self.feed(line))
        return out

    def _events(self, values: list[Any], lines: Sequence[bytes]) -> list[Event | Malformed]:
        new = tuple.__new__
        out: list[Event | Malformed] = []
        append = out.append
        for value, line in zip(values, lines, strict=True):
            if value.kind:
                actor, scopes = value.actor_user_username, tuple(value.scopes)
                append(new(Event, (value.id, value.kind, actor, scopes, None, line)))
            else:  # an empty kind: `feed` (to_event) says what is wrong with it
                out.extend(self.feed(line))
        return out

    def feed(self, line: bytes) -> Iterator[Event | Malformed]:
        if self._parts:
            yield from self._collect(line)
            return
        stripped = line.strip()
        if not stripped:
            return
        try:
            obj = _one_decoder().decode(stripped)
        except ValueError:
            if stripped[:1] != b"{":
                yield Malformed("not JSON", excerpt(stripped))
                return
            self._start(line)
            if self._depth <= 0:
                yield from self._finish()
            return
        yield to_event(obj, stripped)

    def close(self) -> Iterator[Event | Malformed]:
        """End of stream: an unfinished object is malformed."""
        if self._parts:
            text = b"".join(self._parts)
            self._reset()
            yield Malformed("incomplete JSON object at end of stream", excerpt(text))

    def _collect(self, line: bytes) -> Iterator[Event | Malformed]:
        if line[:1] == b"{":
            yield Malformed("incomplete JSON object", excerpt(b"".join(self._parts)))
            self._reset()
            yield from self.feed(line)
            return
        self._parts.append(line)
        self._size += len(line)
        self._scan(line)
        if self._depth <= 0:
            yield from self._finish()
        elif self._size > MAX_OBJECT_BYTES:
            text = b"".join(self._parts)
            self._reset()
            yield too_long(text)

    def _start(self, line: bytes) -> None:
        self._parts = [line]
        self._size = len(line)
        self._depth = 0
        self._in_string = False
        self._escaped = False
        self._scan(line)

    def _scan(self, line: bytes) -> None:
        depth, in_string, escaped = self._depth, self._in_string, self._escaped
        for byte in line:
            if in_string:
                if escaped:
                    escaped = False
                elif byte == 0x5C:  # backslash
                    escaped = True
                elif byte == 0x22:  # quote
                    in_string = False
            elif byte == 0x22:
                in_string = True
            elif byte in (0x7B, 0x5B):  # { [
                depth += 1
            elif byte in (0x7D, 0x5D):  # } ]
                depth -= 1
        self._depth, self._in_string, self._escaped = depth, in_string, escaped

    def _finish(self) -> Iterator[Event | Malformed]:
        text = b"".join(self._parts).strip()
        self._reset()
        try:
            obj = _one_decoder().decode(text)
        except ValueError as error:
            yield Malformed(f"not JSON ({error})", excerpt(text))
            return
        yield to_event(obj, text.replace(b"\n", b" "))  # one line, as a journal needs

    def _reset(self) -> None:
        self._parts = []
        self._size = 0
        self._depth = 0
        self._in_string = False
        self._escaped = False
