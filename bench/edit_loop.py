"""Benchmark of the edit loop on the sample (a script, not a test).

    .venv/bin/python bench/edit_loop.py [--runs 5] [--azure-runs 2] [--invokes 200]

In one run, side by side, on a private copy of specs/ (its own endpoint name, removed at the end):
- localml: no-op debug, code edit (under debugpy, the default, and with debugger=0) / config edit
  -> first correct response (environment builds: bench/environment.py), invoke through
  `localml invoke`, and as plain HTTP straight to the deployment and through the endpoint router (p50/p99);
- the Azure way for the same code and config edits: the image built again (without Docker's
  cache, as Azure's local endpoint solves the environment on every update), the container
  recreated, a fixed 15 s wait, then the request; and the same with Docker's build cache, the
  most generous reading of it.
Prints medians and the ratio per row as a Markdown table (the one in the README).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import docker
import requests

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from sample_copy import copy_sample  # noqa: E402  (bench/, the script's own folder)

from localml_tasks import container as container_stage  # noqa: E402
from localml_tasks import image as image_stage  # noqa: E402
from localml_tasks.spec import load_deployment  # noqa: E402

AZURE_FIXED_WAIT_S = 15  # what Azure's local endpoint sleeps instead of checking health


class Bench:
    def __init__(self, root: Path, endpoint: str) -> None:
        self.root = root
        self.endpoint = endpoint
        self.spec = root / "blue-deployment.yml"
        self.state = root / ".localml" / "endpoints" / endpoint / "blue"
        self.request = json.loads((root / "sample-request.json").read_text())
        self.engine = docker.from_env()
        self.session = requests.Session()
        self.offset = 0
        self.scale = 1
        self.azure_tag = f"localml-bench/azure-way:{endpoint}"

    def localml(self, *args: str) -> float:
        started = time.perf_counter()
        result = subprocess.run([sys.executable, "-m", "localml_tasks", *args], cwd=self.root,
                                capture_output=True, text=True)
        if result.returncode != 0:
            raise SystemExit(f"localml {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
        return time.perf_counter() - started

    @property
    def url(self) -> str:
        container = self.engine.containers.get(f"localml-{self.endpoint}-blue")
        return f"http://127.0.0.1:{container.labels['localml.scoring-port']}/score"

    def answer(self) -> list[float] | None:
        try:
            reply = self.session.post(self.url, json=self.request, timeout=30)
        except (requests.RequestException, docker.errors.NotFound):
            return None
        return reply.json() if reply.status_code == 200 else None

    def wait_for(self, expected: Callable[[list[float]], bool], timeout: float = 900) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.answer()
            if got is not None and expected(got):
                return
            time.sleep(0.05)
        raise SystemExit("the expected answer never came back")

    def edit_code(self) -> None:
        self.offset += 1
        (self.root / "onlinescoring" / "helper.py").write_text(f"OFFSET = {self.offset}.0\n")

    def edit_config(self) -> None:
        self.scale = 2 if self.scale == 1 else 1
        text = self.spec.read_text()
        start = text.index("SAMPLE_OUTPUT_SCALE:")
        end = text.index("\n", start)
        self.spec.write_text(text[:start] + f"SAMPLE_OUTPUT_SCALE: {self.scale}" + text[end:])

    def expected(self, base: list[float]) -> Callable[[list[float]], bool]:
        scale, offset = self.scale, self.offset
        return lambda got: abs(got[0] - (base[0] * scale + offset)) < 1e-6

    def azure_way(self, nocache: bool) -> None:
        """Azure's update: build the image, recreate the container, sleep 15 s, then ask."""
        build_dir = self.state / "build"
        plan = image_stage.load_plan(build_dir)
        assert plan is not None
        # a Dockerfile that installs the same lock with pip (LOCALML_INSTALLER=pip's), built as Azure builds
        azure_dir = self.root.parent / "azure-way"
        azure_dir.mkdir(exist_ok=True)
        shutil.copy(build_dir / "requirements.txt", azure_dir / "requirements.txt")
        image_stage.write_installer(azure_dir, "pip", plan.base_image, Path(plan.conda_file).name)
        self.engine.images.build(path=str(azure_dir), tag=self.azure_tag, nocache=nocache, rm=True,
                                 buildargs=image_stage.proxy_build_args())
        spec = container_stage.render_container(load_deployment(self.spec), self.azure_tag,
                                                self.engine.images.get(self.azure_tag).id,
                                                (self.state / "runtime").resolve(), self.state.resolve())
        container_stage.start(spec)  # removes the old container first
        time.sleep(AZURE_FIXED_WAIT_S)


