"""The debug chain's decisions, against a fake runtime: what the server stage does for each state it finds.

The chain reaches what runs only through runtime.find (a runtime.Deployed); here that is a fake whose
supervisor answers the file protocol as the real one does (server.py: command.json in, status.json and
reload.json out). The real supervisor, container and process are exercised by the Docker and process-mode
tests; this file pins down the decisions: reload in place, a new process, or nothing, and the line said.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from conftest import SPECS

from localml_tasks import actions, runtime, server
from localml_tasks.errors import LocalmlError
from localml_tasks.runtime import Deployed, ServerMode
from localml_tasks.spec import load_deployment
from localml_tasks.target import Target

OUR_CONTAINER = "c0ffee123456"


class FakeSupervisor:
    """The supervisor's side of server.py's protocol, answering a reload request (send_reload) at once."""

    def __init__(self, runtime_dir: Path) -> None:
        self.runtime_dir = runtime_dir
        self.name = "the fake container"
        self.reloads = 0
        self.up = True

    def owns(self, status: server.ServerStatus) -> bool:
        return status.container == OUR_CONTAINER

    def is_up(self) -> bool:
        return self.up

    def output_tail(self) -> str:
        return ""

    def send_reload(self) -> None:
        """Same command and restart counter: reload in place (reload.json); else a new generation."""
        self.reloads += 1
        command = json.loads((self.runtime_dir / server.COMMAND_FILE_NAME).read_text())
        status = json.loads((self.runtime_dir / server.STATUS_FILE_NAME).read_text())
        same = status["argv"] == command["argv"] and status["env"] == command["env"] \
            and status.get("restart", 0) == command.get("restart", 0) and status["state"] == "running"
        if same:
            write_load(self.runtime_dir, pid=status["pid"], outcome="loaded")
            return
        write_status(self.runtime_dir, command, generation=status["generation"] + 1, pid=status["pid"] + 1,
                     why="a new process was asked for", restart=command.get("restart", 0))
        # the new debug server listens for a debugger (what wait=1 waits for before telling the user to attach)
        (self.runtime_dir / server.DEBUGPY_FILE_NAME).write_text(json.dumps({"pid": status["pid"] + 1}))


def write_status(runtime_dir: Path, command: dict[str, Any], *, generation: int = 2, pid: int = 100,
                 state: str = "running", exit_code: int | None = None, container: str = OUR_CONTAINER,
                 started_at: float | None = None, why: str = "", restart: int = 0) -> None:
    runtime_dir.mkdir(parents=True, exist_ok=True)
    (runtime_dir / server.STATUS_FILE_NAME).write_text(json.dumps({
        "container": container, "supervisor": 1, "generation": generation, "state": state, "exit_code": exit_code,
        "pid": pid, "started_at": time.time() - 60 if started_at is None else started_at, "argv": command["argv"],
        "env": command["env"], "why": why, "restart": restart}))


def write_load(runtime_dir: Path, *, pid: int = 100, outcome: str = "loaded", started_at: float | None = None,
               message: str = "") -> None:
    (runtime_dir / server.RELOAD_FILE_NAME).write_text(json.dumps({
        "pid": pid, "started_at": time.time() if started_at is None else started_at, "outcome": outcome,
        "took_ms": 12, "init": {"ran": True, "why": "keep_state is off", "ms": 1}, "message": message,
        "traceback": "Traceback (most recent call last):\nValueError: broken" if outcome == "failed" else "",
        "file": None, "line": None, "function": "init" if outcome == "failed" else None}))


@dataclass
class FakeDeployed(Deployed):
    """A container that is not there: its server is the fake supervisor; a custom one restarts whole."""

    restarts: list[str] = field(default_factory=list)

    def read_log(self, since: float | None) -> str:
        return ""

    def print_logs(self, tail: int | None, follow: bool) -> None:
        pass

    def server_command(self, deployment: Any, mode: ServerMode, runtime_dir: Path) -> dict[str, Any]:
        if not mode.debugger:
            return {"argv": ["azmlinfsrv"], "env": {}, "reload": "gunicorn"}
        return {"argv": ["python", "debug_server.py"], "env": {"WAIT": "1" if mode.wait else "0"},
                "reload": "debug-server"}

    def restart_custom(self) -> None:
        self.restarts.append("restarted")


@dataclass
class Chain:
    target: Target
    deployed: FakeDeployed
    supervisor: FakeSupervisor
    score: Path

    def command(self, mode: ServerMode) -> dict[str, Any]:
        return self.deployed.server_command(None, mode, self.target.runtime_dir)

    def save_code(self) -> None:
        """A save after the server's last load (mtime in the future of that load)."""
        later = time.time() + 5
        os.utime(self.score, (later, later))


