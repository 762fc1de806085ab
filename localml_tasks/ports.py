"""Host ports for servers, debuggers and routers: free on 127.0.0.1, and not promised to another localml command.

Choosing a port and binding it happen at two moments: between them another localml command (another project
folder, a second terminal) could choose the same port, and the server started second would fail to bind. Every
choice is therefore recorded in a machine-wide reservations file (ports.json beside the locks, machine.py), under
a lock: a port chosen by another live process in the last RESERVED_S seconds is passed over. A process-mode
server's ports are held for as long as its supervisor lives (`hold_for`): its server may crash and be started
again on them, and no other deployment may take them meanwhile (a container's are held by Docker itself).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from .contract import LOOPBACK
from .errors import LocalmlError
from .machine import lock_dir
from .server import process_is_alive

RESERVED_S = 120.0  # long enough for a container or a server to start and bind; a bound port is busy anyway
SPAN = 200  # ports tried after the first


def pick(first: int, taken: set[int]) -> int:
    """The first port from `first` on that is free here, not in `taken` (Docker's published ports) and not
    reserved by another command; reserved for this process from now on."""
    with _reservations() as reserved:
        mine = os.getpid()
        others = {port for port, (pid, _, _) in reserved.items() if pid != mine}
        for port in range(first, first + SPAN):
            if port not in others and _is_free(port, taken):
                reserved[port] = (mine, time.time(), False)
                return port
    raise LocalmlError.one(f"no free port on {LOOPBACK} between {first} and {first + SPAN - 1}",
                           fix="stop what is listening there, or delete old local endpoints (doit delete)")


def hold_for(pid: int, held: list[int]) -> None:
    """Reserve these ports for as long as process `pid` lives (a process-mode supervisor)."""
    with _reservations() as reserved:
        for port in held:
            reserved[port] = (pid, time.time(), True)


def _is_free(port: int, taken: set[int]) -> bool:
    if port in taken:
        return False
    # SO_REUSEADDR as servers set it: a port in TIME_WAIT after our own requests is free
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((LOOPBACK, port))
        except OSError:
            return False
    return True


@contextlib.contextmanager
def _reservations() -> Iterator[dict[int, tuple[int, float, bool]]]:
    """The live reservations {port: (pid, when, for its whole life)}, locked for the block and written back."""
    folder = lock_dir()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "ports.json"
    with open(folder / "ports.lock", "a+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            reserved = _live(_read(path))
            yield reserved
            temporary = path.with_name(f".ports.{os.getpid()}.tmp")
            temporary.write_text(json.dumps({str(port): list(value) for port, value in reserved.items()}))
            os.replace(temporary, path)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _read(path: Path) -> dict[int, tuple[int, float, bool]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return {int(port): (int(value[0]), float(value[1]), bool(value[2:3] and value[2]))
                for port, value in data.items()}
    except (OSError, ValueError, TypeError, IndexError, AttributeError):
        return {}  # none yet, or a damaged file: reservations only narrow a race, starting afresh is safe


def _live(reserved: dict[int, tuple[int, float, bool]]) -> dict[int, tuple[int, float, bool]]:
    now = time.time()
    return {port: (pid, when, lasting) for port, (pid, when, lasting) in reserved.items()
            if (lasting or now - when < RESERVED_S) and process_is_alive(pid)}

