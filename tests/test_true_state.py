"""`show` and `endpoints` say what answers, not that a container exists; hints name the endpoint's own spec;
the router passes one Date and one Server header and its own errors say what to run.

The state table is pure (no Docker); the rest is the real engine, the real server and the real router.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import time
from urllib.parse import urlsplit

import pytest
from conftest import REPO, Project, remove_containers

from localml_tasks.lifecycle import Answer, server_state
from localml_tasks.server import LoadOutcome, ServerStatus, process_is_alive

REQUEST = REPO / "specs" / "sample-request.json"
ADDRESS = "127.0.0.1:5001"


# --- the state table (pure) --------------------------------------------------------------------------------


def status(state: str = "running", *, pid: int = 10, started_at: float = 1000.0, exit_code: int | None = None,
           env: dict | None = None) -> ServerStatus:
    return ServerStatus(container="abc", supervisor_pid=1, generation=1, state=state, exit_code=exit_code, pid=pid,
                        started_at=started_at, command={"argv": ["python"], "env": env or {}}, why="started")


def load(outcome: str = "loaded", *, pid: int = 10, **failure) -> LoadOutcome:
    return LoadOutcome(pid=pid, started_at=1000.0, outcome=outcome, took_ms=1.0, init={"ran": True},
                       message=failure.get("message", ""), traceback="", file=failure.get("file"),
                       line=failure.get("line"), function=failure.get("function"))


def state(reported, loaded, answer: str, *, now: float = 1005.0, deadline_s: float = 310.0) -> tuple[str, str | None]:
    decided = server_state(reported, loaded, Answer(answer), ADDRESS, now=now, deadline_s=deadline_s)
    return decided.provisioning_state, decided.reason


FAILED = {"message": "ValueError: no model", "file": "/p/onlinescoring/score.py", "line": 21, "function": "init"}


@pytest.mark.parametrize(("reported", "loaded", "answer", "expected", "because"), [
    (status(), load(), "ok", "Succeeded", None),
    (status(), load("failed", **FAILED), "script-failed", "Failed",
     "init() raised ValueError: no model (/p/onlinescoring/score.py:21)"),
    (status("exited", exit_code=3), None, "none", "Failed", "the server exited (code 3)"),
    (status(), load(), "none", "Failed", f"the server is not answering on {ADDRESS}"),
    (status(), load(), "timeout", "Succeeded", "busy:"),  # up, but a request holds it (a breakpoint)
    (None, None, "none", "Updating", "supervisor has not reported yet"),
    (status(), load(pid=9), "none", "Updating", "starting: no answer"),  # the new process's first load is not done
    (status(), load("restart"), "none", "Updating", "starting"),
    (status(env={"LOCALML_DEBUG_WAIT": "1"}), None, "none", "Updating", "waiting for a debugger"),
])
def test_the_state_is_what_answers_and_what_the_supervisor_and_the_last_load_say(reported, loaded, answer,
                                                                                   expected, because):
    decided, reason = state(reported, loaded, answer)
    assert decided == expected
    assert reason is None if because is None else because in reason


def test_a_start_that_outlasts_the_readiness_probe_is_failed():
    assert state(status(), None, "none", now=1000.0 + 400, deadline_s=310)[0] == "Failed"
    assert "not ready 400 s after the server started" in state(status(), None, "none", now=1400.0, deadline_s=310)[1]


# --- the real thing ---------------------------------------------------------------------------------------


def run(project: Project, *args: str, ok: bool = True):
    result = project.run(*args)
    assert (result.returncode == 0) == ok, result.stdout + result.stderr
    return result


def shown(project: Project, *args: str) -> dict:
    return json.loads(run(project, "show", *args).stdout)


def listed_line(project: Project, endpoint: str, deployment: str) -> str:
    listing = run(project, "endpoints").stdout.splitlines()
    start = listing.index(next(line for line in listing if line.startswith(endpoint + "  ")))
    return next(line for line in listing[start + 1:] if line.startswith(f"  {deployment} "))


@pytest.mark.docker
def test_a_failed_init_then_the_fix_then_a_stopped_container(project, engine):
    project.edit("onlinescoring/score.py", "    global model, scale\n",
                 "    global model, scale\n    raise ValueError('no model today')\n")
    broken = run(project, "debug", f"spec={project.spec}", "vscode=0", ok=False)
    assert "the scoring script failed to load" in broken.stderr, broken.stderr

    described = shown(project)
    blue = described["deployments"][0]
    assert blue["provisioning_state"] == "Failed", blue
    assert blue["state_reason"].startswith("init() raised ValueError: no model today"), blue
    assert described["provisioning_state"] == "Failed" and "deployment blue is Failed" in described["state_reason"]
    line = listed_line(project, project.endpoint, "blue")
    assert " Failed " in line and "init() raised ValueError: no model today" in line, line

    project.edit("onlinescoring/score.py", "    raise ValueError('no model today')\n", "")
    fixed = run(project, "debug")
    assert "reloaded in place" in fixed.stdout, fixed.stdout
    described = shown(project)
    assert described["provisioning_state"] == described["deployments"][0]["provisioning_state"] == "Succeeded"
    assert described["deployments"][0]["state_reason"] is None and described["state_reason"] is None
    assert " Succeeded " in listed_line(project, project.endpoint, "blue")

    # through the router: one Date and one Server header, the deployment's
    scoring = urlsplit(described["scoring_uri"])
    connection = http.client.HTTPConnection(scoring.hostname, scoring.port, timeout=30)
    connection.request("POST", scoring.path, REQUEST.read_bytes(), {"Content-Type": "application/json"})
    answer = connection.getresponse()
    answer.read()
    names = [name.lower() for name, _ in answer.getheaders()]
    assert answer.status == 200 and names.count("date") == 1 and names.count("server") == 1, answer.getheaders()
    connection.close()

    # the router's own 404 says what to run, not "doit logs"
    unknown = run(project, "invoke", f"request={REQUEST}", "deployment=purple", ok=False)
    assert "no deployment 'purple'" in unknown.stderr and "doit endpoints" in unknown.stderr, unknown.stderr
    assert "doit logs" not in unknown.stderr

    engine.containers.get(project.container_name()).stop(timeout=10)
    blue = shown(project)["deployments"][0]
    assert blue["provisioning_state"] == "Failed" and "the container is not running" in blue["state_reason"], blue
    line = listed_line(project, project.endpoint, "blue")
    assert " Failed " in line and "not running" in line and f"fix: doit debug spec={project.spec}" in \
        run(project, "endpoints").stdout

    # the router is up, blue is not: its 502 names blue's spec
    silent = run(project, "invoke", f"request={REQUEST}", ok=False)
    assert "does not answer" in silent.stderr and f"doit debug spec={project.spec}" in silent.stderr, silent.stderr
    assert "doit logs" not in silent.stderr


@pytest.mark.docker
def test_hints_for_an_endpoint_that_is_not_the_remembered_one_name_its_own_spec(project, engine):
    other = f"{project.endpoint}-2"
    green = project.root / "green-deployment.yml"
    try:
        run(project, "debug", f"spec={green}", f"endpoint_name={other}", "vscode=0")
        run(project, "debug", f"spec={project.spec}", "vscode=0")  # remembered from now on: blue on the first
        engine.containers.get(f"localml-{other}-green").stop(timeout=10)
        its_own = f"doit debug spec={green} endpoint_name={other}"

        described = shown(project, f"endpoint_name={other}")
        assert [d["provisioning_state"] for d in described["deployments"]] == ["Failed"]

        routed = run(project, "invoke", f"endpoint_name={other}", f"request={REQUEST}", ok=False)
        assert its_own in routed.stderr and "blue-deployment.yml" not in routed.stderr, routed.stderr

        router = json.loads((project.root / ".localml" / "endpoints" / other / "router.json").read_text())
        os.kill(router["pid"], signal.SIGTERM)
        deadline = time.monotonic() + 10
        while process_is_alive(router["pid"]) and time.monotonic() < deadline:
            time.sleep(0.05)
        down = run(project, "invoke", f"endpoint_name={other}", f"request={REQUEST}", ok=False)
        assert f"local endpoint {other} is not running" in down.stderr, down.stderr
        assert f"start it: {its_own}" in down.stderr and "blue-deployment.yml" not in down.stderr, down.stderr
    finally:
        remove_containers(other)


def test_process_mode_a_failed_init_then_a_supervisor_that_is_gone(project):
    project.edit("onlinescoring/score.py", "    global model, scale\n",
                 "    global model, scale\n    raise ValueError('no model today')\n")
    try:
        broken = run(project, "debug", f"spec={project.spec}", "vscode=0", "runtime=process", ok=False)
        assert "process       started" in broken.stdout, broken.stdout + broken.stderr
        blue = shown(project)["deployments"][0]
        assert blue["runtime"] == "process" and blue["provisioning_state"] == "Failed", blue
        assert blue["state_reason"].startswith("init() raised ValueError: no model today"), blue
        line = listed_line(project, project.endpoint, "blue")
        assert f"  blue             Failed     {blue['scoring_uri']}" in line and "init() raised" in line, line

        os.kill(blue["process"]["pid"], signal.SIGTERM)
        deadline = time.monotonic() + 15
        while process_is_alive(blue["process"]["pid"]) and time.monotonic() < deadline:
            time.sleep(0.05)
        blue = shown(project)["deployments"][0]
        assert blue["provisioning_state"] == "Failed" and "the server process is not running" in blue["state_reason"]
        assert "(gone)  the server process is not running" in listed_line(project, project.endpoint, "blue")
    finally:
        project.run("delete")
