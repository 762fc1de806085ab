"""Stage 5 — the server: reload it in place when code or model change.

Our supervisor (in_container/supervisor.py) runs the server: as process 1 of the container, or as a
background process on this machine in process mode. SIGHUP makes it start a fresh server process,
so edits are live without an image build or a container recreate. It reports what runs in a status
file in a folder it shares with localml (.localml/.../runtime/). A SupervisorHost says where it runs.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from .errors import LocalmlError
from .state import write_json_if_changed

if TYPE_CHECKING:
    from docker.models.containers import Container

STATUS_FILE_NAME = "status.json"
COMMAND_FILE_NAME = "command.json"
DEBUGPY_FILE_NAME = "debugpy.json"
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
                            command={"argv": data.get("argv", []), "env": data.get("env", {})})
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        return None


def clear_status(runtime_dir: Path) -> None:
    runtime_dir.mkdir(parents=True, exist_ok=True)
    (runtime_dir / STATUS_FILE_NAME).unlink(missing_ok=True)


def write_command(runtime_dir: Path, command: dict[str, Any]) -> None:
    """What the supervisor runs at its next start or reload (debugger on/off, wait for it)."""
    runtime_dir.mkdir(parents=True, exist_ok=True)
    write_json_if_changed(runtime_dir / COMMAND_FILE_NAME, command)


def debug_server_command(python: str, script: str, *, server_port: int, debug_port: int, runtime_dir: str,
                         debugger: bool, wait: bool, bind_host: str | None = None) -> dict[str, Any]:
    """in_container/debug_server.py: azmlinfsrv's app in one process, under debugpy unless debugger is off.
    bind_host None: the debug server's default (every interface: inside a container, Docker publishes
    the port on 127.0.0.1 only)."""
    env = {"LOCALML_SERVER_PORT": str(server_port), "LOCALML_DEBUG_PORT": str(debug_port),
           "LOCALML_RUNTIME_DIR": runtime_dir}
    if bind_host:
        env["LOCALML_BIND_HOST"] = bind_host
    if not debugger:
        env["LOCALML_DEBUGGER"] = "0"
    elif wait:
        env["LOCALML_DEBUG_WAIT"] = "1"
    return {"argv": [python, script], "env": env}


def watched_files(code_dir: str | None, model_path: str | None) -> list[str]:
    """Every file whose change means "reload": the code folder and the model, minus caches."""
    files: list[str] = []
    for root in filter(None, (code_dir, model_path)):
        files.extend(_walk(Path(root)))
    return sorted(files)


def _walk(root: Path) -> Iterator[str]:
    if root.is_file():
        yield str(root)
        return
    for folder, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in SKIPPED_DIRS)
        for name in names:
            if not name.endswith((".pyc", ".pyo", ".swp")) and not name.startswith(".#"):
                yield os.path.join(folder, name)


def is_running_in(host: SupervisorHost, runtime_dir: Path, command: dict[str, Any]) -> bool:
    """This supervisor runs this command, and it has not exited."""
    status = read_status(runtime_dir)
    return bool(status and host.owns(status) and status.state == "running" and status.command == command)


def reload(host: SupervisorHost, runtime_dir: Path, command: dict[str, Any], timeout_s: float = 20.0) -> ServerStatus:
    """Ask the supervisor for a fresh server process running command; returns once it has started."""
    write_command(runtime_dir, command)
    before = read_status(runtime_dir)
    generation = before.generation if before and host.owns(before) else 0
    host.send_reload()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = read_status(runtime_dir)
        if status and host.owns(status) and status.generation > generation:
            return status
        time.sleep(0.05)
    raise LocalmlError.one(f"the server in {host.name} did not restart within {timeout_s:.0f} s",
                           fix="recreate the container: doit delete, then doit debug")


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
        if listening.get("pid") == status.pid:
            return True
        time.sleep(0.05)
    raise LocalmlError.one(f"debugpy did not start listening in {host.name} within {timeout_s:.0f} s",
                           fix="doit logs shows the server's output")


def has_exited(host: SupervisorHost, runtime_dir: Path) -> bool:
    status = read_status(runtime_dir)
    return bool(status and host.owns(status) and status.state == "exited")
