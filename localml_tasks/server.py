"""Stage 5 — the server: bring it up to date with the code and the model, inside the running process.

Our supervisor (in_container/supervisor.py) runs the server: as process 1 of the container, or as a
background process on this machine in process mode. SIGHUP asks it to bring the server up to date
with command.json: in place when the same command runs (the debug server loads the scoring script
again in its own process, so the debugger stays attached; gunicorn replaces its workers), in a new
process when the command changed or the server had exited. The supervisor reports what runs in
status.json, and each load of the scoring script in reload.json, in a folder it shares with localml
(.localml/.../runtime/). A SupervisorHost says where it runs.
"""

from __future__ import annotations

import json
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from . import filecheck
from .errors import LocalmlError
from .state import read_json, write_json_if_changed

if TYPE_CHECKING:
    from docker.models.containers import Container

STATUS_FILE_NAME = "status.json"
COMMAND_FILE_NAME = "command.json"
DEBUGPY_FILE_NAME = "debugpy.json"
RELOAD_FILE_NAME = "reload.json"
SKIPPED_DIRS = {"__pycache__", ".git", ".ipynb_checkpoints", ".pytest_cache", ".mypy_cache", ".localml"}


@dataclass
class ServerStatus:
    container: str  # the hostname it runs on: in a container, the first 12 characters of its id
    supervisor_pid: int | None
    generation: int
    state: str  # running | exited
    exit_code: int | None
    pid: int | None
    started_at: float  # when this generation's server process was started
    command: dict[str, Any]  # {"argv": [...], "env": {...}} it was started with
    why: str = ""  # why this generation was started



class SupervisorHost(Protocol):
    name: str

    def owns(self, status: ServerStatus) -> bool: ...
    def send_reload(self) -> None: ...
    def is_up(self) -> bool: ...
    def output_tail(self) -> str: ...


class ContainerHost:
    """The supervisor as process 1 of a container."""

    def __init__(self, container: Container) -> None:
        self.container = container
        self.name = container.name

    def owns(self, status: ServerStatus) -> bool:
        return self.container.id.startswith(status.container)

    def send_reload(self) -> None:
        self.container.kill(signal="SIGHUP")

    def is_up(self) -> bool:
        self.container.reload()
        return self.container.status in ("running", "created")

    def output_tail(self) -> str:
        return self.container.logs(tail=20).decode(errors="replace")


class ProcessHost:
    """The supervisor as a background process on this machine (process mode)."""

    def __init__(self, pid: int, name: str, log_file: Path) -> None:
        self.pid, self.name, self.log_file = pid, name, log_file

    def owns(self, status: ServerStatus) -> bool:
        return status.supervisor_pid == self.pid

    def send_reload(self) -> None:
        os.kill(self.pid, signal.SIGHUP)

    def is_up(self) -> bool:
        return process_is_alive(self.pid)

    def output_tail(self) -> str:
        try:
            return "\n".join(self.log_file.read_text(encoding="utf-8", errors="replace").splitlines()[-20:])
        except FileNotFoundError:
            return ""


def process_is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie is not alive: its exit has only not been collected yet
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (OSError, IndexError):
        return True


def read_status(runtime_dir: Path) -> ServerStatus | None:
    try:
        data = json.loads((runtime_dir / STATUS_FILE_NAME).read_text(encoding="utf-8"))
        return ServerStatus(container=data["container"], supervisor_pid=data.get("supervisor"),
                            generation=int(data["generation"]), state=data["state"],
                            exit_code=data.get("exit_code"), pid=data.get("pid"),
                            started_at=float(data["started_at"]),
                            command={"argv": data.get("argv", []), "env": data.get("env", {})},
                            why=str(data.get("why") or ""))
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        return None


def clear_status(runtime_dir: Path) -> None:
    runtime_dir.mkdir(parents=True, exist_ok=True)
    (runtime_dir / STATUS_FILE_NAME).unlink(missing_ok=True)


