"""The stage actions for one deployment, in graph order. No doit in here.

Each action reads what the previous stage wrote under .localml/, does its one job and
prints one line saying what it did. tasks.py wires them into doit.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.syntax import Syntax

from . import build_context as context_stage
from . import (
    claims,
    devcontainer,
    disk,
    docker_engine,
    health,
    image,
    invoke,
    lifecycle,
    ownership,
    process_runtime,
    server,
    uv_install,
    vscode,
    watch,
)
from . import container as container_stage
from . import endpoint as endpoint_stage
from . import lock as lock_stage
from .config import CONFIG_FILE_NAME, ProjectConfig, load_project_config
from .environment import ResolvedEnvironment, resolve_environment
from .errors import LocalmlError, Problem
from .overrides import Overrides
from .progress import Progress
from .router_server import ROUTER_ANSWER
from .spec import Deployment, load_deployment, peek_names
from .state import STATE_DIR_NAME, current_file, deployment_dir, read_json, state_root, write_json_if_changed

out = Console(highlight=False, soft_wrap=True)
_errors = Console(stderr=True, highlight=False, soft_wrap=True)
COMMAND_STARTED = time.time()  # tells "started by this command" from "was already running"


@dataclass(frozen=True)
class ServerMode:
    """How the server runs: under debugpy in one process (the default of `debug`), or as azmlinfsrv."""

    debugger: bool = True
    wait: bool = False  # wait for a debugger to attach before init() runs
    keep_state: bool = False  # keep init()'s globals across reloads that leave init() and the model alone
    restart: bool = False  # a new server process, even where a reload in place would do

    def command_for(self, running: Running, target: Target) -> dict[str, Any]:
        deployment = target.resolved()
        if running.kind == "container":
            return container_stage.server_command(deployment, self.debugger, self.wait and self.debugger)
        record = process_runtime.read_record(target.state_dir)
        assert record is not None
        return process_runtime.server_command(deployment, Path(record.venv), record.scoring_port, record.debug_port,
                                              target.runtime_dir, self.debugger, self.wait)

    @classmethod
    def as_running(cls, target: Target) -> ServerMode:
        """The mode of the server running now (its command file): what watch keeps while it reloads."""
        command = read_json(target.runtime_dir / server.COMMAND_FILE_NAME) or {}
        env = command.get("env") or {}
        return cls(debugger=command.get("reload") == "debug-server" and env.get("LOCALML_DEBUGGER") != "0",
                   wait=env.get("LOCALML_DEBUG_WAIT") == "1", keep_state=keeps_state(target))

    def describe(self) -> str:
        if not self.debugger:
            return "as azmlinfsrv (debugger=0)"
        return "under debugpy, waiting for a debugger (wait=1)" if self.wait else "under debugpy"


@dataclass(frozen=True)
class Target:
    """One deployment as named on the command line (names peeked before validation)."""

    spec_path: Path
    endpoint: str
    deployment: str
    endpoint_yaml: Path | None = None
    # set=, endpoint_name=, deployment= as given (the names above include them)
    overrides: Overrides = field(default_factory=Overrides)

    @property
    def state_dir(self) -> Path:
        return deployment_dir(self.endpoint, self.deployment)

    @property
    def build_dir(self) -> Path:
        return self.state_dir / "build"

    @property
    def runtime_dir(self) -> Path:
        """Shared with the container's supervisor (its status file)."""
        return self.state_dir / "runtime"

    @property
    def launch_file(self) -> Path:
        """The launch configuration for VS Code on the host."""
        return self.state_dir / "launch.json"

    @property
    def resolved_file(self) -> Path:
        return self.state_dir / "deployment.json"

    def resolved(self) -> Deployment:
        data = read_json(self.resolved_file)
        if data is None:
            raise LocalmlError.one("the deployment has not been validated yet",
                                   fix=f"run doit debug spec={self.spec_path}")
        return Deployment.from_json(data)


@dataclass
class Running:
    """Where a deployment's server runs now: a container, or a supervisor process (process mode)."""

    kind: str  # "container" | "process"
    host: server.SupervisorHost
    scoring_port: int
    debug_port: int
    path_map: dict[str, str]  # the server's code folder -> the user's (identity in process mode)
    read_log: Callable[[float | None], str]  # log since a Unix time (None: all)
    code_target: str  # the code folder as the server sees it
    # role (scoring, readiness, liveness) -> {path, port on 127.0.0.1}
    routes: dict[str, dict[str, Any]] = field(default_factory=dict)
    custom: bool = False  # a custom container (environment.inference_config): no supervisor of ours

    def uri(self, role: str) -> str:
        route = self.routes[role]
        return f"http://{container_stage.LOOPBACK}:{route['port']}{route['path']}"

    @property
    def scoring_uri(self) -> str:
        return self.uri("scoring")


def _running(target: Target, required: bool = True) -> Running | None:
    record = process_runtime.live_record(target.state_dir)
    if record is not None:
        code_dir = (read_json(target.resolved_file) or {}).get("code_dir", "")
        log_file = Path(record.log_file)
        return Running("process", record.host(f"the process of {target.deployment}"), record.scoring_port,
                       record.debug_port, {code_dir: code_dir}, lambda since: _process_log(log_file, since),
                       code_dir, container_stage.inference_server_routes(record.scoring_port))
    found = None
    if docker_engine.engine_available():
        found = docker_engine.get_container(container_stage.container_name(target.endpoint, target.deployment))
    if found is None:
        if required:
            raise LocalmlError.one(f"no local deployment {target.deployment} on endpoint {target.endpoint}",
                                   fix=f"start it: {start_hint(target)}")
        return None
    labels = found.labels
    code_target = labels.get(container_stage.LABEL_CODE_TARGET, "")
    scoring_port = int(labels[container_stage.LABEL_SCORING_PORT])
    # containers from before routes were recorded serve azmlinfsrv's
    routes = json.loads(labels.get(container_stage.LABEL_ROUTES) or "{}") or \
        container_stage.inference_server_routes(scoring_port)
    return Running("container", server.ContainerHost(found), scoring_port,
                   int(labels.get(container_stage.LABEL_DEBUG_PORT) or 0),
                   {code_target: labels.get(container_stage.LABEL_CODE_DIR, "")} if code_target else {},
                   lambda since: docker_engine.container_logs(found, since=since), code_target,
                   routes, labels.get(container_stage.LABEL_CUSTOM) == "1")


def _process_log(log_file: Path, since: float | None) -> str:
    """The log of the latest server start (the supervisor marks each), or all of it."""
    try:
        text = log_file.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return ""
    if since is not None:
        marker = text.rfind("localml-supervisor: server started")
        text = text[marker:] if marker >= 0 else text
    return text


def _line(stage: str, text: str) -> None:
    out.print(f"[bold]{stage:<13}[/] {text}")


def _says(stage: str) -> Callable[[str], None]:
    return lambda text: _line(stage, text)


