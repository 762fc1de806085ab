"""The debug chain for one deployment, in graph order. No doit in here.

    validate -> environment -> image | venv -> container | process -> server -> devcontainer -> vscode -> health
    -> endpoint                                                                          (and watch, which reruns it)

Each action reads what the previous stage wrote under .localml/, does its one job and prints one line saying
what it did. What runs is reached through runtime.py only; tasks.py wires these into doit. The commands around
a running endpoint (invoke, show, logs, delete, endpoints) are in commands.py.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Any

from . import build_context as context_stage
from . import (
    claims,
    devcontainer,
    docker_engine,
    doctor,
    health,
    image,
    machine,
    process_runtime,
    runtime,
    server,
    uv_install,
    vscode,
    watch,
)
from . import container as container_stage
from . import endpoint as endpoint_stage
from . import lock as lock_stage
from .config import CONFIG_FILE_NAME, ProjectConfig, load_project_config
from .console import display, errors, line, out, says
from .contract import LOOPBACK
from .environment import ResolvedEnvironment, resolve_environment
from .errors import LocalmlError
from .progress import Progress
from .runtime import Deployed, ServerMode
from .spec import Deployment
from .state import current_file, read_json, write_json_if_changed
from .target import Target, start_hint

COMMAND_STARTED = time.time()  # tells "started by this command" from "was already running"


def _deployed(target: Target) -> Deployed:
    """What runs of the deployment now; an error saying how to start it when nothing does."""
    found = runtime.find(target.endpoint, target.deployment)
    if found is None:
        raise LocalmlError.one(f"no local deployment {target.deployment} on endpoint {target.endpoint}",
                               fix=f"start it: {start_hint(target)}")
    return found


def _hold(target: Target, stage: str) -> None:
    """Hold the deployment's lock for the rest of this command (claims.py): another localml command on it,
    from this folder or another, waits until this one has exited."""
    global COMMAND_STARTED
    waited = []
    if claims.hold_deployment(target.endpoint, target.deployment, lambda text: (waited.append(1), line(stage, text))) \
            and waited:
        # what the other command started is not this command's doing: its up-to-date checks see it as found
        COMMAND_STARTED = time.time()


# --- validate, environment, image ------------------------------------------------------------------------


def validate(target: Target, takeover: bool = False) -> None:
    """takeover=1: another project folder's container of this deployment and router of this endpoint are
    removed once the YAML is valid; without it they are refused before anything is touched."""
    _hold(target, "validate")
    if not takeover:
        claims.claim_deployment(target.endpoint, target.deployment, False, says("validate"))
    started = time.perf_counter()
    deployment = target.loaded()
    if (deployment.endpoint_name, deployment.deployment_name) != (target.endpoint, target.deployment):
        raise LocalmlError.one("the deployment's names changed while loading; run the command again")
    write_json_if_changed(target.resolved_file, deployment.to_json())
    endpoint_yaml = str(target.endpoint_yaml.resolve()) if target.endpoint_yaml else None
    # the overrides too: a later command without spec= means this same (overridden) deployment
    write_json_if_changed(current_file(), {"spec": str(target.spec_path.resolve()), "endpoint": target.endpoint,
                                           "deployment": target.deployment, "endpoint_yaml": endpoint_yaml,
                                           "overrides": target.overrides.as_vars()})
    took = (time.perf_counter() - started) * 1000
    line("validate", f"{deployment.deployment_name} on endpoint {deployment.endpoint_name}: valid ({took:.0f} ms)")
    for note in deployment.notes:  # keys Azure accepts that do nothing here, an azureml: reference replaced
        line("validate", f"note: {note}")
    if takeover:
        claims.claim_deployment(target.endpoint, target.deployment, True, says("validate"))


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
    doctor.preflight(target, "docker")  # what this machine lacks (an engine, a base image, a CA file): before any work
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
        line("environment", f"the image {plan.base_image}{via} as it is, localml's layer on top → {plan.tag}")
        return
    base = config.resolve_image(deployment.image)
    allowed_by = python_mismatch_allowance(target, allow_python_mismatch, config)
    with Progress(out, "environment") as progress:
        plan, env, locked = image.prepare_build_context(Path(deployment.conda_file), deployment.image, base,
                                                        target.build_dir, python_mismatch_allowed_by=allowed_by,
                                                        relock=relock, progress=progress)
    via = f" (alias of {deployment.image})" if base != deployment.image else ""
    if plan.kind == "conda":
        line("environment", f"conda {plan.conda_version} in the base image: conda env create from "
                            f"{Path(plan.conda_file).name} (python {plan.base_python}), base {base}{via} → {plan.tag}")
    else:
        assert locked is not None  # the pip path locks
        line("environment", f"python {plan.base_python}, {len(env.requirements)} pip requirements: "
                            f"{locked.describe()} in {display(locked.path)}, base {base}{via} → {plan.tag}")


def _resolve_build_context(target: Target, deployment: Deployment, config: ProjectConfig) -> None:
    """environment.build: the user's Dockerfile as-is, our layer on top (build_context.py)."""
    assert deployment.build_context and deployment.dockerfile_path  # validation guarantees both
    plan, files = context_stage.prepare(Path(deployment.build_context), deployment.dockerfile_path,
                                        target.build_dir, config)
    aliased = [f"{item['name']} → {item['local']}" for item in plan.from_images if item["local"] != item["name"]]
    via = f"; FROM {', '.join(aliased)} (image_aliases)" if aliased else ""
    line("environment", f"your {deployment.dockerfile_path} with {display(Path(deployment.build_context))} "
                        f"as context ({files} files){via}, localml's layer on top → {plan.tag}")


