"""The local endpoint's own address: routes each request to a deployment, as the cloud endpoint does.

    python -m localml_tasks.router_server <routes.json> <port>

Standard library only, so it starts in a blink. It listens on 127.0.0.1 only and re-reads
routes.json (written by localml's endpoint stage) whenever it changes:

- the `azureml-model-deployment` request header picks a deployment by name;
- else the endpoint's `traffic` weights pick one at random (one running deployment and no
  traffic set: that one);
- `mirror_traffic` copies that share of traffic-routed requests to the mirror deployment in the
  background; its answer goes to mirror.log beside routes.json, never to the caller.

`/score` goes to the deployment's scoring route (a custom container's own path); other paths
pass through unchanged. Every answer carries the `azureml-model-deployment` header naming the
deployment that served it, and the deployment's own Date and Server headers (once). The router's own
error answers (no deployment by that name, none takes the traffic, one does not answer) are JSON
{"error", "fix", "answered_by": "localml router"}: the fix is the command to run. The process exits
when routes.json is removed (the endpoint's last deployment was deleted).
"""

from __future__ import annotations

import json
import os
import random
import sys
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, BinaryIO

DEPLOYMENT_HEADER = "azureml-model-deployment"
STATUS_PATH = "/-/localml-router"  # answered by the router itself (localml checks it is up)
HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailers",
              "transfer-encoding", "upgrade", "host", "content-length"}
FORWARD_TIMEOUT_S = 3600.0  # the deployment's own scoring timeout applies; a paused debugger may hold a request
ROUTER_ANSWER = "localml router"  # "answered_by" of the router's own error answers (not a deployment's)
UNKNOWN_SPEC = "doit debug spec=<its deployment YAML>"


class Routes:
    """routes.json, re-read when its modification time changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: float | None = None
        self._data: dict[str, Any] = {}
        self._lock = threading.Lock()

    def current(self) -> dict[str, Any]:
        with self._lock:
            try:
                stamp = self.path.stat().st_mtime_ns
            except FileNotFoundError:
                return self._data
            if stamp != self._stamp:
                try:
                    self._data = json.loads(self.path.read_text(encoding="utf-8"))
                    self._stamp = stamp
                except (OSError, ValueError):
                    pass  # half-written: keep the previous routes until the next request
            return self._data


def choose(routes: dict[str, Any], named: str | None, draw: float) -> tuple[str | None, str | None]:
    """(deployment, None) or (None, why not). draw: uniform in [0, 1).

    Traffic of a deployment that does not run here goes to the others in proportion (the endpoint
    stage says so): locally one often runs only some of an endpoint's deployments."""
    deployments: dict[str, Any] = routes.get("deployments", {})
    endpoint = routes.get("endpoint", "the endpoint")
    running = ", ".join(sorted(deployments)) or "none"
    if named:
        if named in deployments:
            return named, None
        return None, f"no deployment '{named}' runs on local endpoint {endpoint} (running: {running})"
    declared = {name: weight for name, weight in (routes.get("traffic") or {}).items() if weight > 0}
    if not declared and len(deployments) == 1:
        return next(iter(deployments)), None
    traffic = {name: weight for name, weight in declared.items() if name in deployments}
    if not traffic:
        wanted = ", ".join(f"{name} {weight} %" for name, weight in sorted(declared.items())) or "none"
        return None, (f"no running deployment of local endpoint {endpoint} takes traffic (traffic: {wanted}; "
                      f"running: {running}): set traffic in the endpoint YAML, or name a deployment with the "
                      f"{DEPLOYMENT_HEADER} header")
    ordered = sorted(traffic.items())
    point = draw * sum(traffic.values())
    for name, weight in ordered:
        if point < weight:
            return name, None
        point -= weight
    return ordered[-1][0], None  # where rounding leaves the point past the end


