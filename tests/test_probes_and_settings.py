"""Probes and request settings honoured, on a real container with the real azmlinfsrv.

- readiness_probe limits the wait for init(): a slow init() fails with a message saying so;
- request_settings.request_timeout_ms is the server's scoring timeout;
- max_concurrent_requests_per_instance is gunicorn's worker count when not debugging (debugger=0).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
from conftest import REPO, Project, remove_containers, sample_copy

pytestmark = pytest.mark.docker

REQUEST = REPO / "specs" / "sample-request.json"

SLOW_SCRIPT = '''
import json
import os
import time


def init():
    time.sleep(float(os.environ.get("INIT_SECONDS", "0")))


def run(raw_data):
    seconds = json.loads(raw_data).get("sleep", 0)
    time.sleep(seconds)
    return {"slept": seconds, "pid": os.getpid()}
'''


@pytest.fixture
def slow(tmp_path) -> Iterator[Project]:
    project = sample_copy(tmp_path / "project")
    (project.root / "onlinescoring" / "score.py").write_text(SLOW_SCRIPT)
    yield project
    remove_containers(project.endpoint)


def add_to_spec(project: Project, text: str) -> None:
    project.edit("blue-deployment.yml", "instance_count: 1", "instance_count: 1\n" + text.strip())


def test_a_slow_init_fails_the_readiness_probe_with_a_message_saying_so(slow, engine):
    slow.edit("blue-deployment.yml", "SAMPLE_OUTPUT_SCALE: 1", "INIT_SECONDS: 60")
    add_to_spec(slow, "readiness_probe:\n  initial_delay: 1\n  period: 1\n  timeout: 1\n  failure_threshold: 3\n")
    started = time.monotonic()
    result = slow.run("debug", f"spec={slow.spec}", "vscode=0")
    took = time.monotonic() - started
    assert result.returncode != 0
    error = result.stderr
    assert "not ready within 4 s" in error, error
    assert "readiness_probe: initial_delay 1 s + failure_threshold 3 x period 1 s" in error
    assert "after 1 s): init() was still running; the server's last lines" in error
    assert "raise readiness_probe.initial_delay/period/failure_threshold" in error
    assert "Traceback" not in result.stdout + result.stderr
    assert took < 60  # it gave up by the probe's limits, not after init() finished


def test_run_past_request_timeout_ms_gets_the_servers_timeout_error(slow, engine):
    add_to_spec(slow, "request_settings:\n  request_timeout_ms: 1000\n")
    result = slow.run("debug", f"spec={slow.spec}", "vscode=0")
    assert result.returncode == 0, result.stdout + result.stderr
    env = dict(item.split("=", 1) for item in engine.containers.get(slow.container_name()).attrs["Config"]["Env"])
    assert env["SCORING_TIMEOUT_MS"] == "1000"

    quick = slow.root / "quick.json"
    quick.write_text(json.dumps({"sleep": 0.1}))
    assert slow.run("invoke", f"request={quick}").returncode == 0
    sleepy = slow.root / "sleepy.json"
    sleepy.write_text(json.dumps({"sleep": 3}))
    invoked = slow.run("invoke", f"request={sleepy}")
    assert invoked.returncode != 0
    assert "answered 500" in invoked.stderr and "Scoring timeout after 1000 ms" in invoked.stderr, invoked.stderr


def test_max_concurrent_requests_is_the_worker_count_outside_debugging(slow, engine):
    add_to_spec(slow, "request_settings:\n  max_concurrent_requests_per_instance: 3\n")
    result = slow.run("debug", f"spec={slow.spec}", "vscode=0", "debugger=0")
    assert result.returncode == 0, result.stdout + result.stderr
    container = engine.containers.get(slow.container_name())
    env = dict(item.split("=", 1) for item in container.attrs["Config"]["Env"])
    assert env["WORKER_COUNT"] == "3"
    deadline = time.monotonic() + 60
    workers = 0
    while time.monotonic() < deadline:
        workers = container.logs().decode().count("Booting worker with pid")
        if workers >= 3:
            break
        time.sleep(0.5)
    assert workers == 3, container.logs().decode()[-2000:]
