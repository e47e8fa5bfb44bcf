"""The docs' shell examples, run: what README.md and docs/*.md show is what the program does.

The convention (also in docs/design.md, "Docs that cannot drift"): a fenced block right after the
line `<!-- runnable -->` (an HTML comment, invisible on the rendered page) is run. In it, a
line `$ COMMAND` is run by bash, and the lines up to the next `$ ` line are its output
(stdout and stderr together), compared line by line. Options after `runnable:`:

- `in=quickstart`: run in a temp copy of examples/quickstart/ (default: an empty temp dir);
  `in=repo`: in a temp dir holding a copy of examples/quickstart/ at the same path as in the
  repository, so that `-c examples/quickstart/ghit-work.toml` works as written;
- `excerpt`: the shown lines must appear in this order, others may come between them (for a
  run whose every line would not fit on the page).

Masked on both sides before comparing: times (`2026-11-24T18:40:26.123Z`, `18:40:26`), pids,
durations (`0.41s`), session ids (`review-3916`) and archive names' times. `…` in a shown
line matches any text within the line. The environment is fixed: PATH has the venv's bin
then /usr/bin:/bin only (no ghit-cli, codex or claude), COLUMNS=80, TZ=UTC.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from conftest import BIN, ROOT, Running, Setup, event, ghit_work, poll, write_events

from ghitwork.config.prompt import inline_template

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
MARK = re.compile(
    r"^<!-- runnable(?::\s*(?P<options>[^>]*?))?\s*-->\n```[^\n]*\n(?P<body>.*?)^```", re.M | re.S
)
MASKS = [
    (re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z?"), "<time>"),
    (re.compile(r"\d{8}T\d{6}\.\d{6}Z"), "<stamp>"),
    (re.compile(r"\b\d\d:\d\d:\d\dZ?\b"), "<time>"),
    (re.compile(r"\bpid \d+"), "pid <n>"),
    (re.compile(r"\breview-\d+"), "review-<n>"),
    (re.compile(r"\b\d+(\.\d+)?s\b"), "<n>s"),
]


@dataclass(frozen=True)
class Example:
    doc: Path
    line: int
    options: tuple[str, ...]
    steps: tuple[tuple[str, tuple[str, ...]], ...]  # (command, the output shown)

    @property
    def name(self) -> str:
        return f"{self.doc.relative_to(ROOT)}:{self.line}"


def examples() -> list[Example]:
    found = []
    for doc in DOCS:
        text = doc.read_text(encoding="utf-8")
        for match in MARK.finditer(text):
            options = tuple(o.strip() for o in (match["options"] or "").split(",") if o.strip())
            steps: list[tuple[str, list[str]]] = []
            for line in match["body"].splitlines():
                if line.startswith("$ "):
                    steps.append((line[2:], []))
                else:
                    assert steps, f"{doc}: a runnable block starts with a `$ ` line"
                    steps[-1][1].append(line)
            line = text.count("\n", 0, match.start()) + 1
            found.append(Example(doc, line, options, tuple((c, tuple(o)) for c, o in steps)))
    return found


def mask(line: str) -> str:
    for pattern, replacement in MASKS:
        line = pattern.sub(replacement, line)
    return line.rstrip()


def pattern(shown: str) -> re.Pattern[str]:
    return re.compile(".*?".join(re.escape(part) for part in mask(shown).split("…")))


def lines_of(text: str) -> list[str]:
    lines = [mask(line) for line in text.splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    return lines


def compare(shown: tuple[str, ...], output: str, excerpt: bool, what: str) -> None:
    actual = lines_of(output)
    expected = list(shown)
    while expected and not expected[-1].strip():
        expected.pop()
    if not excerpt:
        assert len(actual) == len(expected) and all(
            pattern(e).fullmatch(a) for e, a in zip(expected, actual, strict=True)
        ), f"{what}: the doc shows\n" + "\n".join(expected) + "\nthe program printed\n" + output
        return
    at = 0
    for line in expected:
        wanted = pattern(line)
        while at < len(actual) and not wanted.fullmatch(actual[at]):
            at += 1
        assert at < len(actual), f"{what}: not in the output (in this order): {line}\n{output}"
        at += 1


def workdir(tmp_path: Path, options: tuple[str, ...]) -> Path:
    place = next((o.removeprefix("in=") for o in options if o.startswith("in=")), "empty")
    quickstart = ROOT / "examples" / "quickstart"
    ignore = shutil.ignore_patterns(".ghit-work", "logs")
    if place == "quickstart":
        shutil.copytree(quickstart, tmp_path / "quickstart", ignore=ignore)
        return tmp_path / "quickstart"
    if place == "repo":
        shutil.copytree(quickstart, tmp_path / "examples" / "quickstart", ignore=ignore)
        return tmp_path
    assert place == "empty", f"unknown option in={place}"
    return tmp_path


ENV = {
    **{k: v for k, v in os.environ.items() if not k.startswith(("GHIT", "COLUMNS", "LINES"))},
    "PATH": f"{BIN}:/usr/bin:/bin",
    "COLUMNS": "80",
    "TZ": "UTC",
}


@pytest.mark.parametrize("example", examples(), ids=lambda example: example.name)
def test_the_docs_runnable_example_prints_what_the_doc_shows(
    example: Example, tmp_path: Path
) -> None:
    cwd = workdir(tmp_path, example.options)
    for command, shown in example.steps:
        result = subprocess.run(
            ["bash", "-c", command], cwd=cwd, env=ENV, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=30,
        )  # fmt: skip
        compare(shown, result.stdout, "excerpt" in example.options, f"{example.name}: $ {command}")


def test_there_are_runnable_examples() -> None:
    """The count of examples is in the closing note of issue 26: it only grows."""
    assert len(examples()) >= 8
    assert sum(len(example.steps) for example in examples()) >= 18


def test_masking_and_wildcards() -> None:
    line = "2026-12-03T13:22:01.135Z INFO    tail-events: started (pid 16320): ghit-work-replay x"
    assert pattern("… INFO    tail-events: started (pid 3910): ghit-work-replay …").fullmatch(
        mask(line)
    )
    assert not pattern("tail-events: started").fullmatch(mask(line))
    assert mask("exit 0 after 0.41s; retry in 30s at 13:22:07Z") == (
        "exit 0 after <n>s; retry in <n>s at <time>"
    )


def test_the_prompt_example_renders_as_the_doc_shows() -> None:
    """docs/prompt.md's template, with events 101 and 103 of the quickstart's events.jsonl."""
    text = (ROOT / "docs" / "prompt.md").read_text()
    example = text.split("## Example")[1]
    template = example.split("```jinja\n")[1].split("```")[0]
    shown = example.split("renders")[1].split("```\n")[1]
    recorded = (ROOT / "examples" / "quickstart" / "events.jsonl").read_text()
    events = [json.loads(line) for line in recorded.splitlines()]
    context = {
        "agent": {"name": "codex", "username": "codex", "workdir": "/work"},
        "events": [e for e in events if e["id"] in (101, 103)],
        "session_id": None,
        "resumed": False,
        "redelivered": False,
        "attempt": 1,
    }
    assert inline_template(template, "docs/prompt.md").render(context) == shown


def test_the_module_table_names_every_module() -> None:
    """docs/design.md's package table names every module (issues 22, 26)."""
    design = (ROOT / "docs" / "design.md").read_text()
    table = design.split("## Packages")[1].split("| package | module | job |")[1].split("\n\n")[0]
    named = set()
    for row in table.splitlines()[2:]:
        package, modules_cell = (cell.strip(" `") for cell in row.split("|")[1:3])
        for module in re.findall(r"`?(\w+)`?", modules_cell):
            named.add(f"{package}/{module}" if package else module)
    modules = {
        str(path.relative_to(ROOT / "ghitwork").with_suffix(""))
        for path in (ROOT / "ghitwork").rglob("*.py")
        if path.name != "__init__.py" or path.parent.name == "ghitwork"
    }
    assert modules - named == set(), "modules missing from docs/design.md's table"
    assert named - modules == set(), "docs/design.md names modules that do not exist"


