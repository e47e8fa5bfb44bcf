"""The agent prompt: Jinja2 templates compiled at config load, rendered per batch."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2
import msgspec
from jinja2 import nodes

DEFAULT_TEMPLATE = """\
You are {{ agent.name }}, working on ghit as the user {{ agent.username }}.
ghit-work woke you up for {{ events | length }} new event{{ "s" if events | length != 1 }}.
{%- if redelivered %}
Some of these events were handed to an earlier invocation that did not finish:
check the threads for work already done before you act again.
{%- endif %}
{% for event in events %}
- event {{ event.id }}: {{ event.kind }}
  {%- if event.get("actor_user_username") %} by {{ event.actor_user_username }}{% endif %}
  {%- if event.get("scopes") %} in {{ event.scopes | join(", ") }}{% endif %}
  {%- set summary = event.get("summary") or {} %}
  {%- if summary.get("thread_title") %}
  title: {{ summary.thread_title }}
  {%- endif %}
  {%- if summary.get("web_url") %}
  web: {{ summary.web_url }}
  {%- endif %}
  {%- if summary.get("api_url") %}
  api: {{ summary.api_url }}
  {%- endif %}
{% endfor %}
Read the threads with ghit-cli, and reply where you can help.
"""


_DICT_ATTRIBUTES = frozenset(dir(dict))


class _Environment(jinja2.Environment):
    """`event.id` on a parsed event (a dict) without the AttributeError Jinja2 catches
    first: for a plain dict it looks up the key at once unless `dict` has an attribute of
    that name (`items`, `get`, ...), which keeps Jinja2's order (attribute, then item). A
    prompt of a thousand events reads fields tens of thousands of times."""

    def getattr(self, obj: Any, attribute: str) -> Any:
        if type(obj) is dict and attribute not in _DICT_ATTRIBUTES:
            try:
                return obj[attribute]
            except KeyError:
                pass
        return super().getattr(obj, attribute)


def _environment(loader: jinja2.BaseLoader | None = None) -> jinja2.Environment:
    return _Environment(
        loader=loader,
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
    )


_INLINE = _environment()


@lru_cache(maxsize=64)
def _file_environment(directory: Path) -> jinja2.Environment:
    return _environment(jinja2.FileSystemLoader(str(directory)))


class PromptTemplate(msgspec.Struct, frozen=True, eq=False, dict=True):
    """A template's source, where it came from (for messages), and the environment it is
    compiled in: compiled on first use (`inline_template` and `file_template` use it at
    once, so a config's template errors are found at load; the built-in one, known good,
    waits for the daemon's first idle moment: its compiling was a tenth of the start-up)."""

    origin: str
    source: str
    environment: jinja2.Environment

    @functools.cached_property
    def template(self) -> jinja2.Template:
        return self.environment.from_string(self.source)

    @functools.cached_property
    def fields(self) -> frozenset[str] | None:
        """The event fields the template reads, when it reads them only by name
        (`fields_read`): a batch's events are then parsed for those fields alone. None:
        parsed whole."""
        return fields_read(self.environment.parse(self.source))

    def render(self, context: Mapping[str, Any]) -> str:
        return self.template.render(context)

    def compiled(self) -> PromptTemplate:
        """Itself, compiled (raises what compiling raises)."""
        _ = self.template, self.fields
        return self


def inline_template(source: str, origin: str) -> PromptTemplate:
    """Compile `source`; raises jinja2.TemplateSyntaxError."""
    return PromptTemplate(origin, source, _INLINE).compiled()


def file_template(path: Path) -> PromptTemplate:
    """Compile the template in `path` (includes resolve beside it); raises OSError or
    jinja2.TemplateError."""
    source = path.read_text(encoding="utf-8")
    return PromptTemplate(str(path), source, _file_environment(path.parent)).compiled()


# What a template may do with `events` besides looping over it: the same for any objects.
_COUNTS = frozenset({"length", "count"})
# What of `loop` an events loop may read: counters and flags, never another item.
_LOOP_COUNTS = frozenset(
    {"index", "index0", "revindex", "revindex0", "first", "last", "length", "depth", "depth0"}
    | {"cycle", "changed"}
)
# Nodes that can reach `events` or a loop variable out of sight of the walk below.
_OPAQUE = (
    nodes.Extends,
    nodes.Include,
    nodes.Import,
    nodes.FromImport,
    nodes.Macro,
    nodes.CallBlock,
    nodes.Block,
)


def fields_read(tree: nodes.Template) -> frozenset[str] | None:
    """The event fields a template reads, or None when it may read more than it names.

    A set only when every event is reached as the variable of `{% for e in events %}` and
    read only as `e.name`, `e["name"]` or `e.get("name"[, default])`; `events` may also be
    counted (`events | length`, `count`). Then an object holding just those fields renders
    exactly as the whole one: absent fields stay absent (StrictUndefined, `get`'s default),
    and a name `dict` has as an attribute (`e.items`) is never taken as a field. Anything
    else (`{{ e }}`, `e | tojson`, `events[0]`, `{% set x = e %}`, a macro, an include, a
    name assigned twice) gives None, and events are parsed whole."""
    if any(isinstance(node, _OPAQUE) for node in tree.find_all(nodes.Node)):
        return None
    stored: dict[str, int] = {}
    for name in tree.find_all(nodes.Name):
        if name.ctx != "load":
            stored[name.name] = stored.get(name.name, 0) + 1
    if "events" in stored:
        return None
    found: set[str] = set()
    if not _reads_by_name(tree, frozenset(), stored, found):
        return None
    return frozenset(found)


def _reads_by_name(
    node: nodes.Node, bound: frozenset[str], stored: dict[str, int], found: set[str]
) -> bool:
    """Whether `node` reads events (`bound`: the loop variables holding one) only by field
    name; the names go into `found`."""
    match node:
        case nodes.For(iter=nodes.Name(name="events"), target=nodes.Name(name=var)):
            if node.recursive or stored.get(var) != 1:
                return False
            inner = bound | {var}
            return all(
                _reads_by_name(n, inner, stored, found)
                for n in (*node.body, node.test)
                if n is not None
            ) and all(_reads_by_name(n, bound, stored, found) for n in node.else_)
        case nodes.Getattr(node=nodes.Name(name="loop"), attr=attr) if bound:
            return attr in _LOOP_COUNTS  # not `loop.previtem`: another event, whole
        case nodes.Name(name=name):
            return name != "events" and name not in bound and not (bound and name == "loop")
        case nodes.Filter(node=nodes.Name(name="events"), name=filter_name):
            return filter_name in _COUNTS and not (
                node.args or node.kwargs or node.dyn_args or node.dyn_kwargs
            )
        case nodes.Getattr(node=nodes.Name(name=name), attr=attr) if name in bound:
            if attr in _DICT_ATTRIBUTES:
                return False
            found.add(attr)
            return True
        case nodes.Getitem(node=nodes.Name(name=name), arg=nodes.Const(value=key)) if name in bound:
            if not isinstance(key, str):
                return False
            found.add(key)
            return True
        case nodes.Call(
            node=nodes.Getattr(node=nodes.Name(name=name), attr="get"),
            args=[nodes.Const(value=key), *default],
        ) if name in bound:
            if not isinstance(key, str) or len(default) > 1 or node.kwargs:
                return False
            if node.dyn_args or node.dyn_kwargs:
                return False
            found.add(key)
            return all(_reads_by_name(n, bound, stored, found) for n in default)
    return all(_reads_by_name(n, bound, stored, found) for n in node.iter_child_nodes())


# The variables every render gets (dispatch.py builds them; docs/prompt.md's table).
CONTEXT = (
    "agent",
    "events",
    "session_id",
    "resumed",
    "attempt",
    "redelivered",
    "conversation",
)


@lru_cache(maxsize=1)
def default() -> PromptTemplate:
    """The built-in template, compiled on first use (not at import or load: start-up
    matters; the daemon compiles it once tail-events is started, `compiled()`)."""
    return PromptTemplate("built-in template", DEFAULT_TEMPLATE, _INLINE)


def describe_error(error: Exception) -> str:
    """One line for a template error, with its line number when Jinja2 knows it."""
    if isinstance(error, jinja2.TemplateSyntaxError):
        return f"line {error.lineno}: {error.message}"
    if isinstance(error, jinja2.UndefinedError):
        return f"{error.message} (the context has: {', '.join(CONTEXT)})"
    return f"{type(error).__name__}: {error}"
