"""The tail-events decoder: lines or pretty-printed objects, and malformed input skipped."""

from __future__ import annotations

import json

from conftest import event
from hypothesis import given, settings
from hypothesis import strategies as st

from ghitwork.model.events import Decoder, Event, Malformed, objects, routed_of, to_event


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


LINES = [
    b'{"id": 1, "kind": "reply-created", "scopes": ["thread:t/r/1"], "actor_user_username": "a"}',
    b'{"id": 2, "kind": "k", "scopes": [], "actor_user_username": null}',
    b'{"id": 3, "kind": "k", "scopes": ["s", 7]}',
    b'{"id": 4, "kind": "k", "actor_user_username": 5}',
    b'{"id": true, "kind": "k"}',
    b'{"id": 6, "kind": ""}',
    b'{"id": 7, "kind": "k", "scopes": "s"}',
    b'  {"id": 8, "kind": "k"}  \r',
    b"",
    b"   ",
    b"[1, 2]",
    b'"text"',
    b"not json",
    b'{"id": 9, "kind": "k"}, {"id": 10, "kind": "k"}',
    b"1, 2",
    b"{",
    b'  "id": 11, "kind": "k"',
    b"}",
    b'{"id": 12,',
    b'"kind": "k"}',
    b'{"id": 13, "kind": "k", "skipped": "\xff\xfe not UTF-8"}',
    b'{"id": 14, "kind": "k", "big": 123456789012345678901234567890}',
    b'{"id": 15, "kind": "k", "scopes": ["s"], "actor_user_username": "a", "id": 16}',
]


@settings(max_examples=400, deadline=None)
@given(st.lists(st.lists(st.sampled_from(LINES), max_size=12), max_size=5))
def test_decoding_many_lines_at_once_is_decoding_them_one_by_one(
    reads: list[list[bytes]],
) -> None:
    """The fast path (a read's lines parsed as one array) gives what `feed` gives, line by
    line, whatever the lines: events, odd fields, blanks, scalars, two values on a line,
    objects spread over lines."""
    one, many = Decoder(), Decoder()
    by_line: list[Event | Malformed] = []
    at_once: list[Event | Malformed] = []
    for lines in reads:
        for line in lines:
            by_line += one.feed(line)
        at_once += many.decode(lines)
    by_line += one.close()
    at_once += many.close()
    assert [_comparable(item) for item in at_once] == [_comparable(item) for item in by_line]


def _comparable(item: Event | Malformed) -> object:
    if isinstance(item, Malformed):
        return item
    return (item.id, item.kind, item.actor, item.scopes, item.data, item.raw.strip())


def test_an_events_object_is_parsed_when_asked_for_and_always_comes() -> None:
    decoder = Decoder()
    lines = [json.dumps(event(i)).encode() for i in (1, 2, 3)]
    events = [item for item in decoder.decode(lines) if isinstance(item, Event)]
    assert [e.given for e in events] == [None, None, None], "nothing parsed whole up front"
    assert objects(events) == [event(1), event(2), event(3)] == [e.data for e in events]
    odd = Event(7, "k", None, (), None, b'{"id": 7, "kind": "k", "x": NaN}')  # json takes it
    assert odd.data["id"] == 7 and objects([odd])[0]["x"] != 0
    broken = Event(8, "k", None, (), None, b"{not json")
    assert broken.data == {"id": 8, "kind": "k"}, "at least what routing read"


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=6,
)


@settings(max_examples=300)
@given(
    st.lists(st.text(min_size=1, max_size=6), min_size=1, max_size=3),
    st.dictionaries(
        st.sampled_from(["e", "to", "x", "scopes", "actor_user_username", "é"]),
        JSON_VALUES,
        max_size=3,
    ),
    st.sampled_from(["", " ", "\n"]),
)
def test_a_journaled_routed_line_reads_as_the_whole_record_would(
    agents: list[str], extra: dict[str, object], pad: str
) -> None:
    """A restart reads a routed event's journal line in one pass (`routed_of`, slicing the
    event's bytes out of the line); what it reads is what parsing the whole record gives,
    and a line it cannot read so (None) is read that way."""
    data = {"id": 7, "kind": "comment.created", **extra}
    raw = json.dumps(data, ensure_ascii=False).encode()
    line = b'{"to":' + json.dumps(agents).encode() + b',"e":' + raw + b"}" + pad.encode()
    found = routed_of(line)
    if found is None:
        return
    names, read = found
    record = json.loads(line)
    whole = to_event(record["e"], raw)
    assert isinstance(whole, Event) and names == record["to"]
    assert (read.id, read.kind, read.actor, read.scopes, read.raw) == (
        whole.id,
        whole.kind,
        whole.actor,
        whole.scopes,
        raw,
    )
    assert read.data == data


def test_a_journaled_routed_line_is_read_in_one_pass() -> None:
    raw = b'{"id":9,"kind":"k","scopes":["thread:a/b/1"],"actor_user_username":"x","e":{"e":1}}'
    found = routed_of(b'{"to":["a","b"],"e":' + raw + b"}\n")
    assert found == (["a", "b"], Event(9, "k", "x", ("thread:a/b/1",), None, raw))


def test_a_routed_line_of_another_shape_is_left_to_the_whole_record() -> None:
    for line in (
        b'{"to": ["a"], "e": {"id": 1, "kind": "k"}}',  # written by hand
        b'{"to":["a"],"e":{"id":1,"kind":"k"},"x":1}',  # another field after it
        b'{"to":["a"],"e":{"id":1,"kind":""}}',  # no kind
        b'{"to":["a"],"e":{"id":1,"kind":"k","x":"\xff"}}',  # not UTF-8
        b'{"to":["a"],"e":{"id":1,"kind":"k"}',  # torn
    ):
        assert routed_of(line) is None, line
