"""Stage 4 — the container: Azure's paths, env vars and labels; ports on 127.0.0.1 only.

`render_container` is pure: same deployment + image -> same spec and the same config hash,
which is stored as a label. "Is the container up to date" is "is a container with this
name running with this hash".
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import docker_engine
from .errors import LocalmlError
from .image import APP_ROOT, BIN_DIR, CONTAINER_PORT, RUNTIME_DIR
from .server import debug_server_command
from .spec import Deployment

IN_CONTAINER = Path(__file__).resolve().parent / "in_container"  # mounted read-only at BIN_DIR
SUPERVISOR = IN_CONTAINER / "supervisor.py"
DEBUG_CONTAINER_PORT = 5678
FIRST_SCORING_PORT = 5001
FIRST_DEBUG_PORT = 5678
LOOPBACK = "127.0.0.1"

# Azure's own labels (so `az ml ... --local` tooling can see our containers)
LABEL_LOCAL_ENDPOINT = "azureml-local-endpoint"
LABEL_ENDPOINT = "endpoint"
LABEL_DEPLOYMENT = "deployment"
LABEL_ENDPOINT_DATA = "endpoint-data"
LABEL_DEPLOYMENT_DATA = "deployment-data"
LABEL_AZUREML_PORT = "azureml-port"
# ours
LABEL_CONFIG_HASH = "localml.config-hash"
LABEL_SCORING_PORT = "localml.scoring-port"
LABEL_DEBUG_PORT = "localml.debug-port"
LABEL_SPEC = "localml.spec"
LABEL_WORKDIR = "localml.workdir"
LABEL_CODE_DIR = "localml.code-dir"
LABEL_CODE_TARGET = "localml.code-target"
# the dev containers spec's labels: VS Code and @devcontainers/cli find (and reuse) a container by them
LABEL_DEVCONTAINER_FOLDER = "devcontainer.local_folder"
LABEL_DEVCONTAINER_CONFIG = "devcontainer.config_file"


@dataclass
class ContainerSpec:
    name: str
    image: str
    command: list[str]
    environment: dict[str, str]
    mounts: list[dict[str, Any]]  # {source, target, read_only}
    labels: dict[str, str]
    config_hash: str
    app_root: str
    code_target: str
    model_dir: str
    extra: dict[str, Any] = field(default_factory=dict)


def container_name(endpoint: str, deployment: str) -> str:
    return f"localml-{endpoint}-{deployment}"


def model_dir_in_container(deployment: Deployment) -> str:
    # Azure mounts the parent of model.path here, so $AZUREML_MODEL_DIR/<basename of model.path> works
    return posixpath.join(APP_ROOT, "azureml-models", deployment.model_name, deployment.model_version)


def server_command(debugger: bool, wait: bool) -> dict[str, Any]:
    """What the supervisor runs: azmlinfsrv as Azure runs it, or its app in one process under debugpy."""
    if debugger:
        return debug_server_command("python", f"{BIN_DIR}/debug_server.py", server_port=CONTAINER_PORT,
                                    debug_port=DEBUG_CONTAINER_PORT, runtime_dir=RUNTIME_DIR, debugger=True,
                                    wait=wait)
    script = f'exec azmlinfsrv --entry_script "$AML_APP_ROOT/$AZUREML_ENTRY_SCRIPT" --port {CONTAINER_PORT}'
    return {"argv": ["sh", "-c", script], "env": {}}


def render_container(
    deployment: Deployment, image_tag: str, image_id: str, runtime_dir: Path, devcontainer_folder: Path
) -> ContainerSpec:
    """runtime_dir: host folder shared with the supervisor. devcontainer_folder: the host folder holding
    .devcontainer/devcontainer.json; the labels naming it make VS Code and `devcontainer up` reuse
    this container instead of starting a second one."""
    code_target = posixpath.join(APP_ROOT, Path(deployment.code_dir).name)
    script_dir, script_name = posixpath.split(deployment.scoring_script)
    app_root = posixpath.join(code_target, script_dir) if script_dir else code_target
    model_dir = model_dir_in_container(deployment)
    environment = {
        "PYTHONDONTWRITEBYTECODE": "1",
        "AZUREML_MODEL_DIR": model_dir,
        "AML_APP_ROOT": app_root,
        "AZUREML_ENTRY_SCRIPT": script_name,
        **deployment.environment_variables,  # the deployment's own values win, as in Azure
    }
    # read-write: VS Code in the dev container edits this folder. localml itself never writes there,
    # and PYTHONDONTWRITEBYTECODE keeps the server from leaving root-owned __pycache__ folders in it.
    mounts = [{"source": deployment.code_dir, "target": code_target, "read_only": False}]
    if deployment.model_path:
        mounts.append({
            "source": deployment.model_path,
            "target": posixpath.join(model_dir, Path(deployment.model_path).name),
            "read_only": True,
        })
    mounts.append({"source": str(IN_CONTAINER), "target": BIN_DIR, "read_only": True})
    mounts.append({"source": str(runtime_dir), "target": RUNTIME_DIR, "read_only": False})
    command = ["python", f"{BIN_DIR}/supervisor.py", RUNTIME_DIR]  # as the image's CMD
    labels = {
        LABEL_LOCAL_ENDPOINT: "",
        LABEL_ENDPOINT: deployment.endpoint_name,
        LABEL_DEPLOYMENT: deployment.deployment_name,
        LABEL_ENDPOINT_DATA: json.dumps(deployment.endpoint_data, sort_keys=True, default=str),
        LABEL_DEPLOYMENT_DATA: json.dumps(deployment.deployment_data, sort_keys=True, default=str),
        LABEL_SPEC: deployment.spec_path,
        LABEL_WORKDIR: str(Path.cwd()),
        LABEL_CODE_DIR: deployment.code_dir,
        LABEL_CODE_TARGET: code_target,
        LABEL_DEVCONTAINER_FOLDER: str(devcontainer_folder),
        LABEL_DEVCONTAINER_CONFIG: str(devcontainer_folder / ".devcontainer" / "devcontainer.json"),
    }
    identity = json.dumps(
        {"image": image_tag, "image_id": image_id, "command": command, "env": environment,
         "mounts": mounts, "labels": labels,
         # a new supervisor (a localml upgrade) needs a new container
         "supervisor": hashlib.sha256(SUPERVISOR.read_bytes()).hexdigest()},
        sort_keys=True,
    )
    return ContainerSpec(
        name=container_name(deployment.endpoint_name, deployment.deployment_name),
        image=image_tag, command=command, environment=environment, mounts=mounts,
        labels=labels, config_hash=hashlib.sha256(identity.encode()).hexdigest()[:16],
        app_root=app_root, code_target=code_target, model_dir=model_dir,
    )


def is_current(spec: ContainerSpec) -> bool:
    """A container of this name is running with exactly this configuration."""
    container = docker_engine.get_container(spec.name)
    return bool(
        container is not None
        and container.status == "running"
        and container.labels.get(LABEL_CONFIG_HASH) == spec.config_hash
    )


def _port_is_free(port: int, taken: set[int]) -> bool:
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


def pick_port(first: int, taken: set[int]) -> int:
    for port in range(first, first + 200):
        if _port_is_free(port, taken):
            return port
    raise LocalmlError.one(f"no free port on {LOOPBACK} between {first} and {first + 199}",
                           fix="stop what is listening there, or delete old local endpoints (doit delete)")


def start(spec: ContainerSpec) -> tuple[Any, int, int, str]:
    """(Re)create the container. Returns (container, scoring port, debug port, reason)."""
    old = docker_engine.get_container(spec.name)
    preferred_scoring, preferred_debug = FIRST_SCORING_PORT, FIRST_DEBUG_PORT
    reason = "created"
    if old is not None:
        preferred_scoring = int(old.labels.get(LABEL_SCORING_PORT, FIRST_SCORING_PORT))
        preferred_debug = int(old.labels.get(LABEL_DEBUG_PORT, FIRST_DEBUG_PORT))
        if old.labels.get(LABEL_CONFIG_HASH) != spec.config_hash:
            reason = "recreated: configuration or image changed"
        else:
            reason = f"recreated: it was {old.status}"
        docker_engine.remove_container(old)
    taken = docker_engine.ports_in_use_by_containers()
    last_error: LocalmlError | None = None
    for _ in range(5):  # another process may grab a port between our probe and Docker's bind
        scoring = pick_port(preferred_scoring, taken)
        debug = pick_port(preferred_debug, taken | {scoring})
        labels = {**spec.labels, LABEL_CONFIG_HASH: spec.config_hash, LABEL_AZUREML_PORT: str(scoring),
                  LABEL_SCORING_PORT: str(scoring), LABEL_DEBUG_PORT: str(debug)}
        try:
            container = docker_engine.create_container(
                image=spec.image, name=spec.name, command=spec.command, environment=spec.environment,
                labels=labels, detach=True,
                ports={f"{CONTAINER_PORT}/tcp": (LOOPBACK, scoring), f"{DEBUG_CONTAINER_PORT}/tcp": (LOOPBACK, debug)},
                binds=spec.mounts,
            )
        except LocalmlError as exc:
            last_error = exc
            leftover = docker_engine.get_container(spec.name)
            if leftover is not None:
                docker_engine.remove_container(leftover)
            if "port is already allocated" in exc.render() or "address already in use" in exc.render():
                taken |= {scoring, debug}
                continue
            raise
        return container, scoring, debug, reason
    assert last_error is not None
    raise last_error
