"""Where a deployment runs: a container (the local endpoint) or a supervisor process on this machine (process
mode). The one owner of what runs.

This is the only module that reads container labels and process records (process.json). Everything else asks
it: `find` for what runs now (a `Deployed`: its server host, ports, routes, log and server command),
`start_container` / `start_process` to bring one up, `stop` to remove what exists in either runtime, and
`describe_endpoint` / `describe_everything` for the true state that show and endpoints print.
"""

from __future__ import annotations

import json
import sys
import time
from abc import ABC, abstractmethod
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import container as container_stage
from . import docker_engine, lifecycle, ownership, ports, process_runtime, server
from .contract import (
    FIRST_DEBUG_PORT,
    FIRST_SCORING_PORT,
    LABEL_CODE_DIR,
    LABEL_CODE_TARGET,
    LABEL_CONFIG_HASH,
    LABEL_CUSTOM,
    LABEL_DEBUG_PORT,
    LABEL_DEPLOYMENT,
    LABEL_DEPLOYMENT_DATA,
    LABEL_ENDPOINT,
    LABEL_GPU,
    LABEL_LOCAL_ENDPOINT,
    LABEL_ROUTES,
    LABEL_SCORING_PORT,
    LABEL_SPEC,
    LABEL_WORKDIR,
    LOOPBACK,
    container_name,
    inference_server_routes,
)
from .errors import LocalmlError
from .spec import Deployment
from .state import deployment_dir, read_json, state_root

if TYPE_CHECKING:
    from docker.models.containers import Container


@dataclass(frozen=True)
class ServerMode:
    """How the server runs: under debugpy in one process (the default of `debug`), or as azmlinfsrv."""

    debugger: bool = True
    wait: bool = False  # wait for a debugger to attach before init() runs
    keep_state: bool = False  # keep init()'s globals across reloads that leave init() and the model alone
    restart: bool = False  # a new server process, even where a reload in place would do

    def describe(self) -> str:
        if not self.debugger:
            return "as azmlinfsrv (debugger=0)"
        return "under debugpy, waiting for a debugger (wait=1)" if self.wait else "under debugpy"


@dataclass
class Deployed(ABC):
    """One deployment as it runs now. Its server is reached through `host` (server.py's supervisor protocol)."""

    noun: str  # what a new one is called: "container" | "process"
    host: server.SupervisorHost
    scoring_port: int
    debug_port: int
    code_target: str  # the code folder as the server sees it
    path_map: dict[str, str]  # the server's code folder -> the user's (identity in process mode)
    # role (scoring, readiness, liveness) -> {path, port on 127.0.0.1}
    routes: dict[str, dict[str, Any]] = field(default_factory=dict)
    custom: bool = False  # a custom container (environment.inference_config): no supervisor of ours
    gpu: bool = False

    def uri(self, role: str) -> str:
        route = self.routes[role]
        return f"http://{LOOPBACK}:{route['port']}{route['path']}"

    @property
    def scoring_uri(self) -> str:
        return self.uri("scoring")

    def owns(self, status: server.ServerStatus | None) -> bool:
        """Whether a status report is this server's (not a previous container's or process's)."""
        return status is not None and self.host.owns(status)

    @abstractmethod
    def read_log(self, since: float | None) -> str:
        """The server's log since a Unix time (None: all of it)."""

    @abstractmethod
    def print_logs(self, tail: int | None, follow: bool) -> None:
        """The last `tail` lines (None: all) to standard output; follow: then every new line until Ctrl-C."""

    @abstractmethod
    def server_command(self, deployment: Deployment, mode: ServerMode, runtime_dir: Path) -> dict[str, Any]:
        """What its supervisor runs for this mode (server.write_command's argument)."""

    def container(self) -> Container | None:
        """The container, for what only a container has (a dev container); None in process mode."""
        return None

    def restart_custom(self) -> None:
        raise NotImplementedError  # only a custom container is restarted whole


