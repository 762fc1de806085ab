"""Process mode — the same endpoint without Docker: a venv on this machine and our supervisor as a
background process running the server on 127.0.0.1.

The venv lives under .localml/envs/<hash of the lock and Python>/, holds exactly the environment's lock
(lock.py, installed with uv) and is reused until the environment changes. The model gets Azure's layout
through a symlink, so $AZUREML_MODEL_DIR/<model folder name>/... works as in a container.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from . import ownership
from .container import IN_CONTAINER
from .environment import ResolvedEnvironment
from .errors import LocalmlError
from .image import parse_build_failure
from .lock import uv_binary
from .server import ProcessHost, debug_server_command, process_is_alive
from .spec import Deployment
from .state import read_json, state_root, write_json_if_changed

COMPLETE_MARKER = ".localml-complete"


@dataclass
class ProcessRecord:
    """What runs for one deployment in process mode (process.json in its state folder)."""

    supervisor_pid: int
    scoring_port: int
    debug_port: int
    venv: str
    config_hash: str
    log_file: str
    # when the supervisor started (ownership.stamp): a pid reused since is not taken for it
    start_ticks: int | None = None
    boot_id: str | None = None

    def host(self, name: str) -> ProcessHost:
        return ProcessHost(self.supervisor_pid, name, Path(self.log_file))


def read_record(state_dir: Path) -> ProcessRecord | None:
    data = read_json(state_dir / "process.json")
    try:
        return ProcessRecord(**data) if data else None
    except TypeError:
        return None


def live_record(state_dir: Path) -> ProcessRecord | None:
    record = read_record(state_dir)
    return record if record and is_our_supervisor(state_dir, record) else None


def supervisor_identity(state_dir: Path, record: ProcessRecord) -> ownership.Identity:
    """Our supervisor: supervisor.py given this deployment's runtime folder, started when the record says."""
    return ownership.Identity(argv=("supervisor.py", str((state_dir / "runtime").resolve())),
                              start_ticks=record.start_ticks, boot_id=record.boot_id)


def server_identity(state_dir: Path, record: ProcessRecord) -> ownership.Identity:
    """What our supervisor started (the server and its workers): they have its runtime folder in their
    environment, and started after it."""
    return ownership.Identity(environ=(f"LOCALML_RUNTIME_DIR={(state_dir / 'runtime').resolve()}",),
                              started_after=record.start_ticks, boot_id=record.boot_id)


def supervisor_verdict(state_dir: Path, record: ProcessRecord) -> str:
    return ownership.verdict(record.supervisor_pid, supervisor_identity(state_dir, record))


def is_our_supervisor(state_dir: Path, record: ProcessRecord) -> bool:
    """Whether the record's supervisor runs (without /proc: whether its pid exists; it is never signalled then)."""
    return supervisor_verdict(state_dir, record) in (ownership.OURS, ownership.UNKNOWN)


# --- the venv ---------------------------------------------------------------------------------------


def host_python(env: ResolvedEnvironment) -> str:
    """python3.X from PATH when the conda file pins X, else the Python running localml."""
    if env.python_version:
        found = shutil.which(f"python{env.python_version}")
        if found:
            return found
    return sys.executable


def python_version_of(python: str) -> str:
    result = subprocess.run([python, "-c", "import sys; print('%d.%d.%d' % sys.version_info[:3])"],
                            capture_output=True, text=True, check=True)
    return result.stdout.strip()


def venv_dir(env: ResolvedEnvironment, python: str, python_version: str) -> Path:
    digest = hashlib.sha256("\0".join([python, python_version, *env.requirements]).encode()).hexdigest()[:16]
    return state_root() / "envs" / digest


