"""The tail-events decoder: lines or pretty-printed objects, and malformed input skipped."""

from __future__ import annotations

import json

from conftest import event

from ghitwork.events import Decoder, Event, Malformed


def decode(chunks: list[bytes]) -> list[Event | Malformed]:
    decoder = Decoder()
    out: list[Event | Malformed] = []
    for line in b"".join(chunks).split(b"\n"):
        out += decoder.feed(line)
    out += decoder.close()
    return out


def ids(items: list[Event | Malformed]) -> list[object]:
    return [item.id if isinstance(item, Event) else item.reason for item in items]


def test_one_object_per_line_with_blank_lines_between() -> None:
    text = "\n".join(json.dumps(event(i)) for i in (1, 2, 3)).replace("\n", "\n\n  \n")
    items = decode([text.encode()])
    assert ids(items) == [1, 2, 3]
    first = items[0]
    assert isinstance(first, Event)
    assert (first.kind, first.actor, first.scopes) == (
        "reply-created",
        "alice",
        ("thread:teams/ghit/ghit/39",),
    )
    assert first.data == event(1)


def test_pretty_printed_objects_across_lines() -> None:
    text = "\n".join(json.dumps(event(i), indent=2) for i in (1, 2)) + "\n" + json.dumps(event(3))
    assert ids(decode([text.encode()])) == [1, 2, 3]


def test_braces_inside_strings_do_not_confuse_pretty_objects() -> None:
    tricky = event(5, title='close } and open { and "quote\\" [')
    text = json.dumps(tricky, indent=4)
    items = decode([text.encode(), b"\n", json.dumps(event(6)).encode()])
    assert ids(items) == [5, 6]
    assert isinstance(items[0], Event) and items[0].data == tricky


def test_malformed_lines_are_reported_with_their_first_bytes_and_skipped() -> None:
    lines = [
        b"garbage here",
        json.dumps(event(1)).encode(),
        b"[1, 2]",
        b'{"kind": "x"}',
        b'{"id": "7", "kind": "x"}',
        b'{"id": true, "kind": "x"}',
        b'{"id": 8}',
        b'{"id": 9, "kind": ""}',
        json.dumps(event(2)).encode(),
    ]
    items = decode([b"\n".join(lines)])
    assert ids(items) == [
        "not JSON",
        1,
        "not a JSON object",
        "no integer id",
        "no integer id",
        "no integer id",
        "no kind",
        "no kind",
        2,
    ]
    bad = items[0]
    assert isinstance(bad, Malformed) and bad.excerpt == '"garbage here"'


def test_a_truncated_pretty_object_does_not_swallow_the_next_one() -> None:
    broken = json.dumps(event(1), indent=2).splitlines()[:4]
    text = "\n".join([*broken, json.dumps(event(2), indent=2)])
    items = decode([text.encode()])
    assert ids(items) == ["incomplete JSON object", 2]


def test_an_unfinished_object_at_the_end_of_the_stream_is_reported() -> None:
    assert ids(decode([b'{\n  "id": 1,\n'])) == ["incomplete JSON object at end of stream"]


def test_unknown_kinds_and_fields_pass_through_and_actor_may_be_null() -> None:
    raw = {"id": 4, "kind": "brand-new-kind", "actor_user_username": None, "extra": {"a": 1}}
    (item,) = decode([json.dumps(raw).encode()])
    assert isinstance(item, Event)
    assert (item.kind, item.actor, item.scopes, item.data) == ("brand-new-kind", None, (), raw)


def test_long_excerpts_are_cut() -> None:
    (item,) = decode([b"x" * 500])
    assert isinstance(item, Malformed) and len(item.excerpt) < 100 and item.excerpt.endswith('…"')