@dataclass
class ContainerDeployment(Deployed):
    found: Any = None  # the docker Container

    def read_log(self, since: float | None) -> str:
        return docker_engine.container_logs(self.found, since=since)

    def print_logs(self, tail: int | None, follow: bool) -> None:
        lines: int | str = "all" if tail is None else tail
        if not follow:
            sys.stdout.write(docker_engine.container_logs(self.found, lines))
            return
        try:
            for chunk in docker_engine.follow_logs(self.found, lines):
                sys.stdout.write(chunk)
                sys.stdout.flush()
        except KeyboardInterrupt:
            pass

    def server_command(self, deployment: Deployment, mode: ServerMode, runtime_dir: Path) -> dict[str, Any]:
        return container_stage.server_command(deployment, mode.debugger, mode.wait and mode.debugger)

    def container(self) -> Container | None:
        return self.found

    def restart_custom(self) -> None:
        docker_engine.restart_container(self.found)


@dataclass
class ProcessDeployment(Deployed):
    record: process_runtime.ProcessRecord | None = None

    def read_log(self, since: float | None) -> str:
        assert self.record is not None
        return _process_log(Path(self.record.log_file), since)

    def print_logs(self, tail: int | None, follow: bool) -> None:
        assert self.record is not None
        _follow_file(Path(self.record.log_file), tail, follow)

    def server_command(self, deployment: Deployment, mode: ServerMode, runtime_dir: Path) -> dict[str, Any]:
        assert self.record is not None
        return process_runtime.server_command(deployment, Path(self.record.venv), self.record.scoring_port,
                                              self.record.debug_port, runtime_dir, mode.debugger, mode.wait)


# --- what runs now ---------------------------------------------------------------------------------------


def find(endpoint: str, deployment: str) -> Deployed | None:
    """The deployment's live supervisor process (this folder's record), else its container, else None."""
    state_dir = deployment_dir(endpoint, deployment)
    record = process_runtime.live_record(state_dir)
    if record is not None:
        return _process_deployment(state_dir, record, deployment)
    found = container_of(endpoint, deployment)
    return _container_deployment(found) if found is not None else None


def _process_deployment(state_dir: Path, record: process_runtime.ProcessRecord, name: str) -> ProcessDeployment:
    code_dir = (read_json(state_dir / "deployment.json") or {}).get("code_dir", "")
    return ProcessDeployment("process", record.host(f"the process of {name}"), record.scoring_port,
                             record.debug_port, code_dir, {code_dir: code_dir},
                             inference_server_routes(record.scoring_port), record=record)


def _container_deployment(found: Container) -> ContainerDeployment:
    labels = found.labels
    code_target = labels.get(LABEL_CODE_TARGET, "")
    scoring_port = int(labels.get(LABEL_SCORING_PORT) or 0)
    # containers from before routes were recorded serve azmlinfsrv's
    routes = _json_label(labels.get(LABEL_ROUTES)) or inference_server_routes(scoring_port)
    return ContainerDeployment("container", server.ContainerHost(found), scoring_port,
                               int(labels.get(LABEL_DEBUG_PORT) or 0), code_target,
                               {code_target: labels.get(LABEL_CODE_DIR, "")} if code_target else {}, routes,
                               custom=labels.get(LABEL_CUSTOM) == "1", gpu=labels.get(LABEL_GPU) == "1", found=found)


def container_of(endpoint: str, deployment: str) -> Container | None:
    """The deployment's container, whatever its state (None without an engine)."""
    if not docker_engine.engine_available():
        return None
    return docker_engine.get_container(container_name(endpoint, deployment))


def container_folder(found: Container) -> str:
    """The project folder that created the container ("" for one from before the label was written)."""
    return found.labels.get(LABEL_WORKDIR, "")


def process_record(endpoint: str, deployment: str) -> process_runtime.ProcessRecord | None:
    """The deployment's process record in this folder, whether or not its process still runs."""
    return process_runtime.read_record(deployment_dir(endpoint, deployment))


