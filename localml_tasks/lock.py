"""Stage 2b — the lock: an environment's pip requirements resolved once, on this machine, into exact pins.

uv resolves them (`uv pip compile`) for the Python and the platform the server will run on. Like
conda's solver, which keeps an old scikit-learn beside a numpy of its day, the file's unpinned
requirements are resolved as of the newest exactly pinned one (uv's `--exclude-newer-package NAME=DATE`
for each, DATE = the end of the day that pin was uploaded, from the package index); the serving stack
localml relies on keeps its normal resolution. The lock is kept under .localml/locks/ and reused until
the requirements, the Python or the platform change (relock=1 resolves again): a rebuild installs
exactly what the last one did.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import requests

from .environment import requirement_line
from .errors import LocalmlError, Problem
from .state import read_json, state_root, write_if_changed, write_json_if_changed

# resolved without a date limit: the debug server needs their current API
SERVING_STACK = {"azureml-inference-server-http", "azureml-defaults", "debugpy"}
# never dated either: installers, whose age says nothing about the code's (a bare `- pip` is in most conda files)
INSTALLERS = {"pip", "setuptools", "wheel"}
DEFAULT_INDEX = "https://pypi.org/simple"
_REQUIREMENT = re.compile(r"^\s*(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[[^\]]*\])?\s*(?P<spec>[^;]*)")


@dataclass
class Lock:
    path: Path  # .localml/locks/<key>.txt
    text: str  # exact pins, one a line, with uv's notes on who needs what
    packages: int
    resolved_now: bool  # False: reused from an earlier resolution
    limited_by: str | None  # "scikit-learn==1.2.2 (2023-03-09)": the pin that dated the unpinned ones
    note: str | None = None  # said once: e.g. the date limit could not be met and was dropped

    def describe(self) -> str:
        how = "resolved now" if self.resolved_now else "reused"
        dated = f"; unpinned requirements as of {self.limited_by}" if self.limited_by else ""
        return f"{self.packages} packages locked ({how}{dated})"


def normalized_name(requirement: str) -> str | None:
    match = _REQUIREMENT.match(requirement)
    return re.sub(r"[-_.]+", "-", match["name"]).lower() if match else None


def exact_version(requirement: str) -> str | None:
    """The version of an exact pin (name==1.2.2); None for ranges, wildcards and unpinned names."""
    match = _REQUIREMENT.match(requirement)
    spec = match["spec"].strip() if match else ""
    pinned = re.fullmatch(r"===?\s*([A-Za-z0-9.+!-]+)", spec)
    return pinned[1] if pinned and "*" not in spec else None


def lock_key(requirements: list[str], python_version: str, platform: str) -> str:
    identity = "\0".join([python_version, platform, *requirements])
    return hashlib.sha256(identity.encode()).hexdigest()[:16]


def index_url() -> str:
    return (os.environ.get("UV_DEFAULT_INDEX") or os.environ.get("UV_INDEX_URL") or os.environ.get("PIP_INDEX_URL")
            or DEFAULT_INDEX).rstrip("/")


def upload_day(name: str, version: str) -> datetime | None:
    """When a release's first file was uploaded, from the index's JSON API (PEP 691/700); None if unknown."""
    try:
        answer = requests.get(f"{index_url()}/{name}/", headers={"Accept": "application/vnd.pypi.simple.v1+json"},
                              timeout=30)
        files = answer.json().get("files", []) if answer.ok else []
    except (requests.RequestException, ValueError):
        return None
    release = _flattened(f"{name}-{version}") + "_"  # wheels and sdists alike: name-version followed by - or .
    times = [item["upload-time"] for item in files
             if item.get("upload-time") and _flattened(item.get("filename", "")).startswith(release)]
    if not times:
        return None
    return datetime.fromisoformat(min(times).replace("Z", "+00:00"))


def _flattened(text: str) -> str:
    return re.sub(r"[-_.]+", "_", text).lower()


def date_limits(requirements: list[str],
                progress: Callable[[str], None] = lambda text: None) -> tuple[list[str], str | None]:
    """(uv arguments limiting each unpinned requirement, the pin that dates them) — none without a pin."""
    unpinned = sorted({name for r in requirements if (name := normalized_name(r)) and not exact_version(r)
                       and name not in SERVING_STACK | INSTALLERS})
    if not unpinned:
        return [], None  # nothing to date: the index is not asked
    progress("asking the package index when the pinned requirements were released")
    newest: tuple[datetime, str] | None = None
    for requirement in requirements:
        name, version = normalized_name(requirement), exact_version(requirement)
        if name and version and name not in SERVING_STACK | INSTALLERS:
            uploaded = upload_day(name, version)
            if uploaded and (newest is None or uploaded > newest[0]):
                newest = (uploaded, f"{name}=={version}")
    if newest is None:
        return [], None
    # to the end of that day: what came out beside the pin is of its day too
    limit = (newest[0].astimezone(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
             + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    arguments = [argument for name in unpinned for argument in ("--exclude-newer-package", f"{name}={limit}")]
    return arguments, f"{newest[1]} ({newest[0]:%Y-%m-%d})"


def lock_platform() -> str:
    """The platform the image (or this machine, in process mode) runs: this machine's architecture, on a
    glibc of at least 2.28 (Debian bookworm, Ubuntu 22.04 and Azure's current base images are newer)."""
    return f"{host_machine()}-manylinux_2_28"


def host_machine() -> str:
    """This machine's architecture in the names wheels use (amd64 is x86_64, arm64 is aarch64)."""
    machine = platform.machine().lower()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)


def uv_binary() -> str:
    from uv import find_uv_bin  # the uv package ships the binary: nothing downloaded at run time

    return find_uv_bin()


