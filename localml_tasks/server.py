"""Stage 5 — the server inside the running container: reload it in place when code or model change.

The container's process 1 is our supervisor (in_container/supervisor.py). SIGHUP makes it start
a fresh server process, so edits are live without an image build or a container recreate. It
reports what runs in a status file in a folder shared with the host (.localml/.../runtime/).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

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
    container: str  # the container's hostname: the first 12 characters of its id
    generation: int
    state: str  # running | exited
    exit_code: int | None
    pid: int | None
    started_at: float  # when this generation's server process was started
    command: dict[str, Any]  # {"argv": [...], "env": {...}} it was started with

    def belongs_to(self, container: Container) -> bool:
        return container.id.startswith(self.container)


def read_status(runtime_dir: Path) -> ServerStatus | None:
    try:
        data = json.loads((runtime_dir / STATUS_FILE_NAME).read_text(encoding="utf-8"))
        return ServerStatus(container=data["container"], generation=int(data["generation"]), state=data["state"],
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


def is_running_in(container: Container, runtime_dir: Path, command: dict[str, Any]) -> bool:
    """The supervisor of this container runs this command, and it has not exited."""
    status = read_status(runtime_dir)
    return bool(status and status.belongs_to(container) and status.state == "running"
                and status.command == command)


def reload(container: Container, runtime_dir: Path, command: dict[str, Any], timeout_s: float = 20.0) -> ServerStatus:
    """Ask the supervisor for a fresh server process running command; returns once it has started."""
    write_command(runtime_dir, command)
    before = read_status(runtime_dir)
    generation = before.generation if before and before.belongs_to(container) else 0
    container.kill(signal="SIGHUP")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = read_status(runtime_dir)
        if status and status.belongs_to(container) and status.generation > generation:
            return status
        time.sleep(0.05)
    raise LocalmlError.one(f"the server in {container.name} did not restart within {timeout_s:.0f} s",
                           fix="recreate the container: doit delete, then doit debug")


def wait_for_supervisor(container: Container, runtime_dir: Path, timeout_s: float = 30.0) -> ServerStatus:
    """A new container's supervisor reports its first server start within moments."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = read_status(runtime_dir)
        if status and status.belongs_to(container):
            return status
        container.reload()
        if container.status not in ("running", "created"):
            log = container.logs(tail=20).decode(errors="replace").strip()
            raise LocalmlError.one(f"the container {container.name} stopped at once: {log or '(no output)'}",
                                   fix="the image needs python on PATH (the environment's venv provides it)")
        time.sleep(0.05)
    raise LocalmlError.one(f"localml's supervisor in {container.name} reported nothing within {timeout_s:.0f} s",
                           fix="doit logs shows what the container printed")


def wait_for_debugger_port(container: Container, runtime_dir: Path, timeout_s: float = 120.0) -> bool:
    """Wait until the debug server of the current generation listens for a debugger.

    False when the server exited first (health then reports why)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = read_status(runtime_dir)
        if status is None or not status.belongs_to(container) or status.state == "exited":
            return False
        try:
            listening = json.loads((runtime_dir / DEBUGPY_FILE_NAME).read_text(encoding="utf-8"))
        except (FileNotFoundError, ValueError):
            listening = {}
        if listening.get("pid") == status.pid:
            return True
        time.sleep(0.05)
    raise LocalmlError.one(f"debugpy did not start listening in {container.name} within {timeout_s:.0f} s",
                           fix="doit logs shows the server's output")


def has_exited(container: Container, runtime_dir: Path) -> bool:
    status = read_status(runtime_dir)
    return bool(status and status.belongs_to(container) and status.state == "exited")