def runs_as_process(endpoint: str, deployment: str) -> bool:
    return process_runtime.live_record(deployment_dir(endpoint, deployment)) is not None


def process_is_current(endpoint: str, deployment: str, config_hash: str) -> bool:
    record = process_runtime.live_record(deployment_dir(endpoint, deployment))
    return record is not None and record.config_hash == config_hash


# --- bringing one up ---------------------------------------------------------------------------------------


def start_container(spec: container_stage.ContainerSpec, runtime_dir: Path, command: dict[str, Any] | None,
                    keep_state: bool) -> tuple[Deployed, str]:
    """(Re)create the container and, unless it is a custom one, wait for its supervisor. (it, why)"""
    if command is not None:
        server.clear_status(runtime_dir)
        server.write_command(runtime_dir, command, keep_state=keep_state)
    started, _ports, reason = container_stage.start(spec)
    if command is not None:
        server.wait_for_supervisor(server.ContainerHost(started), runtime_dir)
    return _container_deployment(started), reason


@dataclass
class ProcessStart:
    deployed: Deployed
    pid: int  # the supervisor's
    reason: str  # started | restarted: ...
    stale: str | None = None  # the line for a process.json that named someone else's process


def start_process(deployment: Deployment, venv: Path, mode: ServerMode) -> ProcessStart:
    """Start (or restart) the deployment's supervisor process; the ports it had are kept where they are free."""
    state_dir = deployment_dir(deployment.endpoint_name, deployment.deployment_name)
    runtime_dir = state_dir / "runtime"
    previous = process_runtime.read_record(state_dir)
    reason, stale = "started", None
    if previous is not None:
        alive = process_runtime.is_our_supervisor(state_dir, previous)
        reason = "restarted: configuration changed" if alive else "restarted: it was not running"
        stopped = process_runtime.stop(state_dir)
        if stopped is not None and stopped.stale:
            stale = ownership.stale_line("process.json", previous.supervisor_pid, stopped.found)
            reason = "started"
    taken = docker_engine.ports_in_use_by_containers() if docker_engine.engine_available() else set()
    scoring = ports.pick(previous.scoring_port if previous else FIRST_SCORING_PORT, taken)
    debug = ports.pick(previous.debug_port if previous else FIRST_DEBUG_PORT, taken | {scoring})
    server.clear_status(runtime_dir)
    command = process_runtime.server_command(deployment, venv, scoring, debug, runtime_dir, mode.debugger,
                                             mode.wait)
    server.write_command(runtime_dir, command, keep_state=mode.keep_state)
    record = process_runtime.start(deployment, venv, state_dir, runtime_dir, scoring, debug)
    ports.hold_for(record.supervisor_pid, [scoring, debug])  # a crashed server restarts on them, nobody takes them
    deployed = _process_deployment(state_dir, record, deployment.deployment_name)
    server.wait_for_supervisor(deployed.host, runtime_dir)
    return ProcessStart(deployed, record.supervisor_pid, reason, stale)


# --- taking one down ---------------------------------------------------------------------------------------


@dataclass
class Removed:
    """What `stop` did, in order, as lines; and the removed container's image (for images=1)."""

    lines: list[str] = field(default_factory=list)
    image_tag: str | None = None
    custom: bool = False
    waits_for_engine: bool = False  # a process was stopped and no engine answers: a container, if any, is left


