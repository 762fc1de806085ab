"""Machine-wide state, shared by every project folder: the folder of localml's locks and port reservations,
and the locks themselves.

LOCALML_LOCK_DIR, else $XDG_CACHE_HOME/localml/locks, else ~/.cache/localml/locks. Per machine, not per
project: container names, image tags and host ports are one per Docker engine and one per machine.

A lock is an fcntl.flock on a file in that folder: the kernel lets go of it when its holder dies, however it
dies (no stale locks); the file records the holder's pid only to say for whom a command waits. Its descriptor
is not inherited by the processes localml starts (PEP 446), so none of them keeps a lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path

LOCK_DIR_VARIABLE = "LOCALML_LOCK_DIR"


def lock_dir() -> Path:
    given = os.environ.get(LOCK_DIR_VARIABLE)
    if given:
        return Path(given)
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "localml" / "locks"


_held: dict[str, int] = {}  # lock file name -> its descriptor, while this process holds it


def _holder(descriptor: int) -> str:
    with contextlib.suppress(OSError, ValueError):
        pid = int(os.pread(descriptor, 32, 0).decode().strip() or 0)
        if pid > 0:
            return f" (pid {pid})"
    return ""


def acquire(file_name: str, what: str, say: Callable[[str], None]) -> bool:
    """Take the lock, waiting (and saying so once) while another command holds it. False when this process
    holds it already."""
    if file_name in _held:
        return False
    folder = lock_dir()
    folder.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(folder / file_name, os.O_RDWR | os.O_CREAT, 0o644)  # not inherited (PEP 446)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say(f"waiting for another localml command on {what}{_holder(descriptor)} …")
            fcntl.flock(descriptor, fcntl.LOCK_EX)
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, f"{os.getpid()}\n".encode(), 0)
    except BaseException:  # Ctrl-C while waiting
        os.close(descriptor)
        raise
    _held[file_name] = descriptor
    return True


def release(file_name: str) -> None:
    descriptor = _held.pop(file_name, None)
    if descriptor is not None:
        with contextlib.suppress(OSError):
            os.ftruncate(descriptor, 0)
        os.close(descriptor)  # closing the only descriptor of the open file lets go of the flock


@contextlib.contextmanager
def image_lock(name: str, what: str, say: Callable[[str], None], *, lent: bool = False) -> Iterator[None]:
    """The lock of one image name on this machine's engine, for as long as the block runs: two commands (two
    project folders) building the same environment build it once, and (lent=True) two builds lending one FROM
    name to different local images (image_aliases) never build on each other's."""
    file_name = ("from-" if lent else "image-") + re.sub(r"[^A-Za-z0-9._-]", "_", name)[:200] + ".lock"
    taken = acquire(file_name, what, say)
    try:
        yield
    finally:
        if taken:
            release(file_name)
