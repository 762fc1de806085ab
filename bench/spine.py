"""Benchmark of the spine on the sample (a script, not a test): medians over repeated runs.

    .venv/bin/python bench/spine.py [--runs 5] [--invokes 200]

Works in a private copy of specs/ under a temporary folder, with its own endpoint name, and
removes its container at the end. Prints a Markdown table (the one in the README).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import docker
import requests

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from localml_tasks.spec import load_deployment  # noqa: E402


def localml(project: Path, *args: str) -> float:
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "localml_tasks", *args], cwd=project,
                            capture_output=True, text=True)
    took = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"localml {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return took


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--invokes", type=int, default=200)
    options = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="localml-bench-"))
    project = workdir / "project"
    shutil.copytree(REPO / "specs", project)
    shutil.copy(REPO / "localml.yml", project)
    endpoint = f"bench-{uuid.uuid4().hex[:6]}"
    renames = (("endpoint.yml", "name: localml-sample"), ("blue-deployment.yml", "endpoint_name: localml-sample"))
    for name, old in renames:
        path = project / name
        path.write_text(path.read_text().replace(old, old.split(":")[0] + f": {endpoint}"))
    spec = str(project / "blue-deployment.yml")
    rows: list[tuple[str, str]] = []
    try:
        validate_ms = []
        for _ in range(20):
            started = time.perf_counter()
            load_deployment(Path(spec))
            validate_ms.append((time.perf_counter() - started) * 1000)
        rows.append(("validate the sample (in process)", f"{statistics.median(validate_ms):.1f} ms"))

        first = localml(project, "debug", f"spec={spec}")
        rows.append(("first `debug` (image cached by Docker, container created, healthy)", f"{first:.2f} s"))
        noop = [localml(project, "debug") for _ in range(options.runs)]
        rows.append((f"no-op `debug` (median of {options.runs})", f"{statistics.median(noop):.2f} s"))

        request = project / "sample-request.json"
        via_cli = [localml(project, "invoke", f"request={request}") for _ in range(options.runs)]
        rows.append((f"`invoke` command, end to end (median of {options.runs})", f"{statistics.median(via_cli):.2f} s"))

        container = docker.from_env().containers.get(f"localml-{endpoint}-blue")
        url = f"http://127.0.0.1:{container.labels['localml.scoring-port']}/score"
        payload = json.loads(request.read_text())
        session = requests.Session()
        latencies = []
        for _ in range(options.invokes):
            started = time.perf_counter()
            session.post(url, json=payload, timeout=30).raise_for_status()
            latencies.append((time.perf_counter() - started) * 1000)
        rows.append((f"plain HTTP POST /score, p50 / p99 of {options.invokes}",
                     f"{percentile(latencies, 50):.1f} / {percentile(latencies, 99):.1f} ms"))
    finally:
        subprocess.run([sys.executable, "-m", "localml_tasks", "delete"], cwd=project, capture_output=True)
        shutil.rmtree(workdir, ignore_errors=True)

    print("| measurement | result |")
    print("|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")


if __name__ == "__main__":
    main()