def fix_for(routes: dict[str, Any], named: str | None, silent: str | None = None) -> str:
    """What to run, for the router's own error answers: no deployment named `named` runs, none takes the
    traffic, or `silent` (chosen) does not answer. Commands come from routes.json's "starts"."""
    starts: dict[str, str] = routes.get("starts") or {}
    states = "doit endpoints shows each deployment's state and why"
    if silent:
        return f"{states}; start it again: {starts.get(silent, UNKNOWN_SPEC)}"
    if named:
        return f"start it: {starts[named]}" if named in starts else \
            f"{states}; start {named}: {UNKNOWN_SPEC} deployment={named}"
    declared = sorted(name for name, weight in (routes.get("traffic") or {}).items() if weight > 0)
    missing = [name for name in declared if name not in routes.get("deployments", {})]
    commands = [starts[name] for name in missing if name in starts]
    if commands:
        return f"start {' and '.join(missing)}: {'; '.join(commands)} (or {states})"
    return f"{states}; start one: {UNKNOWN_SPEC}"


def mirror_target(routes: dict[str, Any], draw: float) -> str | None:
    for name, percent in (routes.get("mirror_traffic") or {}).items():
        if percent > 0 and draw * 100 < percent and name in routes.get("deployments", {}):
            return name
    return None


class Handler(BaseHTTPRequestHandler):
    server: RouterServer
    protocol_version = "HTTP/1.1"
    # headers and body go out in separate writes: without this, Nagle's algorithm and the client's
    # delayed ACK add about 40 ms to every answer
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:
        pass  # one line per request is written by _log

    def do_GET(self) -> None:
        if self.path == STATUS_PATH:
            self._answer(200, {"router": "localml", "pid": os.getpid(),
                               "endpoint": self.server.routes.current().get("endpoint")})
            return
        self._route()

    def do_POST(self) -> None:
        self._route()

    def do_PUT(self) -> None:
        self._route()

    def do_OPTIONS(self) -> None:
        self._route()

    def _answer(self, status: int, body: dict[str, Any], deployment: str | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if deployment:
            self.send_header(DEPLOYMENT_HEADER, deployment)
        self.end_headers()
        self.wfile.write(data)

    def _route(self) -> None:
        started = time.perf_counter()
        body = read_body(self.rfile, self.headers.get("Content-Length"), self.headers.get("Transfer-Encoding"))
        routes = self.server.routes.current()
        named = self.headers.get(DEPLOYMENT_HEADER)
        deployment, why_not = choose(routes, named, random.random())
        if deployment is None:
            self._answer(404 if named else 503,
                         {"error": why_not, "fix": fix_for(routes, named), "answered_by": ROUTER_ANSWER})
            self.server.log(f"{self.command} {self.path} -> none ({why_not})")
            return
        target = routes["deployments"][deployment]
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
        status, answer_headers, answer = forward(target, self.command, self.path, headers, body)
        if status is None:
            self._answer(502, {"error": f"deployment '{deployment}' does not answer at {target['base']}: "
                                        f"{answer.decode(errors='replace')}",
                               "fix": fix_for(routes, named, silent=deployment), "answered_by": ROUTER_ANSWER},
                         deployment)
        else:
            # the deployment's own Date and Server, not a second pair of ours (send_response would add them)
            self.send_response_only(status)
            given = {key.lower() for key, _ in answer_headers}
            for key, value in answer_headers:
                if key.lower() not in HOP_BY_HOP:
                    self.send_header(key, value)
            if "date" not in given:
                self.send_header("Date", self.date_time_string())
            if "server" not in given:
                self.send_header("Server", self.version_string())
            self.send_header(DEPLOYMENT_HEADER, deployment)
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)
        took = (time.perf_counter() - started) * 1000
        how = "named" if named else "traffic"
        self.server.log(f"{self.command} {self.path} -> {deployment} ({how}) {status or 502} {took:.0f} ms")
        mirror = None if named or self.path.split("?")[0] != "/score" else mirror_target(routes, random.random())
        if mirror and mirror != deployment:
            threading.Thread(target=self.server.mirror, args=(routes, mirror, self.command, self.path, headers, body),
                             daemon=True).start()


