"""Servers that survive their clients: the endpoint's router and the debug server, with real sockets.

One real endpoint for the module, in process mode (no Docker): the sample served by the debug server under
debugpy on 127.0.0.1, behind the endpoint's real router process. Both get short timeouts from the
environment (LOCALML_IDLE_TIMEOUT_S, LOCALML_REQUEST_TIMEOUT_S) so that closing a connection takes seconds.
Every case runs against the router, and where it means something, straight against the deployment.
"""

from __future__ import annotations

import contextlib
import http.client
import io
import json
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import REPO, Project, sample_copy

from localml_tasks import router_server
from localml_tasks.in_container import debug_server, http_serving
from localml_tasks.in_container.http_serving import BadRequest, read_request_body
from localml_tasks.router_server import DEPLOYMENT_HEADER, ROUTER_ANSWER, forward, read_body

NO_DOCKER = {"DOCKER_HOST": "unix:///nonexistent/docker.sock"}
IDLE_TIMEOUT_S = 2.0
REQUEST_TIMEOUT_S = 3.0
TIMEOUTS = {"LOCALML_IDLE_TIMEOUT_S": str(IDLE_TIMEOUT_S), "LOCALML_REQUEST_TIMEOUT_S": str(REQUEST_TIMEOUT_S)}
REQUEST = (REPO / "specs" / "sample-request.json").read_bytes()


# --- pure: what the router and the debug server accept ---------------------------------------------------


@pytest.mark.parametrize(("lengths", "encodings", "status"), [
    (["abc"], None, 400), (["-5"], None, 400), (["+5"], None, 400), (["5", "6"], None, 400), (["5, 6"], None, 400),
    ([" "], None, 400), (["9" * 30], None, 413), (["5"], ["chunked"], 400), (None, ["gzip"], 400),
    (None, ["gzip, chunked"], 400),
])
def test_a_body_of_unknown_length_is_refused_before_anything_is_read(lengths, encodings, status):
    stream = io.BytesIO(b"hello, world")
    with pytest.raises(BadRequest) as refused:
        read_request_body(stream, lengths or [], encodings or [])
    assert refused.value.status == status and stream.tell() == 0


def test_equal_repeated_lengths_are_one_length_and_chunks_are_read_strictly():
    assert read_request_body(io.BytesIO(b"hello, world"), ["5", "5"], []) == b"hello"
    assert read_request_body(io.BytesIO(b"hello, world"), ["5,5"], []) == b"hello"
    assert read_request_body(io.BytesIO(b"5\r\nhello\r\n0\r\n\r\n"), [], ["Chunked"]) == b"hello"
    for bad in (b"x\r\nhello\r\n0\r\n\r\n", b"5\r\nhello, world\r\n0\r\n\r\n", b"-5\r\nhello\r\n0\r\n\r\n"):
        with pytest.raises(BadRequest):
            read_request_body(io.BytesIO(bad), [], ["chunked"])
    with pytest.raises(BadRequest):
        read_body(io.BytesIO(b"12345"), "abc", None)  # the router's own reader, as before


def test_forward_goes_to_the_deployments_loopback_port_whatever_the_path_says():
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    seen: list[bytes] = []

    def answer_once() -> None:
        connection, _ = listener.accept()
        with connection:
            data = b""
            while b"\r\n\r\n" not in data:
                data += connection.recv(4096)
            seen.append(data)
            connection.sendall(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")

    thread = threading.Thread(target=answer_once, daemon=True)
    thread.start()
    # routes.json says where the deployment is; a host in it other than loopback is not followed
    target = {"base": f"http://example.invalid:{port}", "scoring": f"http://example.invalid:{port}/predict"}
    status, _, _ = forward(target, "DELETE", "/score?x=1", {}, b"")
    thread.join(timeout=10)
    listener.close()
    assert status == 204
    assert seen[0].startswith(b"DELETE /predict?x=1 HTTP/1.1\r\n") and f"Host: 127.0.0.1:{port}".encode() in seen[0]


class _Upstream:
    """A deployment stand-in on a raw socket: answers each request 200 (HTTP/1.1, kept alive), and closes a
    connection after its first answer when close_after_one is set (a deployment's idle timeout, unsaid)."""

    def __init__(self, close_after_one: bool) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.close_after_one = close_after_one
        self.connections = 0
        self.requests = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(connection,), daemon=True).start()

    def _serve(self, connection: socket.socket) -> None:
        with connection, connection.makefile("rb") as stream:
            while stream.readline():
                while stream.readline() not in (b"\r\n", b""):
                    pass
                self.requests += 1
                connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                if self.close_after_one:
                    return

    def close(self) -> None:
        self.listener.close()