def write_command(runtime_dir: Path, command: dict[str, Any], *, keep_state: bool = False,
                  restart: bool = False) -> None:
    """What the supervisor runs at its next start or reload (debugger on/off, wait for it), the settings the
    server reads at each reload (keep_state), and restart: ask for a new process even if the command is
    the same (the supervisor compares the counter)."""
    runtime_dir.mkdir(parents=True, exist_ok=True)
    previous = read_json(runtime_dir / COMMAND_FILE_NAME) or {}
    counter = int(previous.get("restart") or 0) + (1 if restart else 0)
    write_json_if_changed(runtime_dir / COMMAND_FILE_NAME,
                          {**command, "settings": {"keep_state": keep_state}, "restart": counter})


def debug_server_command(python: str, script: str, *, server_port: int, debug_port: int, runtime_dir: str,
                         debugger: bool, wait: bool, code_dir: str, host_code_dir: str,
                         bind_host: str | None = None, more_paths: dict[str, str] | None = None) -> dict[str, Any]:
    """in_container/debug_server.py: azmlinfsrv's app in one process, under debugpy unless debugger is off;
    reloaded in place by SIGUSR1. code_dir: the code folder as the server sees it (its modules are dropped
    on a reload); host_code_dir: the same folder on this machine (tracebacks name it). bind_host None: the
    debug server's default (every interface: inside a container, Docker publishes the port on 127.0.0.1 only)."""
    env = {"LOCALML_SERVER_PORT": str(server_port), "LOCALML_DEBUG_PORT": str(debug_port),
           "LOCALML_RUNTIME_DIR": runtime_dir, "LOCALML_CODE_DIR": code_dir}
    path_map = {code_dir: host_code_dir, **(more_paths or {})}  # more_paths: a model folder's, {there: here}
    path_map = {there: here for there, here in path_map.items() if there != here}
    if path_map:
        env["LOCALML_PATH_MAP"] = json.dumps(path_map)
    if bind_host:
        env["LOCALML_BIND_HOST"] = bind_host
    if not debugger:
        env["LOCALML_DEBUGGER"] = "0"
    elif wait:
        env["LOCALML_DEBUG_WAIT"] = "1"
    return {"argv": [python, script], "env": env, "reload": "debug-server"}


@dataclass
class LoadOutcome:
    """One load of the scoring script by a server process (reload.json): at its start, or a reload."""

    pid: int
    started_at: float  # when the load began: files saved before it are in it
    outcome: str  # loaded | failed | restart (a new process is coming)
    took_ms: float
    init: dict[str, Any]  # {"ran": bool, "why": str, "ms": float} or {"ran": False, "kept": [names]}
    message: str
    traceback: str
    file: str | None = None  # where in the user's code a failed load failed (a host path)
    line: int | None = None
    function: str | None = None

    def describe_init(self) -> str:
        if self.init.get("ran", True):
            timing = f", {self.init['ms']:.0f} ms" if "ms" in self.init else ""
            return f"init() ran again: {self.init.get('why', '')}{timing}"
        kept = ", ".join(self.init.get("kept") or []) or "nothing to keep"
        return f"run() reloaded, init() state kept: {kept}"


def read_load(runtime_dir: Path) -> LoadOutcome | None:
    data = read_json(runtime_dir / RELOAD_FILE_NAME)
    try:
        return LoadOutcome(pid=int(data["pid"]), started_at=float(data["started_at"]), outcome=str(data["outcome"]),
                           took_ms=float(data.get("took_ms") or 0), init=dict(data.get("init") or {}),
                           message=str(data.get("message") or ""), traceback=str(data.get("traceback") or ""),
                           file=data.get("file"), line=data.get("line"), function=data.get("function"))
    except (TypeError, KeyError, ValueError):
        return None


@dataclass
class Refreshed:
    """What a refresh did: reloaded in place (load says how it went), or started a new process (why)."""

    in_place: bool
    why: str
    load: LoadOutcome | None  # None: a new process whose first load is reported by the health stage
    exited: bool = False  # the server process is gone (a crash during the reload)
    seconds: float = 0.0


