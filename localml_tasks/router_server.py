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

Clients cannot hold it up or send it elsewhere (in_container/http_serving.py's StrictRequestHandler, whose
rules the deployment's debug server keeps too): every connection has a thread of its own and is kept alive until idle
for LOCALML_IDLE_TIMEOUT_S (30); a request must arrive within LOCALML_REQUEST_TIMEOUT_S (30). A request whose
target is not a path (`GET 9/x`, `GET http://127.0.0.1:1/x`, `CONNECT host:port`), whose body has no one
size (`Content-Length: abc`, -5, two that disagree, with chunked) or whose headers pass 64 KiB is refused
at once, and never forwarded. GET, HEAD, POST, PUT, PATCH, DELETE and OPTIONS go to the deployment, always
to 127.0.0.1 at the deployment's port with the request's own path, on connections kept alive between
requests (Upstreams).
"""

from __future__ import annotations

import http.client
import json
import os
import random
import select
import sys
import threading
import time
import urllib.parse
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any, BinaryIO

from .in_container.http_serving import (
    LISTEN_BACKLOG,
    ORIGIN_FORM,
    BadRequest,
    StrictRequestHandler,
    read_request_body,
    timeouts_from_environment,
)

DEPLOYMENT_HEADER = "azureml-model-deployment"
STATUS_PATH = "/-/localml-router"  # answered by the router itself (localml checks it is up)
# request headers not forwarded: the router's connection to the deployment has its own
HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailers",
              "transfer-encoding", "upgrade", "host", "content-length", "expect", "proxy-connection"}
PASSED_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
LOOPBACK = "127.0.0.1"  # the only host the router forwards to (deployments publish their ports there)
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
                    data = json.loads(self.path.read_text(encoding="utf-8"))
                    if not isinstance(data, dict):
                        raise ValueError("routes.json is not a JSON object")
                    self._data = data
                    self._stamp = stamp
                except (OSError, ValueError, RecursionError):
                    pass  # half-written or corrupt: keep the previous routes until the next request
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


class Handler(StrictRequestHandler):
    """One client connection (StrictRequestHandler reads each request whole and refuses what cannot be
    forwarded safely); respond() routes the request to a deployment and passes its answer back."""

    server: RouterServer
    methods = PASSED_METHODS

    def log_message(self, format: str, *args: Any) -> None:
        pass  # one line per request is written by _route, and one per refusal by send_error

    def request_target(self, target: str) -> str:
        """The request's path: origin form (/path?query), or absolute form naming this router itself
        (http://127.0.0.1:<its port>/path); anything naming another host or port is refused, never followed."""
        if target.lower().startswith(("http://", "https://")):
            return self._own_absolute_target(target)
        if ":" in target.split("/", 1)[0]:  # authority form (CONNECT host:port)
            raise BadRequest(400, f"the request target {target[:100]!r} names a host and port (authority form): "
                                  "the router only passes requests to the endpoint's deployments",
                             "send the path alone to the endpoint's address, e.g. POST /score HTTP/1.1")
        if not ORIGIN_FORM.match(target):
            raise BadRequest(400, f"the request target {target[:100]!r} is not a path (it must start with /, "
                                  "in printable ASCII)", "send the path alone, e.g. POST /score HTTP/1.1")
        return target

    def _own_absolute_target(self, target: str) -> str:
        port = self.server.server_address[1]
        try:
            parts = urllib.parse.urlsplit(target)
            same = (parts.scheme.lower() == "http" and parts.hostname in (LOOPBACK, "localhost")
                    and (parts.port or 80) == port and not parts.username and not parts.password)
        except ValueError:
            same = False
        if not same:
            raise BadRequest(400, f"the request target {target[:100]!r} names another host or port (absolute "
                                  f"form): the router only passes requests to the endpoint's deployments",
                             f"send the path alone to http://{LOOPBACK}:{port}, e.g. POST /score HTTP/1.1")
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        if not ORIGIN_FORM.match(path):
            raise BadRequest(400, f"the request target's path {path[:100]!r} is not printable ASCII",
                             "percent-encode the path")
        return path

    def error_body(self, code: int, message: str, fix: str | None) -> dict[str, Any]:
        return {"error": message, "fix": fix or "send an HTTP/1.1 request to the endpoint's scoring URI, "
                                                "e.g. doit invoke request=<file.json>",
                "answered_by": ROUTER_ANSWER}

    def send_error(self, code: int, message: str | None = None, explain: str | None = None,
                   fix: str | None = None) -> None:
        super().send_error(code, message, explain, fix)
        self.server.log(f"{self.requestline[:200]!r} -> refused: {code} {message or ''}".rstrip())

    def respond(self) -> None:
        if self.command == "GET" and self.path == STATUS_PATH:
            self._answer(200, {"router": "localml", "pid": os.getpid(),
                               "endpoint": self.server.routes.current().get("endpoint")})
            return
        self._route()

    def _answer(self, status: int, body: dict[str, Any], deployment: str | None = None) -> None:
        headers = [("Content-Type", "application/json")] + ([(DEPLOYMENT_HEADER, deployment)] if deployment else [])
        self.send_answer(status, headers, json.dumps(body).encode())

    def _route(self) -> None:
        started = time.perf_counter()
        body = self.body
        routes = self.server.routes.current()
        named = self.headers.get(DEPLOYMENT_HEADER)
        deployment, why_not = choose(routes, named, random.random())
        if deployment is None:
            self._answer(404 if named else 503,
                         {"error": why_not, "fix": fix_for(routes, named), "answered_by": ROUTER_ANSWER})
            self.server.log(f"{self.command} {self.path} -> none ({why_not})")
            return
        target = routes["deployments"][deployment]
        headers = forwarded_headers(self.headers.items())
        status, answer_headers, answer = forward(target, self.command, self.path, headers, body)
        if status is None:
            self._answer(502, {"error": f"deployment '{deployment}' does not answer at {target.get('base')}: "
                                        f"{answer.decode(errors='replace')}",
                               "fix": fix_for(routes, named, silent=deployment), "answered_by": ROUTER_ANSWER},
                         deployment)
        else:
            # the deployment's own Date and Server, not a second pair of ours
            self.send_answer(status, [*answer_headers, (DEPLOYMENT_HEADER, deployment)], answer)
        took = (time.perf_counter() - started) * 1000
        how = "named" if named else "traffic"
        self.server.log(f"{self.command} {self.path} -> {deployment} ({how}) {status or 502} {took:.0f} ms")
        mirror = None if named or self.path.split("?")[0] != "/score" else mirror_target(routes, random.random())
        if mirror and mirror != deployment:
            threading.Thread(target=self.server.mirror, args=(routes, mirror, self.command, self.path, headers, body),
                             daemon=True).start()


def forwarded_headers(items: Any) -> dict[str, str]:
    """The request's headers as the deployment gets them: without the hop-by-hop ones (and those the
    request's Connection header names), which describe the client's connection to the router."""
    items = list(items)
    listed = {name.strip().lower() for key, value in items if key.lower() == "connection" for name in value.split(",")}
    return {key: value for key, value in items if key.lower() not in HOP_BY_HOP and key.lower() not in listed}


def read_body(stream: BinaryIO, length: str | None, transfer_encoding: str | None) -> bytes:
    """The request's body as sent: by its Content-Length, or chunk by chunk (curl -T, streaming clients).
    Raises BadRequest for a length that is not a number of bytes, or a bad chunk."""
    return read_request_body(stream, [] if length is None else [length],
                             [transfer_encoding] if transfer_encoding else [])


def deployment_address(target: dict[str, Any]) -> tuple[int, str]:
    """(port, scoring path) of a deployment in routes.json. Only its port is taken from there: requests go
    to LOOPBACK whatever host its URLs name."""
    port = urllib.parse.urlsplit(target["base"]).port  # ValueError when it is not a port
    if port is None:
        raise ValueError(f"no port in {target['base']!r}")
    scoring = urllib.parse.urlsplit(target.get("scoring") or "").path
    return port, scoring if ORIGIN_FORM.match(scoring) else "/score"


def forward(target: dict[str, Any], method: str, path: str, headers: dict[str, str],
            body: bytes) -> tuple[int | None, list[tuple[str, str]], bytes]:
    """(status, headers, body); status None when the deployment did not answer (body: why). The request goes
    to 127.0.0.1 at the deployment's port, with the path given (/score: the deployment's scoring route)."""
    plain_path, _, query = path.partition("?")
    try:
        port, scoring = deployment_address(target)
    except (KeyError, TypeError, ValueError) as error:
        return None, [], f"routes.json gives no port for it ({error})".encode()
    upstream = (scoring if plain_path == "/score" else plain_path) + (f"?{query}" if query else "")
    if not ORIGIN_FORM.match(upstream):
        return None, [], f"{upstream[:100]!r} is not a path".encode()
    while True:
        connection, reused = UPSTREAMS.take(port)
        try:
            # no body: none sent (and Content-Length: 0 for the methods that expect one), as the client sent it
            connection.request(method, upstream, body=body or None, headers=headers)
            answer = connection.getresponse()
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as error:
            connection.close()
            if reused:
                continue  # the deployment had closed that kept-alive connection without a word: a new one
            return None, [], (str(error) or type(error).__name__).encode()
        except (OSError, http.client.HTTPException) as error:
            connection.close()
            return None, [], (str(error) or type(error).__name__).encode()
        try:
            data = answer.read()
        except (OSError, http.client.HTTPException) as error:
            connection.close()
            return None, [], f"its answer broke off ({error or type(error).__name__})".encode()
        if answer.will_close:
            connection.close()
        else:
            UPSTREAMS.give_back(port, connection)
        return answer.status, answer.getheaders(), data


class Upstreams:
    """Kept-alive connections to the deployments, by port. A request reuses one the deployment left open
    rather than opening a connection (and, in the debug server, starting a thread) of its own: under debugpy
    a new connection costs more than the request. One idle longer than IDLE_S, or that the deployment has
    closed, is not reused."""

    IDLE_S = 10.0  # below the debug server's idle timeout (LOCALML_IDLE_TIMEOUT_S, 30 s by default)
    MAX_IDLE = 64  # per port

    def __init__(self) -> None:
        self._idle: dict[int, list[tuple[float, http.client.HTTPConnection]]] = {}
        self._lock = threading.Lock()

    def take(self, port: int) -> tuple[http.client.HTTPConnection, bool]:
        """(a connection to LOOPBACK:port, whether it was kept alive from an earlier request)."""
        with self._lock:
            idle = self._idle.get(port) or []
            while idle:
                since, connection = idle.pop()
                if time.monotonic() - since < self.IDLE_S and _still_open(connection):
                    return connection, True
                connection.close()
        return http.client.HTTPConnection(LOOPBACK, port, timeout=FORWARD_TIMEOUT_S), False

    def give_back(self, port: int, connection: http.client.HTTPConnection) -> None:
        now = time.monotonic()
        with self._lock:
            idle = self._idle.setdefault(port, [])
            while idle and now - idle[0][0] >= self.IDLE_S:  # the oldest first: they are at the start
                idle.pop(0)[1].close()
            if len(idle) < self.MAX_IDLE:
                idle.append((now, connection))
                return
        connection.close()


def _still_open(connection: http.client.HTTPConnection) -> bool:
    """Whether an idle kept-alive connection can carry a request: nothing to read on it (a closed one reads
    as its end; a deployment sends nothing unasked)."""
    sock = connection.sock
    if sock is None:
        return False
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return False
    return not readable


UPSTREAMS = Upstreams()


class RouterServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = LISTEN_BACKLOG

    def __init__(self, port: int, routes_file: Path) -> None:
        super().__init__((LOOPBACK, port), Handler)
        self.idle_timeout, self.request_timeout = timeouts_from_environment()
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
    server.log(f"routing {routes_file} on {LOOPBACK}:{port} (connections idle {server.idle_timeout:g} s are closed, "
               f"requests must arrive within {server.request_timeout:g} s)")
    threading.Thread(target=server.watch_routes_file, daemon=True).start()
    server.serve_forever()


if __name__ == "__main__":
    main()
