"""Watch mode: save a file, the endpoint follows.

The code folder and the model are watched through the operating system's file events (watchfiles,
as uvicorn uses it), so a save is seen within tens of milliseconds; editor swap and backup files,
__pycache__, .git and the like are ignored, and a burst of saves (format-on-save, a git checkout)
settles into one change. Such a change reloads the scoring script inside the running server.
The few configuration files (deployment YAML, endpoint YAML, conda file) and a model given as a
single file are checked by their size and time on every wake-up: a change there runs the whole
`debug` chain in a child process (a YAML edit recreates the container, a conda edit rebuilds the image).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from watchfiles import DefaultFilter
from watchfiles import watch as file_events

from . import mlflow_model
from .server import SKIPPED_DIRS, watched_files

SETTLE_MS = 50  # a change is reported once the files have been quiet this long ...
LONGEST_BURST_MS = 1600  # ... or after this long, if saves keep coming
CONFIG_CHECK_MS = 300  # how often the configuration files are looked at when nothing else happens

Signature = dict[str, tuple[int, int]]

IGNORED = DefaultFilter(
    ignore_dirs=sorted({*DefaultFilter.ignore_dirs, *SKIPPED_DIRS}),
    # vim probes a folder by writing 4913 in it; Emacs lock files start with .#
    ignore_entity_patterns=[*DefaultFilter.ignore_entity_patterns, r"^4913$", r"\.tmp$"],
)


def signature(paths: Sequence[str]) -> Signature:
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
    folders: Sequence[str],
    polled: Callable[[], list[str]],
    on_change: Callable[[list[str], list[str]], None],
    *,
    on_ready: Callable[[], None] = lambda: None,
    stop: threading.Event | None = None,
) -> None:
    """Call on_change(changed in folders, changed among polled files) after each settled change, until
    Ctrl-C (or stop is set). folders are watched by file events, polled() files by their stat. on_ready
    runs once the operating system reports events: a save from then on is seen; one made while the
    watcher was starting is found by comparing the folders' files then and now."""
    current = signature(polled())
    if not folders:  # nothing to watch by events: the polled files alone
        on_ready()
        while not (stop and stop.wait(CONFIG_CHECK_MS / 1000)):
            latest = signature(polled())
            if latest != current:
                changed, current = changed_paths(current, latest), latest
                on_change([], changed)
        return
    starting = signature(files_in(folders))
    ready = False
    for events in file_events(*folders, watch_filter=IGNORED, step=SETTLE_MS, debounce=LONGEST_BURST_MS,
                              rust_timeout=CONFIG_CHECK_MS, yield_on_timeout=True, stop_event=stop):
        changed_in_folders = {path for _, path in events}
        if not ready:
            ready = True
            changed_in_folders.update(changed_paths(starting, signature(files_in(folders))))
            on_ready()
        latest = signature(polled())
        changed_files = changed_paths(current, latest)
        current = latest
        if changed_in_folders or changed_files:
            on_change(sorted(changed_in_folders), changed_files)


def files_in(folders: Sequence[str]) -> list[str]:
    return [path for folder in folders for path in watched_files(folder, None)]


def folders_and_files(resolved: dict, spec_path: Path, endpoint_yaml: str | None) -> tuple[list[str], list[str]]:
    """(folders watched by events: code and model, files polled: the configuration, and a one-file model)."""
    model = resolved.get("model_path")
    folders = [p for p in (resolved.get("code_dir"), model) if p and os.path.isdir(p)]
    files = [str(spec_path), resolved.get("conda_file"), resolved.get("endpoint_path") or endpoint_yaml]
    if model and not os.path.isdir(model):
        files.append(model)
    files += mlflow_model.environment_sources(resolved)  # a no-code MLflow model's MLmodel and environment files
    return folders, [p for p in files if p]


def run_debug_chain(spec_path: Path, endpoint_yaml: Path | None, overrides: Sequence[str] = ()) -> int:
    """The whole `debug` chain in a child process, with this folder's doit database.

    overrides: set=/deployment=/endpoint_name= variables, passed on (with spec= given, none are remembered)."""
    command = [sys.executable, "-m", "localml_tasks", "debug", f"spec={spec_path}", *overrides]
    if endpoint_yaml:
        command.append(f"endpoint={endpoint_yaml}")
    return subprocess.call(command)
