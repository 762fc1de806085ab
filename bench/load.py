"""Load on one deployment of the sample, through the endpoint's router and straight to it (a script, not a test).

    .venv/bin/python bench/load.py [--clients 16] [--requests 2000] [--runtime docker|process]

On a private copy of specs/ (its own endpoint name, deleted at the end), brought up with the real CLI:
`clients` concurrent clients, each on its own kept-alive HTTP/1.1 connection, send `requests` POST /score
of the sample request in all, per configuration, each configuration measured through the router and
straight to the deployment:
- with the debugger: the default `debug` (azmlinfsrv's app in one process under debugpy), no debugger
  attached, and again with one attached (the suite's DAP client, through the generated launch configuration,
  as VS Code attaches; no breakpoint on the way of a request);
- without it: `debug debugger=0` (in a container: azmlinfsrv under gunicorn, as in Azure);
- with the debugger, while one more client holds a half-sent request open throughout (a new one as soon as
  the server drops it at its request timeout).
An error is an answer other than 200 with the two predictions, or a connection that failed (the client
then opens a new one). Prints p50 / p99 / max latency and the errors per configuration as a Markdown table.
"""

from __future__ import annotations

import argparse
import http.client
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from dap_client import DapClient  # the test suite's DAP client
from sample_copy import copy_sample  # bench/, the script's own folder

