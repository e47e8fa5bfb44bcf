"""Prompt templates read event fields as stock Jinja2 does, only faster."""

from __future__ import annotations

import jinja2
import pytest

from ghitwork.prompt import inline_template

SOURCE = """\
{% for e in events %}{{ e.id }} {{ e.kind }} {{ e.summary.web_url }} {{ e.items is defined }}
{{ e["items"] }} {{ e.get("kind") }} {{ e.missing is defined }} {{ e.__class__.__name__ }}
{% endfor %}"""
EVENTS = [
    {"id": 1, "kind": "reply-created", "items": "an 'items' key", "summary": {"web_url": "u"}},
    {"id": 2, "kind": "k", "items": [1], "summary": {"web_url": "v"}, "get": "shadowed"},
]


def stock(source: str) -> jinja2.Template:
    env = jinja2.Environment(
        undefined=jinja2.StrictUndefined, keep_trailing_newline=True, autoescape=False
    )
    return env.from_string(source)


def test_fields_read_like_stock_jinja2_attribute_first_then_item() -> None:
    ours = inline_template(SOURCE, "test").render({"events": EVENTS})
    assert ours == stock(SOURCE).render({"events": EVENTS})
    assert "reply-created u True" in ours


def test_a_missing_field_is_still_an_error() -> None:
    with pytest.raises(jinja2.UndefinedError):
        inline_template("{{ events[0].nope }}", "test").render({"events": EVENTS})
