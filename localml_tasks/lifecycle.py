"""The true state of a deployment and its endpoint, as show and endpoints report it (Azure's provisioning states).

Its state is what answers: a quick GET of the server's liveness route, the supervisor's status file and the last
load of the scoring script (server.read_status, server.read_load), never only "the container exists". What runs,
and its labels and records, come from runtime.py.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import requests

from . import server
from .contract import LOOPBACK, RUNTIME_DIR
from .health import FAILED_HEADER
from .spec import Probe

if TYPE_CHECKING:
    from docker.models.containers import Container

HEALTH_TIMEOUT_S = 1.0  # show and endpoints ask each server once, briefly


@dataclass(frozen=True)
class Answer:
    """What one quick GET of a server's liveness route got."""

    kind: str  # ok | script-failed (the debug server's 503) | status (another answer) | timeout | none
    status: int | None = None


def ask(url: str, timeout_s: float = HEALTH_TIMEOUT_S) -> Answer:
    try:
        answer = requests.get(url, timeout=timeout_s)
    except requests.ConnectTimeout:
        return Answer("none")
    except requests.Timeout:
        return Answer("timeout")  # it took the connection but did not answer: busy, not down
    except requests.RequestException:
        return Answer("none")
    if 200 <= answer.status_code < 300:
        return Answer("ok", answer.status_code)
    if answer.status_code == 503 and answer.headers.get(FAILED_HEADER) == "failed":
        return Answer("script-failed", 503)
    return Answer("status", answer.status_code)


@dataclass(frozen=True)
class State:
    """provisioning_state as Azure names them, and why (None: nothing to say)."""

    provisioning_state: str
    reason: str | None = None


def readiness_deadline(probe: dict[str, Any] | None) -> float:
    """How long a start may take before Azure gives up: the readiness probe's limits (its defaults)."""
    defaults = Probe()
    probe = probe if isinstance(probe, dict) else {}

    def number(key: str) -> float:
        value = probe.get(key, getattr(defaults, key))
        return float(value) if isinstance(value, int | float) else float(getattr(defaults, key))

    return number("initial_delay") + number("period") * number("failure_threshold")


def load_reason(load: server.LoadOutcome | None) -> str:
    """'init() raised ValueError: ...' for a scoring script that failed to load, and where."""
    if load is None:
        return "the scoring script failed to load"
    message = load.message or "no message"
    if load.function in ("init", "run"):
        text = f"{load.function}() raised {message}"
    elif load.function:
        text = f"the scoring script failed to load in {load.function}(): {message}"
    else:
        text = f"the scoring script failed to load: {message}"
    return text + (f" ({load.file}:{load.line})" if load.file and load.line else "")


def server_state(status: server.ServerStatus | None, load: server.LoadOutcome | None, answer: Answer,
                 address: str, *, now: float, deadline_s: float) -> State:
    """The state of a server run by our supervisor (pure). status: the supervisor's report, None when it has
    not reported yet; load: the last load of the scoring script; answer: its liveness route's, just now."""
    if answer.kind == "ok":
        return State("Succeeded")
    current = load if load is not None and status is not None and load.pid == status.pid else None
    if answer.kind == "script-failed":
        return State("Failed", load_reason(current or load))
    if status is None:
        return State("Updating", "starting: localml's supervisor has not reported yet")
    if status.state == "exited":
        failed = f": {load_reason(current)}" if current is not None and current.outcome == "failed" else ""
        return State("Failed", f"the server exited (code {status.exit_code}){failed}; doit debug starts it again")
    if answer.kind == "status":
        return State("Failed", f"the server answers {answer.status} on its liveness route ({address})")
    if current is None or current.outcome == "restart":
        # its first load is not done: init() runs, or the server waits for a debugger
        if status.command.get("env", {}).get("LOCALML_DEBUG_WAIT") == "1":
            return State("Updating", "waiting for a debugger to attach before init() runs (wait=1)")
        took = max(now - status.started_at, 0.0)
        if took <= deadline_s:
            why = f" ({status.why})" if status.why and status.why != "started" else ""
            return State("Updating", f"starting: no answer on {address} yet, {took:.0f} s after the server "
                                     f"started{why}")
        return State("Failed", f"not ready {took:.0f} s after the server started (the readiness probe allows "
                               f"{deadline_s:.0f} s): no answer on {address}")
    if current.outcome == "failed":
        return State("Failed", load_reason(current))
    if answer.kind == "timeout":
        return State("Succeeded", f"busy: {address} took the request but did not answer within "
                                  f"{HEALTH_TIMEOUT_S:.0f} s (a request stopped at a breakpoint, or a reload)")
    return State("Failed", f"the server is not answering on {address}")