def test_forward_keeps_the_connection_to_the_deployment_alive_between_requests():
    upstream = _Upstream(close_after_one=False)
    target = {"base": f"http://127.0.0.1:{upstream.port}", "scoring": f"http://127.0.0.1:{upstream.port}/score"}
    try:
        for _ in range(3):
            assert forward(target, "GET", "/", {}, b"")[::2] == (200, b"ok")
        assert (upstream.connections, upstream.requests) == (1, 3)
    finally:
        upstream.close()


def test_forward_sends_again_on_a_new_connection_when_the_deployment_had_closed_the_kept_one(monkeypatch):
    upstream = _Upstream(close_after_one=True)
    target = {"base": f"http://127.0.0.1:{upstream.port}", "scoring": f"http://127.0.0.1:{upstream.port}/score"}
    try:
        assert forward(target, "POST", "/score", {}, b"{}")[::2] == (200, b"ok")
        time.sleep(0.2)  # the deployment has closed it
        # as if it closed it only after the router looked: the request goes out on a closed connection
        monkeypatch.setattr(router_server, "_still_open", lambda connection: True)
        assert forward(target, "POST", "/score", {}, b"{}")[::2] == (200, b"ok")
        assert (upstream.connections, upstream.requests) == (2, 2)
    finally:
        upstream.close()


class _FakeDebugpy:
    def __init__(self) -> None:
        self.attached = False
        self.traced = True  # as debugpy.listen() leaves every thread
        self.calls: list[bool] = []

    def is_client_connected(self) -> bool:
        return self.attached

    def trace_this_thread(self, should_trace: bool) -> None:
        self.calls.append(should_trace)
        self.traced = should_trace


class _Recorder:
    """A WSGI app for a LoopServer under test: records each request's path, and what `state()` says then; a
    request for /end ends serve_forever (KeyboardInterrupt, as Ctrl-C does)."""

    def __init__(self, state) -> None:
        self.state = state
        self.seen: list[tuple[str, object]] = []

    def __call__(self, environ: dict, start_response) -> list[bytes]:
        if environ["PATH_INFO"] == "/end":
            raise KeyboardInterrupt
        self.seen.append((environ["PATH_INFO"], self.state()))
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]


def _get(port: int, path: str) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", path)
        connection.getresponse().read()
    except (OSError, http.client.HTTPException):
        pass  # /end: no answer
    finally:
        connection.close()