def compile_lock(requirements: list[str], python_version: str, platform: str, extra: list[str],
                 earlier: str | None = None) -> tuple[int, str]:
    """(exit code, the lock when it worked, else uv's explanation). earlier: a lock whose versions uv keeps
    where they fit (uv prefers what its output file already pins)."""
    with tempfile.TemporaryDirectory(prefix="localml-lock-") as folder:
        output = Path(folder) / "lock.txt"
        output.write_text(earlier or "", encoding="utf-8")
        command = [uv_binary(), "pip", "compile", "-", "--python-version", python_version, "--python-platform",
                   platform, "--no-header", "--quiet", "--index-url", index_url(), "--output-file", str(output),
                   *extra]
        result = subprocess.run(command, input="".join(f"{line}\n" for line in requirements), capture_output=True,
                                text=True, env={**os.environ, "UV_NO_CONFIG": "1"})
        if result.returncode != 0:
            return result.returncode, result.stderr
        return 0, output.read_text(encoding="utf-8")


def lock_environment(requirements: list[str], python_version: str, platform: str, conda_file: str, *,
                     relock: bool = False, progress: Callable[[str], None] = lambda text: None,
                     prefer: Path | None = None) -> Lock:
    """The lock for these requirements on this Python (X.Y, or X.Y.Z: the patch level does not matter) and
    platform: reused, or resolved now. prefer: the deployment's previous lock, whose versions are kept where
    the new requirements allow (adding a package changes nothing else); relock=1 resolves afresh."""
    python_version = ".".join(python_version.split(".")[:2])
    path = state_root() / "locks" / f"{lock_key(requirements, python_version, platform)}.txt"
    if path.exists() and not relock:
        text = path.read_text(encoding="utf-8")
        limited = re.search(r"^# unpinned requirements as of (.+)$", text, re.M)
        return Lock(path, text, _count(text), False, limited[1] if limited else None)
    limits, limited_by = date_limits(requirements, progress)
    note = None
    earlier = prefer.read_text(encoding="utf-8") if prefer and not relock and prefer.is_file() else None
    kept = " (keeping the previous lock's versions where they still fit)" if earlier else ""
    progress(f"resolving {len(requirements)} requirements with uv for Python {python_version} on {platform}{kept}")
    code, output = compile_lock(requirements, python_version, platform, limits, earlier)
    if code != 0 and limits:
        note = f"no resolution as of {limited_by}: resolved without the date limit"
        limited_by = None
        code, output = compile_lock(requirements, python_version, platform, [], earlier)
    if code != 0:
        raise resolution_error(output, requirements, conda_file)
    header = (f"# localml's lock of {Path(conda_file).name} for Python {python_version} on {platform} "
              "(uv pip compile); relock=1 resolves again\n")
    if limited_by:
        header += f"# unpinned requirements as of {limited_by}\n"
    text = header + output
    write_if_changed(path, text)
    return Lock(path, text, _count(text), True, limited_by, note)


def _count(text: str) -> int:
    return sum(1 for line in text.splitlines() if line and not line.startswith((" ", "#")))


def resolution_error(output: str, requirements: list[str], conda_file: str) -> LocalmlError:
    """uv's explanation, at the conda file's line of the first requirement it names."""
    said = [line.strip(" ×╰─▶│").removeprefix("error: ") for line in output.splitlines() if line.strip()]
    named = next((r for r in requirements if (name := normalized_name(r)) and re.search(
        rf"\b{re.escape(name)}\b", output.replace("_", "-").lower())), None)
    line = requirement_line(Path(conda_file), named) if named else None
    what = f"the requirements cannot be resolved ('{named}')" if named else "the requirements cannot be resolved"
    return LocalmlError([Problem(f"{what}: {' '.join(said)[:1500]}", file=conda_file, line=line,
                                 key="dependencies",
                                 fix="check the package names and versions on the package index; nothing was built")])


@dataclass
class ManagedPython:
    """A Python uv can install into the image, when the image's own Python is not the one the file pins."""

    version: str  # X.Y.Z
    url: str
    reachable: bool  # its download answered from this machine


def managed_python(version: str, platform: str) -> ManagedPython | None:
    """uv's CPython download for version (X.Y) on platform (<arch>-manylinux...), and whether it can be
    fetched from here; None when uv has none. Checked once a day (a refused network can take seconds)."""
    cache_file = state_root() / "cache" / "managed-python.json"
    cache = read_json(cache_file) or {}
    key = f"{version} {platform}"
    known = cache.get(key)
    if known and time.time() - known.get("checked", 0) < 86400:
        return ManagedPython(known["version"], known["url"], known["reachable"]) if known.get("url") else None
    arch = platform.split("-", 1)[0]
    listed = subprocess.run([uv_binary(), "python", "list", "--only-downloads", "--all-platforms", "--all-arches",
                             "--output-format", "json", version], capture_output=True, text=True,
                            env={**os.environ, "UV_NO_CONFIG": "1"})
    try:
        downloads = json.loads(listed.stdout) if listed.returncode == 0 else []
    except ValueError:
        downloads = []
    candidates = [item for item in downloads if item.get("implementation") == "cpython" and item.get("os") == "linux"
                  and item.get("arch") == arch and item.get("libc") == "gnu" and item.get("variant") == "default"
                  and item.get("url")]
    found = None
    if candidates:
        best = max(candidates, key=lambda item: tuple(item["version_parts"].values()))
        try:
            reachable = requests.head(best["url"], allow_redirects=True, timeout=5).ok
        except requests.RequestException:
            reachable = False
        found = ManagedPython(best["version"], best["url"], reachable)
    cache[key] = {"checked": time.time(), **({"version": found.version, "url": found.url,
                                               "reachable": found.reachable} if found else {})}
    write_json_if_changed(cache_file, cache)
    return found
