"""The one place that talks to Docker (through the Docker SDK for Python).

Stages ask for what they need in their own words; this module turns Docker's exceptions
into LocalmlErrors that say what to do.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Any

from .contract import NETWORK, NETWORK_OPTIONS
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
    "Docker Desktop: open the app), or point DOCKER_HOST at a running engine; "
    "runtime=process runs the deployment without Docker instead"
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
    # the engine's own explanation, without the request URL the SDK puts before it
    explanation = getattr(exc, "explanation", None)
    text = explanation if isinstance(explanation, str) and explanation else str(exc)
    text = text.splitlines()[0] if text else type(exc).__name__
    return text[:300]


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


def remove_if_unused(image_id: str) -> bool:
    """Remove an untagged image that nothing else uses (with its untagged parents); False when it is tagged,
    has children, a container uses it or it is gone: then it is someone's, or nobody's to remove."""
    try:
        if client().images.get(image_id).tags:
            return False  # by id, Docker would take a single tag away with it
        client().images.remove(image_id, noprune=False)
    except _docker().errors.APIError:  # ImageNotFound is one
        return False
    return True


_ANSI = re.compile(r"\x1b\[[0-9;]*m")  # the builder colours the stderr of RUN steps


@dataclass
class BuildEvent:
    line: str = ""
    error: str | None = None


def build(context_dir: str, tag: str, buildargs: dict[str, str], *, nocache: bool = False,
          dockerfile: str | None = None) -> Iterator[BuildEvent]:
    """Stream the classic builder's output; a final event carries the error, if any.

    dockerfile: relative to context_dir (default: its Dockerfile). The SDK reads the folder (and
    its .dockerignore) into an archive in memory; nothing is written into it."""
    try:
        stream = client().api.build(
            path=context_dir, dockerfile=dockerfile, tag=tag, buildargs=buildargs, rm=True, forcerm=True,
            decode=True, pull=False, nocache=nocache,
        )
        pending = ""  # chunks are not whole lines: a RUN step's output can break mid-line
        for chunk in stream:
            if "error" in chunk:
                if pending:
                    yield BuildEvent(line=pending)
                yield BuildEvent(error=str(chunk.get("error", "")).strip())
                return
            text = chunk.get("stream")
            if text:
                *lines, pending = (pending + _ANSI.sub("", text)).split("\n")
                for line in lines:
                    yield BuildEvent(line=line.rstrip("\r"))
        if pending:
            yield BuildEvent(line=pending)
    except _docker().errors.APIError as exc:
        # the daemon refuses some builds outright (a Dockerfile parse error is a 400)
        yield BuildEvent(error=str(exc.explanation or _short(exc)).strip())


def tag_image(source: str, name: str) -> None:
    """Give the local image `source` (name or id) the extra name `name` (repository[:tag])."""
    repository, _, tag = name.rpartition(":") if ":" in name.rsplit("/", 1)[-1] else (name, "", "latest")
    try:
        client().images.get(source).tag(repository, tag or "latest")
    except _docker().errors.APIError as exc:
        raise LocalmlError.one(f"could not tag {source} as {name}: {_short(exc)}") from None


def context_files(context_dir: str, dockerfile: str) -> list[str]:
    """The paths (files and folders, relative) the SDK sends as the build context, .dockerignore applied."""
    from docker.utils.build import exclude_paths

    patterns: list[str] = []
    ignore = os.path.join(context_dir, ".dockerignore")
    if os.path.exists(ignore):
        with open(ignore, encoding="utf-8") as handle:
            # read as the SDK's build() reads it, so the set is exactly what goes to the daemon
            patterns = [line.strip() for line in handle.read().splitlines()]
            patterns = [line for line in patterns if line and not line.startswith("#")]
    return sorted(exclude_paths(os.path.abspath(context_dir), patterns, dockerfile=dockerfile))


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


def list_containers(label_filters: list[str] | None = None) -> list[Container]:
    """Every container (running or not) with these labels. One removed while it is listed (another command's
    delete, a test's clean-up) is left out: the SDK's own list would fail on it with NotFound."""
    filters = {"label": label_filters} if label_filters else {}
    found = []
    for summary in client().api.containers(all=True, filters=filters):
        with contextlib.suppress(_docker().errors.NotFound):
            found.append(client().containers.get(summary["Id"]))
    return found


def gpu_device_requests() -> list[Any]:
    """Every GPU, as `docker run --gpus all` asks for them."""
    return [_docker().types.DeviceRequest(count=-1, capabilities=[["gpu"]])]


def ensure_network(name: str, options: dict[str, str]) -> None:
    """A bridge network of this name, created with these driver options when it does not exist yet."""
    errors = _docker().errors
    try:
        client().networks.get(name)
        return
    except errors.NotFound:
        pass
    try:
        client().networks.create(name, driver="bridge", options=options, labels={"localml": "1"})
    except errors.APIError as exc:
        if getattr(exc, "status_code", None) != 409:  # 409: another command created it at the same moment
            raise LocalmlError.one(f"Docker could not create the network {name}: {_short(exc)}") from None


def create_container(binds: list[dict[str, Any]], gpu: bool = False, **kwargs: Any) -> Container:
    """binds: [{source, target, read_only}] host folders/files mounted as they are. gpu: request every GPU.
    network: contract.NETWORK (created on first use)."""
    mounts = [_docker().types.Mount(target=b["target"], source=b["source"], type="bind", read_only=b["read_only"])
              for b in binds]
    if gpu:
        kwargs["device_requests"] = gpu_device_requests()
    if kwargs.get("network") == NETWORK:
        ensure_network(NETWORK, NETWORK_OPTIONS)
    container = None
    try:
        container = client().containers.create(mounts=mounts, **kwargs)
        container.start()
    except _docker().errors.APIError as exc:
        if container is not None:
            remove_container(container)  # created by this call, by its id: never another command's of that name
        if gpu and "device driver" in str(exc):
            raise LocalmlError.one(
                f"the Docker engine cannot give the container a GPU: {_short(exc)}",
                fix="install the NVIDIA Container Toolkit and restart the engine "
                    "(`docker run --rm --gpus all <image> nvidia-smi` must work), or run without gpu=1") from None
        raise LocalmlError.one(f"Docker could not start the container: {_short(exc)}") from None
    container.reload()
    return container


def restart_container(container: Container) -> None:
    try:
        container.restart(timeout=10)
    except _docker().errors.APIError as exc:
        raise LocalmlError.one(f"could not restart {container.name}: {_short(exc)}") from None


def remove_container(container: Container) -> None:
    with contextlib.suppress(_docker().errors.NotFound):
        container.remove(force=True)


def ports_in_use_by_containers() -> set[int]:
    """Host ports published by any container (running or not) so two never collide."""
    used: set[int] = set()
    for container in list_containers():
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


# --- install containers (uv_install.py) ----------------------------------------------------


def image_config(image: str) -> dict[str, Any]:
    """The image's configuration (Env, User, Cmd ...), as `docker inspect` shows it."""
    return client().images.get(image).attrs.get("Config") or {}


def images_labelled(label: str) -> list[tuple[str, dict[str, str]]]:
    """(id, labels) of every tagged image carrying the label (name=value)."""
    return [(found.id, found.labels or {}) for found in client().images.list(filters={"label": label})]


def run_install(image: str, archive: bytes, command: list[str], volume: str, volume_target: str,
                on_line: Callable[[str], None], commit: Callable[[Container], None], *, as_root: bool) -> int:
    """Run command in a throwaway container of image (as root when as_root: the image's user is another),
    with archive unpacked at / and the named volume mounted; each output line goes to on_line; on exit
    code 0, commit(container) before it is removed. Returns the exit code. The container is removed
    whatever happens (Ctrl-C included). Nothing is set on it that a commit would carry into the image
    but what as_root and command change, which the commit sets again."""
    docker = _docker()
    client().volumes.create(volume, labels={"localml": "uv-cache"})  # existing: returned as it is
    try:
        container = client().containers.create(
            image, command=command, entrypoint=[], user="0:0" if as_root else None,
            name=f"localml-install-{os.urandom(4).hex()}",
            mounts=[docker.types.Mount(target=volume_target, source=volume, type="volume")])
    except docker.errors.APIError as exc:
        raise LocalmlError.one(f"Docker could not create the install container: {_short(exc)}") from None
    try:
        container.put_archive("/", archive)
        container.start()
        pending = ""
        for chunk in container.logs(stream=True, follow=True):
            *lines, pending = (pending + _ANSI.sub("", chunk.decode(errors="replace"))).split("\n")
            for line in lines:
                on_line(line.rstrip("\r"))
        if pending:
            on_line(pending)
        code = int(container.wait().get("StatusCode", 1))
        if code == 0:
            commit(container)
        return code
    except docker.errors.APIError as exc:
        raise LocalmlError.one(f"the install container failed: {_short(exc)}") from None
    finally:
        with contextlib.suppress(docker.errors.APIError):
            container.remove(force=True)


def commit(container: Container, tag: str, changes: list[str]) -> str:
    repository, _, name = tag.rpartition(":")
    try:
        return container.commit(repository=repository, tag=name, changes=changes).id
    except _docker().errors.APIError as exc:
        raise LocalmlError.one(f"could not commit the environment image {tag}: {_short(exc)}") from None


def disk_usage() -> dict[str, Any]:
    """The engine's `docker system df -v` data: Images (Size, SharedSize, Containers, RepoTags), Volumes."""
    try:
        return client().df()
    except _docker().errors.APIError as exc:
        raise LocalmlError.one(f"the engine could not say what it holds: {_short(exc)}") from None


def remove_volume(name: str) -> bool:
    """False when it does not exist; an error when it is in use."""
    try:
        client().volumes.get(name).remove()
    except _docker().errors.NotFound:
        return False
    except _docker().errors.APIError as exc:
        raise LocalmlError.one(f"could not remove volume {name}: {_short(exc)}") from None
    return True