@pytest.fixture
def chain(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Chain:
    import shutil
    shutil.copytree(SPECS, tmp_path / "specs")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LOCALML_LOCK_DIR", str(tmp_path / "locks"))
    endpoint = f"fake-{os.urandom(3).hex()}"
    target = Target(tmp_path / "specs" / "blue-deployment.yml", endpoint, "blue")
    deployment = load_deployment(target.spec_path)
    data = {**deployment.to_json(), "endpoint_name": endpoint}
    target.resolved_file.parent.mkdir(parents=True)
    target.resolved_file.write_text(json.dumps(data))
    supervisor = FakeSupervisor(target.runtime_dir)
    deployed = FakeDeployed("container", supervisor, 5001, 5678, "/var/azureml-app/onlinescoring", {},
                            {role: {"path": "/", "port": 5001} for role in ("scoring", "readiness", "liveness")})
    monkeypatch.setattr(runtime, "find", lambda endpoint, deployment: deployed)
    # earlier than anything these tests write: a server found running was not started by this command
    monkeypatch.setattr(actions, "COMMAND_STARTED", time.time() - 30)
    score = tmp_path / "specs" / "onlinescoring" / "score.py"
    before = time.time() - 120
    os.utime(score, (before, before))
    return Chain(target, deployed, supervisor, score)


def refresh(chain: Chain, mode: ServerMode, changed: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    actions.refresh_server(chain.target, mode, changed)
    return capsys.readouterr().out


def test_code_saved_after_the_last_load_reloads_in_place(chain: Chain, capsys) -> None:
    mode = ServerMode()
    write_status(chain.target.runtime_dir, chain.command(mode))
    write_load(chain.target.runtime_dir, started_at=time.time() - 10)
    chain.save_code()
    said = refresh(chain, mode, [str(chain.score)], capsys)
    assert chain.supervisor.reloads == 1
    assert "reloaded in place — onlinescoring/score.py changed" in said


def test_nothing_saved_since_the_last_load_does_nothing(chain: Chain, capsys) -> None:
    mode = ServerMode()
    write_status(chain.target.runtime_dir, chain.command(mode))
    write_load(chain.target.runtime_dir, started_at=time.time() - 10)
    said = refresh(chain, mode, [], capsys)
    assert chain.supervisor.reloads == 0
    assert said == ""


def test_a_change_the_server_already_loaded_is_said_and_not_reloaded(chain: Chain, capsys) -> None:
    """`doit watch` reloaded it already: doit's list of changes is stale, the load is newer than the save."""
    mode = ServerMode()
    write_status(chain.target.runtime_dir, chain.command(mode))
    write_load(chain.target.runtime_dir, started_at=time.time())
    said = refresh(chain, mode, [str(chain.score)], capsys)
    assert chain.supervisor.reloads == 0
    assert "up to date — the running server loaded onlinescoring/score.py already" in said


def test_a_server_started_by_this_command_is_not_reloaded(chain: Chain, capsys, monkeypatch) -> None:
    mode = ServerMode()
    monkeypatch.setattr(actions, "COMMAND_STARTED", time.time() - 1)
    write_status(chain.target.runtime_dir, chain.command(mode), generation=1, started_at=time.time())
    said = refresh(chain, mode, [str(chain.score)], capsys)
    assert chain.supervisor.reloads == 0
    assert "started under debugpy with the current code and model (new container)" in said


@pytest.mark.parametrize(("running", "asked", "why"), [
    (ServerMode(debugger=True), ServerMode(debugger=False), "now as azmlinfsrv (debugger=0)"),
    (ServerMode(debugger=True), ServerMode(debugger=True, wait=True), "now under debugpy, waiting for a debugger"),
    (ServerMode(), ServerMode(restart=True), "restart=1"),
])
def test_a_new_mode_or_restart_starts_a_new_server_process(chain: Chain, capsys, running, asked, why) -> None:
    write_status(chain.target.runtime_dir, chain.command(running))
    write_load(chain.target.runtime_dir, started_at=time.time() - 10)
    said = refresh(chain, asked, [], capsys)
    assert chain.supervisor.reloads == 1
    status = server.read_status(chain.target.runtime_dir)
    assert status is not None and status.generation == 3 and server.runs_command(status, chain.command(asked))
    assert f"restarted in a new process — {why}" in said
    assert ("waiting for a debugger on 127.0.0.1:5678 before init() runs" in said) == asked.wait


def test_a_server_that_exited_is_started_again_with_the_exit_code_said(chain: Chain, capsys) -> None:
    mode = ServerMode()
    write_status(chain.target.runtime_dir, chain.command(mode), state="exited", exit_code=3)
    said = refresh(chain, mode, [], capsys)
    assert chain.supervisor.reloads == 1
    assert "restarted in a new process — it had exited with code 3" in said


def test_a_report_of_another_container_means_not_running(chain: Chain, capsys) -> None:
    """A status file left by an earlier container: this container's server has not reported; start it."""
    mode = ServerMode()
    write_status(chain.target.runtime_dir, chain.command(mode), container="0123456789ab")
    chain.supervisor.owns = lambda status: status.container in (OUR_CONTAINER, "0123456789ab") \
        and status.generation > 2  # type: ignore[method-assign]
    said = refresh(chain, mode, [], capsys)
    assert chain.supervisor.reloads == 1
    assert "it was not running" in said


def test_a_failed_load_with_nothing_saved_since_is_the_error_again(chain: Chain, capsys) -> None:
    mode = ServerMode()
    write_status(chain.target.runtime_dir, chain.command(mode))
    write_load(chain.target.runtime_dir, outcome="failed", started_at=time.time() - 10, message="ValueError: broken")
    with pytest.raises(LocalmlError) as raised:
        refresh(chain, mode, [], capsys)
    assert chain.supervisor.reloads == 0
    assert "the scoring script failed to load (nothing saved since) in init(): ValueError: broken" in str(raised.value)


def test_keep_state_alone_is_written_for_the_next_reload_without_one_now(chain: Chain, capsys) -> None:
    mode = ServerMode(keep_state=True)
    write_status(chain.target.runtime_dir, chain.command(mode))
    write_load(chain.target.runtime_dir, started_at=time.time() - 10)
    said = refresh(chain, mode, [], capsys)
    assert chain.supervisor.reloads == 0
    assert actions.keeps_state(chain.target)
    assert "keep_state=1" in said


def test_a_custom_container_restarts_whole_on_a_change_and_not_otherwise(chain: Chain, capsys) -> None:
    chain.deployed.custom = True
    assert "serves itself" in refresh(chain, ServerMode(), [], capsys)
    assert chain.deployed.restarts == []
    said = refresh(chain, ServerMode(), [str(chain.score)], capsys)
    assert chain.deployed.restarts == ["restarted"]
    assert "restarted the custom container — onlinescoring/score.py changed" in said


def test_server_is_current_only_for_the_same_command_and_keep_state(chain: Chain) -> None:
    mode = ServerMode()
    write_status(chain.target.runtime_dir, chain.command(mode))
    server.write_command(chain.target.runtime_dir, chain.command(mode), keep_state=False)
    assert actions.server_is_current(chain.target, mode)
    assert not actions.server_is_current(chain.target, ServerMode(keep_state=True))
    assert not actions.server_is_current(chain.target, ServerMode(debugger=False))
    assert not actions.server_is_current(chain.target, ServerMode(restart=True))
    write_status(chain.target.runtime_dir, chain.command(mode), state="exited", exit_code=1)
    assert not actions.server_is_current(chain.target, mode)


def test_nothing_running_is_an_error_that_says_how_to_start_it(chain: Chain, monkeypatch) -> None:
    monkeypatch.setattr(runtime, "find", lambda endpoint, deployment: None)
    with pytest.raises(LocalmlError) as raised:
        actions.refresh_server(chain.target, ServerMode(), [])
    assert f"no local deployment blue on endpoint {chain.target.endpoint}" in str(raised.value)
    assert "doit debug spec=" in str(raised.value)
    assert not actions.server_is_current(chain.target, ServerMode())