def _hold(target: Target, stage: str) -> None:
    """Hold the deployment's lock for the rest of this command (claims.py): another localml command on it,
    from this folder or another, waits until this one has exited."""
    global COMMAND_STARTED
    waited = []
    if claims.hold_deployment(target.endpoint, target.deployment, lambda text: (waited.append(1), _line(stage, text))) \
            and waited:
        # what the other command started is not this command's doing: its up-to-date checks see it as found
        COMMAND_STARTED = time.time()


# --- debug chain -------------------------------------------------------------------


def validate(target: Target, takeover: bool = False) -> None:
    """takeover=1: another project folder's container of this deployment and router of this endpoint are
    removed once the YAML is valid; without it they are refused before anything is touched."""
    _hold(target, "validate")
    if not takeover:
        claims.claim_deployment(target.endpoint, target.deployment, False, _says("validate"))
    started = time.perf_counter()
    deployment = load_deployment(target.spec_path, target.endpoint_yaml, target.overrides.parse())
    if (deployment.endpoint_name, deployment.deployment_name) != (target.endpoint, target.deployment):
        raise LocalmlError.one("the deployment's names changed while loading; run the command again")
    write_json_if_changed(target.resolved_file, deployment.to_json())
    endpoint_yaml = str(target.endpoint_yaml.resolve()) if target.endpoint_yaml else None
    # the overrides too: a later command without spec= means this same (overridden) deployment
    write_json_if_changed(current_file(), {"spec": str(target.spec_path.resolve()), "endpoint": target.endpoint,
                                           "deployment": target.deployment, "endpoint_yaml": endpoint_yaml,
                                           "overrides": target.overrides.as_vars()})
    took = (time.perf_counter() - started) * 1000
    _line("validate", f"{deployment.deployment_name} on endpoint {deployment.endpoint_name}: valid ({took:.0f} ms)")
    for note in deployment.notes:  # keys Azure accepts that do nothing here, an azureml: reference replaced
        _line("validate", f"note: {escape(note)}")
    if takeover:
        claims.claim_deployment(target.endpoint, target.deployment, True, _says("validate"))


def python_mismatch_allowance(target: Target, given: str, config: ProjectConfig) -> str | None:
    """What allows a conda file's Python pin that the base image (or this machine) lacks, if anything:
    allow_python_mismatch= given now (remembered for the deployment until given again), remembered from
    an earlier command, or `allow_python_mismatch: true` in localml.yml."""
    settings_file = target.state_dir / "settings.json"
    settings = read_json(settings_file) or {}
    if given:
        settings["allow_python_mismatch"] = given.lower() in ("1", "true", "yes", "on")
        write_json_if_changed(settings_file, settings)
        if settings["allow_python_mismatch"]:
            return "allow_python_mismatch=1"
    elif settings.get("allow_python_mismatch"):
        return f"allow_python_mismatch=1, remembered for {target.deployment}; allow_python_mismatch=0 forgets it"
    return f"allow_python_mismatch: true in {CONFIG_FILE_NAME}" if config.allow_python_mismatch else None


def resolve(target: Target, allow_python_mismatch: str, relock: bool = False) -> None:
    remember_runtime(target, "docker")
    deployment = target.resolved()
    if deployment.inference_config:
        _resolve_custom_image(target, deployment)
        return
    config = load_project_config()
    if deployment.build_context:
        _resolve_build_context(target, deployment, config)
        return
    assert deployment.image  # validation guarantees an image where there is no build context
    if not deployment.conda_file:
        plan = context_stage.prepare_image_only(deployment.image, target.build_dir, config)
        via = f" (alias of {deployment.image})" if plan.base_image != deployment.image else ""
        _line("environment", f"the image {plan.base_image}{via} as it is, localml's layer on top → {plan.tag}")
        return
    base = config.resolve_image(deployment.image)
    allowed_by = python_mismatch_allowance(target, allow_python_mismatch, config)
    with Progress(out, "environment") as progress:
        plan, env, locked = image.prepare_build_context(Path(deployment.conda_file), deployment.image, base,
                                                        target.build_dir, python_mismatch_allowed_by=allowed_by,
                                                        relock=relock, progress=progress)
    via = f" (alias of {deployment.image})" if base != deployment.image else ""
    if plan.kind == "conda":
        _line("environment", f"conda {plan.conda_version} in the base image: conda env create from "
                             f"{Path(plan.conda_file).name} (python {plan.base_python}), base {base}{via} → {plan.tag}")
    else:
        assert locked is not None  # the pip path locks
        _line("environment", f"python {plan.base_python}, {len(env.requirements)} pip requirements: "
                             f"{locked.describe()} in {_display(locked.path)}, base {base}{via} → {plan.tag}")


def _resolve_build_context(target: Target, deployment: Deployment, config: ProjectConfig) -> None:
    """environment.build: the user's Dockerfile as-is, our layer on top (build_context.py)."""
    assert deployment.build_context and deployment.dockerfile_path  # validation guarantees both
    plan, files = context_stage.prepare(Path(deployment.build_context), deployment.dockerfile_path,
                                        target.build_dir, config)
    aliased = [f"{item['name']} → {item['local']}" for item in plan.from_images if item["local"] != item["name"]]
    via = f"; FROM {', '.join(aliased)} (image_aliases)" if aliased else ""
    _line("environment", f"your {deployment.dockerfile_path} with {_display(Path(deployment.build_context))} "
                         f"as context ({files} files){via}, localml's layer on top → {plan.tag}")


def _resolve_custom_image(target: Target, deployment: Deployment) -> None:
    assert deployment.image  # validation guarantees it
    image_name = load_project_config().resolve_image(deployment.image)
    plan = image.plan_custom_image(deployment.image, image_name, target.build_dir)
    via = f" (alias of {deployment.image})" if image_name != deployment.image else ""
    scoring = deployment.inference_config["scoring_route"] if deployment.inference_config else {}
    _line("environment", f"custom container {image_name}{via} ({plan.base_image_id[7:19]}) runs as-is, "
                         f"scoring on its port {scoring.get('port')} at {scoring.get('path')}")


def build(target: Target, no_cache: bool) -> None:
    plan = image.load_plan(target.build_dir)
    assert plan is not None
    if plan.kind == "custom":
        _line("image", f"{plan.tag} is a custom container's own image: nothing to build")
        return
    if not no_cache and image.image_is_built(target.build_dir):
        # doit has no record for this deployment yet, but the tag (a hash of what goes in) exists
        _line("image", f"reused {plan.tag}: the same environment is already built")
        return
    why = (" from the base image (no_cache=1)" if plan.kind == "uv" else " without Docker's cache (no_cache=1)") \
        if no_cache else ""
    how = {"uv": f"{plan.source}'s lock with uv", "pip": f"{plan.source}'s lock with pip"}.get(plan.kind, plan.source)
    _line("image", f"building {plan.tag} from {how}{why} …")
    installed = None
    with Progress(out, "image") as progress:
        if plan.kind in ("context", "image"):
            image_id, seconds = context_stage.build(target.build_dir, say=lambda text: _line("image", text),
                                                    progress=progress, no_cache=no_cache)
        elif plan.kind == "uv":
            try:
                installed = uv_install.build(target.build_dir, progress=progress, from_base=no_cache)
            except uv_install.UvCannotRun:
                _line("image", f"{plan.base_image} cannot run uv: installing the lock with pip instead")
                image.write_installer(target.build_dir, "pip", plan.base_image, Path(plan.conda_file).name)
                image_id, seconds = image.build_image(target.build_dir, progress=progress, no_cache=no_cache)
        else:
            image_id, seconds = image.build_image(target.build_dir, progress=progress, no_cache=no_cache)
    if installed:
        _line("image", f"built {plan.tag} ({installed.image_id[7:19]}) {installed.describe()}")
    else:
        _line("image", f"built {plan.tag} ({image_id[7:19]}) in {seconds:.1f} s")


