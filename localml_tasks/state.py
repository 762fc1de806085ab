"""Where generated state lives: everything under .localml/ in the working directory."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import sys
import threading
from pathlib import Path
from typing import Any

from .errors import LocalmlError, _display_path

STATE_DIR_NAME = ".localml"


def state_root() -> Path:
    return Path.cwd() / STATE_DIR_NAME


def make_state_root(runs: str) -> str | None:
    """Make .localml/ in the working directory; None, or the error (with its fix) to print when it cannot be
    made. runs: what the user ran ("doit", "localml"), for the fix."""
    try:
        state_root().mkdir(exist_ok=True)
    except OSError as exc:
        what = "a file is in its place" if isinstance(exc, FileExistsError) else exc.strerror
        return (f"error: {STATE_DIR_NAME}: cannot make localml's state folder here: {what}\n"
                f"  fix: move {STATE_DIR_NAME} away (localml keeps its state in that folder), or run {runs} in a "
                "folder where it can write")
    return None


def deployment_dir(endpoint: str, deployment: str) -> Path:
    return state_root() / "endpoints" / endpoint / deployment


def current_file() -> Path:
    return state_root() / "current.json"


def write_if_changed(path: Path, text: str) -> bool:
    """Write atomically, and only when the content differs: keeps doit's file hashes honest.

    A temporary file in the same folder, then os.replace: a reader sees the old content or the new, never
    a part. When the write fails (a full disk), the temporary file is removed, the old content stays, and a
    LocalmlError names the file and the cause."""
    try:
        if path.read_text(encoding="utf-8") == text:
            return False
    except (OSError, ValueError):  # absent, unreadable or not UTF-8: written anew below
        pass
    # one name per process and thread: two writers never share a temporary file (".tmp": watchers skip it)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)  # the umask applies, as for open()
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise write_error(path, exc) from None
    return True


def write_error(path: Path, exc: OSError) -> LocalmlError:
    """The one line for a state file that could not be written, with what to do about it."""
    folder = path.parent
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        what = "the disk is full" if exc.errno == errno.ENOSPC else "the disk quota is used up"
        return LocalmlError.one(f"cannot write: {what} ({exc.strerror})", file=str(path),
                                fix=f"free some space on the disk holding {folder} (`docker system prune` removes "
                                    "unused images and build cache), then run the command again")
    if exc.errno == errno.EROFS:
        return LocalmlError.one(f"cannot write: {exc.strerror}", file=str(path),
                                fix=f"run localml from a folder on a writable disk (it keeps its state in "
                                    f"{STATE_DIR_NAME}/ there)")
    if exc.errno in (errno.EACCES, errno.EPERM):
        return LocalmlError.one(f"cannot write: {exc.strerror}", file=str(path),
                                fix=f"make {folder} writable for this user (ls -ld {folder} shows its owner)")
    return LocalmlError.one(f"cannot write: {exc.strerror or exc}", file=str(path),
                            fix=f"check {folder} and the disk it is on, then run the command again")


def write_json_if_changed(path: Path, data: Any, *, sort_keys: bool = True) -> bool:
    return write_if_changed(path, json.dumps(data, indent=2, sort_keys=sort_keys) + "\n")


def read_json(path: Path, expect: type | None = dict) -> Any | None:
    """A state file's data, or None when it is absent or corrupt (not JSON, not of the type expected, or a
    field of a known state file of the wrong type). A corrupt file is reported once, as one line on stderr,
    and treated as absent: the stage that owns it writes it again. Every state file of localml is a JSON
    object (expect=dict); expect=None takes any JSON value."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:  # a folder in its place, unreadable, not UTF-8
        _report_corrupt(path, f"cannot read it: {getattr(exc, 'strerror', None) or exc}")
        return None
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:
        _report_corrupt(path, f"not JSON: {getattr(exc, 'msg', None) or exc}"
                              + (f" (line {exc.lineno})" if isinstance(exc, json.JSONDecodeError) else ""))
        return None
    if expect is not None and not _is(data, expect):
        _report_corrupt(path, f"expected {_describe(expect)}, found {_describe(type(data))}")
        return None
    missing = [key for key in REQUIRED.get(path.name, ()) if key not in data] if isinstance(data, dict) else []
    if missing:
        _report_corrupt(path, f"'{missing[0]}' is missing")
        return None
    shape = SHAPES.get(path.name, {}) if isinstance(data, dict) else {}
    for key, value in data.items() if shape else ():
        types = shape.get(key, shape.get("*"))
        if types is not None and not _is(value, types):
            _report_corrupt(path, f"'{key}' should be {_describe(types)}, found {_describe(type(value))}")
            return None
    return data


