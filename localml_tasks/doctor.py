"""`localml doctor` (and `doit doctor`): what this machine and folder need, on one screen, each line ✓ or ✗ with
its fix.

The Docker engine (answers? version, API; may this user use it?), the base images the folder's deployment YAMLs
name (present, aliased in localml.yml to a present image, or pullable: asked of the registry, never pulled),
disk space where the engine keeps images, free ports for the first deployment, the proxy's CA bundle and the
package index, uv, the devcontainer CLI and VS Code's `code`. A ✗ is fatal when `doit debug` would stop on it;
the devcontainer CLI and `code` are optional (localml says how to attach without them).

`preflight()` is the part of this that the debug chain runs before it builds: the fatal checks for one deployment
in one runtime, stopping at the first ✗ with its fix.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from .config import ALIASES_ENV, CONFIG_FILE_NAME, ProjectConfig, load_project_config, normalize_image_reference
from .console import line
from .contract import FIRST_DEBUG_PORT, FIRST_ENDPOINT_PORT, FIRST_SCORING_PORT, LOOPBACK
from .errors import LocalmlError
from .project import NO_CODE, DeploymentFile, find_deployments

if TYPE_CHECKING:
    from .target import Target

STAGE = "doctor"
DEFAULT_SOCKET = "unix:///var/run/docker.sock"
MIN_FREE_BYTES = 3_000_000_000  # an environment image is 1-3 GB, and a build needs room beside the last one
PORT_SPAN = 200  # as ports.py: the ports tried after the first
CA_VARIABLES = ("PIP_CERT", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE")
PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy")
START_ENGINE = ("start it (Linux: `sudo systemctl start docker` or `sudo dockerd &`; Docker Desktop: open the app), "
                "or point DOCKER_HOST at a running engine; runtime=process runs a deployment without Docker")
CODE_FIX = ("install VS Code's `code` command (in VS Code: Command Palette, \"Shell Command: Install 'code' command "
            "in PATH\"; on WSL it comes with VS Code for Windows); until then doit debug says how to attach, and "
            "vscode=0 skips the step")
DEVCONTAINER_FIX = ("npm install -g @devcontainers/cli (optional: VS Code's Dev Containers extension needs none; "
                    "with it, `devcontainer up` reuses localml's container)")


@dataclass
class Check:
    ok: bool
    text: str
    fix: str | None = None
    fatal: bool = True  # a ✗ that stops `doit debug`; else optional

    def render(self) -> list[str]:
        lines = [f"{'✓' if self.ok else '✗'} {self.text}"]
        if not self.ok and self.fix:
            lines.append(f"  fix: {self.fix}")
        return lines


# --- the checks ---------------------------------------------------------------------------------------------


def engine_address() -> str:
    return os.environ.get("DOCKER_HOST") or DEFAULT_SOCKET


def engine_check() -> tuple[Check, Any]:
    """(the line, a Docker client or None)."""
    import docker
    import docker.errors

    where = engine_address()
    try:
        client = docker.from_env(timeout=15)
        client.ping()
        version = client.version()
    except docker.errors.DockerException as exc:
        if _permission_denied(exc):
            socket_path = where.removeprefix("unix://")
            return Check(False, f"the Docker engine at {where} refuses this user: permission denied on {socket_path}",
                         "add yourself to the docker group (`sudo usermod -aG docker $USER`, then log in again), "
                         "or run localml as a user who may use Docker"), None
        return Check(False, f"no Docker engine answers at {where}", START_ENGINE), None
    return Check(True, f"Docker engine {version.get('Version', '?')} (API {version.get('ApiVersion', '?')}) "
                       f"answers at {where}"), client


def _permission_denied(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, PermissionError) or "Permission denied" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def disk_check(client: Any) -> Check:
    """Free space where the engine keeps images (its DockerRootDir), when that folder is on this machine."""
    try:
        root = client.info().get("DockerRootDir") or "/var/lib/docker"
    except Exception:
        root = "/var/lib/docker"
    local = not os.environ.get("DOCKER_HOST") or os.environ["DOCKER_HOST"].startswith("unix://")
    try:
        free = shutil.disk_usage(root).free if local else None
    except OSError:
        free = None
    if free is None:
        return Check(True, f"disk: the engine keeps its images in {root}, not on this machine's disk (not measured)")
    text = f"{free / 1e9:.1f} GB free for images in {root}"
    if free < MIN_FREE_BYTES:
        return Check(False, f"disk: only {text}: an environment image takes 1-3 GB",
                     "free some space: doit prune removes localml's unused images; `docker system prune` others")
    return Check(True, f"disk: {text}")


@dataclass
class NeededImage:
    declared: str
    local: str  # the alias target, or declared
    alias_from: str | None  # where the alias is set: localml.yml or LOCALML_IMAGE_ALIASES
    needed_by: list[str]  # where: blue-deployment.yml, or my-deployment.yml (Dockerfile:3)
    specs: list[str]  # the deployment YAMLs that need it


def needed_images(deployments: list[DeploymentFile], config: ProjectConfig) -> list[NeededImage]:
    found: dict[str, NeededImage] = {}
    env_aliases = {normalize_image_reference(item.partition("=")[0])
                   for item in os.environ.get(ALIASES_ENV, "").split(",") if "=" in item}
    for deployment in deployments:
        for image, where in deployment.images:
            if where == NO_CODE and getattr(config, "no_code_base_image", None):
                image = config.no_code_base_image  # localml.yml names the no-code deployments' base image
            key = normalize_image_reference(image)
            if key not in found:
                local = config.resolve_image(image)
                source = None if local == image else (ALIASES_ENV if key in env_aliases else CONFIG_FILE_NAME)
                found[key] = NeededImage(image, local, source, [], [])
            found[key].needed_by.append(deployment.spec if where in ("environment.image", NO_CODE)
                                        else f"{deployment.spec} ({where})")
            found[key].specs.append(deployment.spec)
    return list(found.values())


def image_present(client: Any, name: str) -> bool:
    import docker.errors

    try:
        client.images.get(name)
    except docker.errors.ImageNotFound:
        return False
    except docker.errors.APIError:
        return False  # a name Docker cannot even parse
    return True


def image_pullable(client: Any, name: str) -> bool:
    """Whether the registry has it: its manifest asked for, nothing pulled."""
    import docker.errors

    try:
        client.images.get_registry_data(name)
    except (docker.errors.APIError, docker.errors.DockerException):
        return False
    return True


def image_check(client: Any, needed: NeededImage) -> Check:
    users = ", ".join(needed.needed_by)
    if needed.alias_from:
        named = f"base image {needed.declared} → {needed.local} (alias in {needed.alias_from})"
        if image_present(client, needed.local):
            return Check(True, f"{named}: present, for {users}")
        return Check(False, f"{named}: {needed.local} is not on this machine, for {users}",
                     f"build or load {needed.local} (docker load, docker pull), or change the alias in "
                     f"{needed.alias_from}")
    named = f"base image {needed.declared}"
    if image_present(client, needed.declared):
        return Check(True, f"{named}: present, for {users}")
    if image_pullable(client, needed.declared):
        return Check(True, f"{named}: not here yet, can be pulled (the first doit debug pulls it), for {users}")
    return Check(False, f"{named}: not on this machine and cannot be pulled, for {users}",
                 f"map it to a local image with Python 3 in {CONFIG_FILE_NAME} (image_aliases:; localml init writes "
                 "one when it finds such an image), or load it (docker load); see localml's README: Image aliases")


def image_checks(folder: Path, client: Any) -> list[Check]:
    deployments = find_deployments(folder)
    if not deployments:
        return [Check(False, f"no deployment YAML in {folder} (a YAML with code_configuration, model, environment)",
                      "run localml doctor in your project folder, the one with blue-deployment.yml or the like",
                      fatal=False)]
    checks: list[Check] = []
    for deployment in deployments:
        if deployment.problem:
            checks.append(Check(False, f"{deployment.spec}: {deployment.problem}",
                                f"doit validate spec={deployment.spec} says where"))
        elif deployment.workspace_environment:
            checks.append(Check(False, f"{deployment.spec}: environment {deployment.workspace_environment} lives in "
                                       "the Azure ML workspace, not on this machine",
                                "give it a local environment (image and conda_file); doit validate "
                                f"spec={deployment.spec} says how"))
    try:
        config = load_project_config(folder)
    except LocalmlError as exc:
        checks.append(Check(False, exc.problems[0].render().removeprefix("error: ").split("\n")[0],
                            exc.problems[0].fix))
        config = ProjectConfig()
    images = needed_images(deployments, config)
    if client is None:
        if images:
            checks.append(Check(False, f"base images ({', '.join(item.declared for item in images)}): not checked, "
                                       "no Docker engine answers", "start the engine (above)", fatal=False))
        return checks
    return checks + [image_check(client, needed) for needed in images]


def free_port(first: int) -> int | None:
    for port in range(first, first + PORT_SPAN):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                probe.bind((LOOPBACK, port))
            except OSError:
                continue
            return port
    return None


def port_check() -> Check:
    parts, missing = [], []
    for role, first in (("scoring", FIRST_SCORING_PORT), ("debug", FIRST_DEBUG_PORT),
                        ("endpoint", FIRST_ENDPOINT_PORT)):
        port = free_port(first)
        if port is None:
            missing.append(f"{role} {first}-{first + PORT_SPAN - 1}")
        else:
            parts.append(f"{role} {port}" + ("" if port == first else f" ({first} is in use: the next free one)"))
    if missing:
        return Check(False, f"ports: none free on {LOOPBACK} for {', '.join(missing)}",
                     "stop what listens there, or delete old local endpoints (doit endpoints lists them)")
    return Check(True, f"ports free on {LOOPBACK}: {', '.join(parts)}")


def _proxy() -> str | None:
    for name in PROXY_VARIABLES:
        value = os.environ.get(name)
        if value:
            parts = urlsplit(value if "://" in value else f"http://{value}")
            return f"{parts.hostname}:{parts.port}" if parts.port else str(parts.hostname)  # no credentials shown
    return None


def ca_checks() -> list[Check]:
    checks = []
    for name in CA_VARIABLES:
        value = os.environ.get(name)
        if value and not Path(value).is_file():
            checks.append(Check(False, f"{name}={value}: no such file (builds behind a TLS-intercepting proxy need "
                                       "its CA bundle)",
                                f"point {name} at your CA bundle (with the proxy's CA), or unset it"))
    if checks:
        return checks
    from .image import host_ca_bundle

    bundle = host_ca_bundle()
    source = next((name for name in CA_VARIABLES if os.environ.get(name)), None)
    proxy = _proxy()
    via = f"; proxy {proxy}" if proxy else ""
    if bundle is None:
        return [Check(True, f"CA bundle: none set ({', '.join(CA_VARIABLES)}), builds use the image's own CAs{via}")]
    return [Check(True, f"CA bundle for builds: {bundle}" + (f" ({source})" if source else " (the system's)") + via)]


def index_check() -> Check:
    """The package index answers (a first build resolves the conda file against it)."""
    import requests

    from .image import host_ca_bundle
    from .lock import index_url

    url = index_url()
    bundle = host_ca_bundle()
    try:
        answer = requests.get(f"{url}/azureml-inference-server-http/", timeout=15,
                              verify=str(bundle) if bundle else True)
    except requests.RequestException as exc:
        return Check(False, f"package index {url} does not answer: {str(exc).splitlines()[0][:200]}",
                     "set HTTPS_PROXY (and PIP_CERT to the proxy's CA bundle) when a proxy is the way out, or "
                     "UV_INDEX_URL / PIP_INDEX_URL to a mirror")
    if answer.status_code >= 400:
        return Check(False, f"package index {url} answers {answer.status_code} for azureml-inference-server-http",
                     "set UV_INDEX_URL / PIP_INDEX_URL to an index that has it (with credentials when it needs them)")
    return Check(True, f"package index {url} answers")


def uv_check() -> Check:
    from .lock import uv_binary

    try:
        binary = uv_binary()
        version = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError, FileNotFoundError) as exc:
        return Check(False, f"uv: not usable ({exc})", "pip install uv (localml depends on it: reinstall localml)")
    return Check(True, f"{version or 'uv'} ({binary})")


def devcontainer_check() -> Check:
    found = shutil.which("devcontainer")
    if found is None:
        return Check(False, "devcontainer CLI is not on PATH (optional)", DEVCONTAINER_FIX, fatal=False)
    version = ""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        version = subprocess.run([found, "--version"], capture_output=True, text=True, timeout=30).stdout.strip()
    return Check(True, f"devcontainer CLI {version} ({found})".replace("  ", " "))


def code_check() -> Check:
    found = shutil.which("code")
    if found is None:
        return Check(False, "`code` is not on PATH: doit debug cannot open VS Code, it says how to attach instead",
                     CODE_FIX, fatal=False)
    return Check(True, f"`code` on PATH ({found}): doit debug opens VS Code in the dev container")


def run_checks(folder: Path) -> list[Check]:
    engine, client = engine_check()
    checks = [engine]
    if client is not None:
        checks.append(disk_check(client))
    checks += image_checks(folder, client)
    checks += [port_check(), *ca_checks(), index_check(), uv_check(), devcontainer_check(), code_check()]
    if client is not None:
        with contextlib.suppress(Exception):
            client.close()
    return checks


def report(checks: list[Check], folder: Path) -> int:
    """Print the checks; 1 when one of them stops doit debug."""
    for check in checks:
        first, *rest = check.render()
        line(STAGE, first)
        for text in rest:
            line("", text)
    fatal = [check for check in checks if not check.ok and check.fatal]
    optional = [check for check in checks if not check.ok and not check.fatal]
    if fatal:
        line(STAGE, f"{len(fatal)} problem{'s' if len(fatal) > 1 else ''} (✗ above) stop doit debug: fix "
                    f"{'them' if len(fatal) > 1 else 'it'} first")
        return 1
    specs = [item.spec for item in find_deployments(folder)]
    then = f": doit debug spec={specs[0]}" if specs else ""
    also = f" ({len(optional)} optional ✗)" if optional else ""
    line(STAGE, f"ready{also}{then}")
    return 0


def main(folder: Path | None = None) -> int:
    folder = folder or Path.cwd()
    return report(run_checks(folder), folder)


# --- before the debug chain builds ---------------------------------------------------------------------------


def preflight(target: Target, runtime: str) -> None:
    """The fatal checks for one deployment in one runtime, in the order a build needs them; the first ✗ is raised
    as a LocalmlError with its fix. Cheap: no registry or index is asked when what is needed is here."""
    for check in _preflight_checks(target, runtime):
        if not check.ok and check.fatal:
            raise LocalmlError.one(check.text, fix=check.fix)


def _preflight_checks(target: Target, runtime: str):
    yield from ca_checks()
    from .lock import uv_binary

    try:
        uv_binary()
    except FileNotFoundError as exc:
        yield Check(False, f"uv: not found ({exc})", "pip install uv (localml depends on it: reinstall localml)")
    if runtime != "docker":
        return
    from . import docker_engine

    client = docker_engine.client()  # a LocalmlError with its fix when no engine answers
    yield disk_check(client)
    # the base images are checked by the environment stage itself, before any build: its error names the
    # YAML line that asks for the image, which a machine check cannot (`localml doctor` lists them all)