def image_is_current(target: Target) -> bool:
    try:
        return image.image_is_built(target.build_dir)
    except LocalmlError:
        return False  # the action will report it


def _container_spec(target: Target, gpu: bool = False) -> container_stage.ContainerSpec:
    deployment = target.resolved()
    plan = image.load_plan(target.build_dir)
    if plan is None:
        raise LocalmlError.one("no image plan", fix="run doit debug")
    image_id = docker_engine.image_id(plan.tag)
    if image_id is None:
        raise LocalmlError.one(f"image {plan.tag} is missing", fix="run doit debug to build it")
    return container_stage.render_container(deployment, plan.tag, image_id, target.runtime_dir.resolve(),
                                            target.state_dir.resolve(), gpu=gpu)


def container_is_current(target: Target, gpu: bool = False) -> bool:
    try:
        return container_stage.is_current(_container_spec(target, gpu))
    except LocalmlError:
        return False


def start_container(target: Target, mode: ServerMode, gpu: bool = False) -> None:
    _hold(target, "container")
    claims.claim_deployment(target.endpoint, target.deployment, False, _says("container"))
    if container_stage.is_current(_container_spec(target, gpu)):
        # doit read its records before this command waited for the lock: another command has just started it
        _line("container", "up to date (started by the localml command this one waited for)")
        return
    if gpu:
        gpus = container_stage.check_gpu()
        _line("container", f"gpu=1: requesting {len(gpus)} GPU{'s' if len(gpus) > 1 else ''} ({gpus[0]})")
    spec = _container_spec(target, gpu)
    if spec.custom:
        started, ports, reason = container_stage.start(spec)
        routes = container_stage.host_routes(spec, ports)
        _line("container", f"{reason} {spec.name} ({started.short_id}), a custom container serving itself: scoring "
                           f"{routes['scoring']['path']} on {container_stage.LOOPBACK}:{ports['scoring']}")
        return
    server.clear_status(target.runtime_dir)
    server.write_command(target.runtime_dir,
                         container_stage.server_command(target.resolved(), mode.debugger, mode.wait and mode.debugger),
                         keep_state=mode.keep_state)
    started, ports, reason = container_stage.start(spec)
    server.wait_for_supervisor(server.ContainerHost(started), target.runtime_dir)
    _line("container", f"{reason} {spec.name} ({started.short_id}): scoring on "
                       f"{container_stage.LOOPBACK}:{ports['scoring']}, debug port {ports['debug']}")


# --- process mode: a venv and a supervisor process instead of an image and a container ---------------


def resolve_for_process(target: Target, allow_python_mismatch: str, chosen_automatically: bool,
                        relock: bool = False) -> None:
    if chosen_automatically:
        _line("runtime", "no Docker engine answers: process mode (the server runs in a venv on this machine)")
    remember_runtime(target, "process")
    deployment = target.resolved()
    if deployment.inference_config:
        raise LocalmlError.one("a custom container (environment.inference_config) needs Docker: its image is the "
                               "server", file=deployment.spec_path, key="environment.inference_config",
                               fix="start a Docker engine (see README), then doit debug again")
    if deployment.build_context:
        raise LocalmlError.one("environment.build needs Docker; process mode installs a conda file's packages",
                               file=deployment.spec_path, key="environment.build",
                               fix="start a Docker engine, or give environment.image + environment.conda_file")
    if not deployment.conda_file:
        raise LocalmlError.one(f"an environment given only as an image ({deployment.image}) needs Docker; process "
                               "mode installs a conda file's packages", file=deployment.spec_path, key="environment",
                               fix="start a Docker engine, or give environment.conda_file beside the image")
    env = resolve_environment(Path(deployment.conda_file), str(deployment.image), str(deployment.image))
    python = process_runtime.host_python(env)
    version = process_runtime.python_version_of(python)
    allowed_by = python_mismatch_allowance(target, allow_python_mismatch, load_project_config())
    warning = image.check_python(env, version, allowed_by=allowed_by,
                                 where=f"this machine's Python ({python})")
    if warning:
        print(f"warning: {warning}")
    earlier = (read_json(target.state_dir / "venv-plan.json") or {}).get("lock_file")  # kept where it fits
    with Progress(out, "environment") as progress:
        locked = lock_stage.lock_environment(env.requirements, version, lock_stage.lock_platform(), env.conda_file,
                                             relock=relock, progress=progress,
                                             prefer=Path(earlier) if earlier else None)
    if locked.note:
        print(f"warning: {locked.note}")
    # the venv installs exactly the lock, as the image does
    env.requirements = locked.text.splitlines()
    folder = process_runtime.venv_dir(env, python, version)
    write_json_if_changed(target.state_dir / "venv-plan.json",
                          {"python": python, "version": version, "requirements": env.requirements,
                           "conda_file": env.conda_file, "venv": str(folder), "lock_file": str(locked.path)})
    _line("environment", f"python {version} on this machine ({python}): {locked.describe()} in "
                         f"{_display(locked.path)} → {_display(folder)}")


def runs_as_process(target: Target) -> bool:
    return process_runtime.live_record(target.state_dir) is not None


RUNTIME_SETTING = "runtime"  # in the deployment's settings.json: where it was created, kept until runtime= changes it


def remembered_runtime(target: Target) -> str | None:
    """docker or process: the runtime the deployment was last brought up in (None: never, here)."""
    value = (read_json(target.state_dir / "settings.json") or {}).get(RUNTIME_SETTING)
    return value if value in ("docker", "process") else None


def remember_runtime(target: Target, runtime: str) -> None:
    settings_file = target.state_dir / "settings.json"
    settings = read_json(settings_file) or {}
    if settings.get(RUNTIME_SETTING) != runtime:
        settings[RUNTIME_SETTING] = runtime
        write_json_if_changed(settings_file, settings)


def _venv_plan(target: Target) -> dict[str, Any]:
    plan = read_json(target.state_dir / "venv-plan.json")
    if plan is None:
        raise LocalmlError.one("no environment plan", fix="run doit debug")
    return plan


