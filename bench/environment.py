"""Benchmark of environment builds on the sample (a script, not a test).

    .venv/bin/python bench/environment.py [--runs 1]

In one run, side by side, on a private copy of specs/ (its own endpoint name, removed at the end),
each row from `debug` started to the first answer of the deployment:
- a cold build from the base image: uv (localml's installer) with an empty download cache (a fresh
  Docker volume), and the pip installer (LOCALML_INSTALLER=pip: the lock installed with pip in a
  Dockerfile, what localml did before, `docker build` without cache);
- the same with uv's download cache warm (pip keeps no cache between builds: its row is the cold one);
- one package added to the conda file: uv installs it on the previous image; pip installs everything
  again (the requirements layer changed, so Docker's cache stops there).
Prints medians and the ratio per row as a Markdown table (the one in the README).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import docker
import requests
from sample_copy import copy_sample  # bench/, the script's own folder

# small packages, one per added-package run: each makes a lock never built before
ADDED = ["six==1.16.0", "toolz==0.12.1", "tabulate==0.9.0", "attrs==23.2.0", "idna==3.6", "colorama==0.4.6"]


class Bench:
    def __init__(self, root: Path, endpoint: str) -> None:
        self.root = root
        self.endpoint = endpoint
        self.conda = root / "environment" / "conda.yml"
        self.original = self.conda.read_text()
        self.engine = docker.from_env()
        self.request = json.loads((root / "sample-request.json").read_text())
        self.volume = f"localml-bench-cache-{endpoint}"

    def debug(self, *args: str, installer: str) -> tuple[float, str]:
        """`debug` then the first answer; (seconds, the image line that says how it was built)."""
        env = {**os.environ, "LOCALML_CACHE_VOLUME": self.volume}
        if installer == "pip":
            env["LOCALML_INSTALLER"] = "pip"
        started = time.perf_counter()
        command = [sys.executable, "-m", "localml_tasks", "debug", f"spec={self.root}/blue-deployment.yml", "vscode=0"]
        result = subprocess.run([*command, *args], cwd=self.root, capture_output=True, text=True, env=env)
        if result.returncode != 0:
            raise SystemExit(f"debug failed:\n{result.stdout}\n{result.stderr}")
        container = self.engine.containers.get(f"localml-{self.endpoint}-blue")
        url = f"http://127.0.0.1:{container.labels['localml.scoring-port']}/score"
        while requests.post(url, json=self.request, timeout=60).status_code != 200:
            time.sleep(0.05)
        seconds = time.perf_counter() - started
        built = [line for line in result.stdout.splitlines() if line.startswith("image ") and " built " in line]
        return seconds, built[-1] if built else ""

    def build(self, *args: str, installer: str) -> tuple[float, str]:
        """The same, where an image must be built (a measured row)."""
        seconds, line = self.debug(*args, installer=installer)
        if not line:
            raise SystemExit("nothing was built (an image of an earlier run?): run doit prune")
        return seconds, line

    def add(self, requirement: str) -> None:
        self.conda.write_text(self.original.replace("      - numpy==2.4.6\n",
                                                    f"      - numpy==2.4.6\n      - {requirement}\n"))


def prepare(workdir: Path) -> Bench:
    root, endpoint = copy_sample(workdir)
    return Bench(root, endpoint)


def forget_added_images(engine: docker.DockerClient) -> None:
    """Images an earlier bench run built with one of ADDED would be reused, not built: remove them."""
    for found in engine.images.list(filters={"label": "localml.pins"}):
        if set(found.labels["localml.pins"].split()) & set(ADDED) and found.tags:
            with contextlib.suppress(docker.errors.APIError):  # a container uses it: the run will say so
                engine.images.remove(found.tags[0])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=1)
    options = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="localml-bench-env-"))
    bench = prepare(workdir)
    forget_added_images(bench.engine)
    cold_uv, warm_uv, cold_pip, added_uv, added_pip = [], [], [], [], []
    lines: list[str] = []
    try:
        bench.debug(installer="uv")  # the lock resolved once, for every row
        added = iter(ADDED)
        for _ in range(options.runs):
            bench.conda.write_text(bench.original)
            bench.engine.volumes.create(bench.volume).remove(force=True)  # empty: a cold download cache
            seconds, line = bench.build("no_cache=1", installer="uv")
            cold_uv.append(seconds)
            lines.append(line)
            seconds, line = bench.build("no_cache=1", installer="uv")
            warm_uv.append(seconds)
            lines.append(line)
            seconds, line = bench.build("no_cache=1", installer="pip")
            cold_pip.append(seconds)
            lines.append(line)
            bench.debug(installer="uv")  # the uv image of the original file, to add a package on
            bench.add(next(added))
            seconds, line = bench.build(installer="uv")
            added_uv.append(seconds)
            lines.append(line)
            bench.conda.write_text(bench.original)
            bench.debug(installer="pip")
            bench.add(next(added))
            seconds, line = bench.build(installer="pip")
            added_pip.append(seconds)
            lines.append(line)
    finally:
        subprocess.run([sys.executable, "-m", "localml_tasks", "delete", "images=1"], cwd=bench.root,
                       capture_output=True)
        with contextlib.suppress(docker.errors.APIError):
            bench.engine.volumes.get(bench.volume).remove(force=True)
        shutil.rmtree(workdir, ignore_errors=True)

    def row(what: str, uv: list[float], pip: list[float]) -> str:
        ours, theirs = statistics.median(uv), statistics.median(pip)
        return f"| {what} | {ours:.1f} s | {theirs:.1f} s | {theirs / ours:.1f}× |"

    for line in lines:
        print(f"  {line}")
    runs = f" (median of {options.runs})" if options.runs > 1 else ""
    print("| `debug` → first answer | uv installer | pip installer | ratio |")
    print("|---|---|---|---|")
    print(row(f"cold build from the base image, empty download cache{runs}", cold_uv, cold_pip))
    print(row(f"build from the base image, download cache warm (pip keeps none){runs}", warm_uv, cold_pip))
    print(row(f"one package added to the conda file{runs}", added_uv, added_pip))


if __name__ == "__main__":
    main()