def _resolve_custom_image(target: Target, deployment: Deployment) -> None:
    assert deployment.image  # validation guarantees it
    image_name = load_project_config().resolve_image(deployment.image)
    plan = image.plan_custom_image(deployment.image, image_name, target.build_dir)
    via = f" (alias of {deployment.image})" if image_name != deployment.image else ""
    scoring = deployment.inference_config["scoring_route"] if deployment.inference_config else {}
    line("environment", f"custom container {image_name}{via} ({plan.base_image_id[7:19]}) runs as-is, "
                        f"scoring on its port {scoring.get('port')} at {scoring.get('path')}")


def build(target: Target, no_cache: bool) -> None:
    plan = image.load_plan(target.build_dir)
    assert plan is not None
    if plan.kind == "custom":
        line("image", f"{plan.tag} is a custom container's own image: nothing to build")
        return
    if not no_cache and image.image_is_built(target.build_dir):
        # doit has no record for this deployment yet, but the tag (a hash of what goes in) exists
        line("image", f"reused {plan.tag}: the same environment is already built")
        return
    # one build of a tag at a time on this machine: a second folder with the same environment waits, then reuses
    with machine.image_lock(plan.tag, f"the image {plan.tag}", says("image")):
        if not no_cache and image.image_is_built(target.build_dir):
            line("image", f"reused {plan.tag}: another localml command built the same environment meanwhile")
            return
        _build_image(target, plan, no_cache)


def _build_image(target: Target, plan: image.ImagePlan, no_cache: bool) -> None:
    why = (" from the base image (no_cache=1)" if plan.kind == "uv" else " without Docker's cache (no_cache=1)") \
        if no_cache else ""
    how = {"uv": f"{plan.source}'s lock with uv", "pip": f"{plan.source}'s lock with pip"}.get(plan.kind, plan.source)
    line("image", f"building {plan.tag} from {how}{why} …")
    installed = None
    with Progress(out, "image") as progress:
        if plan.kind in ("context", "image"):
            image_id, seconds = context_stage.build(target.build_dir, say=says("image"), progress=progress,
                                                    no_cache=no_cache)
        elif plan.kind == "uv":
            try:
                installed = uv_install.build(target.build_dir, progress=progress, from_base=no_cache)
            except uv_install.UvCannotRun:
                line("image", f"{plan.base_image} cannot run uv: installing the lock with pip instead")
                image.write_installer(target.build_dir, "pip", plan.base_image, Path(plan.conda_file).name)
                image_id, seconds = image.build_image(target.build_dir, progress=progress, no_cache=no_cache)
        else:
            image_id, seconds = image.build_image(target.build_dir, progress=progress, no_cache=no_cache)
    if installed:
        line("image", f"built {plan.tag} ({installed.image_id[7:19]}) {installed.describe()}")
    else:
        line("image", f"built {plan.tag} ({image_id[7:19]}) in {seconds:.1f} s")


