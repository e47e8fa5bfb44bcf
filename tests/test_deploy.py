"""The ways operators run ghit-work: supervisord, systemd, a container, Kubernetes."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import (
    BIN,
    GHIT_WORK,
    ROOT,
    Setup,
    event,
    ghit_work,
    poll,
    with_commands,
    write_events,
)

EXAMPLES = ROOT / "examples"


def supervisor_conf(setup: Setup) -> Path:
    conf = setup.path / "supervisord.conf"
    conf.write_text(f"""
[unix_http_server]
file=%(here)s/supervisor.sock
[supervisord]
logfile=%(here)s/supervisord.log
pidfile=%(here)s/supervisord.pid
nodaemon=true
[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface
[supervisorctl]
serverurl=unix://%(here)s/supervisor.sock
[program:ghit-work]
command={GHIT_WORK} -c {setup.config}
directory={setup.path}
autorestart=unexpected
exitcodes=0
startsecs=0
stopsignal=TERM
stopwaitsecs=30
stdout_logfile=%(here)s/ghit-work.out
stderr_logfile=%(here)s/ghit-work.err
""")
    return conf


def test_supervisord_restarts_it_after_exit_3_and_hup_reloads_it(setup: Setup) -> None:
    setup.write_config({"a": {}}, tail=["--fail-at-start"], retry="1s")
    conf = supervisor_conf(setup)
    log, err = setup.path / "supervisord.log", setup.path / "ghit-work.err"
    daemon = subprocess.Popen(
        [str(BIN / "supervisord"), "-c", str(conf)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        poll(
            lambda: (
                log.exists()
                and log.read_text().count("exited: ghit-work (exit status 3; not expected)") >= 2
            ),
            timeout=30,
            what="supervisord to see ghit-work give up (exit 3), twice",
        )
        poll(
            lambda: log.read_text().count("spawned: 'ghit-work'") >= 3,
            what="supervisord to restart it each time",
        )
        assert (
            "gave up: the stream was not healthy again within the 1s retry window"
            in err.read_text()
        )
        # The stream comes back: the next restart runs healthy.
        setup.write_config({"a": {}}, tail=["--follow"], retry="1s")
        write_events(setup.events, [event(1)])
        poll(lambda: setup.delivered("a") == [1], timeout=30, what="event 1 after recovery")
        setup.write_config({"a": {}, "b": {}}, tail=["--follow"], retry="1s")
        ctl = [str(BIN / "supervisorctl"), "-c", str(conf)]
        subprocess.run(
            [*ctl, "signal", "HUP", "ghit-work"], check=True, capture_output=True, timeout=30
        )
        poll(
            lambda: "config reloaded: 2 of 2 agents enabled; added: b" in err.read_text(),
            what="the reload in ghit-work's log",
        )
        write_events(setup.events, [event(2)])
        poll(lambda: setup.delivered("b") == [2], what="the reloaded agent to work")
        subprocess.run([*ctl, "shutdown"], check=True, capture_output=True, timeout=60)
        assert daemon.wait(timeout=60) == 0
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
    assert "SIGTERM received: stopping" in err.read_text()


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_the_systemd_unit_verifies(tmp_path: Path) -> None:
    unit = (EXAMPLES / "systemd" / "ghit-work.service").read_text()
    assert "ExecReload=/bin/kill -HUP $MAINPID" in unit and "Restart=on-failure" in unit
    local = tmp_path / "ghit-work.service"
    local.write_text(unit.replace("/usr/local/bin/ghit-work", GHIT_WORK))
    result = subprocess.run(
        ["systemd-analyze", "verify", str(local)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr


def test_the_dockerfile_passes_hadolint() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    for needed in (
        'ENTRYPOINT ["ghit-work", "-c", "/etc/ghit-work/ghit-work.toml"]',
        "STOPSIGNAL SIGTERM",
        "USER 10001",
        'VOLUME ["/var/lib/ghit-work"]',
    ):
        assert needed in dockerfile
    result = subprocess.run(
        [str(BIN / "hadolint"), str(ROOT / "Dockerfile")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_kubernetes_manifests_validate_and_their_config_passes_check(tmp_path: Path) -> None:
    manifest = EXAMPLES / "kubernetes" / "ghit-work.yaml"
    result = subprocess.run(
        [str(BIN / "kubernetes-validate"), "--strict", str(manifest)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    documents = list(yaml.safe_load_all(manifest.read_text()))
    config_map = next(d for d in documents if d["kind"] == "ConfigMap")
    (tmp_path / "ghit-work.toml").write_text(config_map["data"]["ghit-work.toml"])
    checked = ghit_work("check", cwd=tmp_path, env=with_commands(tmp_path, "ghit-cli"))
    assert checked.returncode == 0, checked.stderr
    assert "codex (enabled, user codex)" in checked.stdout
    deployment = next(d for d in documents if d["kind"] == "Deployment")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"]["type"] == "Recreate"


def test_only_the_monitoring_namespace_reaches_the_http_port() -> None:
    """Issue 21 #16: the agent pods share the pod network; a NetworkPolicy admits only the
    monitoring namespace to 9090 (the kubelet's probes come from the node, always admitted)."""
    manifest = EXAMPLES / "kubernetes" / "ghit-work.yaml"
    documents = list(yaml.safe_load_all(manifest.read_text()))
    policies = [d for d in documents if d["kind"] == "NetworkPolicy"]
    assert len(policies) == 1, "one NetworkPolicy for ghit-work's port"
    spec = policies[0]["spec"]
    deployment = next(d for d in documents if d["kind"] == "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    selected = spec["podSelector"]["matchLabels"]
    assert selected.items() <= pod_labels.items(), "it selects the dispatcher's pod"
    script = next(d for d in documents if d["kind"] == "ConfigMap")["data"]["run-agent-pod.sh"]
    labels = re.search(r'--labels="([^"]+)"', script)
    assert labels is not None
    agent_labels = dict(pair.split("=", 1) for pair in labels.group(1).split(","))
    assert not selected.items() <= agent_labels.items(), "the agent pods are not the target"
    assert spec["policyTypes"] == ["Ingress"]
    (rule,) = spec["ingress"]  # isolated for ingress: nothing else is admitted
    assert rule["from"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    ]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    (port,) = container["ports"]
    assert rule["ports"] == [{"protocol": "TCP", "port": port["containerPort"]}]
    config = next(d for d in documents if d["kind"] == "ConfigMap")["data"]["ghit-work.toml"]
    assert f'http = "0.0.0.0:{port["containerPort"]}"' in config
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["port"] == port["name"]


def test_an_agent_pod_gets_the_prompt_on_stdin(tmp_path: Path) -> None:
    manifest = EXAMPLES / "kubernetes" / "ghit-work.yaml"
    documents = list(yaml.safe_load_all(manifest.read_text()))
    script = next(d for d in documents if d["kind"] == "ConfigMap")["data"]["run-agent-pod.sh"]
    (tmp_path / "run-agent-pod.sh").write_text(script)
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "kubectl").write_text(
        f"#!{sys.executable}\nimport json, sys\n"
        "json.dump({'argv': sys.argv[1:], 'stdin': sys.stdin.read()}, "
        f"open({str(tmp_path / 'kubectl.json')!r}, 'w'))\n"
    )
    (fake / "kubectl").chmod(0o755)
    env = {
        **os.environ,
        "PATH": f"{fake}:{os.environ['PATH']}",
        "GHIT_WORK_AGENT": "codex",
        "AGENT_IMAGE": "registry.example/codex:1",
    }
    subprocess.run(
        ["sh", str(tmp_path / "run-agent-pod.sh"), "codex-credentials", "codex", "exec", "-"],
        input="the prompt\n",
        text=True,
        env=env,
        check=True,
        timeout=30,
    )
    call = json.loads((tmp_path / "kubectl.json").read_text())
    assert call["stdin"] == "the prompt\n"
    argv = call["argv"]
    assert argv[:2] == ["run", argv[1]] and argv[1].startswith("ghit-codex-")
    assert {"--rm", "-i", "--restart=Never", "--image=registry.example/codex:1"} <= set(argv)
    overrides = json.loads(next(a for a in argv if a.startswith("--overrides="))[12:])
    container = overrides["spec"]["containers"][0]
    assert container["args"] == ["codex", "exec", "-"]
    assert container["envFrom"] == [{"secretRef": {"name": "codex-credentials"}}]
    assert overrides["spec"]["activeDeadlineSeconds"] == 3600


def test_json_status_lines_carry_the_documented_fields(setup: Setup) -> None:
    setup.write_config(
        {"a": {"env": {"RECORD": str(setup.records), "EXIT": "1"}, "run_attempts": 1}}
    )
    write_events(setup.events, [event(1)])
    result = ghit_work("--drain", "--log-format", "json", cwd=setup.path)
    records = [json.loads(line) for line in result.stderr.splitlines()]
    for record in records:
        assert {"time", "level", "event", "message"} <= set(record)
        assert record["time"].endswith("Z") and record["level"] in {"info", "warning", "error"}
    started = next(r for r in records if r["event"] == "source.start")
    assert started["argv"][0].endswith("ghit-work-replay") and "pid" in started
    finished = next(r for r in records if r["event"] == "agent.state" and r["from"] == "working")
    assert (finished["agent"], finished["exit_status"], finished["event_ids"]) == ("a", 1, [1])
    assert finished["level"] == "error", "its last attempt failed: a dead letter"
    assert "duration" in finished and finished["dead_letter"] == 1
    assert (finished["outcome"], finished["attempt"], finished["attempts"]) == ("failed", 1, 1)


def test_sigterm_as_the_container_stop_signal_is_a_clean_exit(setup: Setup) -> None:
    setup.write_config({"a": {}}, tail=["--follow"])
    process = subprocess.Popen([GHIT_WORK], cwd=setup.path, stderr=subprocess.PIPE, text=True)
    try:
        write_events(setup.events, [event(1)])
        poll(lambda: setup.delivered("a") == [1], what="event 1")
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
    finally:
        if process.poll() is None:
            process.kill()
        assert process.stderr is not None
        process.stderr.close()


def test_the_alert_rules_only_name_metrics_ghit_work_exposes() -> None:
    from prometheus_client.parser import text_string_to_metric_families
    from prometheus_client.registry import CollectorRegistry
    from rxfakes import agent_config

    from ghitwork.bus.changes import ConfigApplied
    from ghitwork.config.model import Config
    from ghitwork.http.metrics import Collector, Counts
    from ghitwork.observe.dashboard import DashboardModel

    rules = (EXAMPLES / "kubernetes" / "prometheus.yaml").read_text()
    documents = list(yaml.safe_load_all(rules))
    assert [d["kind"] for d in documents] == ["ServiceMonitor", "PrometheusRule"]
    config = Config(path=Path("x.toml"), agents=(agent_config("a"),))
    registry = CollectorRegistry()
    model = DashboardModel()
    model(ConfigApplied(config=config))
    registry.register(Collector(Counts(), model))
    from prometheus_client import generate_latest

    exposed = {
        sample.name
        for family in text_string_to_metric_families(generate_latest(registry).decode())
        for sample in family.samples
    }
    named = set(re.findall(r"ghitwork_[a-z_]+", rules))
    assert named and named <= exposed, named - exposed