# the fields of localml's own state files (by file name) that code reads without checking their type ("*": every
# value of a cache): a file whose field has another type was not written by this localml, and is treated as
# absent like a corrupt one
_OPTIONAL_INT = (int, type(None))
_OPTIONAL_STR = (str, type(None))
SHAPES: dict[str, dict[str, type | tuple[type, ...]]] = {
    "current.json": {"spec": str, "endpoint": str, "deployment": str, "endpoint_yaml": _OPTIONAL_STR,
                     "overrides": (dict, type(None))},
    "settings.json": {"allow_python_mismatch": bool, "runtime": str},
    "router.json": {"pid": int, "port": int, "start_ticks": _OPTIONAL_INT, "boot_id": _OPTIONAL_STR},
    "process.json": {"supervisor_pid": int, "scoring_port": int, "debug_port": int, "venv": str,
                     "config_hash": str, "log_file": str, "start_ticks": _OPTIONAL_INT, "boot_id": _OPTIONAL_STR},
    "routes.json": {"endpoint": str, "traffic": dict, "mirror_traffic": dict, "deployments": dict, "starts": dict},
    "command.json": {"argv": list, "env": dict, "reload": str, "settings": dict, "restart": int},
    "status.json": {"pid": _OPTIONAL_INT, "supervisor": _OPTIONAL_INT},
    "venv-plan.json": {"venv": str, "lock_file": _OPTIONAL_STR, "requirements": list},
    "deployment.json": {"spec_path": str, "code_dir": str, "environment_variables": dict,
                        "readiness_probe": dict, "liveness_probe": dict},
    "managed-python.json": {"*": dict},  # lock.py's caches, by key
    "base-python.json": {"*": str},  # image.py's
    "base-conda.json": {"*": str},
    "context-files.json": {"*": list},  # build_context.py's: [size:mtime, content hash] by file
}
# the fields code reads as data[key]: a file without one is treated as absent too
REQUIRED: dict[str, tuple[str, ...]] = {
    "router.json": ("pid", "port"),
    "process.json": ("supervisor_pid", "scoring_port", "debug_port", "venv", "config_hash", "log_file"),
    "venv-plan.json": ("python", "version", "requirements", "conda_file", "venv"),
}
_reported: set[Path] = set()


def _is(value: Any, types: type | tuple[type, ...]) -> bool:
    types = types if isinstance(types, tuple) else (types,)
    if isinstance(value, bool) and bool not in types:
        return False  # True is an int to Python, not a pid or a port
    return isinstance(value, types)


def _describe(types: type | tuple[type, ...]) -> str:
    names = {dict: "a JSON object", list: "a list", str: "a string", int: "a whole number", float: "a number",
             bool: "true or false", type(None): "null"}
    return " or ".join(names.get(kind, kind.__name__) for kind in (types if isinstance(types, tuple) else (types,)))


def _report_corrupt(path: Path, why: str) -> None:
    if path.absolute() in _reported:
        return
    _reported.add(path.absolute())
    print(f"warning: ignored the corrupt state file {_display_path(str(path))} ({why}): localml rebuilds it",
          file=sys.stderr)