def venv_is_current(target: Target) -> bool:
    try:
        return (Path(_venv_plan(target)["venv"]) / process_runtime.COMPLETE_MARKER).exists()
    except LocalmlError:
        return False


def build_venv(target: Target) -> None:
    plan = _venv_plan(target)
    env = ResolvedEnvironment(conda_file=plan["conda_file"], python_version=None, requirements=plan["requirements"],
                              base_image="", declared_image="")
    _line("venv", f"installing {len(env.requirements)} requirements into {_display(Path(plan['venv']))} …")
    folder, built, seconds = process_runtime.ensure_venv(env, plan["python"], plan["version"])
    _line("venv", f"{'built' if built else 'reused'} {_display(folder)}" + (f" in {seconds:.1f} s" if built else ""))


def process_is_current(target: Target) -> bool:
    try:
        record = process_runtime.live_record(target.state_dir)
        if record is None:
            return False
        venv = Path(_venv_plan(target)["venv"])
        return record.config_hash == process_runtime.config_hash(target.resolved(), venv)
    except LocalmlError:
        return False


def start_process(target: Target, mode: ServerMode) -> None:
    _hold(target, "process")
    claims.claim_deployment(target.endpoint, target.deployment, False, _says("process"))
    if process_is_current(target):
        _line("process", "up to date (started by the localml command this one waited for)")
        return
    deployment = target.resolved()
    venv = Path(_venv_plan(target)["venv"])
    previous = process_runtime.read_record(target.state_dir)
    reason = "started"
    if previous is not None:
        alive = process_runtime.is_our_supervisor(target.state_dir, previous)
        reason = "restarted: configuration changed" if alive else "restarted: it was not running"
        stopped = process_runtime.stop(target.state_dir)
        if stopped is not None and stopped.stale:
            _line("process", ownership.stale_line("process.json", previous.supervisor_pid, stopped.found))
            reason = "started"
    taken = docker_engine.ports_in_use_by_containers() if docker_engine.engine_available() else set()
    scoring = container_stage.pick_port(previous.scoring_port if previous else container_stage.FIRST_SCORING_PORT,
                                        taken)
    debug = container_stage.pick_port(previous.debug_port if previous else container_stage.FIRST_DEBUG_PORT,
                                      taken | {scoring})
    server.clear_status(target.runtime_dir)
    command = process_runtime.server_command(deployment, venv, scoring, debug, target.runtime_dir, mode.debugger,
                                             mode.wait)
    server.write_command(target.runtime_dir, command, keep_state=mode.keep_state)
    record = process_runtime.start(deployment, venv, target.state_dir, target.runtime_dir, scoring, debug)
    server.wait_for_supervisor(record.host(f"the process of {target.deployment}"), target.runtime_dir)
    _line("process", f"{reason} (pid {record.supervisor_pid}): scoring on {container_stage.LOOPBACK}:{scoring}, "
                     f"debug port {debug}")


def watched_files(target: Target) -> list[str]:
    """Code and model files (doit's file_dep for the server stage), read when the tasks load.

    From the spec as it is now when it loads (so the very first run records them too), else from
    the last validated one; the validate stage reports any problem with the spec itself.
    """
    try:
        deployment = load_deployment(target.spec_path, target.endpoint_yaml, target.overrides.parse())
        return server.watched_files(deployment.code_dir, deployment.model_path)
    except LocalmlError:
        data = read_json(target.resolved_file) or {}
        return server.watched_files(data.get("code_dir"), data.get("model_path"))


def server_is_current(target: Target, mode: ServerMode) -> bool:
    if mode.restart:
        return False
    try:
        running = _running(target, required=False)
    except LocalmlError:
        return False
    if running is not None and running.custom:
        return running.host.is_up()
    status = server.read_status(target.runtime_dir)
    if running is not None and status is not None and running.host.owns(status) \
            and status.started_at >= COMMAND_STARTED:
        return False  # the container (or process) stage started it just now: the action says so
    return running is not None and keeps_state(target) == mode.keep_state \
        and server.is_running_in(running.host, target.runtime_dir, mode.command_for(running, target))


def keeps_state(target: Target) -> bool:
    """keep_state as this deployment's server last had it (remembered in its command file)."""
    command = read_json(target.runtime_dir / server.COMMAND_FILE_NAME) or {}
    return bool((command.get("settings") or {}).get("keep_state"))


RELOAD_FIX = ("fix it and save again: the server stays up (answering 503 with this error until then) and reloads "
              "in place, the debugger still attached")


def refresh_server(target: Target, mode: ServerMode, changed: list[str]) -> None:
    """Bring the server up to date: code or model changed → a reload inside the running process; its mode
    changed, restart=1, or it is not running → a new server process."""
    _hold(target, "server")
    running = _running(target)
    assert running is not None
    if running.custom:
        _restart_custom_container(target, running, changed)
        return
    command = mode.command_for(running, target)
    status = server.read_status(target.runtime_dir)
    mine = status is not None and running.host.owns(status)
    if mine and status.generation == 1 and status.started_at >= COMMAND_STARTED \
            and server.runs_command(status, command):
        _line("server", f"started {mode.describe()} with the current code and model (new {running.kind})")
        _await_debugger_port(running, target, mode)
        return
    if not mine or status.state == "exited" or not server.runs_command(status, command) or mode.restart:
        if mine and status.state == "exited":
            why = f"it had exited with code {status.exit_code}"
        elif mine and not server.runs_command(status, command):
            why = f"now {mode.describe()}"
        else:
            why = "restart=1" if mode.restart else "it was not running"
        reload_server(target, running, mode, changed, restart=mode.restart, why=why)
        return
    load = server.read_load(target.runtime_dir)
    if load and load.pid == status.pid:
        # what was saved since the server last loaded the script decides: doit's list is empty when another
        # check decided first, forgets everything after a failed reload, and `doit watch` may have reloaded
        saved = [path for path in (changed or watched_files(target)) if not _all_saved_before([path], load.started_at)]
        if not saved and load.outcome == "failed":
            raise load_failure(load, target, "nothing saved since")
        if not saved and changed:
            _line("server", f"up to date — the running server loaded {_changed_names(target, changed)} already")
        changed = saved
    if changed:
        reload_server(target, running, mode, changed)
    elif keeps_state(target) != mode.keep_state:
        server.write_command(target.runtime_dir, command, keep_state=mode.keep_state)
        _line("server", "keep_state=1: reloads that leave init() and the model alone keep init()'s state"
              if mode.keep_state else "keep_state=0: init() runs on every reload")


def _all_saved_before(paths: list[str], moment: float) -> bool:
    try:
        return all(os.stat(path).st_mtime < moment for path in paths)
    except OSError:
        return False  # a file went away: the server has not seen that