def refresh(host: SupervisorHost, runtime_dir: Path, command: dict[str, Any], *, keep_state: bool,
            restart: bool = False, timeout_s: float = 120.0) -> Refreshed:
    """Ask the supervisor to bring the server up to date with command; returns once the reload is done (or a
    new process has started)."""
    write_command(runtime_dir, command, keep_state=keep_state, restart=restart)
    before = read_status(runtime_dir)
    generation = before.generation if before and host.owns(before) else 0
    # an exit that was already reported is what the new process is for, not the reload's outcome
    exited_before = bool(before and host.owns(before) and before.state == "exited")
    clock = time.perf_counter()
    requested_at = time.time()
    host.send_reload()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = read_status(runtime_dir)
        if status and host.owns(status) and status.generation > generation:
            return Refreshed(False, status.why, None, exited=status.state == "exited",
                             seconds=time.perf_counter() - clock)
        if status and host.owns(status) and status.state == "exited" and not exited_before:
            return Refreshed(True, "", None, exited=True, seconds=time.perf_counter() - clock)
        load = read_load(runtime_dir)
        if status and load and load.pid == status.pid and load.started_at >= requested_at \
                and load.outcome in ("loaded", "failed"):
            return Refreshed(True, "", load, seconds=time.perf_counter() - clock)
        time.sleep(0.01)
    raise LocalmlError.one(f"the server in {host.name} did not reload within {timeout_s:.0f} s",
                           fix="doit logs shows what it is doing; restart=1 starts a new server process")


def watched_files(code_dir: str | None, model_path: str | None) -> list[str]:
    """Every file whose change means "reload": the code folder and the model, minus caches.

    At most filecheck.MAX_FILES of each (validation refuses a larger folder; this only keeps every command
    from walking it); a folder too large to hash is remembered for the checker (filecheck)."""
    files: list[str] = []
    for root in filter(None, (code_dir, model_path)):
        files.extend(filecheck.survey(root, SKIPPED_DIRS).files)
    return sorted(files)


def runs_command(status: ServerStatus, command: dict[str, Any]) -> bool:
    return status.command == {"argv": command["argv"], "env": command["env"]}


def is_running_in(host: SupervisorHost, runtime_dir: Path, command: dict[str, Any]) -> bool:
    """This supervisor runs this command, and it has not exited."""
    status = read_status(runtime_dir)
    return bool(status and host.owns(status) and status.state == "running" and runs_command(status, command))


def wait_for_supervisor(host: SupervisorHost, runtime_dir: Path, timeout_s: float = 30.0) -> ServerStatus:
    """A new supervisor reports its first server start within moments."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = read_status(runtime_dir)
        if status and host.owns(status):
            return status
        if not host.is_up():
            log = host.output_tail().strip()
            raise LocalmlError.one(f"{host.name} stopped at once: {log or '(no output)'}",
                                   fix="the environment needs python on PATH (its venv provides it)")
        time.sleep(0.05)
    raise LocalmlError.one(f"localml's supervisor in {host.name} reported nothing within {timeout_s:.0f} s",
                           fix="doit logs shows what it printed")


def wait_for_debugger_port(host: SupervisorHost, runtime_dir: Path, timeout_s: float = 120.0) -> bool:
    """Wait until the debug server of the current generation listens for a debugger.

    False when the server exited first (health then reports why)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = read_status(runtime_dir)
        if status is None or not host.owns(status) or status.state == "exited":
            return False
        try:
            listening = json.loads((runtime_dir / DEBUGPY_FILE_NAME).read_text(encoding="utf-8"))
        except (FileNotFoundError, ValueError):
            listening = {}
        if isinstance(listening, dict) and listening.get("pid") == status.pid:
            return True
        time.sleep(0.05)
    raise LocalmlError.one(f"debugpy did not start listening in {host.name} within {timeout_s:.0f} s",
                           fix="doit logs shows the server's output")


def has_exited(host: SupervisorHost, runtime_dir: Path) -> bool:
    status = read_status(runtime_dir)
    return bool(status and host.owns(status) and status.state == "exited")