def ensure_venv(env: ResolvedEnvironment, python: str, python_version: str) -> tuple[Path, bool, float]:
    """(venv folder, whether it was built now, seconds). Reused while the environment is unchanged."""
    folder = venv_dir(env, python, python_version)
    if (folder / COMPLETE_MARKER).exists():
        return folder, False, 0.0
    started = time.monotonic()
    shutil.rmtree(folder, ignore_errors=True)  # a half-built one from an interrupted run
    folder.parent.mkdir(parents=True, exist_ok=True)
    requirements = folder.parent / f"{folder.name}.requirements.txt"
    requirements.write_text("".join(f"{line}\n" for line in env.requirements), encoding="utf-8")
    uv = uv_binary()
    steps = [[uv, "venv", "--quiet", "--python", python, str(folder)],
             [uv, "pip", "install", "--quiet", "--no-deps", "--python", str(folder / "bin" / "python"),
              "-r", str(requirements)]]
    for step in steps:
        result = subprocess.run(step, capture_output=True, text=True)
        if result.returncode != 0:
            shutil.rmtree(folder, ignore_errors=True)
            lines = (result.stdout + result.stderr).splitlines()
            raise parse_build_failure(lines, f"{Path(step[0]).name} exited with {result.returncode}", env.conda_file)
    (folder / COMPLETE_MARKER).write_text(json.dumps(env.requirements), encoding="utf-8")
    return folder, True, time.monotonic() - started


# --- the supervisor process ------------------------------------------------------------------------------


def model_dir(deployment: Deployment, state_dir: Path) -> Path:
    """Azure's layout on this machine: <state>/azureml-models/<name>/<version>/<model folder name> -> model."""
    root = state_dir / "azureml-models" / deployment.model_name / deployment.model_version
    root.mkdir(parents=True, exist_ok=True)
    if deployment.model_path:
        link = root / Path(deployment.model_path).name
        if link.is_symlink() or link.exists():
            if link.is_symlink() and os.readlink(link) == deployment.model_path:
                return root
            link.unlink()
        link.symlink_to(deployment.model_path)
    return root


def environment_for(deployment: Deployment, state_dir: Path) -> dict[str, str]:
    script_dir, script_name = os.path.split(deployment.scoring_script)
    return {
        "PYTHONDONTWRITEBYTECODE": "1",
        "AZUREML_MODEL_DIR": str(model_dir(deployment, state_dir).resolve()),
        "AML_APP_ROOT": str(Path(deployment.code_dir, script_dir)),
        "AZUREML_ENTRY_SCRIPT": script_name,
        # request_settings, as in the container
        "SCORING_TIMEOUT_MS": str(deployment.request_timeout_ms),
        "WORKER_COUNT": str(deployment.max_concurrent_requests),
        **deployment.environment_variables,
    }


def config_hash(deployment: Deployment, venv: Path) -> str:
    identity = {"env": deployment.environment_variables, "code": deployment.code_dir,
                "request_settings": [deployment.request_timeout_ms, deployment.max_concurrent_requests],
                "script": deployment.scoring_script, "model": deployment.model_path, "venv": str(venv),
                "supervisor": hashlib.sha256((IN_CONTAINER / "supervisor.py").read_bytes()).hexdigest()}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def server_command(deployment: Deployment, venv: Path, scoring_port: int, debug_port: int, runtime_dir: Path,
                   debugger: bool, wait: bool) -> dict:
    """The server in one process bound to 127.0.0.1 (azmlinfsrv itself would bind every interface)."""
    return debug_server_command(str(venv / "bin" / "python"), str(IN_CONTAINER / "debug_server.py"),
                                server_port=scoring_port, debug_port=debug_port,
                                runtime_dir=str(runtime_dir.resolve()), debugger=debugger, wait=wait,
                                code_dir=deployment.code_dir, host_code_dir=deployment.code_dir,
                                bind_host="127.0.0.1")