def _until(condition, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_a_reload_is_traced_only_while_a_debugger_is_attached_and_a_request_never_around_run():
    debugpy = _FakeDebugpy()
    tracing = debug_server.TracedWhileAttached(debugpy)
    app = _Recorder(lambda: debugpy.traced)
    server = http_serving.LoopServer("127.0.0.1", 0, app)

    def reload() -> None:
        app.seen.append(("reload", debugpy.traced))

    def client() -> None:
        _get(server.port, "/first")
        server.request_reload()
        _until(lambda: len(app.seen) == 2)
        debugpy.attached = True
        _get(server.port, "/second")
        server.request_reload()
        _until(lambda: len(app.seen) == 4)
        _get(server.port, "/end")

    threading.Thread(target=client, daemon=True).start()
    try:
        with contextlib.suppress(KeyboardInterrupt):
            server.serve_forever(reload, tracing.before_job)
    finally:
        server.close()
    assert app.seen == [("/first", False), ("reload", False), ("/second", False), ("reload", True)]
    # set before every job: request, reload, request, reload, the end
    assert debugpy.calls == [False, False, False, True, False]


def test_the_users_run_is_traced_while_a_debugger_is_attached_and_nothing_after_it():
    debugpy = _FakeDebugpy()
    tracing = debug_server.TracedWhileAttached(debugpy)

    class Script:  # azmlinfsrv's UserScript: its call of the user's run()
        def _wrapped_user_run(self, **arguments: object) -> object:
            if arguments.get("fail"):
                raise ValueError("run() failed")
            return {"traced": debugpy.traced, **arguments}

    script = Script()
    tracing.around_run(script)
    debugpy.trace_this_thread(False)
    assert script._wrapped_user_run(data=1) == {"traced": False, "data": 1}  # none attached: not traced
    assert debugpy.calls == [False]
    debugpy.attached = True
    assert script._wrapped_user_run(data=2, request_headers={}) == {"traced": True, "data": 2, "request_headers": {}}
    assert debugpy.traced is False and debugpy.calls == [False, True, False]
    with pytest.raises(ValueError, match="run\\(\\) failed"):
        script._wrapped_user_run(fail=True)
    assert debugpy.traced is False  # after an error in run() too


def test_debugpys_own_trouble_is_said_once_and_the_request_goes_on(capsys):
    class Broken(_FakeDebugpy):
        def trace_this_thread(self, should_trace: bool) -> None:
            raise RuntimeError("pydevd is not ready")

    debugpy = Broken()
    debugpy.attached = True
    tracing = debug_server.TracedWhileAttached(debugpy)

    class Script:
        def _wrapped_user_run(self, **arguments: object) -> str:
            return "answered"

    script = Script()
    tracing.around_run(script)
    assert [script._wrapped_user_run(), script._wrapped_user_run()] == ["answered", "answered"]
    tracing.before_job(True)
    assert capsys.readouterr().out.count("could not switch debugpy's tracing") == 1


def test_after_a_reload_the_heap_is_frozen_again_once_the_main_thread_is_idle(monkeypatch):
    done: list[str] = []
    monkeypatch.setattr(debug_server.gc, "unfreeze", lambda: done.append("unfreeze"))
    monkeypatch.setattr(debug_server, "_freeze_what_is_loaded", lambda: done.append("freeze"))

    class Host:
        def reload(self) -> None:
            done.append("reload")

    app = _Recorder(lambda: done.append("request"))
    server = http_serving.LoopServer("127.0.0.1", 0, app)
    server.IDLE_S = 0.2
    waiting = socket.create_connection(("127.0.0.1", server.port))  # a request waiting already: it goes first
    waiting.sendall(b"GET /request HTTP/1.1\r\nHost: x\r\n\r\n")
    server.request_reload()

    def end_when_frozen() -> None:
        _until(lambda: "freeze" in done)
        _get(server.port, "/end")

    threading.Thread(target=end_when_frozen, daemon=True).start()
    try:
        with contextlib.suppress(KeyboardInterrupt):
            server.serve_forever(debug_server._reload_then_freeze(Host(), server))
    finally:
        waiting.close()
        server.close()
    # the reload first (asked for before serving), the waiting request, then the freeze once idle
    assert done == ["unfreeze", "reload", "request", "freeze"]


# --- the debug server's loop on its own (http_serving.LoopServer) -----------------------------------------


def _echo_app(environ: dict, start_response) -> list[bytes]:
    """Answers with the body it got (its length in a header); /sleep?S holds the loop S seconds, /big answers 64 MiB."""
    body = environ["wsgi.input"].read()
    path = environ["PATH_INFO"]
    if path == "/end":
        raise KeyboardInterrupt
    if path == "/sleep":
        time.sleep(float(environ["QUERY_STRING"]))
    answer = b"x" * (64 << 20) if path == "/big" else path.encode() + b":" + body
    start_response("200 OK", [("Content-Type", "application/octet-stream"), ("X-Got", str(len(body)))])
    return [answer]


@pytest.fixture
def loop() -> Iterator[http_serving.LoopServer]:
    server = http_serving.LoopServer("127.0.0.1", 0, _echo_app, idle_timeout=0.5, request_timeout=1.0)
    thread = threading.Thread(target=_serve_until_ended, args=(server,), daemon=True)
    thread.start()
    yield server
    with socket.create_connection(("127.0.0.1", server.port)) as ending:  # never answered: the loop ends
        ending.sendall(b"GET /end HTTP/1.1\r\nHost: x\r\n\r\n")
        thread.join(timeout=10)
    server.close()


def _serve_until_ended(server: http_serving.LoopServer) -> None:
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever(lambda: None)


def _read_answer(sock: socket.socket, method: str = "POST") -> tuple[int, bytes]:
    answer = http.client.HTTPResponse(sock, method=method)
    answer.begin()
    return answer.status, answer.read()


def _read_answers(sock: socket.socket, count: int) -> list[tuple[int, bytes]]:
    """count answers read one after another from one buffered reader (pipelined answers may come in one read)."""
    reader, answers = sock.makefile("rb"), []
    for _ in range(count):
        status = int(reader.readline().split()[1])
        length = 0
        while (line := reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            if name.lower() == "content-length":
                length = int(value)
        answers.append((status, reader.read(length)))
    return answers


def test_a_request_sent_while_the_app_was_busy_past_its_idle_timeout_is_served(loop):
    """A breakpoint holds the loop: connections that were idle meanwhile are read before their time is up."""
    with socket.create_connection(("127.0.0.1", loop.port), timeout=10) as idle, \
            socket.create_connection(("127.0.0.1", loop.port), timeout=10) as busy:
        time.sleep(0.1)  # both accepted: the idle one's idle timeout (0.5 s) runs from now
        busy.sendall(b"GET /sleep?1.5 HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(1.0)  # the app is busy; the idle connection's time is up, and it sends a request now
        idle.sendall(b"POST /late HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi")
        assert _read_answer(busy, "GET")[0] == 200
        assert _read_answer(idle) == (200, b"/late:hi")


def test_pipelined_requests_are_answered_in_order_on_one_connection(loop):
    with socket.create_connection(("127.0.0.1", loop.port), timeout=10) as connection:
        connection.sendall(b"".join(b"POST /%d HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\n%d" % (n, n)
                                    for n in range(5)))
        assert _read_answers(connection, 5) == [(200, b"/%d:%d" % (n, n)) for n in range(5)]


def test_a_client_slow_to_read_a_large_answer_holds_no_one_else_up(loop):
    with socket.create_connection(("127.0.0.1", loop.port), timeout=10) as slow:
        slow.sendall(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(0.3)  # its answer fills the socket buffers: the rest waits in the server, not the loop
        started = time.perf_counter()
        for _ in range(5):
            connection = http.client.HTTPConnection("127.0.0.1", loop.port, timeout=10)
            connection.request("POST", "/other", body=b"1")
            assert connection.getresponse().read() == b"/other:1"
            connection.close()
        assert time.perf_counter() - started < 1
        status, body = _read_answer(slow, "GET")  # then read whole, within the request timeout's patience
        assert status == 200 and len(body) == 64 << 20


def test_a_chunked_body_sent_in_small_pieces_and_expect_100_continue(loop):
    with socket.create_connection(("127.0.0.1", loop.port), timeout=10) as connection:
        connection.sendall(b"POST /chunks HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                           b"Expect: 100-continue\r\n\r\n")
        assert connection.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"  # sent before any of the body
        body = b"".join(b"1\r\n%c\r\n" % (97 + n % 26) for n in range(3000)) + b"0\r\n\r\n"
        for start in range(0, len(body), 7):  # 7 bytes at a time
            connection.sendall(body[start:start + 7])
        status, answer = _read_answer(connection)
        assert status == 200 and answer == b"/chunks:" + bytes(97 + n % 26 for n in range(3000))


def test_a_client_that_closes_its_side_after_the_request_still_gets_the_answer(loop):
    with socket.create_connection(("127.0.0.1", loop.port), timeout=10) as connection:
        connection.sendall(b"POST /bye HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nok")
        connection.shutdown(socket.SHUT_WR)
        received = b""
        while chunk := connection.recv(65536):
            received += chunk
    assert received.startswith(b"HTTP/1.1 200 OK\r\n") and received.endswith(b"/bye:ok")


def test_a_stalled_head_gets_408_at_the_request_timeout_and_an_idle_connection_is_closed_silently(loop):
    with socket.create_connection(("127.0.0.1", loop.port), timeout=10) as stalled, \
            socket.create_connection(("127.0.0.1", loop.port), timeout=10) as silent:
        stalled.sendall(b"POST /x HTTP/1.1\r\nHost")
        started = time.perf_counter()
        answer = b""
        while chunk := stalled.recv(65536):
            answer += chunk
        assert status_of(answer) == 408 and b"Connection: close" in answer
        assert 0.8 < time.perf_counter() - started < 2
        assert silent.recv(100) == b""  # closed at the idle timeout, without a word


# --- one real endpoint ----------------------------------------------------------------------------------


@dataclass
class Served:
    project: Project
    router: int  # the endpoint's port
    deployment: int  # the debug server's scoring port


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    project = sample_copy(tmp_path_factory.mktemp("load") / "project")
    env = {**NO_DOCKER, **TIMEOUTS}
    try:
        result = project.run("debug", f"spec={project.spec}", "runtime=process", "vscode=0", env=env)
        assert result.returncode == 0, result.stdout + result.stderr
        endpoint = project.root / ".localml" / "endpoints" / project.endpoint
        router = json.loads((endpoint / "router.json").read_text())["port"]
        deployment = json.loads((endpoint / "blue" / "process.json").read_text())["scoring_port"]
        yield Served(project, router, deployment)
    finally:
        project.run("delete", env=NO_DOCKER)


def exchange(port: int, data: bytes, timeout: float = 10) -> tuple[bytes, float]:
    """Send data on a new connection; (everything the server sent until it closed, seconds it took)."""
    started = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as connection:
        connection.sendall(data)
        received = b""
        while chunk := connection.recv(65536):
            received += chunk
    return received, time.perf_counter() - started


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def json_body(answer: bytes) -> dict:
    return json.loads(answer.split(b"\r\n\r\n", 1)[1])


def score(connection: http.client.HTTPConnection, **headers: str) -> tuple[int, bytes, float]:
    started = time.perf_counter()
    connection.request("POST", "/score", body=REQUEST, headers={"Content-Type": "application/json", **headers})
    answer = connection.getresponse()
    return answer.status, answer.read(), time.perf_counter() - started


def assert_serves(port: int, requests: int = 5) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        for _ in range(requests):
            status, body, took = score(connection)
            assert status == 200 and len(json.loads(body)) == 2 and took < 1, (status, body, took)
    finally:
        connection.close()


def closed_after(connection: socket.socket, limit: float) -> float:
    """Seconds until the server closes the connection (anything it sends first is read and dropped)."""
    started = time.perf_counter()
    connection.settimeout(limit)
    with contextlib.suppress(ConnectionResetError):
        while connection.recv(65536):
            pass
    return time.perf_counter() - started


@pytest.mark.parametrize("via", ["router", "deployment"])
@pytest.mark.parametrize("half", [b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Len",
                                  b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"data\": [[1,"])
def test_a_half_sent_request_holds_no_one_up_and_is_dropped_after_the_request_timeout(served, via, half):
    port = getattr(served, via)
    with socket.create_connection(("127.0.0.1", port)) as stuck:
        stuck.sendall(half)
        started = time.perf_counter()
        assert_serves(port, requests=20)  # each answered in < 1 s while the half request is held
        assert time.perf_counter() - started < REQUEST_TIMEOUT_S, "the check must run while the request is held"
        # the half request is given up at the request timeout, not held for ever
        closed_after(stuck, REQUEST_TIMEOUT_S + 5)
        waited = time.perf_counter() - started
        assert REQUEST_TIMEOUT_S - 0.5 < waited < REQUEST_TIMEOUT_S + 3


BAD_REQUESTS = {
    "a path without its leading /": b"GET 9/x HTTP/1.1\r\nHost: x\r\n\r\n",
    "an absolute-form target naming another port": b"GET http://127.0.0.1:1/x HTTP/1.1\r\nHost: x\r\n\r\n",
    "an absolute-form target naming another host": b"GET http://example.com/score HTTP/1.1\r\nHost: x\r\n\r\n",
    "an authority-form target": b"CONNECT 127.0.0.1:22 HTTP/1.1\r\nHost: 127.0.0.1:22\r\n\r\n",
    "Content-Length: abc": b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n{}",
    "Content-Length: -5": b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n{}",
    "two Content-Lengths that disagree": b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
                                         b"Content-Length: 3\r\n\r\n{}",
    "Content-Length and chunked": b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
                                  b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
    "a control character in the path": b"GET /sc\x01ore HTTP/1.1\r\nHost: x\r\n\r\n",
    "no HTTP version": b"GET /score\r\n\r\n",
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_a_bad_request_gets_a_json_400_from_the_router_at_once_and_the_router_keeps_serving(served, case):
    answer, took = exchange(served.router, BAD_REQUESTS[case])
    assert status_of(answer) == 400, answer
    assert took < 1
    body = json_body(answer)
    assert body["answered_by"] == ROUTER_ANSWER and body["error"] and body["fix"], body
    assert b"\r\nConnection: close\r\n" in answer and DEPLOYMENT_HEADER.encode() not in answer.lower()
    assert_serves(served.router, requests=2)


def test_a_header_block_too_large_is_refused_by_both(served):
    big = b"POST /score HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-Filler-%d: %s\r\n" % (n, b"y" * 1000)
                                                          for n in range(80)) + b"Content-Length: 2\r\n\r\n{}"
    for port in (served.router, served.deployment):
        answer, took = exchange(port, big)
        assert status_of(answer) == 431 and took < 1, answer[:300]
    assert json_body(exchange(served.router, big)[0])["answered_by"] == ROUTER_ANSWER
    assert_serves(served.router, requests=2)


@pytest.mark.parametrize("case", ["a path without its leading /", "Content-Length: abc", "Content-Length: -5",
                                  "two Content-Lengths that disagree", "no HTTP version"])
def test_the_deployment_refuses_the_same_requests_at_once(served, case):
    answer, took = exchange(served.deployment, BAD_REQUESTS[case])
    assert status_of(answer) == 400 and took < 1, answer
    assert_serves(served.deployment, requests=2)


def test_an_absolute_form_target_naming_the_router_itself_is_its_path(served):
    request = f"POST http://127.0.0.1:{served.router}/score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    answer, _ = exchange(served.router, request.encode() + b"Connection: close\r\n"
                         + b"Content-Length: %d\r\n\r\n" % len(REQUEST) + REQUEST)
    assert status_of(answer) == 200 and len(json_body(answer)) == 2, answer


@pytest.mark.parametrize(("method", "path"), [("HEAD", "/"), ("HEAD", "/score"), ("DELETE", "/score"),
                                              ("PATCH", "/score"), ("PUT", "/score"), ("OPTIONS", "/score"),
                                              ("GET", "/"), ("DELETE", "/no-such-route")])
def test_every_method_reaches_the_deployment_and_gets_its_answer(served, method, path):
    answers = {}
    for via in ("router", "deployment"):
        connection = http.client.HTTPConnection("127.0.0.1", getattr(served, via), timeout=10)
        connection.request(method, path, body=b"{}" if method in ("PATCH", "PUT") else None)
        answer = connection.getresponse()
        answers[via] = (answer.status, answer.getheader("Content-Length"), answer.read(),
                        answer.getheader(DEPLOYMENT_HEADER))
        # the connection stays usable: nothing of a HEAD answer's body was sent, the next answer is whole
        connection.request("GET", "/")
        follow = connection.getresponse()
        assert (follow.status, follow.read()) == (200, b"Healthy"), via
        connection.close()
    assert answers["router"][:3] == answers["deployment"][:3]
    assert answers["router"][0] != 501 and answers["router"][3] == "blue"
    if method == "HEAD":
        assert answers["router"][2] == b"" and answers["router"][1] is not None


def test_an_unknown_method_or_version_is_the_routers_own_json_answer(served):
    answer, _ = exchange(served.router, b"TRACE /score HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status_of(answer) == 501 and json_body(answer)["answered_by"] == ROUTER_ANSWER
    answer, _ = exchange(served.router, b"GET / HTTP/2.0\r\n\r\n")  # refused by http.server's own check
    assert status_of(answer) == 505 and json_body(answer)["answered_by"] == ROUTER_ANSWER


@pytest.mark.parametrize("via", ["router", "deployment"])
def test_keep_alive_then_an_idle_connection_is_closed_after_the_idle_timeout(served, via):
    with socket.create_connection(("127.0.0.1", getattr(served, via))) as connection:
        for _ in range(3):  # several requests on the one connection (HTTP/1.1 keep-alive)
            connection.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            answer = http.client.HTTPResponse(connection, method="GET")
            answer.begin()
            assert (answer.version, answer.status, answer.read()) == (11, 200, b"Healthy")
        waited = closed_after(connection, IDLE_TIMEOUT_S + 5)
    assert IDLE_TIMEOUT_S - 0.5 < waited < IDLE_TIMEOUT_S + 2
    with socket.create_connection(("127.0.0.1", getattr(served, via))) as silent:  # never sends a byte
        assert closed_after(silent, IDLE_TIMEOUT_S + 5) < IDLE_TIMEOUT_S + 2


def test_connection_close_and_http_1_0_are_honoured(served):
    for port in (served.router, served.deployment):
        answer, took = exchange(port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert status_of(answer) == 200 and answer.endswith(b"Healthy") and took < 1
        answer, took = exchange(port, b"GET / HTTP/1.0\r\n\r\n")
        assert status_of(answer) == 200 and answer.endswith(b"Healthy") and took < 1


def test_a_chunked_request_is_read_whole_by_the_deployment_and_the_connection_kept(served):
    with socket.create_connection(("127.0.0.1", served.deployment), timeout=10) as connection:
        half = len(REQUEST) // 2
        body = b"%x\r\n%s\r\n%x\r\n%s\r\n0\r\n\r\n" % (half, REQUEST[:half], len(REQUEST) - half, REQUEST[half:])
        for _ in range(2):
            connection.sendall(b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                               b"Transfer-Encoding: chunked\r\n\r\n" + body)
            answer = http.client.HTTPResponse(connection, method="POST")
            answer.begin()
            assert answer.status == 200 and len(json.loads(answer.read())) == 2


@pytest.mark.parametrize("via", ["router", "deployment"])
def test_sixteen_concurrent_clients_all_answered(served, via):
    port = getattr(served, via)
    errors: list[str] = []
    took: list[float] = []
    lock = threading.Lock()

    def client() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            for _ in range(25):
                status, body, seconds = score(connection)
                with lock:
                    took.append(seconds)
                    if status != 200 or len(json.loads(body)) != 2:
                        errors.append(f"{status} {body[:200]!r}")
        except (OSError, http.client.HTTPException) as exc:
            with lock:
                errors.append(repr(exc))
        finally:
            connection.close()

    threads = [threading.Thread(target=client) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert errors == [] and len(took) == 16 * 25
    assert sorted(took)[int(len(took) * 0.99)] < 1


@pytest.mark.skipif(shutil.which("ss") is None, reason="no ss here to read a listening socket's backlog")
def test_both_listen_with_a_backlog_of_at_least_128(served):
    for port in (served.router, served.deployment):
        listing = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True).stdout
        backlog = int(listing.split()[2])  # Send-Q of a listening socket: its backlog
        assert backlog >= 128, listing


def test_the_router_log_names_refused_requests_without_a_traceback(served):
    log = next(Path(served.project.root, ".localml", "endpoints", served.project.endpoint).glob("router.log"))
    text = log.read_text()
    assert "Traceback" not in text
