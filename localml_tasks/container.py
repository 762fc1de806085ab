"""Stage 4 — the container: Azure's paths, env vars and labels; ports on 127.0.0.1 only.

`render_container` is pure: same deployment + image -> same spec and the same config hash,
which is stored as a label. "Is the container up to date" is "is a container with this
name running with this hash".
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import docker_engine, ports
from .contract import (
    APP_ROOT,
    BIN_DIR,
    CONTAINER_PORT,
    DEBUG_CONTAINER_PORT,
    FIRST_DEBUG_PORT,
    FIRST_SCORING_PORT,
    LABEL_AZUREML_PORT,
    LABEL_CODE_DIR,
    LABEL_CODE_TARGET,
    LABEL_CONFIG_HASH,
    LABEL_CUSTOM,
    LABEL_DEBUG_PORT,
    LABEL_DEPLOYMENT,
    LABEL_DEPLOYMENT_DATA,
    LABEL_DEVCONTAINER_CONFIG,
    LABEL_DEVCONTAINER_FOLDER,
    LABEL_ENDPOINT,
    LABEL_ENDPOINT_DATA,
    LABEL_GPU,
    LABEL_HOST_PORTS,
    LABEL_LOCAL_ENDPOINT,
    LABEL_ROUTES,
    LABEL_SCORING_PORT,
    LABEL_SPEC,
    LABEL_WORKDIR,
    LOOPBACK,
    MODELS_ROOT,
    NETWORK,
    RUNTIME_DIR,
    container_name,
    inference_server_routes,
)
from .errors import LocalmlError
from .server import debug_server_command
from .spec import Deployment

IN_CONTAINER = Path(__file__).resolve().parent / "in_container"  # mounted read-only at BIN_DIR
SUPERVISOR = IN_CONTAINER / "supervisor.py"


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
    # role -> container port to publish on 127.0.0.1 (scoring, debug; a custom container's own ports)
    container_ports: dict[str, int] = field(default_factory=dict)
    routes: dict[str, dict[str, Any]] = field(default_factory=dict)  # role -> {path, port: container port}
    gpu: bool = False
    custom: bool = False
    # resources.limits as Docker's create arguments: mem_limit, memswap_limit (no swap, as in Kubernetes), nano_cpus
    limits: dict[str, int] = field(default_factory=dict)
    network: str = NETWORK  # contract.NETWORK: no other container reaches the server or debugpy



def code_mount(deployment: Deployment) -> str:
    """Where the code folder is mounted, as Azure mounts it: /var/azureml-app/<basename of the code folder>."""
    return posixpath.join(APP_ROOT, Path(deployment.code_dir).name)


def model_dir_in_container(deployment: Deployment) -> str:
    # Azure mounts the parent of model.path here, so $AZUREML_MODEL_DIR/<basename of model.path> works;
    # model_mount_path moves the root of that layout (<root>/<name>/<version>/<basename>)
    root = deployment.model_mount_path or MODELS_ROOT
    return posixpath.join(root, deployment.model_name, deployment.model_version)


def server_environment(deployment: Deployment) -> dict[str, str]:
    """Azure's variables for the server, then the deployment's own (which win, as in Azure)."""
    environment = {"AZUREML_MODEL_DIR": model_dir_in_container(deployment)}
    if not deployment.inference_config:
        # request_settings, for azmlinfsrv: its scoring timeout, and gunicorn's worker count outside debugging
        environment["SCORING_TIMEOUT_MS"] = str(deployment.request_timeout_ms)
        environment["WORKER_COUNT"] = str(deployment.max_concurrent_requests)
    if deployment.code_dir:
        code_target = code_mount(deployment)
        script_dir, script_name = posixpath.split(deployment.scoring_script)
        environment["AML_APP_ROOT"] = posixpath.join(code_target, script_dir) if script_dir else code_target
        environment["AZUREML_ENTRY_SCRIPT"] = script_name
    return {**environment, **deployment.environment_variables}


def model_code_paths(deployment: Deployment) -> dict[str, str]:
    """{the model folder in the container: on this machine}, for a model folder that may hold code the debugger
    stops in (a pyfunc model's python_model.py, its code_paths); empty for a model file."""
    if not deployment.model_path or not Path(deployment.model_path).is_dir():
        return {}
    return {posixpath.join(model_dir_in_container(deployment), Path(deployment.model_path).name):
            deployment.model_path}


def _code_and_model_mounts(deployment: Deployment) -> list[dict[str, Any]]:
    mounts = []
    if deployment.code_dir:
        # read-write: VS Code in the dev container edits this folder. localml itself never writes there,
        # and PYTHONDONTWRITEBYTECODE keeps the server from leaving root-owned __pycache__ folders in it.
        code_target = code_mount(deployment)
        mounts.append({"source": deployment.code_dir, "target": code_target, "read_only": False})
    if deployment.model_path:
        mounts.append({
            "source": deployment.model_path,
            "target": posixpath.join(model_dir_in_container(deployment), Path(deployment.model_path).name),
            "read_only": True,
        })
    return mounts



def server_command(deployment: Deployment, debugger: bool, wait: bool) -> dict[str, Any]:
    """What the supervisor runs: azmlinfsrv as Azure runs it (reloaded by gunicorn's own HUP), or its app in
    one process under debugpy (reloaded in that process)."""
    if debugger:
        code_target = code_mount(deployment)
        return debug_server_command("python", f"{BIN_DIR}/debug_server.py", server_port=CONTAINER_PORT,
                                    debug_port=DEBUG_CONTAINER_PORT, runtime_dir=RUNTIME_DIR, debugger=True,
                                    wait=wait, code_dir=code_target, host_code_dir=deployment.code_dir,
                                    more_paths=model_code_paths(deployment))
    script = f'exec azmlinfsrv --entry_script "$AML_APP_ROOT/$AZUREML_ENTRY_SCRIPT" --port {CONTAINER_PORT}'
    return {"argv": ["sh", "-c", script], "env": {}, "reload": "gunicorn"}


def _labels(deployment: Deployment, devcontainer_folder: Path, gpu: bool) -> dict[str, str]:
    return {
        **({LABEL_GPU: "1"} if gpu else {}),
        LABEL_LOCAL_ENDPOINT: "",
        LABEL_ENDPOINT: deployment.endpoint_name,
        LABEL_DEPLOYMENT: deployment.deployment_name,
        LABEL_ENDPOINT_DATA: json.dumps(deployment.endpoint_data, sort_keys=True, default=str),
        LABEL_DEPLOYMENT_DATA: json.dumps(deployment.deployment_data, sort_keys=True, default=str),
        LABEL_SPEC: deployment.spec_path,
        LABEL_WORKDIR: str(Path.cwd()),
        LABEL_CODE_DIR: deployment.code_dir,
        LABEL_DEVCONTAINER_FOLDER: str(devcontainer_folder),
        LABEL_DEVCONTAINER_CONFIG: str(devcontainer_folder / ".devcontainer" / "devcontainer.json"),
    }


def _config_hash(**identity: Any) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def resource_limits(deployment: Deployment) -> dict[str, int]:
    """A Kubernetes deployment's resources.limits as Docker applies them: memory without swap (a Kubernetes
    container gets none), CPU in billionths of a core. Empty without limits."""
    limits: dict[str, int] = {}
    if deployment.memory_limit:
        limits["mem_limit"] = limits["memswap_limit"] = deployment.memory_limit
    if deployment.cpu_limit:
        limits["nano_cpus"] = round(deployment.cpu_limit * 1_000_000_000)
    return limits


def render_container(
    deployment: Deployment, image_tag: str, image_id: str, runtime_dir: Path, devcontainer_folder: Path,
    *, gpu: bool = False,
) -> ContainerSpec:
    """runtime_dir: host folder shared with the supervisor. devcontainer_folder: the host folder holding
    .devcontainer/devcontainer.json; the labels naming it make VS Code and `devcontainer up` reuse
    this container instead of starting a second one. gpu: request every GPU (Docker device request)."""
    if deployment.inference_config:
        return render_custom_container(deployment, image_tag, image_id, devcontainer_folder, gpu=gpu)
    code_target = code_mount(deployment)
    environment = {"PYTHONDONTWRITEBYTECODE": "1", **server_environment(deployment)}
    mounts = _code_and_model_mounts(deployment)
    mounts.append({"source": str(IN_CONTAINER), "target": BIN_DIR, "read_only": True})
    mounts.append({"source": str(runtime_dir), "target": RUNTIME_DIR, "read_only": False})
    command = ["python", f"{BIN_DIR}/supervisor.py", RUNTIME_DIR]  # as the image's CMD
    labels = {**_labels(deployment, devcontainer_folder, gpu), LABEL_CODE_TARGET: code_target}
    routes = inference_server_routes(CONTAINER_PORT)
    limits = resource_limits(deployment)
    # a new supervisor (a localml upgrade) needs a new container
    config_hash = _config_hash(image=image_tag, image_id=image_id, command=command, env=environment, mounts=mounts,
                               labels=labels, gpu=gpu, supervisor=hashlib.sha256(SUPERVISOR.read_bytes()).hexdigest(),
                               network=NETWORK, **({"limits": limits} if limits else {}))
    return ContainerSpec(
        name=container_name(deployment.endpoint_name, deployment.deployment_name),
        image=image_tag, command=command, environment=environment, mounts=mounts,
        labels=labels, config_hash=config_hash,
        app_root=environment.get("AML_APP_ROOT", code_target), code_target=code_target,
        model_dir=model_dir_in_container(deployment),
        container_ports={"scoring": CONTAINER_PORT, "debug": DEBUG_CONTAINER_PORT}, routes=routes, gpu=gpu,
        limits=limits,
    )


def render_custom_container(deployment: Deployment, image_tag: str, image_id: str, devcontainer_folder: Path,
                            *, gpu: bool = False) -> ContainerSpec:
    """environment.inference_config: the image runs as-is (its own command), serving its own routes and
    ports; the model is mounted as Azure mounts it (model_mount_path honoured), Azure's variables set."""
    assert deployment.inference_config
    routes = {role.removesuffix("_route"): dict(route) for role, route in deployment.inference_config.items()}
    ports = sorted({route["port"] for route in routes.values()})
    container_ports = {"scoring": routes["scoring"]["port"]}
    container_ports.update({f"port-{port}": port for port in ports if port != routes["scoring"]["port"]})
    environment = server_environment(deployment)
    mounts = _code_and_model_mounts(deployment)
    code_target = mounts[0]["target"] if deployment.code_dir else ""
    labels = {**_labels(deployment, devcontainer_folder, gpu), LABEL_CODE_TARGET: code_target, LABEL_CUSTOM: "1"}
    limits = resource_limits(deployment)
    config_hash = _config_hash(image=image_tag, image_id=image_id, env=environment, mounts=mounts, labels=labels,
                               routes=routes, gpu=gpu, network=NETWORK, **({"limits": limits} if limits else {}))
    return ContainerSpec(
        name=container_name(deployment.endpoint_name, deployment.deployment_name),
        image=image_tag, command=[], environment=environment, mounts=mounts, labels=labels,
        config_hash=config_hash, app_root=environment.get("AML_APP_ROOT", ""), code_target=code_target,
        model_dir=model_dir_in_container(deployment), container_ports=container_ports, routes=routes, gpu=gpu,
        custom=True, limits=limits,
    )


def is_current(spec: ContainerSpec) -> bool:
    """A container of this name is running with exactly this configuration."""
    container = docker_engine.get_container(spec.name)
    return bool(
        container is not None
        and container.status == "running"
        and container.labels.get(LABEL_CONFIG_HASH) == spec.config_hash
    )


def check_gpu() -> list[str]:
    """The GPUs nvidia-smi lists; a clear error when there is no driver or no GPU (gpu=1)."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        raise LocalmlError.one("gpu=1 asks for GPUs, but this machine has no NVIDIA driver (nvidia-smi is not on PATH)",
                               fix="install the NVIDIA driver and the NVIDIA Container Toolkit, or leave out gpu=1")
    try:
        result = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise LocalmlError.one(f"gpu=1: {smi} -L failed: {exc}", fix="check the NVIDIA driver, or leave out gpu=1") \
            from None
    gpus = [line for line in result.stdout.splitlines() if line.startswith("GPU ")]
    if result.returncode != 0 or not gpus:
        said = (result.stdout + result.stderr).strip().splitlines()
        raise LocalmlError.one(f"gpu=1: nvidia-smi finds no GPU ({said[0] if said else f'exit {result.returncode}'})",
                               fix="check the NVIDIA driver (nvidia-smi must list a GPU), or leave out gpu=1")
    return gpus


def host_routes(spec: ContainerSpec, host_ports: dict[str, int]) -> dict[str, dict[str, Any]]:
    """The routes as reached from this machine: {role: {path, port on 127.0.0.1}}."""
    by_container_port = {spec.container_ports[role]: port for role, port in host_ports.items()}
    return {role: {"path": route["path"], "port": by_container_port[route["port"]]}
            for role, route in spec.routes.items()}


def start(spec: ContainerSpec) -> tuple[Any, dict[str, int], str]:
    """(Re)create the container. Returns (container, {role: host port}, reason)."""
    old = docker_engine.get_container(spec.name)
    first = {"scoring": FIRST_SCORING_PORT, "debug": FIRST_DEBUG_PORT}
    preferred = {role: first.get(role, FIRST_SCORING_PORT) for role in spec.container_ports}
    reason = "created"
    if old is not None:
        previous = json.loads(old.labels.get(LABEL_HOST_PORTS, "{}") or "{}")
        preferred.update({role: port for role, port in previous.items() if role in preferred})
        if old.labels.get(LABEL_CONFIG_HASH) != spec.config_hash:
            reason = "recreated: configuration or image changed"
        else:
            reason = f"recreated: it was {old.status}"
        docker_engine.remove_container(old)
        if old.attrs.get("Image"):
            # an image rebuilt under the same tag (no_cache=1) left the old one untagged: it goes with its container
            docker_engine.remove_if_unused(old.attrs["Image"])
    taken = docker_engine.ports_in_use_by_containers()
    last_error: LocalmlError | None = None
    for _ in range(5):  # another process may grab a port between our probe and Docker's bind
        host_ports: dict[str, int] = {}
        for role, port in preferred.items():
            host_ports[role] = ports.pick(port, taken | set(host_ports.values()))
        routes = host_routes(spec, host_ports)
        labels = {**spec.labels, LABEL_CONFIG_HASH: spec.config_hash, LABEL_AZUREML_PORT: str(host_ports["scoring"]),
                  LABEL_SCORING_PORT: str(host_ports["scoring"]), LABEL_DEBUG_PORT: str(host_ports.get("debug", 0)),
                  LABEL_HOST_PORTS: json.dumps(host_ports, sort_keys=True), LABEL_ROUTES: json.dumps(routes)}
        try:
            container = docker_engine.create_container(
                image=spec.image, name=spec.name, command=spec.command or None, environment=spec.environment,
                labels=labels, detach=True, gpu=spec.gpu, network=spec.network,
                ports={f"{spec.container_ports[role]}/tcp": (LOOPBACK, port) for role, port in host_ports.items()},
                binds=spec.mounts, **spec.limits,
            )
        except LocalmlError as exc:
            # create_container removed what it created itself; a container of this name that it did not create
            # ("name already in use") is another command's: left alone
            last_error = exc
            if "port is already allocated" in exc.render() or "address already in use" in exc.render():
                taken |= set(host_ports.values())
                continue
            raise
        return container, host_ports, reason
    assert last_error is not None
    raise last_error