def start(deployment: Deployment, venv: Path, state_dir: Path, runtime_dir: Path, scoring_port: int,
          debug_port: int) -> ProcessRecord:
    """Start the supervisor (it runs runtime/command.json) in its own session, its output in runtime/server.log."""
    runtime_dir.mkdir(parents=True, exist_ok=True)
    log_file = runtime_dir / "server.log"
    with open(log_file, "ab") as log:
        process = subprocess.Popen(
            [str(venv / "bin" / "python"), str(IN_CONTAINER / "supervisor.py"), str(runtime_dir.resolve())],
            env={**os.environ, **environment_for(deployment, state_dir)}, stdin=subprocess.DEVNULL,
            stdout=log, stderr=subprocess.STDOUT, cwd=deployment.code_dir, start_new_session=True,
        )
    record = ProcessRecord(supervisor_pid=process.pid, scoring_port=scoring_port, debug_port=debug_port,
                           venv=str(venv), config_hash=config_hash(deployment, venv), log_file=str(log_file),
                           **ownership.stamp(process.pid))
    try:
        write_json_if_changed(state_dir / "process.json", asdict(record))
    except LocalmlError:  # a full disk: a supervisor nobody has a record of must not stay behind (it ends its server)
        process.terminate()
        process.wait(timeout=15)
        raise
    return record


def sessions(state_dir: Path, record: ProcessRecord) -> list[int]:
    """The sessions to end: the supervisor's, and the server's (the supervisor gives it its own)."""
    status = read_json(state_dir / "runtime" / "status.json") or {}
    server_pid = status.get("pid") if status.get("supervisor") == record.supervisor_pid else None
    return [record.supervisor_pid] + ([int(server_pid)] if server_pid else [])


@dataclass
class Stopped:
    """What stop() found: the record, whether its supervisor was ours (ownership.OURS, GONE, FOREIGN,
    UNKNOWN), and the processes of ours it ended (FOREIGN or UNKNOWN: none, nothing was signalled)."""

    record: ProcessRecord
    found: str
    ended: list[int]

    @property
    def stale(self) -> bool:
        return self.found in (ownership.FOREIGN, ownership.UNKNOWN)


def stop(state_dir: Path, timeout_s: float = 15.0) -> Stopped | None:
    """End the supervisor and everything under it, only what is verifiably ours (ownership.py). A record
    whose pid is someone else's (a stale file) is removed and nothing is signalled."""
    record = read_record(state_dir)
    if record is None:
        return None
    pid = record.supervisor_pid
    found = supervisor_verdict(state_dir, record)
    if found in (ownership.FOREIGN, ownership.UNKNOWN):
        (state_dir / "process.json").unlink(missing_ok=True)
        return Stopped(record, found, [])
    # both sessions were started with their leader as session leader (sid == pid); a session is ended whole
    # only when its leader is verified ours, else only its members that are themselves recognisably ours
    leaders = sessions(state_dir, record)
    member = server_identity(state_dir, record)
    ours = [pid] if found == ownership.OURS else []
    ours += [leader for leader in leaders[1:] if ownership.verdict(leader, member) == ownership.OURS]
    tree = ownership.our_session_members(leaders, ours, member)
    if found == ownership.OURS:
        os.kill(pid, signal.SIGTERM)  # it stops the server, then exits
        deadline = time.monotonic() + timeout_s
        while process_is_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
    # whatever is left in either session
    for left in ownership.our_session_members(leaders, ours, member):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(left, signal.SIGKILL)
    _reap(pid)
    (state_dir / "process.json").unlink(missing_ok=True)
    return Stopped(record, found, tree)


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def wait_until_gone(pids: list[int], timeout_s: float = 10.0) -> list[int]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        left = [pid for pid in pids if process_is_alive(pid)]
        if not left:
            return []
        time.sleep(0.05)
    return [pid for pid in pids if process_is_alive(pid)]


def session_pids(session_id: int) -> list[int]:
    """Every live process in a session (from /proc): what `delete` must leave behind as nothing."""
    return ownership.session_members(session_id)