def stop(endpoint: str, deployment: str) -> Removed:
    """End what runs of the deployment in either runtime: its process (only if provably ours) and its container."""
    removed = Removed()
    stopped = process_runtime.stop(deployment_dir(endpoint, deployment))
    if stopped is not None and stopped.stale:
        removed.lines.append(ownership.stale_line("process.json", stopped.record.supervisor_pid, stopped.found))
    elif stopped is not None:
        left = process_runtime.wait_until_gone(stopped.ended)
        if left:
            raise LocalmlError.one(f"processes {left} of {deployment} did not stop",
                                   fix=f"end them by hand: kill -9 {' '.join(map(str, left))}")
        removed.lines.append(f"stopped the server process of {deployment} (pid {stopped.record.supervisor_pid}); "
                             "nothing of it is left running")
        if not docker_engine.engine_available():
            removed.waits_for_engine = True
            return removed
    name = container_name(endpoint, deployment)
    found = docker_engine.get_container(name)
    if found is None:
        removed.lines.append(f"no container {name}")
        return removed
    removed.image_tag = (found.image.tags or [None])[0] if found.image else None
    removed.custom = found.labels.get(LABEL_CUSTOM) == "1"
    docker_engine.remove_container(found)
    removed.lines.append(f"removed container {name}")
    return removed


def remove_container(found: Container) -> None:
    docker_engine.remove_container(found)


def containers_using(image_tag: str) -> list[str]:
    """The names of localml's containers that run this image."""
    return [c.name for c in docker_engine.list_containers([LABEL_LOCAL_ENDPOINT])
            if image_tag in (c.image.tags if c.image else [])]


# --- the true state, for show and endpoints ---------------------------------------------------------------


def describe_endpoint(endpoint: str) -> list[dict[str, Any]]:
    """Every deployment of the endpoint, described with its true state: process mode's from this folder's
    records, containers from their labels (a live process wins over a container, a container over a process
    that is gone)."""
    processes = _process_deployments(endpoint)
    containers = _describe_containers(docker_engine.list_containers(
        [LABEL_LOCAL_ENDPOINT, f"{LABEL_ENDPOINT}={endpoint}"])) if docker_engine.engine_available() else []
    return sorted(_merged(processes, containers), key=lambda d: d["name"] or "")


def describe_everything() -> list[dict[str, Any]]:
    """Every local deployment: containers on this machine, and this folder's processes."""
    containers = _describe_containers(docker_engine.list_containers([LABEL_LOCAL_ENDPOINT])) \
        if docker_engine.engine_available() else []
    rows = _merged(_process_deployments(), containers)
    return sorted(rows, key=lambda r: (r["endpoint_name"] or "", r["name"] or ""))


def is_running(described: dict[str, Any]) -> bool:
    """Its container or its supervisor process runs (whatever its server answers)."""
    where = described.get("process") or described.get("container") or {}
    return where.get("status") == "running"


def _process_deployments(endpoint_name: str | None = None) -> list[dict[str, Any]]:
    """Process mode's deployments in this folder (of one endpoint, or of all), running or not."""
    endpoints = state_root() / "endpoints"
    folders = [endpoints / endpoint_name] if endpoint_name else \
        sorted(p for p in endpoints.iterdir() if p.is_dir()) if endpoints.is_dir() else []
    state_dirs = [p for folder in folders if folder.is_dir() for p in sorted(folder.iterdir()) if p.is_dir()]
    return [d for d in (_describe_process(state_dir.parent.name, state_dir) for state_dir in state_dirs) if d]