def image_is_current(target: Target) -> bool:
    try:
        return image.image_is_built(target.build_dir)
    except LocalmlError:
        return False  # the action will report it


# --- container (Docker) ----------------------------------------------------------------------------------


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
    claims.claim_deployment(target.endpoint, target.deployment, False, says("container"))
    if container_stage.is_current(_container_spec(target, gpu)):
        # doit had no record of it (a command interrupted before it finished, or the one this one waited for):
        # the container runs with exactly this configuration, and stays
        line("container", f"up to date: {container_stage.container_name(target.endpoint, target.deployment)} "
                          "runs with this configuration")
        return
    if gpu:
        gpus = container_stage.check_gpu()
        line("container", f"gpu=1: requesting {len(gpus)} GPU{'s' if len(gpus) > 1 else ''} ({gpus[0]})")
    spec = _container_spec(target, gpu)
    command = None if spec.custom else \
        container_stage.server_command(target.resolved(), mode.debugger, mode.wait and mode.debugger)
    started, reason = runtime.start_container(spec, target.runtime_dir, command, mode.keep_state)
    assert started.container() is not None
    short_id = started.container().short_id  # type: ignore[union-attr]
    if spec.custom:
        line("container", f"{reason} {spec.name} ({short_id}), a custom container serving itself: scoring "
                          f"{started.routes['scoring']['path']} on {LOOPBACK}:{started.routes['scoring']['port']}")
        return
    line("container", f"{reason} {spec.name} ({short_id}): scoring on {LOOPBACK}:{started.scoring_port}, "
                      f"debug port {started.debug_port}")


# --- process mode: a venv and a supervisor process instead of an image and a container ---------------


def resolve_for_process(target: Target, allow_python_mismatch: str, chosen_automatically: bool,
                        relock: bool = False) -> None:
    if chosen_automatically:
        line("runtime", "no Docker engine answers: process mode (the server runs in a venv on this machine)")
    doctor.preflight(target, "process")
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
    line("environment", f"python {version} on this machine ({python}): {locked.describe()} in "
                        f"{display(locked.path)} → {display(folder)}")


RUNTIME_SETTING = "runtime"  # in the deployment's settings.json: where it was created, kept until runtime= changes it


def remembered_runtime(target: Target) -> str | None:
    """docker or process: the runtime the deployment was last brought up in (None: never, here)."""
    value = (read_json(target.state_dir / "settings.json") or {}).get(RUNTIME_SETTING)
    if value in ("docker", "process"):
        return value
    return "process" if runtime.runs_as_process(target.endpoint, target.deployment) else None


def remember_runtime(target: Target, chosen: str) -> None:
    settings_file = target.state_dir / "settings.json"
    settings = read_json(settings_file) or {}
    if settings.get(RUNTIME_SETTING) != chosen:
        settings[RUNTIME_SETTING] = chosen
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
    line("venv", f"installing {len(env.requirements)} requirements into {display(Path(plan['venv']))} …")
    folder, built, seconds = process_runtime.ensure_venv(env, plan["python"], plan["version"])
    line("venv", f"{'built' if built else 'reused'} {display(folder)}" + (f" in {seconds:.1f} s" if built else ""))


def process_is_current(target: Target) -> bool:
    try:
        venv = Path(_venv_plan(target)["venv"])
        return runtime.process_is_current(target.endpoint, target.deployment,
                                          process_runtime.config_hash(target.resolved(), venv))
    except LocalmlError:
        return False


