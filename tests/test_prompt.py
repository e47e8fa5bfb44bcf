"""Prompt templates read event fields as stock Jinja2 does, only faster."""

from __future__ import annotations

import json
from pathlib import Path

import jinja2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from msgspec.structs import replace

from ghitwork.config.load import load_config
from ghitwork.config.model import ConfigError
from ghitwork.config.prompt import (
    DEFAULT_TEMPLATE,
    PromptTemplate,
    default,
    file_template,
    inline_template,
)
from ghitwork.model.events import Decoder, Event, objects

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


# Templates that read events by field name only: `fields_read` names what they read.
BY_NAME = {
    "{% for e in events %}{{ e.id }}\n{% endfor %}": {"id"},
    '{{ events | length }} {{ events|count }}{% for e in events if e.kind != "x" %}'
    '{{ loop.index }}/{{ loop.length }} {{ e["a-b"] }} {{ e.get("z", loop.first) }}'
    "{% else %}{{ e is defined }}{% endfor %}": {"kind", "a-b", "z"},
    "{% for e in events %}{{ e.summary.web_url }} {{ e.get('items') }}{% endfor %}": {
        "summary",
        "items",
    },
    '{% for e in events %}{% set s = e.get("summary") or {} %}{{ s.get("t") }}{% endfor %}': {
        "summary"
    },
    "{% for e in events %}{{ e.scopes | join(',') }}{% for s in e.scopes %}{{ s }}"
    "{% endfor %}{% endfor %}": {"scopes"},
    "no events at all: {{ agent.name }}": set(),
}
# Templates that may read more than they name, or another event: parsed whole.
WHOLE = [
    "{{ events }}",
    "{{ events[0].id }}",
    "{{ events | map(attribute='id') | join }}",
    "{% for e in events | reverse %}{{ e.id }}{% endfor %}",
    "{% for e in events %}{{ e }}{% endfor %}",
    "{% for e in events %}{{ e | tojson }}{% endfor %}",
    "{% for e in events %}{{ e.items() }}{% endfor %}",
    "{% for e in events %}{{ e.keys() | list }}{% endfor %}",
    "{% for e in events %}{{ e.get(name) }}{% endfor %}",
    "{% for e in events %}{{ loop.previtem }}{% endfor %}",
    "{% for e in events %}{{ loop }}{% endfor %}",
    "{% for e in events %}{% set x = e %}{{ x.id }}{% endfor %}",
    "{% for e in events %}{% set e = 1 %}{{ e }}{% endfor %}",
    "{% for e in events %}{{ e.id }}{% endfor %}{% for e in events %}{{ e.id }}{% endfor %}",
    "{% set events = [1] %}{% for e in events %}{{ e }}{% endfor %}",
    "{% for e in events recursive %}{{ e.id }}{% endfor %}",
    "{% for a, b in events %}{{ a }}{% endfor %}",
    "{% macro m(e) %}{{ e.id }}{% endmacro %}{% for e in events %}{{ m(e) }}{% endfor %}",
    "{% with x = events %}{{ x }}{% endwith %}",
    "{% for e in events %}{{ e[0] }}{% endfor %}",
]


@pytest.mark.parametrize("source", BY_NAME)
def test_a_template_reading_fields_by_name_names_them(source: str) -> None:
    assert inline_template(source, "test").fields == frozenset(BY_NAME[source])


@pytest.mark.parametrize("source", WHOLE)
def test_a_template_that_may_read_more_than_it_names_reads_whole_events(source: str) -> None:
    assert inline_template(source, "test").fields is None


def test_the_built_in_template_reads_five_fields() -> None:
    assert default().fields == frozenset({"id", "kind", "actor_user_username", "scopes", "summary"})


def test_a_template_file_with_an_include_reads_whole_events(tmp_path: Path) -> None:
    (tmp_path / "part.j2").write_text("{% for e in events %}{{ e }}{% endfor %}")
    (tmp_path / "main.j2").write_text(
        '{% include "part.j2" %}{% for e in events %}{{ e.id }}{% endfor %}'
    )
    (tmp_path / "plain.j2").write_text("{% for e in events %}{{ e.id }}{% endfor %}")
    assert file_template(tmp_path / "main.j2").fields is None
    assert file_template(tmp_path / "plain.j2").fields == frozenset({"id"})


KEYS = ["id", "kind", "a-b", "z", "items", "summary", "scopes", "get", "t", "x"]
VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(KEYS), inner),
    max_leaves=6,
)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.dictionaries(st.sampled_from(KEYS[2:]), VALUES, max_size=6), max_size=5),
    st.sampled_from([*BY_NAME, SOURCE, DEFAULT_TEMPLATE]),
)
def test_events_parsed_for_the_fields_a_template_reads_render_as_whole_ones(
    bodies: list[dict[str, object]], source: str
) -> None:
    """Whatever the events hold (fields missing, of any type, named like dict methods), a
    template renders the same from events parsed for its fields as from whole events, or
    fails the same way."""
    lines = [
        json.dumps({"id": i, "kind": "k", **body}).encode() for i, body in enumerate(bodies, 1)
    ]
    events = [item for item in Decoder().decode(lines) if isinstance(item, Event)]
    template = inline_template(source, "test")
    context = {"agent": {"name": "a", "username": "u"}, "redelivered": False}
    assert template.fields is not None or source == SOURCE

    def render(parsed: list[dict[str, object]]) -> str:
        try:
            return template.render({**context, "events": parsed})
        except Exception as error:  # the same failure, as a value
            return f"{type(error).__name__}: {error}"

    assert render(objects(events, template.fields)) == render(objects(events))


def test_the_built_in_template_is_compiled_on_first_use_and_a_configs_at_load(
    tmp_path: Path,
) -> None:
    """Compiling the built-in template was a tenth of the start-up: it waits for its first
    use, or for `Config.compile_templates` (the daemon's, once tail-events is started). A
    template of the config is compiled at load, so its errors stop the start."""
    default.cache_clear()
    path = tmp_path / "ghit-work.toml"
    path.write_text(
        '[ghit-work]\ntail_cmd = ["true"]\n'
        '[agents.a]\ncmd = ["true"]\nusername = "a"\n'
        'event_scopes = ["team:ghit"]\nevent_kinds = ["reply-created"]\n'
        '[agents.b]\ncmd = ["true"]\nusername = "b"\n'
        'event_scopes = ["team:ghit"]\nevent_kinds = ["reply-created"]\n'
        'agent_prompt = "{% for e in events %}{{ e.id }}{% endfor %}"\n'
    )
    config = load_config(path)
    a, b = config.agents
    assert a.prompt is default() and "template" not in vars(a.prompt)
    assert "template" in vars(b.prompt) and b.prompt.fields == frozenset({"id"})
    told: list[str] = []
    config.compile_templates(told.append)
    compiled = vars(a.prompt)
    assert isinstance(compiled["template"], jinja2.Template) and "fields" in compiled
    assert told == []
    # One that cannot compile (it cannot be the built-in one) is told once, by its origin.
    broken = PromptTemplate("built-in template", "{% for e in events %}", a.prompt.environment)
    agents = tuple(replace(agent, prompt=broken) for agent in config.agents)
    replace(config, agents=agents).compile_templates(told.append)
    assert len(told) == 1  # two agents share it
    assert told[0].startswith("built-in template: line 1: Unexpected end of template.")
    path.write_text(path.read_text().replace("{% endfor %}", ""))
    with pytest.raises(ConfigError, match="agent_prompt"):
        load_config(path)
