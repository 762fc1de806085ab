"""Benchmark of the debug loop on the sample (a script, not a test).

    .venv/bin/python bench/debug_loop.py [--runs 10] [--azure-runs 2]

Save → the first answer from the new code, with `localml watch` running and a debugger attached (the
suite's DAP client, attached once through the generated launch configuration), measured side by side
in one run on a private copy of specs/ whose run() adds a helper module's value:
- in-process reload (the default): the scoring script loaded again inside the running server, init() runs;
- in-process with keep_state=1: init()'s state carried over, init() not run;
- a new server process per save (localml's way before the in-process reload): the save, then
  `localml debug restart=1`; the debugger session ends with each process;
- the Azure way: the image built again without Docker's cache, the container recreated, a fixed 15 s wait.
Prints medians, best and worst as a Markdown table (the one in the README).
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
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from dap_client import DapClient
from edit_loop import Bench, prepare


def save_to_answer(bench: Bench, base: list[float]) -> float:
    """Write a new helper value; seconds until the endpoint answers with it."""
    bench.edit_code()
    saved = time.perf_counter()
    bench.wait_for(bench.expected(base), timeout=300)
    return time.perf_counter() - saved


def summary(times: list[float]) -> str:
    return f"{statistics.median(times) * 1000:.0f} ms ({min(times) * 1000:.0f}–{max(times) * 1000:.0f})"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--azure-runs", type=int, default=2)
    options = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="localml-bench-"))
    bench = prepare(workdir)
    rows: list[tuple[str, str, float]] = []
    watch = None
    dap = None
    try:
        bench.localml("debug", f"spec={bench.spec}")
        base = bench.answer()
        assert base is not None
        watch = subprocess.Popen([sys.executable, "-m", "localml_tasks", "watch"], cwd=bench.root,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert watch.stdout is not None
        for line in watch.stdout:  # watching once the chain has run
            if "watch         watching" in line:
                break
        launch = json.loads((bench.state / "launch.json").read_text())["configurations"][0]
        dap = DapClient(launch["connect"]["host"], launch["connect"]["port"])
        dap.attach(launch, {})

        in_process = [save_to_answer(bench, base) for _ in range(options.runs)]
        rows.append(("in-process reload, init() runs (the default)", summary(in_process),
                     statistics.median(in_process)))
        bench.localml("debug", "keep_state=1")
        kept = [save_to_answer(bench, base) for _ in range(options.runs)]
        bench.localml("debug", "keep_state=0")
        rows.append(("in-process reload, `keep_state=1` (init() not run)", summary(kept), statistics.median(kept)))
        attached = not dap.disconnected.is_set()
        dap.close()
        dap = None
        watch.terminate()
        watch.wait(timeout=30)
        watch = None

        def new_process() -> float:
            bench.edit_code()
            saved = time.perf_counter()
            bench.localml("debug", "restart=1")
            bench.wait_for(bench.expected(base), timeout=300)
            return time.perf_counter() - saved

        restarts = [new_process() for _ in range(options.runs)]
        rows.append(("a new server process per save (`debug restart=1`, localml's way before)", summary(restarts),
                     statistics.median(restarts)))

        def azure_way() -> float:
            bench.edit_code()
            saved = time.perf_counter()
            bench.azure_way(nocache=True)
            bench.wait_for(bench.expected(base), timeout=900)
            return time.perf_counter() - saved

        azure = [azure_way() for _ in range(options.azure_runs)]
        rows.append(("the Azure way: image rebuilt without cache, container recreated, 15 s wait", summary(azure),
                     statistics.median(azure)))
    finally:
        if dap is not None:
            dap.close()
        if watch is not None:
            watch.terminate()
        subprocess.run([sys.executable, "-m", "localml_tasks", "delete", "images=1"], cwd=bench.root,
                       capture_output=True)
        shutil.rmtree(workdir, ignore_errors=True)

    azure_median = rows[-1][2]
    print(f"save → first answer from the new code, median (best–worst) of {options.runs} "
          f"({options.azure_runs} for the Azure way); debugger attached through the in-process rows: {attached}")
    print()
    print("| save → first new answer | time | vs. the Azure way |")
    print("|---|---|---|")
    for what, shown, median in rows:
        print(f"| {what} | {shown} | {azure_median / median:.0f}× faster |" if median != azure_median
              else f"| {what} | {shown} | |")


if __name__ == "__main__":
    main()