def start_process(target: Target, mode: ServerMode) -> None:
    _hold(target, "process")
    claims.claim_deployment(target.endpoint, target.deployment, False, says("process"))
    if process_is_current(target):
        line("process", "up to date: its server process runs with this configuration")
        return
    started = runtime.start_process(target.resolved(), Path(_venv_plan(target)["venv"]), mode)
    if started.stale:
        line("process", started.stale)
    line("process", f"{started.reason} (pid {started.pid}): scoring on "
                    f"{LOOPBACK}:{started.deployed.scoring_port}, debug port {started.deployed.debug_port}")


# --- the server: reloaded in place ---------------------------------------------------------------------------


def watched_files(target: Target) -> list[str]:
    """Code and model files (doit's file_dep for the server stage), read when the tasks load.

    From the spec as it is now when it loads (so the very first run records them too), else from
    the last validated one; the validate stage reports any problem with the spec itself.
    """
    try:
        deployment = target.loaded()
        return server.watched_files(deployment.code_dir, deployment.model_path)
    except LocalmlError:
        data = read_json(target.resolved_file) or {}
        return server.watched_files(data.get("code_dir"), data.get("model_path"))


def keeps_state(target: Target) -> bool:
    """keep_state as this deployment's server last had it (remembered in its command file)."""
    command = read_json(target.runtime_dir / server.COMMAND_FILE_NAME) or {}
    return bool((command.get("settings") or {}).get("keep_state"))


def running_mode(target: Target) -> ServerMode:
    """The mode of the server running now (its command file): what watch keeps while it reloads."""
    command = read_json(target.runtime_dir / server.COMMAND_FILE_NAME) or {}
    env = command.get("env") or {}
    return ServerMode(debugger=command.get("reload") == "debug-server" and env.get("LOCALML_DEBUGGER") != "0",
                      wait=env.get("LOCALML_DEBUG_WAIT") == "1", keep_state=keeps_state(target))


def server_is_current(target: Target, mode: ServerMode) -> bool:
    if mode.restart:
        return False
    try:
        deployed = runtime.find(target.endpoint, target.deployment)
    except LocalmlError:
        return False
    if deployed is None:
        return False
    if deployed.custom:
        return deployed.host.is_up()
    status = server.read_status(target.runtime_dir)
    if deployed.owns(status) and status is not None and status.started_at >= COMMAND_STARTED:
        return False  # the container (or process) stage started it just now: the action says so
    return keeps_state(target) == mode.keep_state and server.is_running_in(
        deployed.host, target.runtime_dir, deployed.server_command(target.resolved(), mode, target.runtime_dir))


def refresh_server(target: Target, mode: ServerMode, changed: list[str]) -> None:
    """Bring the server up to date: code or model changed → a reload inside the running process; its mode
    changed, restart=1, or it is not running → a new server process."""
    _hold(target, "server")
    deployed = _deployed(target)
    if deployed.custom:
        _restart_custom_container(target, deployed, changed)
        return
    command = deployed.server_command(target.resolved(), mode, target.runtime_dir)
    status = server.read_status(target.runtime_dir)
    if not deployed.owns(status) or status is None:
        reload_server(target, deployed, mode, changed, restart=mode.restart,
                      why="restart=1" if mode.restart else "it was not running")
        return
    if status.generation == 1 and status.started_at >= COMMAND_STARTED and server.runs_command(status, command):
        line("server", f"started {mode.describe()} with the current code and model (new {deployed.noun})")
        _await_debugger_port(deployed, target, mode)
        return
    if status.state == "exited" or not server.runs_command(status, command) or mode.restart:
        if status.state == "exited":
            why = f"it had exited with code {status.exit_code}"
        elif not server.runs_command(status, command):
            why = f"now {mode.describe()}"
        else:
            why = "restart=1"
        reload_server(target, deployed, mode, changed, restart=mode.restart, why=why)
        return
    load = server.read_load(target.runtime_dir)
    if load and load.pid == status.pid:
        # what was saved since the server last loaded the script decides: doit's list is empty when another
        # check decided first, forgets everything after a failed reload, and `doit watch` may have reloaded
        saved = [path for path in (changed or watched_files(target)) if not _all_saved_before([path], load.started_at)]
        if not saved and load.outcome == "failed":
            raise health.script_failure(load, _conda_file(target), "nothing saved since")
        if not saved and changed:
            line("server", f"up to date — the running server loaded {_changed_names(target, changed)} already")
        changed = saved
    if changed:
        reload_server(target, deployed, mode, changed)
    elif keeps_state(target) != mode.keep_state:
        server.write_command(target.runtime_dir, command, keep_state=mode.keep_state)
        line("server", "keep_state=1: reloads that leave init() and the model alone keep init()'s state"
             if mode.keep_state else "keep_state=0: init() runs on every reload")


