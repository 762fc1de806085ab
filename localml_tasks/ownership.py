"""Whether a pid named in a state file is a process localml started: checked before every signal.

A state file (process.json, router.json) outlives its process: after a reboot, or once the process is
gone, the pid it names may belong to anyone. localml signals a pid only when the process behind it is
recognisably its own: its command line (or environment) holds what localml gave it (the supervisor's
script and runtime folder, the router's module and routes file), and it started when localml recorded
(/proc/<pid>/stat field 22, clock ticks since boot, and the boot's id).

This reads /proc (Linux). Without /proc nothing can be checked, so nothing is signalled: the callers
say so and leave the process to the user.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")

OURS, GONE, FOREIGN, UNKNOWN = "ours", "gone", "foreign", "unknown"


@dataclass(frozen=True)
class Identity:
    """How to recognise one process localml started."""

    argv: tuple[str, ...] = ()  # each is an argument, or the end of one after a '/' (a script's path)
    environ: tuple[str, ...] = ()  # each is a NAME=value of its environment
    start_ticks: int | None = None  # recorded when localml started it: must be equal
    started_after: int | None = None  # for what it started in turn: not earlier than this
    boot_id: str | None = None  # the boot it was recorded in: must be this one


@dataclass(frozen=True)
class Seen:
    """What /proc says about a live process."""

    argv: tuple[str, ...]
    environ: tuple[str, ...]
    start_ticks: int
    boot_id: str | None


def has_proc() -> bool:
    return (PROC / "self" / "stat").exists()


def parse_stat(text: str) -> tuple[str, int, int, int]:
    """(state, parent pid, session id, start time in clock ticks since boot) from /proc/<pid>/stat."""
    fields = text.rsplit(")", 1)[1].split()  # the command name, in parentheses, may hold spaces and ')'
    # fields[0] is field 3 (state): field n is fields[n - 3]
    return fields[0], int(fields[1]), int(fields[3]), int(fields[19])


def split_nul(data: bytes) -> tuple[str, ...]:
    return tuple(part.decode(errors="replace") for part in data.split(b"\0") if part)


def boot_id() -> str | None:
    try:
        return (PROC / "sys" / "kernel" / "random" / "boot_id").read_text().strip()
    except OSError:
        return None


def start_ticks(pid: int) -> int | None:
    try:
        return parse_stat((PROC / str(pid) / "stat").read_text())[3]
    except (OSError, ValueError, IndexError):
        return None


def stamp(pid: int) -> dict[str, int | str | None]:
    """What a state file records about a process localml has just started (it is recorded from the fork on,
    so reading it right after Popen is exact)."""
    return {"start_ticks": start_ticks(pid), "boot_id": boot_id()}


def look(pid: int) -> Seen | None:
    """The live process behind pid, or None when there is none (or only a zombie)."""
    folder = PROC / str(pid)
    try:
        state, _, _, ticks = parse_stat((folder / "stat").read_text())
        argv = split_nul((folder / "cmdline").read_bytes())
    except (OSError, ValueError, IndexError):
        return None
    if state in ("Z", "X"):
        return None
    try:
        environ = split_nul((folder / "environ").read_bytes())
    except OSError:
        environ = ()  # someone else's process: its environment is not ours to read
    return Seen(argv, environ, ticks, boot_id())


def matches(seen: Seen, identity: Identity) -> bool:
    """Pure: whether what /proc shows is the process the identity describes."""
    if identity.boot_id and seen.boot_id and identity.boot_id != seen.boot_id:
        return False
    if identity.start_ticks is not None and seen.start_ticks != identity.start_ticks:
        return False
    if identity.started_after is not None and seen.start_ticks < identity.started_after:
        return False
    if not all(any(arg == word or arg.endswith("/" + word) for arg in seen.argv) for word in identity.argv):
        return False
    return all(entry in seen.environ for entry in identity.environ)


def verdict(pid: int | None, identity: Identity) -> str:
    """OURS: signal it. GONE: nothing runs under pid. FOREIGN: another process has it (the file is stale).
    UNKNOWN: no /proc here to tell."""
    if not pid or pid <= 0:
        return GONE
    if not has_proc():
        return UNKNOWN if _exists(pid) else GONE
    seen = look(pid)
    if seen is None:
        return GONE
    return OURS if matches(seen, identity) else FOREIGN


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: nothing is sent, only whether pid exists
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def session_members(session_id: int) -> list[int]:
    """Every live process in a session."""
    pids = []
    for entry in PROC.iterdir() if has_proc() else []:
        if entry.name.isdigit():
            try:
                state, _, session, _ = parse_stat((entry / "stat").read_text())
            except (OSError, ValueError, IndexError):
                continue
            if session == session_id and state not in ("Z", "X"):
                pids.append(int(entry.name))
    return pids


def our_session_members(leaders: Sequence[int], ours: Sequence[int], member: Identity) -> list[int]:
    """The processes to end in the leaders' sessions: every member of a session whose leader was verified
    ours (`ours`), and in the others only the members that are themselves recognisably ours."""
    pids = []
    for leader in leaders:
        for pid in session_members(leader):
            if leader in ours or verdict(pid, member) == OURS:
                pids.append(pid)
    return pids


def stale_line(file_name: str, pid: int, found: str) -> str:
    """The one line that says a state file named a process that is not (or cannot be shown to be) ours."""
    if found == UNKNOWN:
        return (f"{file_name} named pid {pid}, and without /proc localml cannot tell whether it is its own: "
                "removed the file, signalled nothing (end that process yourself if it is localml's)")
    return f"{file_name} named pid {pid}, which is not localml's (a stale file): removed it, signalled nothing"
