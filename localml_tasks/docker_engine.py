"""The one place that talks to Docker (through the Docker SDK for Python).

Stages ask for what they need in their own words; this module turns Docker's exceptions
into LocalmlErrors that say what to do.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Any

from .errors import LocalmlError

if TYPE_CHECKING:
    import docker
    from docker.models.containers import Container


def _docker():
    """The Docker SDK, imported on first use: `doit validate` and `doit list` never pay for it."""
    import docker
    import docker.errors
    import docker.types

    return docker

START_ENGINE_HINT = (
    "start it (Linux: `sudo systemctl start docker` or `sudo dockerd &`; "
    "Docker Desktop: open the app), or point DOCKER_HOST at a running engine"
)


@cache
def client() -> docker.DockerClient:
    try:
        engine = _docker().from_env(timeout=120)
        engine.ping()
    except _docker().errors.DockerException:
        where = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
        raise LocalmlError.one(f"no Docker engine answers at {where}: {START_ENGINE_HINT}") from None
    return engine


def engine_available() -> bool:
    try:
        client()
    except LocalmlError:
        return False
    return True


def _short(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:160]


# --- images -----------------------------------------------------------------


def image_id(name: str) -> str | None:
    try:
        return client().images.get(name).id
    except _docker().errors.ImageNotFound:
        return None


def pull(name: str) -> str | None:
    """Try the registry once; None when it cannot be had (no network, no such image)."""
    try:
        return client().images.pull(name).id
    except _docker().errors.APIError:
        return None


def remove_image(name: str) -> bool:
    try:
        client().images.remove(name)
    except _docker().errors.ImageNotFound:
        return False
    except _docker().errors.APIError as exc:
        raise LocalmlError.one(f"could not remove image {name}: {_short(exc)}") from None
    return True


_ANSI = re.compile(r"\x1b\[[0-9;]*m")  # the builder colours the stderr of RUN steps


@dataclass
class BuildEvent:
    line: str = ""
    error: str | None = None


def build(context_dir: str, tag: str, buildargs: dict[str, str], *, nocache: bool = False) -> Iterator[BuildEvent]:
    """Stream the classic builder's output; a final event carries the error, if any."""
    stream = client().api.build(
        path=context_dir, tag=tag, buildargs=buildargs, rm=True, forcerm=True, decode=True, pull=False,
        nocache=nocache,
    )
    for chunk in stream:
        if "error" in chunk:
            yield BuildEvent(error=str(chunk.get("error", "")).strip())
            return
        text = chunk.get("stream")
        if text:
            for line in _ANSI.sub("", text).splitlines():
                yield BuildEvent(line=line)


def run_once(image: str, command: list[str]) -> tuple[int, str]:
    """Run a throwaway container; (exit code, combined output)."""
    container = client().containers.create(image, command=command, network_disabled=True)
    try:
        container.start()
        result = container.wait(timeout=120)
        output = container.logs().decode(errors="replace")
    finally:
        container.remove(force=True)
    return int(result.get("StatusCode", 1)), output


# --- containers ---------------------------------------------------------------


def get_container(name: str) -> Container | None:
    try:
        return client().containers.get(name)
    except _docker().errors.NotFound:
        return None


def list_containers(label_filters: list[str]) -> list[Container]:
    return client().containers.list(all=True, filters={"label": label_filters})


def create_container(binds: list[dict[str, Any]], **kwargs: Any) -> Container:
    """binds: [{source, target, read_only}] host folders/files mounted as they are."""
    mounts = [_docker().types.Mount(target=b["target"], source=b["source"], type="bind", read_only=b["read_only"])
              for b in binds]
    try:
        container = client().containers.create(mounts=mounts, **kwargs)
        container.start()
    except _docker().errors.APIError as exc:
        raise LocalmlError.one(f"Docker could not start the container: {_short(exc)}") from None
    container.reload()
    return container


def remove_container(container: Container) -> None:
    with contextlib.suppress(_docker().errors.NotFound):
        container.remove(force=True)


def ports_in_use_by_containers() -> set[int]:
    """Host ports published by any container (running or not) so two never collide."""
    used: set[int] = set()
    for container in client().containers.list(all=True):
        bindings = container.attrs.get("HostConfig", {}).get("PortBindings") or {}
        for binds in bindings.values():
            for bind in binds or []:
                if str(bind.get("HostPort", "")).isdigit():
                    used.add(int(bind["HostPort"]))
    return used


def container_logs(container: Container, tail: int | str = "all", since: float | None = None) -> str:
    """since: a Unix time; only what was logged after it (whole seconds, so a little before)."""
    if since is not None:
        return container.logs(since=int(since)).decode(errors="replace")
    return container.logs(tail=tail).decode(errors="replace")


def follow_logs(container: Container, tail: int | str) -> Iterator[str]:
    for chunk in container.logs(stream=True, follow=True, tail=tail):
        yield chunk.decode(errors="replace")
