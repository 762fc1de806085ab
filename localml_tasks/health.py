"""Stage 5 — health: poll the liveness route until it answers 200, or say why it never will.

When the server dies (init() raising, an import error, a bad entry script) the cause is
read out of its log: the traceback, with container paths mapped back to the user's files.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
from rich.console import Console

from .errors import LocalmlError, Problem

FAILED_HEADER = "x-localml-script"  # the debug server's 503 answers while the scoring script cannot load

POLL_INTERVAL_S = 0.25
console = Console(highlight=False)


@dataclass
class Cause:
    """What a failed server log says went wrong."""

    summary: str  # e.g. "ValueError: model file missing"
    traceback: list[str]
    user_file: str | None  # host path of the innermost frame in the user's code
    user_line: int | None
    function: str | None

    def described(self) -> str:
        """ " in init(): ValueError: ..." and the traceback below it, indented."""
        in_function = f" in {self.function}()" if self.function else ""
        trace = "\n    ".join(self.traceback)
        return f"{in_function}: {self.summary}\n    {trace}"


_FRAME = re.compile(r'^\s*File "(?P<file>[^"]+)", line (?P<line>\d+), in (?P<func>\S+)')


def extract_cause(log: str, path_map: dict[str, str]) -> Cause | None:
    """Find the traceback in a server log that runs through the user's code; map its paths to the host.

    path_map: container folder -> host folder (e.g. /var/azureml-app/onlinescoring -> ~/proj/onlinescoring).
    The server wraps the user's exception in its own (raise ... from ...), so the last traceback is
    usually the server's: prefer the last one with a frame in the user's files.
    """
    lines = [_strip_log_prefix(line) for line in log.splitlines()]
    blocks = _traceback_blocks(lines)
    if not blocks:
        return None
    causes = [_cause_of(block, path_map) for block in blocks]
    in_user_code = [cause for cause in causes if cause.user_file]
    return in_user_code[-1] if in_user_code else causes[-1]


def _traceback_blocks(lines: list[str]) -> list[list[str]]:
    blocks: list[list[str]] = []
    current: list[str] | None = None
    for line in lines:
        if "Traceback (most recent call last):" in line:
            current = ["Traceback (most recent call last):"]
            blocks.append(current)
        elif current is not None:
            current.append(line)
            if line and not line.startswith((" ", "\t")):
                current = None  # the exception line ends the block
    return blocks


def _cause_of(block: list[str], path_map: dict[str, str]) -> Cause:
    user_file = user_line = function = None
    mapped = []
    for line in block:
        match = _FRAME.match(line)
        host = _to_host(match["file"], path_map) if match else None
        if match and host:
            user_file, user_line, function = host, int(match["line"]), match["func"]
            line = line.replace(match["file"], host)
        mapped.append(line)
    return Cause(summary=block[-1].strip(), traceback=mapped, user_file=user_file, user_line=user_line,
                 function=function)


def model_dir_listing(log: str) -> list[str]:
    """The server lists the model folder after init() fails: worth showing beside a FileNotFoundError."""
    lines = [_strip_log_prefix(line) for line in log.splitlines()]
    for index, line in enumerate(lines):
        if line.strip() == "Model Directory Contents:":
            listing = []
            for item in lines[index + 1:]:
                if not item.strip() or item.startswith(("Worker", "Shutting", "Reason", "20")):
                    break
                listing.append(item)
            return listing
    return []


def _strip_log_prefix(line: str) -> str:
    # azmlinfsrv prefixes its records with "2026-01-01 00:00:00,000 E [12] azmlinfsrv - "
    match = re.match(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ \w \[\d+\] [\w.]+ - (.*)$", line)
    return match[1] if match else line


def _to_host(path: str, path_map: dict[str, str]) -> str | None:
    for inside, outside in path_map.items():
        if path == inside or path.startswith(inside.rstrip("/") + "/"):
            return str(Path(outside) / path[len(inside):].lstrip("/"))
    return None


def failure_error(what: str, log: str, path_map: dict[str, str], fix: str,
                  conda_file: str | None = None) -> LocalmlError:
    fix = environment_fix(log, conda_file) or fix
    cause = extract_cause(log, path_map)
    if cause is None:
        tail = [line for line in log.splitlines() if line.strip()][-12:]
        detail = "\n    ".join(tail) if tail else "(the server printed nothing)"
        return LocalmlError.one(f"{what}; the server's last lines:\n    {detail}", fix=fix)
    text = cause.described()
    listing = model_dir_listing(log)
    if listing and "FileNotFoundError" in cause.summary:
        text += "\n    the model folder (AZUREML_MODEL_DIR) holds:\n      " + "\n      ".join(listing)
    return LocalmlError([Problem(
        f"{what}{text}",
        file=cause.user_file, line=cause.user_line, fix=fix,
    )])


# what numpy and compiled packages built against another numpy say: the environment, not the user's code
ABI_MISMATCH = ("numpy.dtype size changed", "compiled against API version", "compiled using NumPy 1.x",
                "_ARRAY_API not found", "numpy.core.multiarray failed to import")


def environment_fix(text: str, conda_file: str | None) -> str | None:
    """The fix for a binary mismatch between numpy and a package compiled against another numpy, if text
    shows one: pin numpy in the conda file (an environment rebuild), not a code edit."""
    if not any(marker in text for marker in ABI_MISMATCH):
        return None
    where = conda_file or "the conda file"
    return (f"a compiled package was built against another numpy: pin numpy in {where} to a version of that "
            "package's day (e.g. numpy<2 for packages from before mid-2024), then doit debug: the environment "
            "is rebuilt; no code edit can fix this")


INIT_STARTED = "Invoking user's init function"  # azmlinfsrv logs these around init()
INIT_DONE = "Users's init has completed successfully"


def describe_probe(name: str, probe: Any) -> str:
    return (f"{name}: initial_delay {probe.initial_delay} s + failure_threshold {probe.failure_threshold} "
            f"x period {probe.period} s, each probe timing out after {probe.timeout} s")


def probe_deadline(probe: Any) -> float:
    """How long Azure keeps probing before it gives up on the container."""
    return probe.initial_delay + probe.period * probe.failure_threshold


def wait_until_healthy(
    url: str,
    *,
    probe: Any,
    is_alive: Callable[[], bool],
    read_log: Callable[[], str],
    path_map: dict[str, str],
    label: str,
    script_failure: Callable[[], LocalmlError | None] = lambda: None,
    conda_file: str | None = None,
) -> float:
    """Poll url until 200 within the readiness probe's limits; returns seconds taken.

    Polls from the start, not only after initial_delay: a server that is ready sooner is reported
    sooner. A server that answers that its scoring script failed to load (script_failure says why) is
    reported at once. Raises LocalmlError with the cause otherwise."""
    started = time.monotonic()
    deadline_s = probe_deadline(probe)
    last_problem = "no answer yet"
    with console.status(f"[bold]{label}[/]: waiting for {url}", spinner="dots") as status:
        while True:
            elapsed = time.monotonic() - started
            try:
                answer = requests.get(url, timeout=max(probe.timeout, 1))
                if answer.status_code == 200:
                    return time.monotonic() - started
                if answer.status_code == 503 and answer.headers.get(FAILED_HEADER) == "failed":
                    error = script_failure()
                    if error is not None:
                        raise error
                last_problem = f"it answered {answer.status_code}"
            except requests.Timeout:
                last_problem = f"a probe got no answer within {probe.timeout} s"
            except requests.RequestException:
                last_problem = "nothing listened on the port yet"
            if not is_alive():
                raise failure_error(
                    "the server stopped during start-up", read_log(), path_map,
                    fix="fix the error above and run doit debug again (no rebuild needed for code edits); "
                        "the whole log: doit logs", conda_file=conda_file,
                )
            if elapsed > deadline_s:
                log = read_log()
                still_in_init = INIT_STARTED in log and INIT_DONE not in log
                why = "init() was still running" if still_in_init else last_problem
                raise failure_error(
                    f"not ready within {deadline_s:.0f} s at {url} ({describe_probe('readiness_probe', probe)}): "
                    f"{why}", log, path_map,
                    fix="make init() faster, or raise readiness_probe.initial_delay/period/failure_threshold "
                        "in the deployment YAML; the container is left running (doit logs shows its output)",
                )
            status.update(f"[bold]{label}[/]: waiting for {url} ({elapsed:.1f} s)")
            time.sleep(POLL_INTERVAL_S)


def check_liveness(url: str, probe: Any) -> None:
    """One liveness probe, as Azure sends them once the container is ready."""
    try:
        answer = requests.get(url, timeout=max(probe.timeout, 1))
    except requests.RequestException as exc:
        problem = f"no answer within {probe.timeout} s" if isinstance(exc, requests.Timeout) else "no answer"
    else:
        if answer.status_code == 200:
            return
        problem = f"it answered {answer.status_code}"
    raise LocalmlError.one(f"the liveness probe failed at {url}: {problem} ({describe_probe('liveness_probe', probe)})",
                           fix="the liveness route must answer 200 within liveness_probe.timeout; "
                               "Azure restarts containers that fail it")


RELOAD_FIX = ("fix it and save again: the server stays up (answering 503 with this error until then) and reloads "
              "in place, the debugger still attached")


def script_failure(load: Any, conda_file: str | None, what: str = "") -> LocalmlError:
    """The error for a scoring script that failed to load (a server.LoadOutcome): where in the user's code,
    and the traceback; an environment problem (numpy's binary interface) gets the environment's fix."""
    where = f" in {load.function}()" if load.function else ""
    trace = "\n    ".join(load.traceback.rstrip().splitlines())
    because = f" ({what})" if what else ""
    fix = environment_fix(load.traceback, conda_file) or RELOAD_FIX
    return LocalmlError([Problem(f"the scoring script failed to load{because}{where}: {load.message}\n    {trace}",
                                 file=load.file, line=load.line, fix=fix)])