def _merged(processes: list[dict[str, Any]], containers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    def key(described: dict[str, Any]) -> tuple[str, str]:
        return described["endpoint_name"] or "", described["name"] or ""

    live = [d for d in processes if is_running(d)]
    chosen = live + [d for d in containers if key(d) not in {key(p) for p in live}]
    return chosen + [d for d in processes if not is_running(d) and key(d) not in {key(c) for c in chosen}]


def _describe_process(endpoint_name: str, state_dir: Path) -> dict[str, Any] | None:
    """A deployment in process mode (its record in this folder), with its true state; None without a record."""
    record = process_runtime.read_record(state_dir)
    if record is None:
        return None
    alive = process_runtime.is_our_supervisor(state_dir, record)
    data = read_json(state_dir / "deployment.json") or {}
    state = lifecycle.process_state(alive, record.supervisor_pid, state_dir / "runtime", record.scoring_port,
                                    data.get("readiness_probe"))
    base = f"http://{LOOPBACK}:{record.scoring_port}"
    return {
        "name": state_dir.name, "endpoint_name": endpoint_name, "type": "local", "location": "local",
        "runtime": "process", "provisioning_state": state.provisioning_state, "state_reason": state.reason,
        "scoring_uri": f"{base}/score", "readiness_uri": f"{base}/", "liveness_uri": f"{base}/",
        "routes": inference_server_routes(record.scoring_port),
        "ports": {"scoring": record.scoring_port, "debug": record.debug_port},
        "pid": record.supervisor_pid,
        "process": {"pid": record.supervisor_pid, "status": "running" if alive else "exited"},
        "spec": data.get("spec_path"),
        "environment_variables": data.get("environment_variables", {}),
    }


def _describe_container(found: Container) -> dict[str, Any]:
    labels = found.labels
    port = int(labels.get(LABEL_SCORING_PORT) or 0)
    data = _json_label(labels.get(LABEL_DEPLOYMENT_DATA))
    routes = _json_label(labels.get(LABEL_ROUTES)) or inference_server_routes(port)
    custom = labels.get(LABEL_CUSTOM) == "1"
    state = lifecycle.container_state(found, routes, data.get("readiness_probe"), custom)
    return {
        "name": labels.get(LABEL_DEPLOYMENT),
        "endpoint_name": labels.get(LABEL_ENDPOINT),
        "type": "local",
        "location": "local",
        "runtime": "custom container" if custom else "container",
        "provisioning_state": state.provisioning_state,
        "state_reason": state.reason,
        "scoring_uri": lifecycle.route_uri(routes["scoring"]),
        "readiness_uri": lifecycle.route_uri(routes["readiness"]),
        "liveness_uri": lifecycle.route_uri(routes["liveness"]),
        "routes": routes,
        "ports": {"scoring": port, "debug": int(labels.get(LABEL_DEBUG_PORT) or 0)},
        "container": {"name": found.name, "id": found.short_id, "status": found.status,
                      "image": (found.image.tags or [found.image.short_id])[0] if found.image else None,
                      "config_hash": labels.get(LABEL_CONFIG_HASH), "workdir": labels.get(LABEL_WORKDIR)},
        "spec": labels.get(LABEL_SPEC),
        "instance_type": data.get("instance_type"),
        "instance_count": data.get("instance_count"),
        "environment_variables": data.get("environment_variables", {}),
    }


def _describe_containers(containers: list[Container]) -> list[dict[str, Any]]:
    """Each described, their servers asked at the same time (a busy one costs HEALTH_TIMEOUT_S, not each)."""
    if len(containers) < 2:
        return [_describe_container(c) for c in containers]
    with ThreadPoolExecutor(max_workers=min(8, len(containers))) as pool:
        return list(pool.map(_describe_container, containers))


def _json_label(text: str | None) -> dict[str, Any]:
    try:
        value = json.loads(text or "{}")
    except json.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def print_process_log(endpoint: str, deployment: str, tail: int | None, follow: bool) -> None:
    """The log of the deployment's process (this folder's record), whether or not it still runs."""
    record = process_record(endpoint, deployment)
    if record is not None:
        _follow_file(Path(record.log_file), tail, follow)


# --- logs of a process --------------------------------------------------------------------------------------


def _process_log(log_file: Path, since: float | None) -> str:
    """The log of the latest server start (the supervisor marks each), or all of it."""
    try:
        text = log_file.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return ""
    if since is not None:
        marker = text.rfind("localml-supervisor: server started")
        text = text[marker:] if marker >= 0 else text
    return text


def _follow_file(path: Path, tail: int | None, follow: bool) -> None:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        text = ""
    lines = text.splitlines(keepends=True)
    sys.stdout.write("".join(lines[-tail:] if tail else lines))
    if not follow:
        return
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            handle.seek(0, 2)
            while True:
                chunk = handle.read()
                if chunk:
                    sys.stdout.write(chunk)
                    sys.stdout.flush()
                else:
                    time.sleep(0.2)
    except KeyboardInterrupt:
        pass
