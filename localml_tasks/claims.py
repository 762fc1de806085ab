"""Who may touch a deployment: the project folder that created it, and one localml command at a time.

Ownership. A deployment belongs to the project folder that created it: its container carries that folder in a
label (runtime.container_folder), and an endpoint's router runs from the folder whose .localml/ holds its
routes file (its command line names it). Process-mode deployments live under the folder's own .localml/, so
they are per folder already. `claim_deployment` is the one check: another folder's `debug`, `watch`, `delete`
or container stage of the same endpoint/deployment refuses before it touches anything, naming the owner's
folder and the ways out; with takeover=1 it removes the other folder's container and stops the other folder's
router (through endpoint.stop_router, which signals only a router that is provably that folder's), and the
command goes on to start its own.

Locks. Commands on one deployment are serialised by a lock (machine.py: an fcntl.flock on a file under one
machine-wide folder, LOCALML_LOCK_DIR, else $XDG_CACHE_HOME/localml/locks, else ~/.cache/localml/locks): the container
name `localml-<endpoint>-<deployment>` is one per Docker engine, so two project folders racing for it
must meet at the same file, which a folder's own .localml/ cannot give. The user's cache is the place
every folder of this user reaches (the Docker engine is the user's too, and /tmp is shared with every
user and cleaned at will). The names are checked against Azure's rule before they get here, so they
are safe file names. A lock is taken with the first stage that touches the deployment and held until
the process exits (the kernel lets go of it then, however the process dies; the processes localml starts,
the router and a supervisor, never inherit it).
The endpoint's lock (for its router and routes) is always taken after a deployment's, never before, so
two commands cannot wait for each other.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from . import endpoint as endpoint_stage
from . import runtime
from .errors import LocalmlError
from .machine import acquire, release


def _deployment_file(endpoint: str, deployment: str) -> str:
    return f"{endpoint}--{deployment}.lock"


def _endpoint_file(endpoint: str) -> str:
    return f"{endpoint}.endpoint.lock"


def hold_deployment(endpoint: str, deployment: str, say: Callable[[str], None]) -> bool:
    """Hold the deployment's lock until this process exits. True when it was taken now."""
    return acquire(_deployment_file(endpoint, deployment), f"{endpoint}/{deployment}", say)


@contextlib.contextmanager
def deployment_lock(endpoint: str, deployment: str, say: Callable[[str], None]) -> Iterator[None]:
    """The deployment's lock for a while (watch's reloads between two runs of the chain)."""
    taken = hold_deployment(endpoint, deployment, say)
    try:
        yield
    finally:
        if taken:
            release(_deployment_file(endpoint, deployment))


@contextlib.contextmanager
def endpoint_lock(endpoint: str, say: Callable[[str], None]) -> Iterator[None]:
    """The endpoint's lock (its router and routes file), for as long as the block runs."""
    taken = acquire(_endpoint_file(endpoint), f"endpoint {endpoint}", say)
    try:
        yield
    finally:
        if taken:
            release(_endpoint_file(endpoint))


# --- ownership ------------------------------------------------------------------------------


def here() -> Path:
    return Path.cwd().resolve()


def _same_folder(a: str | Path, b: Path) -> bool:
    try:
        return Path(a).resolve() == b
    except OSError:
        return str(a) == str(b)


def foreign_container(endpoint: str, deployment: str) -> tuple[Any, str] | None:
    """(the container, its folder) when the deployment's container was created by another project folder."""
    found = runtime.container_of(endpoint, deployment)
    if found is None:
        return None
    folder = runtime.container_folder(found)
    if not folder or _same_folder(folder, here()):
        return None  # a container from before the label was written is taken as this folder's
    return found, folder


def foreign_routers(endpoint: str) -> list[Path]:
    """The other project folders whose router serves this endpoint."""
    return [folder for folder in endpoint_stage.router_folders(endpoint) if not _same_folder(folder, here())]


def _refusal(what: str, owner: str, reason: str) -> LocalmlError:
    return LocalmlError.one(
        f"{what} belongs to another project folder: {owner} ({reason}); nothing was changed",
        fix=f"run `doit delete` in {owner}, or use another name here (endpoint_name=<another name>), or take it "
            "over from here: takeover=1 (removes that folder's container and stops its router)")


def claim_endpoint(endpoint: str, takeover: bool, say: Callable[[str], None]) -> None:
    """Refuse (or with takeover, stop) a router of this endpoint that another project folder runs."""
    for folder in foreign_routers(endpoint):
        if not takeover:
            raise _refusal(f"endpoint {endpoint}", str(folder), "its router runs from there")
        with endpoint_lock(endpoint, say):
            stopped = endpoint_stage.stop_router(endpoint, root=folder)
        if stopped is not None and stopped[1] == "ours":
            say(f"takeover=1: stopped the router of endpoint {endpoint} that {folder} ran (pid {stopped[0]})")
        else:
            say(f"takeover=1: the router of endpoint {endpoint} that {folder} ran could not be shown to be "
                "localml's: nothing signalled")


def claim_deployment(endpoint: str, deployment: str, takeover: bool, say: Callable[[str], None]) -> None:
    """The one ownership check: the deployment's container and the endpoint's router belong to this folder,
    or takeover=1 removes the other folder's (the caller holds the deployment's lock)."""
    found = foreign_container(endpoint, deployment)
    if found is not None and not takeover:
        raise _refusal(f"deployment {endpoint}/{deployment}", found[1], f"its container {found[0].name} was "
                       "created there")
    if not takeover:
        claim_endpoint(endpoint, False, say)  # both checked before anything is removed
        return
    if found is not None:
        runtime.remove_container(found[0])
        say(f"takeover=1: removed container {found[0].name} of {found[1]}")
    claim_endpoint(endpoint, True, say)