def _changed_names(target: Target, changed: list[str]) -> str:
    names = [_relative_to_spec(target, path) for path in changed]
    return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def reload_server(target: Target, running: Running, mode: ServerMode, changed: list[str], *,
                  restart: bool = False, why: str = "") -> None:
    """Reload the scoring script inside the running server (or start a new server process where the
    supervisor must) and say what happened; a script that fails to load is the error raised."""
    deployment = target.resolved()
    command = mode.command_for(running, target)
    refreshed = server.refresh(running.host, target.runtime_dir, command, keep_state=mode.keep_state,
                               restart=restart, timeout_s=max(60.0, health.probe_deadline(deployment.readiness_probe)))
    what = f"{_changed_names(target, changed)} changed" if changed else why
    if refreshed.exited:
        status = server.read_status(target.runtime_dir)
        raise health.failure_error(f"the server stopped during the reload ({what})",
                                   running.read_log(status.started_at - 1 if status else None), running.path_map,
                                   fix="fix the error above and run doit debug again; the whole log: doit logs",
                                   conda_file=deployment.conda_file)
    if not refreshed.in_place:
        again = "; a debugger attached before must attach again" if mode.debugger else ""
        _line("server", f"restarted in a new process — {why or refreshed.why} "
                        f"({refreshed.seconds * 1000:.0f} ms){again}")
        _await_debugger_port(running, target, mode)
        return
    load = refreshed.load
    assert load is not None
    if load.outcome == "failed":
        raise load_failure(load, target, what)
    _line("server", f"reloaded in place — {what} ({load.took_ms:.0f} ms; {load.describe_init()})")


def load_failure(load: server.LoadOutcome, target: Target, what: str = "") -> LocalmlError:
    """The error for a scoring script that failed to load: where in the user's code, and the traceback;
    an environment problem (numpy's binary interface) gets the environment's fix."""
    where = f" in {load.function}()" if load.function else ""
    trace = "\n    ".join(load.traceback.rstrip().splitlines())
    because = f" ({what})" if what else ""
    fix = health.environment_fix(load.traceback, _conda_file(target)) or RELOAD_FIX
    return LocalmlError([Problem(f"the scoring script failed to load{because}{where}: {load.message}\n    {trace}",
                                 file=load.file, line=load.line, fix=fix)])


def _conda_file(target: Target) -> str | None:
    return (read_json(target.resolved_file) or {}).get("conda_file")


def _restart_custom_container(target: Target, running: Running, changed: list[str]) -> None:
    """A custom container has no supervisor of ours: a changed model (or code) restarts its container."""
    assert isinstance(running.host, server.ContainerHost)
    if not changed:
        _line("server", "a custom container serves itself (its image's own command)")
        return
    names = [_relative_to_spec(target, path) for path in changed]
    docker_engine.restart_container(running.host.container)
    _line("server", f"restarted the custom container — {', '.join(names[:3])}{' …' if len(names) > 3 else ''} "
                    "changed")


def _await_debugger_port(running: Running, target: Target, mode: ServerMode) -> None:
    """With wait=1 the next stages tell the user to attach: make sure debugpy listens by then."""
    if mode.debugger and mode.wait and server.wait_for_debugger_port(running.host, target.runtime_dir):
        _line("server", f"waiting for a debugger on {container_stage.LOOPBACK}:{running.debug_port} "
                        "before init() runs")


def write_devcontainer(target: Target, merge_into_user_launch: bool) -> None:
    """.devcontainer/devcontainer.json and launch.json in the state folder, for the running container."""
    where = _running(target)
    assert where is not None
    if where.custom:
        _line("devcontainer", "none for a custom container: its image runs as-is, without localml's debug server")
        return
    if where.kind == "process":
        # no container: VS Code on this machine attaches directly, the paths are the same on both sides
        code_dir = target.resolved().code_dir
        launch = devcontainer.render_host_launch_file(code_dir, code_dir, where.debug_port)
        changed = write_json_if_changed(target.launch_file, launch, sort_keys=False)
        _line("devcontainer", f"none in process mode; launch configuration {_display(target.launch_file)}"
                              f"{' written' if changed else ''}")
        _merge_user_launch(launch, merge_into_user_launch)
        return
    assert isinstance(where.host, server.ContainerHost)
    spec = _container_spec(target, gpu=where.host.container.labels.get(container_stage.LABEL_GPU) == "1")
    folder = target.state_dir.resolve()
    plan = image.load_plan(target.build_dir)
    python = context_stage.LOCALML_PYTHON if plan is not None and plan.kind in ("context", "image") else None
    config = devcontainer.render_devcontainer(spec, where.scoring_port, where.debug_port, folder, python=python)
    # in the template's order: people read these files
    changed = write_json_if_changed(folder / ".devcontainer" / "devcontainer.json", config, sort_keys=False)
    launch = devcontainer.render_host_launch_file(target.resolved().code_dir, spec.code_target, where.debug_port)
    changed |= write_json_if_changed(target.launch_file, launch, sort_keys=False)
    shown = _display(target.launch_file)
    _line("devcontainer", f"{'written' if changed else 'up to date'}: {_display(folder / '.devcontainer')}, "
                          f"launch configuration {shown}")
    _merge_user_launch(launch, merge_into_user_launch)


def _merge_user_launch(launch: dict[str, Any], asked: bool) -> None:
    if asked:
        user_file = Path.cwd() / ".vscode" / "launch.json"
        backup = devcontainer.merge_launch(user_file, launch["configurations"][0])
        kept = f" (previous version kept as {backup.name})" if backup else ""
        _line("devcontainer", f"'{devcontainer.LAUNCH_NAME}' merged into {_display(user_file)}{kept}")


def open_vscode(target: Target, enabled: bool) -> None:
    where = _running(target)
    assert where is not None
    if where.custom:
        _line("vscode", f"skipped: nothing to debug in a custom container ({where.host.name}); doit logs shows "
                        "its output")
        return
    how = (f"attach a debugger to {container_stage.LOOPBACK}:{where.debug_port} with '{devcontainer.LAUNCH_NAME}' "
           f"from {_display(target.launch_file)}")
    if where.kind == "container":
        how += f", or open {_display(target.state_dir)} in VS Code: Reopen in Container"
    if not enabled:
        _line("vscode", f"skipped (vscode=0); {how}")
        return
    if where.kind == "process":
        _line("vscode", how)
        return
    command = vscode.launch(target.state_dir.resolve(), where.code_target)
    if command is None:
        _line("vscode", f"`code` is not on PATH: {how}")
    else:
        _line("vscode", f"opened the dev container: {' '.join(command)}")