def container_state(container: Container, routes: dict[str, Any], probe: dict[str, Any] | None,
                    custom: bool) -> State:
    """The state of a deployment's container: Docker's for a container that does not run, else what answers."""
    status = container.status
    if status == "created":
        return State("Creating", "the container is created but not started")
    if status == "restarting":
        return State("Updating", "the container is restarting")
    if status != "running":
        code = ((container.attrs or {}).get("State") or {}).get("ExitCode")
        how = f"it exited (code {code})" if status == "exited" else f"it is {status}"
        return State("Failed", f"the container is not running: {how}")
    liveness = routes["liveness"]
    address = f"{LOOPBACK}:{liveness['port']}"
    answer = ask(route_uri(liveness))
    deadline_s = readiness_deadline(probe)
    if custom:  # no supervisor of ours: only its own answer, and how long ago the container started
        if answer.kind == "ok":
            return State("Succeeded")
        took = time.time() - _started_at(container)
        said = f"it answers {answer.status}" if answer.kind == "status" else "no answer"
        if took <= deadline_s:
            return State("Updating", f"starting: {said} on {address} yet, {took:.0f} s after the container started")
        return State("Failed", f"the server is not answering on {address}" if answer.kind == "none"
                     else f"{said} on {address}")
    runtime_dir = _runtime_dir(container)
    reported = server.read_status(runtime_dir) if runtime_dir else None
    if reported is not None and not container.id.startswith(reported.container):
        reported = None  # a previous container's report
    load = server.read_load(runtime_dir) if runtime_dir else None
    return server_state(reported, load, answer, address, now=time.time(), deadline_s=deadline_s)


def process_state(alive: bool, supervisor_pid: int, runtime_dir: Path, port: int,
                  probe: dict[str, Any] | None) -> State:
    """The state of a deployment in process mode: its supervisor process, its reports and its answer."""
    if not alive:
        return State("Failed", f"the server process is not running (its supervisor, pid {supervisor_pid}, "
                               "has exited)")
    reported = server.read_status(runtime_dir)
    if reported is not None and reported.supervisor_pid != supervisor_pid:
        reported = None
    return server_state(reported, server.read_load(runtime_dir), ask(f"http://{LOOPBACK}:{port}/"),
                        f"{LOOPBACK}:{port}", now=time.time(), deadline_s=readiness_deadline(probe))


def _runtime_dir(container: Container) -> Path | None:
    """The host folder the supervisor reports in (mounted at RUNTIME_DIR)."""
    for mount in (container.attrs or {}).get("Mounts") or []:
        if mount.get("Destination") == RUNTIME_DIR and mount.get("Source"):
            return Path(mount["Source"])
    return None


def _started_at(container: Container) -> float:
    text = ((container.attrs or {}).get("State") or {}).get("StartedAt") or ""
    # Docker gives nanoseconds: Python reads up to microseconds
    text = re.sub(r"(\.\d{6})\d*", r"\1", text).replace("Z", "+00:00")
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return 0.0


def route_uri(route: dict[str, Any]) -> str:
    return f"http://{LOOPBACK}:{route['port']}{route['path']}"


def render_endpoint(endpoint: str, endpoint_data: dict[str, Any], deployments: list[dict[str, Any]],
                    base_uri: str | None) -> dict[str, Any]:
    """Azure-style JSON for the endpoint (pure). base_uri: the endpoint's router, if it runs."""
    states = {d["provisioning_state"] for d in deployments}
    traffic = endpoint_data.get("traffic") or (
        {deployments[0]["name"]: 100} if len(deployments) == 1 else {d["name"]: 0 for d in deployments})
    mirror = endpoint_data.get("mirror_traffic") or {}
    for described in deployments:
        described["traffic"] = traffic.get(described["name"], 0)
        described["mirror_traffic"] = mirror.get(described["name"], 0)
    return {
        "name": endpoint,
        "location": "local",
        "kind": "local",
        "auth_mode": endpoint_data.get("auth_mode", "key"),
        "description": endpoint_data.get("description"),
        "tags": endpoint_data.get("tags", {}),
        "traffic": traffic,
        "mirror_traffic": mirror,
        "provisioning_state": _endpoint_state(states) if deployments else "Failed",
        "state_reason": endpoint_reason(deployments),
        "scoring_uri": f"{base_uri}/score" if base_uri else None,
        # routed like /score (by traffic, or by the azureml-model-deployment header)
        "swagger_uri": f"{base_uri}/swagger.json" if base_uri else None,
        "openapi_uri": f"{base_uri}/swagger.json?version=3" if base_uri else None,
        "deployments": deployments,
    }


def offered_swagger(described: dict[str, Any]) -> dict[str, Any]:
    """swagger_uri / openapi_uri as the deployment's server offers them (None where it answers no)."""
    base = f"http://{LOOPBACK}:{described['routes']['scoring']['port']}/swagger.json"
    offered: dict[str, Any] = {"swagger_uri": None, "openapi_uri": None}
    if described["provisioning_state"] != "Succeeded" or described.get("state_reason"):
        return offered  # down, failed or busy: asking would only wait
    for key, uri in (("swagger_uri", base), ("openapi_uri", base + "?version=3")):
        try:
            offered[key] = uri if requests.get(uri, timeout=2).status_code == 200 else None
        except requests.RequestException:
            offered[key] = None
    return offered


def _endpoint_state(deployment_states: set[str]) -> str:
    if deployment_states == {"Succeeded"}:
        return "Succeeded"
    return "Failed" if "Failed" in deployment_states else "Updating"


def endpoint_reason(deployments: list[dict[str, Any]]) -> str | None:
    """Why the endpoint is not Succeeded: its deployments that are not, each with its reason."""
    if not deployments:
        return "no deployment of it runs here"
    held = [f"deployment {d['name']} is {d['provisioning_state']}" + (f": {d['state_reason']}"
                                                                      if d.get("state_reason") else "")
            for d in deployments if d["provisioning_state"] != "Succeeded"]
    return "; ".join(held) or None