def read_body(stream: BinaryIO, length: str | None, transfer_encoding: str | None) -> bytes:
    """The request's body as sent: by its Content-Length, or chunk by chunk (curl -T, streaming clients)."""
    if "chunked" in (transfer_encoding or "").lower():
        return _read_chunks(stream)
    size = int(length or 0)
    return stream.read(size) if size else b""


def _read_chunks(stream: BinaryIO) -> bytes:
    chunks = []
    while True:
        size = int(stream.readline().split(b";")[0].strip() or b"0", 16)
        if size == 0:
            while stream.readline().strip():
                pass  # trailer fields, up to the blank line that ends the request
            return b"".join(chunks)
        chunks.append(stream.read(size))
        stream.readline()  # the CRLF after the chunk


class _AsSent(urllib.request.HTTPHandler):
    """urllib gives a body without a Content-Type "application/x-www-form-urlencoded": forward none, as sent."""

    def http_request(self, request: urllib.request.Request) -> urllib.request.Request:
        had = request.has_header("Content-type")
        request = super().http_request(request)
        if not had:
            request.unredirected_hdrs.pop("Content-type", None)
        return request


_OPENER = urllib.request.build_opener(_AsSent)


def forward(target: dict[str, Any], method: str, path: str, headers: dict[str, str],
            body: bytes) -> tuple[int | None, list[tuple[str, str]], bytes]:
    """(status, headers, body); status None when the deployment did not answer (body: why)."""
    plain_path, _, query = path.partition("?")
    url = target["scoring"] if plain_path == "/score" else target["base"] + plain_path
    if query:
        url += "?" + query
    request = urllib.request.Request(url, data=body if method != "GET" else None, headers=headers, method=method)
    try:
        with _OPENER.open(request, timeout=FORWARD_TIMEOUT_S) as answer:
            return answer.status, list(answer.headers.items()), answer.read()
    except urllib.error.HTTPError as error:
        return error.code, list(error.headers.items()), error.read()
    except (urllib.error.URLError, OSError) as error:
        return None, [], str(getattr(error, "reason", error)).encode()


class RouterServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, port: int, routes_file: Path) -> None:
        super().__init__(("127.0.0.1", port), Handler)
        self.routes = Routes(routes_file)
        self.routes_file = routes_file
        self.mirror_log = routes_file.with_name("mirror.log")
        self._log_lock = threading.Lock()

    def log(self, line: str) -> None:
        with self._log_lock:
            print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line}", flush=True)

    def mirror(self, routes: dict[str, Any], deployment: str, method: str, path: str, headers: dict[str, str],
               body: bytes) -> None:
        started = time.perf_counter()
        status, _, answer = forward(routes["deployments"][deployment], method, path, headers, body)
        took = (time.perf_counter() - started) * 1000
        text = answer.decode(errors="replace").replace("\n", " ")[:500]
        line = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {deployment} {status or 'no answer'} {took:.0f} ms {text}\n"
        with self._log_lock, open(self.mirror_log, "a", encoding="utf-8") as handle:
            handle.write(line)

    def watch_routes_file(self) -> None:
        """The endpoint's last deployment was deleted (routes.json removed): stop."""
        while True:
            time.sleep(1)
            if not self.routes_file.exists():
                self.log("routes.json removed: the endpoint has no deployments left; stopping")
                self.shutdown()
                return


def main() -> None:
    routes_file, port = Path(sys.argv[1]).resolve(), int(sys.argv[2])
    server = RouterServer(port, routes_file)
    server.log(f"routing {routes_file} on 127.0.0.1:{port}")
    threading.Thread(target=server.watch_routes_file, daemon=True).start()
    server.serve_forever()


if __name__ == "__main__":
    main()