SCHEMA = json.loads((ROOT / "docs" / "snapshot.schema.json").read_text())


def test_the_snapshot_schema_is_valid_and_api_md_documents_every_field() -> None:
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    api = (ROOT / "docs" / "api.md").read_text()
    documented = set(re.findall(r"^\| `([\w.\[\]]+)`", api, re.M))
    fields: set[str] = set()

    def walk(schema: dict[str, Any], prefix: str) -> None:
        if "$ref" in schema:
            schema = SCHEMA["$defs"][schema["$ref"].rsplit("/", 1)[1]]
        for name, sub in schema.get("properties", {}).items():
            fields.add(prefix + name)
            walk(sub, f"{prefix}{name}.")
        if "items" in schema:
            walk(schema["items"], prefix.removesuffix(".") + "[].")

    walk(SCHEMA, "")
    example = json.loads(api.split("```json\n")[1].split("```")[0])
    jsonschema.Draft202012Validator(SCHEMA).validate(example)
    assert fields - documented == set(), "fields docs/api.md leaves out"
    assert documented - fields == set(), "fields docs/api.md names that the schema does not have"


def test_real_snapshots_match_the_schema(setup: Setup) -> None:
    """`status --json` and /api/v1/state of a real instance: an agent working, one
    retrying, runs with usage, a dead letter; each snapshot seen is validated."""
    record = str(setup.records)
    usage = r"tokens: (?P<input_tokens>\d+) in, (?P<output_tokens>\d+) out"
    setup.write_config(
        {
            "slow": {
                "env": {"RECORD": record, "SLEEP": "1", "SAY": "tokens: 1200 in, 30 out"},
                "usage_patterns": [usage],
                "price": {"input": 3.0, "output": 15.0},
            },
            "broken": {"env": {"RECORD": record, "EXIT": "3"}, "run_backoff": "1s"},
            "gone": {"env": {"RECORD": record, "EXIT": "3"}, "run_attempts": 1},
        },
        tail=["--follow"],
        http="127.0.0.1:0",
    )
    validator = jsonschema.Draft202012Validator(SCHEMA)
    write_events(setup.events, [event(1), event(2)])
    seen: set[str] = set()

    def snapshot() -> dict[str, Any]:
        result = ghit_work("status", "--json", cwd=setup.path)
        assert result.returncode == 0, result.stderr
        current: dict[str, Any] = json.loads(result.stdout)
        validator.validate(current)
        seen.update(f"{agent['name']} {agent['state']}" for agent in current["agents"])
        return current

    wanted = {"slow working", "broken retrying", "gone failing"}

    def slow_ran() -> bool:
        return any(a["name"] == "slow" and a["runs"] for a in snapshot()["agents"])

    with Running(setup.path) as daemon:
        url = re.findall(r"serving on (\S+)", daemon.wait_for("serving on"))[0]
        poll(lambda: snapshot() and wanted <= seen, what=f"{wanted} (seen: {seen})")
        poll(slow_ran, what="slow's run to end")
        with urllib.request.urlopen(f"{url}/api/v1/state", timeout=10) as response:
            served = json.load(response)
        validator.validate(served)
        slow = next(agent for agent in served["agents"] if agent["name"] == "slow")
        assert slow["usage"]["input_tokens"] == 1200 and slow["runs"][0]["cost_usd"] > 0
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0