WARM_UP = 50  # requests before each measurement, not counted
HALF_REQUEST = (b"POST /score HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                b"Content-Length: 100\r\n\r\n{")  # 99 bytes of its body never come


@dataclass
class Result:
    latencies: list[float] = field(default_factory=list)  # seconds, one per answered request
    errors: list[str] = field(default_factory=list)


class Endpoint:
    """The sample's copy, driven through the real CLI."""

    def __init__(self, root: Path, endpoint: str, runtime: str) -> None:
        self.root = root
        self.endpoint = endpoint
        self.runtime = runtime
        self.spec = root / "blue-deployment.yml"
        self.state = root / ".localml" / "endpoints" / endpoint / "blue"
        self.body = (root / "sample-request.json").read_bytes()

    def localml(self, *args: str) -> str:
        result = subprocess.run([sys.executable, "-m", "localml_tasks", *args], cwd=self.root,
                                capture_output=True, text=True)
        if result.returncode != 0:
            raise SystemExit(f"localml {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
        return result.stdout

    def debug(self, *variables: str) -> None:
        self.localml("debug", f"spec={self.spec}", f"runtime={self.runtime}", "vscode=0", *variables)

    def ports(self) -> dict[str, int]:
        """{"router": the endpoint's port, "deployment": blue's scoring port}."""
        folder = self.root / ".localml" / "endpoints" / self.endpoint
        router = json.loads((folder / "router.json").read_text())["port"]
        shown = json.loads(self.localml("show"))
        blue = next(item for item in shown["deployments"] if item["name"] == "blue")
        return {"router": router, "deployment": int(blue["scoring_uri"].split(":")[2].split("/")[0])}

    def wait_until_answering(self, port: int, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not one_client(port, self.body, 1).errors:
                return
            time.sleep(0.2)
        raise SystemExit(f"nothing answers POST /score on 127.0.0.1:{port}")


def one_client(port: int, body: bytes, count: int) -> Result:
    """count requests, one after another on one kept-alive connection (a new one after a failure)."""
    result = Result()
    connection = None
    for _ in range(count):
        started = time.perf_counter()
        try:
            if connection is None:
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            connection.request("POST", "/score", body=body, headers={"Content-Type": "application/json"})
            answer = connection.getresponse()
            data = answer.read()
            took = time.perf_counter() - started
            if answer.status != 200 or len(json.loads(data)) != 2:
                result.errors.append(f"{answer.status} {data[:200]!r}")
            else:
                result.latencies.append(took)
        except (OSError, http.client.HTTPException, ValueError) as exc:
            result.errors.append(repr(exc))
            if connection is not None:
                connection.close()
            connection = None
    if connection is not None:
        connection.close()
    return result


def load(port: int, body: bytes, clients: int, requests: int) -> Result:
    one_client(port, body, WARM_UP)
    shares = [requests // clients + (1 if n < requests % clients else 0) for n in range(clients)]
    results: list[Result] = [Result() for _ in shares]

    def run(n: int) -> None:
        results[n] = one_client(port, body, shares[n])

    threads = [threading.Thread(target=run, args=(n,)) for n in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    total = Result()
    for result in results:
        total.latencies += result.latencies
        total.errors += result.errors
    return total


class HalfOpenClient:
    """One client that always holds a half-sent request open on the port: when the server drops it (its
    request timeout), it connects again and sends the same half request."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.stop = threading.Event()
        self.held = threading.Event()
        self.dropped = 0
        self.thread = threading.Thread(target=self._hold, daemon=True)

    def __enter__(self) -> HalfOpenClient:
        self.thread.start()
        self.held.wait(timeout=10)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=10)

    def _hold(self) -> None:
        while not self.stop.is_set():
            with socket.create_connection(("127.0.0.1", self.port)) as connection:
                connection.sendall(HALF_REQUEST)
                self.held.set()
                connection.settimeout(0.2)
                while not self.stop.is_set():
                    try:
                        if not connection.recv(65536):
                            break
                    except TimeoutError:
                        continue
                    except OSError:
                        break
                else:
                    return
            self.dropped += 1


def row(what: str, via: str, result: Result, requests: int, note: str = "") -> str:
    ordered = sorted(result.latencies)

    def ms(q: float) -> str:
        if not ordered:
            return "–"
        return f"{ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] * 1000:.1f} ms"

    slow = sum(1 for value in ordered if value > 1)
    return (f"| {what} | {via} | {requests} | {ms(0.5)} | {ms(0.99)} | {ms(1.0)} | {slow} | "
            f"{len(result.errors)}{note} |")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--runtime", choices=["docker", "process"], default="docker")
    options = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="localml-bench-"))
    root, endpoint = copy_sample(workdir)
    bench = Endpoint(root, endpoint, options.runtime)
    rows: list[str] = []
    errors: list[str] = []

    def measure(what: str, half_open: bool = False) -> None:
        for via, port in bench.ports().items():
            bench.wait_until_answering(port)
            if half_open:
                with HalfOpenClient(port) as holder:
                    result = load(port, bench.body, options.clients, options.requests)
                    alive = holder.thread.is_alive()
                note = f" (half-open client dropped by the server {holder.dropped}×{', held' if alive else ''})"
            else:
                result, note = load(port, bench.body, options.clients, options.requests), ""
            rows.append(row(what, via, result, options.requests, note))
            errors.extend(f"{what}, {via}: {error}" for error in result.errors[:5])
            if result.errors:  # the server's own account, before the next configuration replaces it
                errors.append("the server's log:\n" + bench.localml("logs", "tail=40"))

    try:
        bench.debug()
        measure("with the debugger (debugpy, one process), none attached")
        measure("with the debugger, none attached, one half-open client held throughout", half_open=True)
        launch = json.loads((bench.state / "launch.json").read_text())["configurations"][0]
        dap = DapClient(launch["connect"]["host"], launch["connect"]["port"])
        try:
            dap.attach(launch, {})
            measure("with the debugger, one attached")
        finally:
            dap.close()
        bench.debug("debugger=0")
        measure("without the debugger (`debugger=0`)")
    finally:
        subprocess.run([sys.executable, "-m", "localml_tasks", "delete"], cwd=root, capture_output=True)
        shutil.rmtree(workdir, ignore_errors=True)

    print(f"{options.clients} concurrent clients, {options.requests} POST /score of the sample request per row "
          f"(each client on its own kept-alive connection; {WARM_UP} warm-up requests first), "
          f"runtime={options.runtime}")
    print()
    print("| configuration | via | requests | p50 | p99 | max | > 1 s | errors |")
    print("|---|---|---|---|---|---|---|---|")
    for line in rows:
        print(line)
    for error in errors:
        print(f"error: {error}")


if __name__ == "__main__":
    main()
