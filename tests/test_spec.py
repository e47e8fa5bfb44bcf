"""run/spec.py: what a run is, decided from the agent's config and its batch alone."""

from __future__ import annotations

import re

import pytest
from msgspec.structs import replace
from rxfakes import agent_config

from ghitwork.config import prompt
from ghitwork.model.events import Event, to_event
from ghitwork.run.spec import TemplateFailed, prepare


def events(*ids: int) -> list[Event]:
    made = [to_event({"id": i, "kind": "reply-created", "scopes": ["team:ghit"]}, b"") for i in ids]
    return [e for e in made if isinstance(e, Event)]


def test_a_fresh_run_gets_cmd_the_batch_and_an_environment_without_the_token() -> None:
    config = replace(agent_config("codex"), cmd=("codex", "exec"), env={"EXTRA": "1"})
    environ = {"PATH": "/bin", "GHIT_API_TOKEN": "secret", "GHIT_API_URL": "http://ghit"}
    spec = prepare(config, events(3, 4), environ, attempt=2)
    assert spec.argv == ("codex", "exec") and spec.event_ids == (3, 4) and spec.attempt == 2
    assert not spec.resumed and spec.session_id is None
    assert dict(spec.env) == {
        "PATH": "/bin",
        "EXTRA": "1",
        "GHIT_WORK_AGENT": "codex",
        "GHIT_WORK_CONVERSATION": "",
    }


def test_a_known_session_resumes_with_resume_cmd() -> None:
    config = replace(
        agent_config("codex"),
        resume_cmd=("codex", "exec", "resume", "{session_id}"),
        session_id_pattern=re.compile(r"session: (\S+)"),
    )
    spec = prepare(config, events(1), {}, session_id="abc")
    assert spec.argv == ("codex", "exec", "resume", "abc") and spec.session_id == "abc"
    without = prepare(replace(config, resume_cmd=None), events(1), {}, session_id="abc")
    assert without.argv == ("true",) and not without.resumed, "no resume_cmd: a fresh run"


def test_the_template_sees_the_batch_and_where_it_stands() -> None:
    template = prompt.inline_template(
        "{{ agent.name }} {{ attempt }} {{ redelivered }} {{ resumed }}"
        "{% for e in events %} {{ e.id }}{% endfor %}",
        "inline",
    )
    config = replace(agent_config("a"), prompt=template)
    spec = prepare(config, events(5, 6), {}, attempt=3, redelivered=True)
    assert spec.prompt == "a 3 True False 5 6"


def test_a_template_that_fails_names_itself_and_the_error() -> None:
    config = replace(agent_config("a"), prompt=prompt.inline_template("{{ nope }}", "inline"))
    with pytest.raises(TemplateFailed, match=r"prompt template inline failed: .*nope"):
        prepare(config, events(1), {})
