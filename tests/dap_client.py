"""A small Debug Adapter Protocol client: what VS Code does when it attaches to debugpy."""

from __future__ import annotations

import contextlib
import itertools
import json
import queue
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import requests

if TYPE_CHECKING:
    from conftest import Project


class DapClient:
    def __init__(self, host: str, port: int, timeout: float = 60) -> None:
        self.host, self.port = host, port
        self._connect(timeout)

    def _connect(self, timeout: float) -> None:
        """A new connection to the adapter, with its own reader thread, responses and events."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                sock = socket.create_connection((self.host, self.port), timeout=5)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        sock.settimeout(None)
        self.sock = sock
        self.seq = itertools.count(1)
        self.responses: dict[int, queue.Queue] = {}
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self.seen_events: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.disconnected = threading.Event()  # the adapter closed the connection
        threading.Thread(target=self._read, args=(sock, self.responses, self.events, self.disconnected),
                         daemon=True).start()

    def _read(self, sock: socket.socket, responses: dict[int, queue.Queue], events: queue.Queue,
              disconnected: threading.Event) -> None:
        try:
            self._read_messages(sock, responses, events)
        finally:
            disconnected.set()

    def _read_messages(self, sock: socket.socket, responses: dict[int, queue.Queue], events: queue.Queue) -> None:
        buffer = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except OSError:
                return
            if not chunk:
                return
            buffer += chunk
            while b"\r\n\r\n" in buffer:
                header, rest = buffer.split(b"\r\n\r\n", 1)
                length = int(next(line.split(b":")[1] for line in header.split(b"\r\n")
                                  if line.lower().startswith(b"content-length")))
                if len(rest) < length:
                    break
                message = json.loads(rest[:length])
                buffer = rest[length:]
                if message["type"] == "response":
                    with self.lock:
                        answers = responses.setdefault(message["request_seq"], queue.Queue())
                    answers.put(message)
                elif message["type"] == "event":
                    events.put(message)

    def _queue_for(self, seq: int) -> queue.Queue:
        with self.lock:
            return self.responses.setdefault(seq, queue.Queue())

    def send(self, command: str, arguments: dict[str, Any] | None = None) -> int:
        seq = next(self.seq)
        body = json.dumps({"seq": seq, "type": "request", "command": command, "arguments": arguments or {}}).encode()
        self.sock.sendall(b"Content-Length: %d\r\n\r\n" % len(body) + body)
        return seq

    def response(self, seq: int, timeout: float = 60) -> dict[str, Any]:
        answers, deadline = self._queue_for(seq), time.monotonic() + timeout
        while True:
            try:
                answer = answers.get(timeout=0.2)
                break
            except queue.Empty:
                if self.disconnected.is_set() and answers.empty():
                    raise ConnectionError(f"the debug adapter at {self.host}:{self.port} closed the connection "
                                          f"before answering request {seq}") from None
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the debug adapter at {self.host}:{self.port} did not answer request {seq} "
                                       f"within {timeout:g} s") from None
        assert answer["success"], answer
        return answer

    def request(self, command: str, arguments: dict[str, Any] | None = None, timeout: float = 60) -> dict[str, Any]:
        return self.response(self.send(command, arguments), timeout)

    def wait_event(self, name: str, timeout: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                event = self.events.get(timeout=0.5)
            except queue.Empty:
                continue
            self.seen_events.append(event)
            if event["event"] == name:
                return event
        raise AssertionError(f"no {name!r} event; saw {[e['event'] for e in self.seen_events]}")

    def attach(self, launch: dict[str, Any], breakpoints: dict[str, list[int]],
               exception_filters: list[str] | None = None) -> None:
        """initialize, attach with the launch configuration's settings, set breakpoints, configurationDone.
        When the adapter closes the connection (or stays silent) before answering initialize, the failure says what
        listens on the port, and which container publishes it."""
        initialize = {"clientID": "localml-tests", "adapterID": "debugpy", "pathFormat": "path",
                      "linesStartAt1": True, "columnsStartAt1": True}
        try:
            self.request("initialize", initialize, timeout=30)
        except (ConnectionError, TimeoutError) as failed:
            listening = subprocess.run(["ss", "-ltnpH", f"sport = :{self.port}"], capture_output=True, text=True)
            publishing = subprocess.run(["docker", "ps", "-a", "--filter", f"publish={self.port}", "--format",
                                         "{{.Names}} {{.Status}} {{.Ports}}"], capture_output=True, text=True)
            raise AssertionError(f"{failed}; listening there: {listening.stdout.strip() or '-'}; published by: "
                                 f"{publishing.stdout.strip() or '-'}") from None
        attach_seq = self.send("attach", {key: launch[key] for key in ("pathMappings", "justMyCode") if key in launch})
        self.wait_event("initialized")
        for path, lines in breakpoints.items():
            answer = self.request("setBreakpoints", {"source": {"path": path},
                                                     "breakpoints": [{"line": line} for line in lines]})
            assert all(bp.get("verified", True) for bp in answer["body"]["breakpoints"]), answer
        self.request("setExceptionBreakpoints", {"filters": exception_filters or []})
        self.request("configurationDone")
        self.response(attach_seq)

    def top_frame(self, thread_id: int) -> dict[str, Any]:
        trace = self.request("stackTrace", {"threadId": thread_id, "startFrame": 0, "levels": 1})
        return trace["body"]["stackFrames"][0]

    def locals_of(self, frame_id: int) -> dict[str, str]:
        scopes = self.request("scopes", {"frameId": frame_id})["body"]["scopes"]
        local_scope = next(s for s in scopes if s["name"].lower().startswith("local"))
        variables = self.request("variables", {"variablesReference": local_scope["variablesReference"]})
        return {v["name"]: v["value"] for v in variables["body"]["variables"]}

    def evaluate(self, expression: str, frame_id: int) -> str:
        answer = self.request("evaluate", {"expression": expression, "frameId": frame_id, "context": "watch"})
        return answer["body"]["result"]

    def close(self) -> None:
        with contextlib.suppress(Exception):  # best effort on the way out
            self.request("disconnect", {"terminateDebuggee": False}, timeout=10)
        self.sock.close()


# --- what a debugging session in the tests needs around the client ------------------------------------


def state_dir(project: Project, deployment: str = "blue") -> Path:
    return project.root / ".localml" / "endpoints" / project.endpoint / deployment


def host_launch(project: Project) -> dict[str, Any]:
    """The generated "Azure ML: Debug Local Endpoint" configuration, as VS Code on the host reads it."""
    launch = json.loads((state_dir(project) / "launch.json").read_text())
    config = launch["configurations"][0]
    assert config["name"] == "Azure ML: Debug Local Endpoint"
    assert (config["type"], config["request"]) == ("debugpy", "attach")
    return config


def line_in(path: Path, fragment: str) -> int:
    return next(n for n, text in enumerate(path.read_text().splitlines(), 1) if fragment in text)


def post_in_background(url: str, payload: Any) -> tuple[threading.Thread, dict[str, Any]]:
    result: dict[str, Any] = {}

    def send() -> None:
        reply = requests.post(url, json=payload, timeout=120)
        result["status"], result["body"] = reply.status_code, reply.text

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    return thread, result


def scoring_url(project: Project, engine: Any) -> str:
    port = engine.containers.get(project.container_name()).labels["localml.scoring-port"]
    return f"http://127.0.0.1:{port}/score"