def median_time(runs: int, cycle: Callable[[], None]) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        cycle()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def prepare(workdir: Path) -> Bench:
    """A copy of the sample whose score.py imports a helper module, so a code edit shows in the answer."""
    root, endpoint = copy_sample(workdir)
    (root / "onlinescoring" / "helper.py").write_text("OFFSET = 0.0\n")
    score = root / "onlinescoring" / "score.py"
    score.write_text(score.read_text()
                     .replace("import numpy as np\n", "import numpy as np\n\nimport helper\n")
                     .replace("model.predict(data) * scale\n", "model.predict(data) * scale + helper.OFFSET\n"))
    return Bench(root, endpoint)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--azure-runs", type=int, default=2)
    parser.add_argument("--invokes", type=int, default=200)
    options = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="localml-bench-"))
    bench = prepare(workdir)
    spec = f"spec={bench.spec}"
    rows: list[tuple[str, str, str, str]] = []  # what, localml, the Azure way, ratio
    try:
        validate_ms = []
        for _ in range(20):
            started = time.perf_counter()
            load_deployment(bench.spec)
            validate_ms.append((time.perf_counter() - started) * 1000)
        rows.append(("validate the sample (in process, median of 20)", f"{statistics.median(validate_ms):.1f} ms",
                     "", ""))

        bench.localml("debug", spec)  # environment builds have their own benchmark: bench/environment.py

        noop = median_time(options.runs, lambda: bench.localml("debug"))
        rows.append((f"no-op `debug` (median of {options.runs})", f"{noop:.2f} s", "", ""))

        base = bench.answer()
        assert base is not None

        def edit_cycle(edit: Callable[[], None], how: Callable[[], None]) -> Callable[[], None]:
            """One timed cycle: edit, bring the endpoint up to date `how`, wait for the answer the edit means."""
            def cycle() -> None:
                edit()
                how()
                bench.wait_for(bench.expected(base))
            return cycle

        def code_edit(how: Callable[[], None]) -> Callable[[], None]:
            return edit_cycle(bench.edit_code, how)

        def config_edit(how: Callable[[], None]) -> Callable[[], None]:
            return edit_cycle(bench.edit_config, how)

        with_localml = lambda: bench.localml("debug")  # noqa: E731
        azure_nocache = lambda: bench.azure_way(nocache=True)  # noqa: E731
        azure_cached = lambda: bench.azure_way(nocache=False)  # noqa: E731

        ours = median_time(options.runs, code_edit(with_localml))
        bench.localml("debug", "debugger=0")  # the gunicorn server Azure runs, no debugpy
        plain = median_time(options.runs, code_edit(lambda: bench.localml("debug", "debugger=0")))
        bench.localml("debug")
        azure = median_time(options.azure_runs, code_edit(azure_nocache))
        cached = median_time(options.azure_runs, code_edit(azure_cached))
        bench.localml("debug")  # back to a container localml made
        rows.append((f"code edit → first new answer (median of {options.runs} / {options.azure_runs})",
                     f"{ours:.2f} s", f"{azure:.1f} s", f"{azure / ours:.0f}×"))
        rows.append(("code edit, the Azure way with Docker's build cache", f"{ours:.2f} s", f"{cached:.1f} s",
                     f"{cached / ours:.0f}×"))
        rows.append(("code edit with `debugger=0` (azmlinfsrv under gunicorn, no debugpy) vs the Azure way",
                     f"{plain:.2f} s", f"{azure:.1f} s", f"{azure / plain:.0f}×"))

        ours = median_time(options.runs, config_edit(with_localml))
        cached = median_time(options.azure_runs, config_edit(azure_cached))
        bench.localml("debug")
        rows.append((f"config edit → first correct answer (median of {options.runs} / {options.azure_runs}; "
                     "Azure way with build cache)", f"{ours:.2f} s", f"{cached:.1f} s", f"{cached / ours:.1f}×"))

        request_file = bench.root / "sample-request.json"
        via_cli = median_time(options.runs, lambda: bench.localml("invoke", f"request={request_file}"))
        # interleaved, so both see the same machine: straight to the deployment, and through the
        # endpoint's router (what `invoke` and the endpoint's scoring_uri use)
        router = json.loads((bench.state.parent / "router.json").read_text())
        endpoint_url = f"http://127.0.0.1:{router['port']}/score"
        direct, routed = [], []
        for _ in range(options.invokes):
            for url, latencies in ((bench.url, direct), (endpoint_url, routed)):
                started = time.perf_counter()
                reply = bench.session.post(url, json=bench.request, timeout=30)
                latencies.append((time.perf_counter() - started) * 1000)
                assert reply.status_code == 200, reply.text
        rows.append((f"`invoke` command, end to end (median of {options.runs})", f"{via_cli * 1000:.0f} ms", "", ""))
        rows.append((f"plain HTTP POST /score to the deployment, p50 / p99 (of {options.invokes})",
                     f"{percentile(direct, 50):.1f} / {percentile(direct, 99):.1f} ms", "", ""))
        rows.append((f"the same through the endpoint's router, p50 / p99 (of {options.invokes}, interleaved)",
                     f"{percentile(routed, 50):.1f} / {percentile(routed, 99):.1f} ms", "", ""))
    finally:
        subprocess.run([sys.executable, "-m", "localml_tasks", "delete", "images=1"], cwd=bench.root,
                       capture_output=True)
        with contextlib.suppress(docker.errors.APIError):
            bench.engine.images.remove(bench.azure_tag)
        shutil.rmtree(workdir, ignore_errors=True)

    print("| measurement | localml | the Azure way | ratio |")
    print("|---|---|---|---|")
    for what, ours_text, azure_text, ratio in rows:
        print(f"| {what} | {ours_text} | {azure_text} | {ratio} |")


if __name__ == "__main__":
    main()
