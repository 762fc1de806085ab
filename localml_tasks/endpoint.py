"""Stage 9 — the endpoint: one address for all of an endpoint's deployments, routed by traffic.

Each deployment is its own container (or process) with its own port. The endpoint's address is
served by localml's router (router_server.py), a small background process on 127.0.0.1 that
reads routes.json: which deployments run where, and the endpoint YAML's traffic and
mirror_traffic. This module renders that file (pure), and starts, finds and stops the router.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from . import ownership, ports, runtime
from .contract import FIRST_ENDPOINT_PORT, LOOPBACK
from .errors import LocalmlError
from .process_runtime import wait_until_gone
from .router_server import STATUS_PATH
from .state import STATE_DIR_NAME, read_json, state_root, write_json_if_changed
from .target import debug_command

ROUTES_FILE = "routes.json"
ROUTER_FILE = "router.json"
ROUTER_LOG = "router.log"
MIRROR_LOG = "mirror.log"


def endpoint_dir(endpoint: str, root: Path | None = None) -> Path:
    """root: another project folder (its router, for takeover=1); else this one."""
    return (root / STATE_DIR_NAME if root else state_root()) / "endpoints" / endpoint


def router_folders(endpoint: str) -> list[Path]:
    """The project folders whose router of this endpoint runs now, found by their command lines (the routes
    file each was given: <folder>/.localml/endpoints/<endpoint>/routes.json). Empty without /proc."""
    tail = ("", STATE_DIR_NAME, "endpoints", endpoint, ROUTES_FILE)
    folders = []
    for entry in ownership.PROC.iterdir() if ownership.has_proc() else []:
        if not entry.name.isdigit():
            continue
        seen = ownership.look(int(entry.name))
        if seen is None or "localml_tasks.router_server" not in seen.argv:
            continue
        for argument in seen.argv:
            if argument.endswith("/".join(tail)):
                folder = Path(argument[: -len("/".join(tail))] or "/")
                if folder not in folders:
                    folders.append(folder)
    return folders


@dataclass
class Router:
    pid: int
    port: int

    @property
    def scoring_uri(self) -> str:
        return f"http://{LOOPBACK}:{self.port}/score"

    @property
    def base_uri(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"


def render_routes(endpoint: str, endpoint_data: dict[str, Any],
                  deployments: dict[str, dict[str, Any]], starts: dict[str, str] | None = None) -> dict[str, Any]:
    """deployments: name -> {path, port} of its scoring route on this machine. starts: name -> the command
    that starts it (`doit debug spec=...`), for every deployment known, running or not: the router's own
    error answers say what to run."""
    return {
        "endpoint": endpoint,
        "traffic": endpoint_data.get("traffic") or {},
        "mirror_traffic": endpoint_data.get("mirror_traffic") or {},
        "deployments": {
            name: {"base": f"http://{LOOPBACK}:{route['port']}",
                   "scoring": f"http://{LOOPBACK}:{route['port']}{route['path']}"}
            for name, route in sorted(deployments.items())
        },
        "starts": dict(sorted((starts or {}).items())),
    }


def routes_now(endpoint: str, endpoint_data: dict[str, Any]) -> dict[str, Any]:
    """The endpoint's routes to every deployment of it that runs now (runtime.py says which), with endpoint_data's
    traffic and the command that starts each deployment known here."""
    described = runtime.describe_endpoint(endpoint)
    running = {d["name"]: d["routes"]["scoring"] for d in described if runtime.is_running(d)}
    starts = {d["name"]: debug_command(d["spec"], endpoint, d["name"]) for d in described if d.get("spec")}
    return render_routes(endpoint, endpoint_data, running, starts=starts)


def describe_traffic(routes: dict[str, Any]) -> str:
    """'blue 90 %, green 10 % (mirror: green 10 %)', or how requests are routed without traffic."""
    traffic = {name: weight for name, weight in routes["traffic"].items() if weight}
    if traffic:
        text = ", ".join(f"{name} {weight} %" for name, weight in sorted(traffic.items()))
    elif len(routes["deployments"]) == 1:
        text = f"all to {next(iter(routes['deployments']))} (no traffic set, one deployment)"
    else:
        text = "no traffic set: name a deployment (deployment=<name>)"
    mirror = {name: weight for name, weight in routes["mirror_traffic"].items() if weight}
    if mirror:
        text += " (mirror: " + ", ".join(f"{name} {weight} %" for name, weight in mirror.items()) + ")"
    missing = sorted(set(traffic) - set(routes["deployments"]))
    receiving = sorted(set(traffic) & set(routes["deployments"]))
    if missing and receiving:
        text += (f"; {' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not running here: "
                 f"{'its' if len(missing) == 1 else 'their'} share goes to {' and '.join(receiving)}")
    elif missing:
        text += "; none of them runs here: name a deployment (deployment=<name>)"
    return text


def write_routes(endpoint: str, routes: dict[str, Any]) -> bool:
    return write_json_if_changed(endpoint_dir(endpoint) / ROUTES_FILE, routes)


def read_routes(endpoint: str) -> dict[str, Any] | None:
    return read_json(endpoint_dir(endpoint) / ROUTES_FILE)


def _answers(port: int) -> bool:
    try:
        answer = requests.get(f"http://{LOOPBACK}:{port}{STATUS_PATH}", timeout=1)
        return answer.status_code == 200 and answer.json().get("router") == "localml"
    except (requests.RequestException, ValueError):
        return False


def router_identity(endpoint: str, record: dict[str, Any], root: Path | None = None) -> ownership.Identity:
    """Our router: router_server given this endpoint's routes file, started when router.json says."""
    return ownership.Identity(argv=("localml_tasks.router_server", str(endpoint_dir(endpoint, root) / ROUTES_FILE)),
                              start_ticks=record.get("start_ticks"), boot_id=record.get("boot_id"))