def _all_saved_before(paths: list[str], moment: float) -> bool:
    try:
        return all(os.stat(path).st_mtime < moment for path in paths)
    except OSError:
        return False  # a file went away: the server has not seen that


def _changed_names(target: Target, changed: list[str]) -> str:
    names = [_relative_to_spec(target, path) for path in changed]
    return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def reload_server(target: Target, deployed: Deployed, mode: ServerMode, changed: list[str], *,
                  restart: bool = False, why: str = "") -> None:
    """Reload the scoring script inside the running server (or start a new server process where the
    supervisor must) and say what happened; a script that fails to load is the error raised."""
    deployment = target.resolved()
    command = deployed.server_command(deployment, mode, target.runtime_dir)
    refreshed = server.refresh(deployed.host, target.runtime_dir, command, keep_state=mode.keep_state,
                               restart=restart, timeout_s=max(60.0, health.probe_deadline(deployment.readiness_probe)))
    what = f"{_changed_names(target, changed)} changed" if changed else why
    if refreshed.exited:
        status = server.read_status(target.runtime_dir)
        raise health.failure_error(f"the server stopped during the reload ({what})",
                                   deployed.read_log(status.started_at - 1 if status else None), deployed.path_map,
                                   fix="fix the error above and run doit debug again; the whole log: doit logs",
                                   conda_file=deployment.conda_file)
    if not refreshed.in_place:
        again = "; a debugger attached before must attach again" if mode.debugger else ""
        line("server", f"restarted in a new process — {why or refreshed.why} "
                       f"({refreshed.seconds * 1000:.0f} ms){again}")
        _await_debugger_port(deployed, target, mode)
        return
    load = refreshed.load
    assert load is not None
    if load.outcome == "failed":
        raise health.script_failure(load, _conda_file(target), what)
    line("server", f"reloaded in place — {what} ({load.took_ms:.0f} ms; {load.describe_init()})")


def _conda_file(target: Target) -> str | None:
    return (read_json(target.resolved_file) or {}).get("conda_file")


def _restart_custom_container(target: Target, deployed: Deployed, changed: list[str]) -> None:
    """A custom container has no supervisor of ours: a changed model (or code) restarts its container."""
    if not changed:
        line("server", "a custom container serves itself (its image's own command)")
        return
    names = [_relative_to_spec(target, path) for path in changed]
    deployed.restart_custom()
    line("server", f"restarted the custom container — {', '.join(names[:3])}{' …' if len(names) > 3 else ''} "
                   "changed")


def _await_debugger_port(deployed: Deployed, target: Target, mode: ServerMode) -> None:
    """With wait=1 the next stages tell the user to attach: make sure debugpy listens by then."""
    if mode.debugger and mode.wait and server.wait_for_debugger_port(deployed.host, target.runtime_dir):
        line("server", f"waiting for a debugger on {LOOPBACK}:{deployed.debug_port} before init() runs")


# --- devcontainer, VS Code, health, endpoint -----------------------------------------------------------------


