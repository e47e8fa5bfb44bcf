"""The agent prompt: Jinja2 templates compiled at config load, rendered per batch."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2

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


@dataclass(frozen=True, eq=False)
class PromptTemplate:
    """A compiled template and where it came from (for messages)."""

    origin: str
    template: jinja2.Template

    def render(self, context: Mapping[str, Any]) -> str:
        return self.template.render(context)


def inline_template(source: str, origin: str) -> PromptTemplate:
    """Compile `source`; raises jinja2.TemplateSyntaxError."""
    return PromptTemplate(origin, _INLINE.from_string(source))


def file_template(path: Path) -> PromptTemplate:
    """Compile the template in `path` (includes resolve beside it); raises OSError or
    jinja2.TemplateError."""
    source = path.read_text(encoding="utf-8")
    env = _file_environment(path.parent)
    return PromptTemplate(str(path), env.from_string(source))


@lru_cache(maxsize=1)
def default() -> PromptTemplate:
    """The built-in template, compiled on first use (not at import: start-up matters)."""
    return inline_template(DEFAULT_TEMPLATE, "built-in template")


def describe_error(error: Exception) -> str:
    """One line for a template error, with its line number when Jinja2 knows it."""
    if isinstance(error, jinja2.TemplateSyntaxError):
        return f"line {error.lineno}: {error.message}"
    if isinstance(error, jinja2.UndefinedError):
        return f"{error.message} (the context has: agent, events, session_id, resumed, redelivered)"
    return f"{type(error).__name__}: {error}"
