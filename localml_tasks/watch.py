"""Watch mode: save a file, the endpoint follows.

Polls the deployment's files (code, model, YAML, conda file) and, once a change has settled,
runs the same `debug` chain in a child process: code and model edits reload the server in
place, a YAML edit recreates the container, a conda edit rebuilds the image. Polling needs no
extra dependency and works on every file system, bind mounts and network shares included.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from .server import watched_files

POLL_S = 0.3
SETTLE_S = 0.3  # editors write in several steps: wait until the files stop changing

Signature = dict[str, tuple[int, int]]


def signature(paths: list[str]) -> Signature:
    out: Signature = {}
    for path in paths:
        try:
            stat = os.stat(path)
        except OSError:
            continue
        out[path] = (stat.st_mtime_ns, stat.st_size)
    return out


def changed_paths(before: Signature, after: Signature) -> list[str]:
    return sorted(p for p in before.keys() | after.keys() if before.get(p) != after.get(p))


def watch(
    files: Callable[[], list[str]],
    on_change: Callable[[list[str]], None],
    *,
    stop_after: float | None = None,
) -> None:
    """Call on_change(changed) after each settled change; until Ctrl-C (or stop_after seconds)."""
    started = time.monotonic()
    current = signature(files())
    while stop_after is None or time.monotonic() - started < stop_after:
        time.sleep(POLL_S)
        latest = signature(files())
        if latest == current:
            continue
        while True:  # debounce
            time.sleep(SETTLE_S)
            settled = signature(files())
            if settled == latest:
                break
            latest = settled
        changed = changed_paths(current, latest)
        current = latest
        on_change(changed)


def deployment_files(resolved: dict, spec_path: Path, endpoint_yaml: str | None) -> list[str]:
    extra = [str(spec_path), resolved.get("conda_file"), resolved.get("endpoint_path") or endpoint_yaml]
    return watched_files(resolved.get("code_dir"), resolved.get("model_path")) + [p for p in extra if p]


def run_debug_chain(spec_path: Path, endpoint_yaml: Path | None, overrides: Sequence[str] = ()) -> int:
    """The whole `debug` chain in a child process, with this folder's doit database.

    overrides: set=/deployment=/endpoint_name= variables, passed on (with spec= given, none are remembered)."""
    command = [sys.executable, "-m", "localml_tasks", "debug", f"spec={spec_path}", *overrides]
    if endpoint_yaml:
        command.append(f"endpoint={endpoint_yaml}")
    return subprocess.call(command)