def write_devcontainer(target: Target, merge_into_user_launch: bool) -> None:
    """.devcontainer/devcontainer.json and launch.json in the state folder, for the running container."""
    deployed = _deployed(target)
    if deployed.custom:
        line("devcontainer", "none for a custom container: its image runs as-is, without localml's debug server")
        return
    code_dir = target.resolved().code_dir
    if deployed.container() is None:
        # no container: VS Code on this machine attaches directly, the paths are the same on both sides
        launch = devcontainer.render_host_launch_file(code_dir, code_dir, deployed.debug_port)
        changed = write_json_if_changed(target.launch_file, launch, sort_keys=False)
        line("devcontainer", f"none in process mode; launch configuration {display(target.launch_file)}"
                             f"{' written' if changed else ''}")
        _merge_user_launch(launch, merge_into_user_launch)
        return
    spec = _container_spec(target, gpu=deployed.gpu)
    folder = target.state_dir.resolve()
    plan = image.load_plan(target.build_dir)
    python = context_stage.LOCALML_PYTHON if plan is not None and plan.kind in ("context", "image") else None
    config = devcontainer.render_devcontainer(spec, deployed.scoring_port, deployed.debug_port, folder, python=python)
    # in the template's order: people read these files
    changed = write_json_if_changed(folder / ".devcontainer" / "devcontainer.json", config, sort_keys=False)
    model_paths = {here: there for there, here in container_stage.model_code_paths(target.resolved()).items()}
    launch = devcontainer.render_host_launch_file(code_dir, spec.code_target, deployed.debug_port, model_paths)
    changed |= write_json_if_changed(target.launch_file, launch, sort_keys=False)
    line("devcontainer", f"{'written' if changed else 'up to date'}: {display(folder / '.devcontainer')}, "
                         f"launch configuration {display(target.launch_file)}")
    _merge_user_launch(launch, merge_into_user_launch)


def _merge_user_launch(launch: dict[str, Any], asked: bool) -> None:
    if asked:
        user_file = Path.cwd() / ".vscode" / "launch.json"
        backup = devcontainer.merge_launch(user_file, launch["configurations"][0])
        kept = f" (previous version kept as {backup.name})" if backup else ""
        line("devcontainer", f"'{devcontainer.LAUNCH_NAME}' merged into {display(user_file)}{kept}")


def open_vscode(target: Target, enabled: bool) -> None:
    deployed = _deployed(target)
    if deployed.custom:
        line("vscode", f"skipped: nothing to debug in a custom container ({deployed.host.name}); doit logs shows "
                       "its output")
        return
    in_container = deployed.container() is not None
    how = (f"attach a debugger to {LOOPBACK}:{deployed.debug_port} with '{devcontainer.LAUNCH_NAME}' "
           f"from {display(target.launch_file)}")
    if in_container:
        how += f", or open {display(target.state_dir)} in VS Code: Reopen in Container"
    if not enabled:
        line("vscode", f"skipped (vscode=0); {how}")
        return
    if not in_container:
        line("vscode", how)
        return
    command = vscode.launch(target.state_dir.resolve(), deployed.code_target)
    if command is None:
        line("vscode", f"`code` is not on PATH: {how}")
    else:
        line("vscode", f"opened the dev container: {' '.join(command)}")


def _relative_to_spec(target: Target, path: str) -> str:
    try:
        return str(Path(path).resolve().relative_to(target.spec_path.resolve().parent))
    except ValueError:
        return path


def check_health(target: Target) -> None:
    """Readiness with the deployment's readiness_probe, then one liveness probe (custom routes honoured)."""
    deployment = target.resolved()
    deployed = _deployed(target)

    def alive() -> bool:
        return deployed.host.is_up() and (deployed.custom or not server.has_exited(deployed.host, target.runtime_dir))

    def log_of_this_start() -> str:
        status = server.read_status(target.runtime_dir)
        owned = status is not None and not deployed.custom and deployed.owns(status)
        return deployed.read_log(status.started_at - 1 if owned and status else None)

    def script_failure() -> LocalmlError | None:
        load = server.read_load(target.runtime_dir)
        return health.script_failure(load, _conda_file(target)) if load and load.outcome == "failed" else None

    seconds = health.wait_until_healthy(deployed.uri("readiness"), probe=deployment.readiness_probe, is_alive=alive,
                                        read_log=log_of_this_start, path_map=deployed.path_map, label="health",
                                        script_failure=script_failure, conda_file=deployment.conda_file)
    health.check_liveness(deployed.uri("liveness"), deployment.liveness_probe)
    status = server.read_status(target.runtime_dir)
    if not deployed.custom and deployed.owns(status) and status and status.started_at >= COMMAND_STARTED:
        what = deployed.noun if status.generation == 1 else "server"
        line("health", f"healthy {time.time() - status.started_at:.1f} s after the {what} started")
    else:
        line("health", f"ready (answered {deployed.uri('readiness')} in {seconds * 1000:.0f} ms)")