def _router_verdict(endpoint: str, record: dict[str, Any] | None, root: Path | None = None) -> tuple[int, str]:
    """(its pid, ownership verdict) of the router a router.json names."""
    try:
        pid = int((record or {})["pid"])
    except (KeyError, TypeError, ValueError):
        return 0, ownership.GONE
    return pid, ownership.verdict(pid, router_identity(endpoint, record or {}, root))


def find_router(endpoint: str) -> Router | None:
    """The endpoint's router, if it runs (its pid is our router's and it answers on its port)."""
    record = read_json(endpoint_dir(endpoint) / ROUTER_FILE)
    if _router_verdict(endpoint, record)[1] not in (ownership.OURS, ownership.UNKNOWN):
        return None
    router = Router(int(record["pid"]), int(record["port"]))
    return router if _answers(router.port) else None


def ensure_router(endpoint: str, taken_ports: set[int]) -> tuple[Router, bool]:
    """(router, whether it was started now). Keeps its port across restarts when it is free."""
    running = find_router(endpoint)
    if running is not None:
        return running, False
    folder = endpoint_dir(endpoint)
    previous = read_json(folder / ROUTER_FILE) or {}
    port = ports.pick(int(previous.get("port", FIRST_ENDPOINT_PORT)), taken_ports)
    with open(folder / ROUTER_LOG, "a", encoding="utf-8") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "localml_tasks.router_server", str(folder / ROUTES_FILE), str(port)],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
        )
    try:
        write_json_if_changed(folder / ROUTER_FILE, {"pid": process.pid, "port": port, **ownership.stamp(process.pid)})
    except LocalmlError:  # a full disk: a router nobody has a record of must not stay behind
        process.terminate()
        process.wait(timeout=10)
        raise
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if _answers(port):
            return Router(process.pid, port), True
        if process.poll() is not None:
            break
        time.sleep(0.05)
    tail = (folder / ROUTER_LOG).read_text(encoding="utf-8", errors="replace").splitlines()[-5:]
    raise LocalmlError.one(f"the endpoint's router did not start on {LOOPBACK}:{port}: " + " | ".join(tail),
                           fix=f"see {folder / ROUTER_LOG}")


def stop_router(endpoint: str, root: Path | None = None) -> tuple[int, str] | None:
    """Remove the routes (the router stops by itself when they go) and end it when it is ours: (its pid,
    ownership.OURS), or (the pid router.json named, FOREIGN or UNKNOWN) when that is a stale file and
    nothing was signalled; None when no router ran. root: another project folder's router (takeover=1)."""
    folder = endpoint_dir(endpoint, root)
    (folder / ROUTES_FILE).unlink(missing_ok=True)
    record = read_json(folder / ROUTER_FILE)
    (folder / ROUTER_FILE).unlink(missing_ok=True)
    pid, found = _router_verdict(endpoint, record, root)
    if found != ownership.OURS:
        return None if found == ownership.GONE else (pid, found)
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return None
    wait_until_gone([pid], timeout_s=5)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)  # when this very process started it
    return pid, found


def mirror_log_tail(endpoint: str, lines: int = 20) -> list[str]:
    try:
        text = (endpoint_dir(endpoint) / MIRROR_LOG).read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return []
    return text.splitlines()[-lines:]