def _display(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _relative_to_spec(target: Target, path: str) -> str:
    try:
        return str(Path(path).resolve().relative_to(target.spec_path.resolve().parent))
    except ValueError:
        return path


def check_health(target: Target) -> None:
    """Readiness with the deployment's readiness_probe, then one liveness probe (custom routes honoured)."""
    deployment = target.resolved()
    running = _running(target)
    assert running is not None

    def alive() -> bool:
        return running.host.is_up() and (running.custom or not server.has_exited(running.host, target.runtime_dir))

    def log_of_this_start() -> str:
        status = server.read_status(target.runtime_dir)
        owned = status is not None and not running.custom and running.host.owns(status)
        return running.read_log(status.started_at - 1 if owned and status else None)

    def script_failure() -> LocalmlError | None:
        load = server.read_load(target.runtime_dir)
        return load_failure(load, target) if load and load.outcome == "failed" else None

    seconds = health.wait_until_healthy(running.uri("readiness"), probe=deployment.readiness_probe, is_alive=alive,
                                        read_log=log_of_this_start, path_map=running.path_map, label="health",
                                        script_failure=script_failure, conda_file=deployment.conda_file)
    health.check_liveness(running.uri("liveness"), deployment.liveness_probe)
    status = server.read_status(target.runtime_dir)
    if not running.custom and status and running.host.owns(status) and status.started_at >= COMMAND_STARTED:
        what = running.kind if status.generation == 1 else "server"
        _line("health", f"healthy {time.time() - status.started_at:.1f} s after the {what} started")
    else:
        _line("health", f"ready (answered {running.uri('readiness')} in {seconds * 1000:.0f} ms)")


def _endpoint_deployments(endpoint_name: str) -> list[dict[str, Any]]:
    """Every deployment of the endpoint, described with its true state: process mode's from this folder's
    records, containers from their labels (a live process wins over a container, a container over a process
    that is gone)."""
    processes = _process_deployments(endpoint_name)
    containers = lifecycle.deployments_of(endpoint_name) if docker_engine.engine_available() else []
    return sorted(_merged(processes, containers), key=lambda d: d["name"])


def _process_deployments(endpoint_name: str | None = None) -> list[dict[str, Any]]:
    """Process mode's deployments in this folder (of one endpoint, or of all), running or not."""
    endpoints = state_root() / "endpoints"
    folders = [endpoints / endpoint_name] if endpoint_name else \
        sorted(p for p in endpoints.iterdir() if p.is_dir()) if endpoints.is_dir() else []
    state_dirs = [p for folder in folders if folder.is_dir() for p in sorted(folder.iterdir()) if p.is_dir()]
    return [d for d in (_describe_process(state_dir.parent.name, state_dir) for state_dir in state_dirs) if d]


def _merged(processes: list[dict[str, Any]], containers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    def key(described: dict[str, Any]) -> tuple[str, str]:
        return described["endpoint_name"] or "", described["name"] or ""

    live = [d for d in processes if _runs(d)]
    chosen = live + [d for d in containers if key(d) not in {key(p) for p in live}]
    return chosen + [d for d in processes if not _runs(d) and key(d) not in {key(c) for c in chosen}]


def _runs(described: dict[str, Any]) -> bool:
    """Its container or its supervisor process runs (whatever its server answers)."""
    where = described.get("process") or described.get("container") or {}
    return where.get("status") == "running"


def _deployment_routes(endpoint_name: str,
                       described: list[dict[str, Any]] | None = None) -> dict[str, dict[str, Any]]:
    """Every deployment of the endpoint that runs now: name -> its scoring route on this machine."""
    described = _endpoint_deployments(endpoint_name) if described is None else described
    return {d["name"]: d["routes"]["scoring"] for d in described if _runs(d)}


def _start_commands(endpoint_name: str, described: list[dict[str, Any]]) -> dict[str, str]:
    """name -> the command that starts it, for every deployment of the endpoint known here (the router's
    own error answers name them)."""
    return {d["name"]: _debug_command(d["spec"], endpoint_name, d["name"]) for d in described if d.get("spec")}


def _debug_command(spec: str, endpoint_name: str, deployment_name: str) -> str:
    """`doit debug spec=...` for this deployment of this endpoint: the names its YAML does not give itself
    are added as overrides."""
    own_endpoint, own_deployment = peek_names(Path(spec))
    words = [f"doit debug spec={spec}"]
    if own_endpoint != endpoint_name:
        words.append(f"endpoint_name={endpoint_name}")
    if own_deployment != deployment_name:
        words.append(f"deployment={deployment_name}")
    return " ".join(words)


def start_hint(target: Target) -> str:
    """How to start (or fix and restart) the target's endpoint, with that endpoint's own spec: never the spec
    remembered in .localml/current.json for another endpoint."""
    remembered = read_json(current_file()) or {}
    if remembered.get("endpoint") == target.endpoint or peek_names(target.spec_path)[0] == target.endpoint:
        return " ".join([f"doit debug spec={target.spec_path}", *target.overrides.argv()])
    known: list[tuple[str, str]] = []  # (spec, deployment) of the endpoint: this folder's records, then labels
    folder = endpoint_stage.endpoint_dir(target.endpoint)
    for resolved in sorted(folder.glob("*/deployment.json")) if folder.is_dir() else []:
        data = read_json(resolved) or {}
        if data.get("spec_path") and data.get("endpoint_name") == target.endpoint:
            known.append((data["spec_path"], data.get("deployment_name") or resolved.parent.name))
    if not known and docker_engine.engine_available():
        known = [(d["spec"], d["name"]) for d in lifecycle.deployments_of(target.endpoint) if d.get("spec")]
    if not known:
        return "doit debug spec=<its deployment YAML>"
    spec, name = next((item for item in known if item[1] == target.deployment), known[0])
    return _debug_command(spec, target.endpoint, name)


def update_endpoint(target: Target) -> None:
    """Point the endpoint's address at its running deployments, with the endpoint YAML's traffic."""
    deployment = target.resolved()
    described = _endpoint_deployments(target.endpoint)
    routes = endpoint_stage.render_routes(target.endpoint, deployment.endpoint_data,
                                          _deployment_routes(target.endpoint, described),
                                          starts=_start_commands(target.endpoint, described))
    with claims.endpoint_lock(target.endpoint, _says("endpoint")):
        # another folder may have started a router of this endpoint since this command's validate stage
        claims.claim_endpoint(target.endpoint, False, _says("endpoint"))
        endpoint_stage.write_routes(target.endpoint, routes)
        taken = docker_engine.ports_in_use_by_containers() if docker_engine.engine_available() else set()
        router, started = endpoint_stage.ensure_router(target.endpoint, taken)
    how = "started on" if started else "at"
    _line("endpoint", f"{target.endpoint} {how} {router.scoring_uri} → {endpoint_stage.describe_traffic(routes)}")
    _line("endpoint", "doit invoke request=<file.json> (deployment=<name> picks one)")


def watch_deployment(target: Target, takeover: bool = False) -> None:
    """Follow saves until Ctrl-C: code and model edits reload inside the running server, at once; an edit
    of the YAML or the conda file runs the debug chain again. It holds the deployment's lock only while it
    reloads: the chain it runs takes the lock itself."""
    with claims.deployment_lock(target.endpoint, target.deployment, _says("watch")):
        claims.claim_deployment(target.endpoint, target.deployment, takeover, _says("watch"))
    # bring it up first (a broken start is reported, and the next save is the fix)
    watch.run_debug_chain(target.spec_path, target.endpoint_yaml, target.overrides.argv())
    endpoint_yaml = str(target.endpoint_yaml) if target.endpoint_yaml else None

    def watched() -> tuple[list[str], list[str]]:
        return watch.folders_and_files(read_json(target.resolved_file) or {}, target.spec_path, endpoint_yaml)

    folders, files = watched()
    model_file = {path for path in files if path == (read_json(target.resolved_file) or {}).get("model_path")}

    def on_change(in_folders: list[str], among_files: list[str]) -> None:
        changed = in_folders + among_files
        if set(among_files) <= model_file and _reload_after_save(target, changed):
            return
        _line("watch", f"{_changed_names(target, changed)} changed")
        if watch.run_debug_chain(target.spec_path, target.endpoint_yaml, target.overrides.argv()) != 0:
            _line("watch", "not healthy: fix the error above and save again")
        else:
            _line("watch", "ready — waiting for changes (Ctrl-C stops)")

    def ready() -> None:
        _line("watch", f"watching {', '.join(_display(Path(f)) for f in folders)} for saves, and "
                       f"{', '.join(_display(Path(f)) for f in files)} (Ctrl-C stops)")

    with contextlib.suppress(KeyboardInterrupt):
        watch.watch(folders, lambda: watched()[1], on_change, on_ready=ready)
    _line("watch", "stopped")


def _reload_after_save(target: Target, changed: list[str]) -> bool:
    """Code or model saved: reload inside the server as it runs now (same debugger, same keep_state).
    False when there is no server of ours running to reload: the debug chain then brings one up."""
    with claims.deployment_lock(target.endpoint, target.deployment, _says("watch")):
        try:
            running = _running(target, required=False)
        except LocalmlError:
            return False
        status = server.read_status(target.runtime_dir)
        if running is None or running.custom or status is None or not running.host.owns(status) \
                or status.state != "running":
            return False
        try:
            reload_server(target, running, ServerMode.as_running(target), changed)
        except LocalmlError as exc:
            _errors.print(exc.render(), markup=False)
            _line("watch", "the server keeps running: fix the error above and save again")
        return True


# --- around the endpoint ------------------------------------------------------------


def invoke_endpoint(target: Target, asked: invoke.Asked) -> None:
    """Send the request to the endpoint's address: routed by traffic, or to the deployment named (deployment=)."""
    prepared = invoke.prepare(asked)  # every problem with the files or variables before anything is sent
    named = prepared.named
    router = endpoint_stage.find_router(target.endpoint)
    if router is None:
        known = _endpoint_deployments(target.endpoint)
        why = lifecycle.endpoint_reason(known) if known else None
        raise LocalmlError.one(f"local endpoint {target.endpoint} is not running" + (f" ({why})" if why else ""),
                               fix=f"start it: {start_hint(target)}")
    url = router.scoring_uri
    timeout_s = max(target.resolved().request_timeout_ms / 1000 * 2, 30) if target.resolved_file.exists() else 60
    sent_at = time.time()
    result = invoke.post(url, prepared.payload, timeout_s=timeout_s, headers=prepared.headers)
    answered = result.deployment
    if result.script_failed and answered:
        answering = Target(target.spec_path, target.endpoint, answered)
        load = server.read_load(answering.runtime_dir)
        if load and load.outcome == "failed":
            raise load_failure(load, answering, f"deployment {answered} answered {result.status}")
    own = _router_error(result)
    if own is not None:  # the router's own answer, not a deployment's: its log has nothing to add
        raise LocalmlError.one(f"the endpoint's router answered {result.status}: {own.get('error')}",
                               fix=own.get("fix") or "doit endpoints lists the local deployments and their state")
    if not 200 <= result.status < 300:
        # the server answers "check the logs": we do, and show the traceback through run()
        running = _running(Target(target.spec_path, target.endpoint, answered), required=False) if answered else None
        cause = health.extract_cause(running.read_log(sent_at - 1), running.path_map) if running else None
        raise invoke.error_for(result, url, cause, answered)
    how = "named" if named else "by traffic"
    _line("invoke", f"{result.status} from {answered} ({how}) in {result.latency_ms:.0f} ms")
    if prepared.output:
        invoke.save(prepared.output, result.content)
        _line("invoke", escape(f"saved the answer ({result.status}, {result.content_type or 'no Content-Type'}, "
                               f"{len(result.content):,} bytes) to {_display(prepared.output)}"))
        return
    _show_answer(result.answer)


def _router_error(result: invoke.InvokeResult) -> dict[str, Any] | None:
    """The router's own error answer (no deployment for the name, none running, one not answering), if it is one."""
    value = result.answer.value if result.status >= 400 else None
    return value if isinstance(value, dict) and value.get("answered_by") == ROUTER_ANSWER else None


def _show_answer(answer: invoke.Answer) -> None:
    """JSON pretty-printed, text as it is; a binary body only described (dumping it would wreck the terminal)."""
    if answer.kind == "binary":
        _line("invoke", escape(answer.summary()))
    elif answer.kind == "json":
        body = json.dumps(answer.value, indent=2)
        out.print(Syntax(body, "json", theme="ansi_dark", background_color="default") if out.is_terminal else body,
                  markup=False)
    else:
        out.print(answer.value, markup=False)


def _describe_process(endpoint_name: str, state_dir: Path) -> dict[str, Any] | None:
    """A deployment in process mode (its record in this folder), with its true state; None without a record."""
    record = process_runtime.read_record(state_dir)
    if record is None:
        return None
    alive = process_runtime.is_our_supervisor(state_dir, record)
    data = read_json(state_dir / "deployment.json") or {}
    state = lifecycle.process_state(alive, record.supervisor_pid, state_dir / "runtime", record.scoring_port,
                                    data.get("readiness_probe"))
    base = f"http://{container_stage.LOOPBACK}:{record.scoring_port}"
    return {
        "name": state_dir.name, "endpoint_name": endpoint_name, "type": "local", "location": "local",
        "runtime": "process", "provisioning_state": state.provisioning_state, "state_reason": state.reason,
        "scoring_uri": f"{base}/score", "readiness_uri": f"{base}/", "liveness_uri": f"{base}/",
        "routes": container_stage.inference_server_routes(record.scoring_port),
        "ports": {"scoring": record.scoring_port, "debug": record.debug_port},
        "pid": record.supervisor_pid,
        "process": {"pid": record.supervisor_pid, "status": "running" if alive else "exited"},
        "spec": data.get("spec_path"),
        "environment_variables": data.get("environment_variables", {}),
    }


def show(target: Target) -> None:
    """The endpoint and every deployment it has here, Azure-style, with what the servers offer."""
    deployments = _endpoint_deployments(target.endpoint)
    if not deployments:
        raise LocalmlError.one(f"no local endpoint named {target.endpoint}", fix=f"start it: {start_hint(target)}")
    endpoint_data = (read_json(target.resolved_file) or {}).get("endpoint_data") or {}
    router = endpoint_stage.find_router(target.endpoint)
    for described in deployments:
        described.update(lifecycle.offered_swagger(described))
    described_endpoint = lifecycle.render_endpoint(target.endpoint, endpoint_data, deployments,
                                                   router.base_uri if router else None)
    print(json.dumps(described_endpoint, indent=2))


def logs(target: Target, tail: str, follow: bool) -> None:
    record = process_runtime.read_record(target.state_dir)
    if record is not None:
        _follow_file(Path(record.log_file), int(tail) if tail.isdigit() else None, follow)
        return
    where = _running(target)
    assert where is not None and isinstance(where.host, server.ContainerHost)
    running = where.host.container
    lines: int | str = int(tail) if tail.isdigit() else "all"
    if follow:
        try:
            for chunk in docker_engine.follow_logs(running, lines):
                sys.stdout.write(chunk)
                sys.stdout.flush()
        except KeyboardInterrupt:
            pass
        return
    sys.stdout.write(docker_engine.container_logs(running, lines))


def _follow_file(path: Path, tail: int | None, follow: bool) -> None:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        text = ""
    lines = text.splitlines(keepends=True)
    sys.stdout.write("".join(lines[-tail:] if tail else lines))
    if not follow:
        return
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            handle.seek(0, 2)
            while True:
                chunk = handle.read()
                if chunk:
                    sys.stdout.write(chunk)
                    sys.stdout.flush()
                else:
                    time.sleep(0.2)
    except KeyboardInterrupt:
        pass


def delete(target: Target, with_images: bool, takeover: bool = False) -> None:
    _hold(target, "delete")
    claims.claim_deployment(target.endpoint, target.deployment, takeover, _says("delete"))
    stopped = process_runtime.stop(target.state_dir)
    if stopped is not None and stopped.stale:
        _line("delete", ownership.stale_line("process.json", stopped.record.supervisor_pid, stopped.found))
    elif stopped is not None:
        left = process_runtime.wait_until_gone(stopped.ended)
        if left:
            raise LocalmlError.one(f"processes {left} of {target.deployment} did not stop",
                                   fix=f"end them by hand: kill -9 {' '.join(map(str, left))}")
        _line("delete", f"stopped the server process of {target.deployment} "
                        f"(pid {stopped.record.supervisor_pid}); nothing of it is left running")
        if not docker_engine.engine_available():  # a container of the same name, if any, waits for the engine
            _update_routes_after_delete(target)
            return
    # whichever runtime it ran in last: a container of the deployment goes too
    name = container_stage.container_name(target.endpoint, target.deployment)
    found = docker_engine.get_container(name)
    image_tag = None
    custom = False
    if found is not None:
        image_tag = (found.image.tags or [None])[0] if found.image else None
        custom = found.labels.get(container_stage.LABEL_CUSTOM) == "1"
        docker_engine.remove_container(found)
        _line("delete", f"removed container {name}")
    else:
        _line("delete", f"no container {name}")
    if with_images and custom:
        _line("delete", f"kept image {image_tag}: a custom container's image is yours, not localml's")
    elif with_images and image_tag:
        _remove_images(image_tag, target)
    _update_routes_after_delete(target)


def _remove_images(image_tag: str, target: Target) -> None:
    """Our image, unless another container uses it; for environment.build also the user's built image."""
    users = [c for c in docker_engine.list_containers([container_stage.LABEL_LOCAL_ENDPOINT])
             if image_tag in (c.image.tags if c.image else [])]
    if users:
        _line("delete", f"kept image {image_tag}: still used by {', '.join(c.name for c in users)}")
        return
    plan = image.load_plan(target.build_dir)
    if docker_engine.remove_image(image_tag):
        _line("delete", f"removed image {image_tag}")
    # the user's Dockerfile built as-is, below ours
    if plan is not None and plan.tag == image_tag and plan.user_tag and docker_engine.remove_image(plan.user_tag):
        _line("delete", f"removed image {plan.user_tag} (built from your Dockerfile)")


def _update_routes_after_delete(target: Target) -> None:
    """The other deployments keep serving; with none left, the endpoint's router stops."""
    with claims.endpoint_lock(target.endpoint, _says("delete")):
        _update_routes(target)


def _update_routes(target: Target) -> None:
    described = _endpoint_deployments(target.endpoint)
    remaining = _deployment_routes(target.endpoint, described)
    if remaining:
        routes = endpoint_stage.read_routes(target.endpoint)
        data = {"traffic": routes["traffic"], "mirror_traffic": routes["mirror_traffic"]} if routes else {}
        endpoint_stage.write_routes(target.endpoint, endpoint_stage.render_routes(
            target.endpoint, data, remaining, starts=_start_commands(target.endpoint, described)))
        _line("delete", f"endpoint {target.endpoint} still routes to {', '.join(sorted(remaining))}")
        return
    stopped = endpoint_stage.stop_router(target.endpoint)
    if stopped is not None and stopped[1] == ownership.OURS:
        _line("delete", f"stopped the router of endpoint {target.endpoint} (pid {stopped[0]}): "
                        "it has no deployments left")
    elif stopped is not None:
        _line("delete", ownership.stale_line(endpoint_stage.ROUTER_FILE, *stopped))


def list_endpoints() -> None:
    """Every local endpoint and deployment (containers on this machine, this folder's processes), each in its
    true state and why; a deployment that is not Succeeded gets the command that starts it again."""
    containers = lifecycle.list_local_endpoints() if docker_engine.engine_available() else []
    rows = _merged(_process_deployments(), containers)
    if not rows:
        _line("endpoints", "no local endpoints")
    for endpoint_name in sorted({row["endpoint_name"] or "" for row in rows}):
        router = endpoint_stage.find_router(endpoint_name)
        routes = endpoint_stage.read_routes(endpoint_name) if router else None
        where = f"{router.scoring_uri}  {endpoint_stage.describe_traffic(routes)}" if router and routes else \
            "no router started from this folder"
        out.print(f"[bold]{endpoint_name}[/]  {where}")
        for row in sorted((r for r in rows if r["endpoint_name"] == endpoint_name), key=lambda r: r["name"] or ""):
            reason = f"  {row['state_reason']}" if row.get("state_reason") else ""
            out.print(f"  {row['name']:<16} {row['provisioning_state']:<10} {row['scoring_uri']:<40} "
                      f"{_where_it_runs(row)}{reason}", markup=False)
            if row["provisioning_state"] == "Failed" and row.get("spec"):
                folder = (row.get("container") or {}).get("workdir")
                elsewhere = f" (in {folder})" if folder and Path(folder) != Path.cwd() else ""
                out.print(f"  {'':<16} fix: {_debug_command(row['spec'], endpoint_name, row['name'])}{elsewhere}",
                          markup=False)
    for text in disk.report(disk.measure(state_root()), STATE_DIR_NAME):
        _line("disk", text)


def _where_it_runs(row: dict[str, Any]) -> str:
    if row.get("process"):
        return f"process {row['process']['pid']}" + ("" if row["process"]["status"] == "running" else " (gone)")
    return row["container"]["status"]


def prune(with_cache: bool) -> None:
    for text in disk.prune(with_cache):
        _line("prune", text)