def update_endpoint(target: Target) -> None:
    """Point the endpoint's address at its running deployments, with the endpoint YAML's traffic."""
    deployment = target.resolved()
    with claims.endpoint_lock(target.endpoint, says("endpoint")):
        # another folder may have started a router of this endpoint since this command's validate stage
        claims.claim_endpoint(target.endpoint, False, says("endpoint"))
        routes = endpoint_stage.routes_now(target.endpoint, deployment.endpoint_data)
        endpoint_stage.write_routes(target.endpoint, routes)
        taken = docker_engine.ports_in_use_by_containers() if docker_engine.engine_available() else set()
        router, started = endpoint_stage.ensure_router(target.endpoint, taken)
    how = "started on" if started else "at"
    line("endpoint", f"{target.endpoint} {how} {router.scoring_uri} → {endpoint_stage.describe_traffic(routes)}")
    line("endpoint", "doit invoke request=<file.json> (deployment=<name> picks one)")


# --- watch: the chain again on every save --------------------------------------------------------------------


def watch_deployment(target: Target, takeover: bool = False, passed: tuple[str, ...] = ()) -> None:
    """Follow saves until Ctrl-C: code and model edits reload inside the running server, at once; an edit
    of the YAML or the conda file runs the debug chain again. It holds the deployment's lock only while it
    reloads: the chain it runs takes the lock itself. passed: debug's variables as given (`vscode=0`), for the chain."""
    with claims.deployment_lock(target.endpoint, target.deployment, says("watch")):
        claims.claim_deployment(target.endpoint, target.deployment, takeover, says("watch"))
    # bring it up first (a broken start is reported, and the next save is the fix)
    watch.run_debug_chain(target.spec_path, target.endpoint_yaml, [*target.overrides.argv(), *passed])
    endpoint_yaml = str(target.endpoint_yaml) if target.endpoint_yaml else None

    def watched() -> tuple[list[str], list[str]]:
        return watch.folders_and_files(read_json(target.resolved_file) or {}, target.spec_path, endpoint_yaml)

    folders, files = watched()
    model_file = {path for path in files if path == (read_json(target.resolved_file) or {}).get("model_path")}

    def on_change(in_folders: list[str], among_files: list[str]) -> None:
        changed = in_folders + among_files
        if set(among_files) <= model_file and _reload_after_save(target, changed):
            return
        line("watch", f"{_changed_names(target, changed)} changed")
        if watch.run_debug_chain(target.spec_path, target.endpoint_yaml, [*target.overrides.argv(), *passed]) != 0:
            line("watch", "not healthy: fix the error above and save again")
        else:
            line("watch", "ready — waiting for changes (Ctrl-C stops)")

    def ready() -> None:
        line("watch", f"watching {', '.join(display(Path(f)) for f in folders)} for saves, and "
                      f"{', '.join(display(Path(f)) for f in files)} (Ctrl-C stops)")

    with contextlib.suppress(KeyboardInterrupt):
        watch.watch(folders, lambda: watched()[1], on_change, on_ready=ready)
    line("watch", "stopped")


def _reload_after_save(target: Target, changed: list[str]) -> bool:
    """Code or model saved: reload inside the server as it runs now (same debugger, same keep_state).
    False when there is no server of ours running to reload: the debug chain then brings one up."""
    with claims.deployment_lock(target.endpoint, target.deployment, says("watch")):
        try:
            deployed = runtime.find(target.endpoint, target.deployment)
        except LocalmlError:
            return False
        status = server.read_status(target.runtime_dir)
        if deployed is None or deployed.custom or status is None or not deployed.owns(status) \
                or status.state != "running":
            return False
        try:
            reload_server(target, deployed, running_mode(target), changed)
        except LocalmlError as exc:
            errors.print(exc.render(), markup=False)
            line("watch", "the server keeps running: fix the error above and save again")
        return True
