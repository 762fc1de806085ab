"""The stage actions for one deployment, in graph order. No doit in here.

Each action reads what the previous stage wrote under .localml/, does its one job and
prints one line saying what it did. tasks.py wires them into doit.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.syntax import Syntax

from . import container as container_stage
from . import devcontainer, docker_engine, health, image, invoke, lifecycle, process_runtime, server, vscode, watch
from .config import load_project_config
from .environment import ResolvedEnvironment, resolve_environment
from .errors import LocalmlError
from .spec import Deployment, load_deployment
from .state import current_file, deployment_dir, read_json, write_json_if_changed

out = Console(highlight=False, soft_wrap=True)
COMMAND_STARTED = time.time()  # tells "started by this command" from "was already running"


@dataclass(frozen=True)
class ServerMode:
    """How the server runs: under debugpy in one process (the default of `debug`), or as azmlinfsrv."""

    debugger: bool = True
    wait: bool = False  # wait for a debugger to attach before init() runs

    @property
    def command(self) -> dict[str, Any]:
        return container_stage.server_command(self.debugger, self.wait and self.debugger)

    def command_for(self, running: Running, target: Target) -> dict[str, Any]:
        if running.kind == "container":
            return self.command
        record = process_runtime.read_record(target.state_dir)
        assert record is not None
        return process_runtime.server_command(Path(record.venv), record.scoring_port, record.debug_port,
                                              target.runtime_dir, self.debugger, self.wait)

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

    @property
    def scoring_uri(self) -> str:
        return f"http://{container_stage.LOOPBACK}:{self.scoring_port}/score"


def _running(target: Target, required: bool = True) -> Running | None:
    record = process_runtime.live_record(target.state_dir)
    if record is not None:
        code_dir = (read_json(target.resolved_file) or {}).get("code_dir", "")
        log_file = Path(record.log_file)
        return Running("process", record.host(f"the process of {target.deployment}"), record.scoring_port,
                       record.debug_port, {code_dir: code_dir}, lambda since: _process_log(log_file, since),
                       code_dir)
    found = None
    if docker_engine.engine_available():
        found = docker_engine.get_container(container_stage.container_name(target.endpoint, target.deployment))
    if found is None:
        if required:
            raise LocalmlError.one(f"no local deployment {target.deployment} on endpoint {target.endpoint}",
                                   fix=f"start it: doit debug spec={target.spec_path}")
        return None
    labels = found.labels
    code_target = labels.get(container_stage.LABEL_CODE_TARGET, "")
    return Running("container", server.ContainerHost(found), int(labels[container_stage.LABEL_SCORING_PORT]),
                   int(labels[container_stage.LABEL_DEBUG_PORT]),
                   {code_target: labels.get(container_stage.LABEL_CODE_DIR, "")},
                   lambda since: docker_engine.container_logs(found, since=since), code_target)


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


# --- debug chain -------------------------------------------------------------------


def validate(target: Target) -> None:
    started = time.perf_counter()
    deployment = load_deployment(target.spec_path, target.endpoint_yaml)
    if (deployment.endpoint_name, deployment.deployment_name) != (target.endpoint, target.deployment):
        raise LocalmlError.one("the deployment's names changed while loading; run the command again")
    write_json_if_changed(target.resolved_file, deployment.to_json())
    endpoint_yaml = str(target.endpoint_yaml.resolve()) if target.endpoint_yaml else None
    write_json_if_changed(current_file(), {"spec": str(target.spec_path.resolve()), "endpoint": target.endpoint,
                                           "deployment": target.deployment, "endpoint_yaml": endpoint_yaml})
    took = (time.perf_counter() - started) * 1000
    _line("validate", f"{deployment.deployment_name} on endpoint {deployment.endpoint_name}: valid ({took:.0f} ms)")


def resolve(target: Target, allow_python_mismatch: bool) -> None:
    deployment = target.resolved()
    if deployment.build_context:
        raise LocalmlError.one(
            "environment.build (your own Docker build context) is valid, but localml cannot run it yet",
            file=deployment.spec_path, key="environment.build",
            fix="for now give environment.image + environment.conda_file")
    assert deployment.conda_file and deployment.image  # validation guarantees both
    config = load_project_config()
    base = config.resolve_image(deployment.image)
    env = resolve_environment(Path(deployment.conda_file), deployment.image, base)
    plan = image.prepare_build_context(env, target.build_dir, allow_python_mismatch=allow_python_mismatch)
    via = f" (alias of {deployment.image})" if base != deployment.image else ""
    python = f"python {plan.base_python}"
    _line("environment", f"{python}, {len(env.requirements)} pip requirements, base {base}{via} → {plan.tag}")


def build(target: Target, no_cache: bool) -> None:
    plan = image.load_plan(target.build_dir)
    assert plan is not None
    why = " without Docker's cache (no_cache=1)" if no_cache else ""
    _line("image", f"building {plan.tag} from {Path(plan.conda_file).name}{why} …")
    image_id, seconds = image.build_image(target.build_dir, no_cache=no_cache)
    _line("image", f"built {plan.tag} ({image_id[7:19]}) in {seconds:.1f} s")


def image_is_current(target: Target) -> bool:
    try:
        return image.image_is_built(target.build_dir)
    except LocalmlError:
        return False  # the action will report it


def _container_spec(target: Target) -> container_stage.ContainerSpec:
    deployment = target.resolved()
    plan = image.load_plan(target.build_dir)
    if plan is None:
        raise LocalmlError.one("no image plan", fix="run doit debug")
    image_id = docker_engine.image_id(plan.tag)
    if image_id is None:
        raise LocalmlError.one(f"image {plan.tag} is missing", fix="run doit debug to build it")
    return container_stage.render_container(deployment, plan.tag, image_id, target.runtime_dir.resolve(),
                                            target.state_dir.resolve())


def container_is_current(target: Target) -> bool:
    try:
        return container_stage.is_current(_container_spec(target))
    except LocalmlError:
        return False


def start_container(target: Target, mode: ServerMode) -> None:
    spec = _container_spec(target)
    server.clear_status(target.runtime_dir)
    server.write_command(target.runtime_dir, mode.command)
    started, scoring, debug, reason = container_stage.start(spec)
    server.wait_for_supervisor(server.ContainerHost(started), target.runtime_dir)
    _line("container", f"{reason} {spec.name} ({started.short_id}): scoring on {container_stage.LOOPBACK}:{scoring}, "
                       f"debug port {debug}")


# --- process mode: a venv and a supervisor process instead of an image and a container ---------------


def resolve_for_process(target: Target, allow_python_mismatch: bool, chosen_automatically: bool) -> None:
    if chosen_automatically:
        _line("runtime", "no Docker engine answers: process mode (the server runs in a venv on this machine)")
    deployment = target.resolved()
    if deployment.build_context:
        raise LocalmlError.one("environment.build needs Docker; process mode installs a conda file's packages",
                               file=deployment.spec_path, key="environment.build",
                               fix="start a Docker engine, or give environment.image + environment.conda_file")
    assert deployment.conda_file
    env = resolve_environment(Path(deployment.conda_file), str(deployment.image), str(deployment.image))
    python = process_runtime.host_python(env)
    version = process_runtime.python_version_of(python)
    warning = image.check_python(env, version, allow_mismatch=allow_python_mismatch,
                                 where=f"this machine's Python ({python})")
    if warning:
        print(f"warning: {warning}")
    folder = process_runtime.venv_dir(env, python, version)
    write_json_if_changed(target.state_dir / "venv-plan.json",
                          {"python": python, "version": version, "requirements": env.requirements,
                           "conda_file": env.conda_file, "venv": str(folder)})
    _line("environment", f"python {version} on this machine ({python}), {len(env.requirements)} pip requirements "
                         f"→ {_display(folder)}")


def runs_as_process(target: Target) -> bool:
    return process_runtime.live_record(target.state_dir) is not None


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
    deployment = target.resolved()
    venv = Path(_venv_plan(target)["venv"])
    previous = process_runtime.read_record(target.state_dir)
    reason = "started"
    if previous is not None:
        alive = process_runtime.is_our_supervisor(previous.supervisor_pid)
        reason = "restarted: configuration changed" if alive else "restarted: it was not running"
        process_runtime.stop(target.state_dir)
    taken = docker_engine.ports_in_use_by_containers() if docker_engine.engine_available() else set()
    scoring = container_stage.pick_port(previous.scoring_port if previous else container_stage.FIRST_SCORING_PORT,
                                        taken)
    debug = container_stage.pick_port(previous.debug_port if previous else container_stage.FIRST_DEBUG_PORT,
                                      taken | {scoring})
    server.clear_status(target.runtime_dir)
    command = process_runtime.server_command(venv, scoring, debug, target.runtime_dir, mode.debugger, mode.wait)
    record = process_runtime.start(deployment, venv, target.state_dir, target.runtime_dir, scoring, debug, command)
    server.wait_for_supervisor(record.host(f"the process of {target.deployment}"), target.runtime_dir)
    _line("process", f"{reason} (pid {record.supervisor_pid}): scoring on {container_stage.LOOPBACK}:{scoring}, "
                     f"debug port {debug}")


def watched_files(target: Target) -> list[str]:
    """Code and model files (doit's file_dep for the server stage), read when the tasks load.

    From the spec as it is now when it loads (so the very first run records them too), else from
    the last validated one; the validate stage reports any problem with the spec itself.
    """
    try:
        deployment = load_deployment(target.spec_path, target.endpoint_yaml)
        return server.watched_files(deployment.code_dir, deployment.model_path)
    except LocalmlError:
        data = read_json(target.resolved_file) or {}
        return server.watched_files(data.get("code_dir"), data.get("model_path"))


def server_is_current(target: Target, mode: ServerMode) -> bool:
    try:
        running = _running(target, required=False)
    except LocalmlError:
        return False
    return running is not None and server.is_running_in(running.host, target.runtime_dir,
                                                        mode.command_for(running, target))


def refresh_server(target: Target, mode: ServerMode, changed: list[str]) -> None:
    """Reload the server process when code or model changed, its mode changed, or it is not running."""
    running = _running(target)
    assert running is not None
    command = mode.command_for(running, target)
    status = server.read_status(target.runtime_dir)
    mine = status is not None and running.host.owns(status)
    if mine and status.generation == 1 and status.started_at >= COMMAND_STARTED and status.command == command:
        _line("server", f"started {mode.describe()} with the current code and model (new {running.kind})")
        _await_debugger_port(running, target, mode)
        return
    if mine and status.state == "exited":
        why = f"it had exited with code {status.exit_code}"
    elif mine and status.command != command:
        why = f"now {mode.describe()}"
    elif changed:
        names = [_relative_to_spec(target, path) for path in changed]
        shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        why = f"{shown} changed"
    else:
        why = "it was not running"
    started = time.perf_counter()
    server.reload(running.host, target.runtime_dir, command)
    _line("server", f"reloaded in place — {why} (restart took {(time.perf_counter() - started) * 1000:.0f} ms)")
    _await_debugger_port(running, target, mode)


def _await_debugger_port(running: Running, target: Target, mode: ServerMode) -> None:
    """With wait=1 the next stages tell the user to attach: make sure debugpy listens by then."""
    if mode.debugger and mode.wait and server.wait_for_debugger_port(running.host, target.runtime_dir):
        _line("server", f"waiting for a debugger on {container_stage.LOOPBACK}:{running.debug_port} "
                        "before init() runs")


def write_devcontainer(target: Target, merge_into_user_launch: bool) -> None:
    """.devcontainer/devcontainer.json and launch.json in the state folder, for the running container."""
    where = _running(target)
    assert where is not None
    if where.kind == "process":
        # no container: VS Code on this machine attaches directly, the paths are the same on both sides
        code_dir = target.resolved().code_dir
        launch = devcontainer.render_host_launch_file(code_dir, code_dir, where.debug_port)
        changed = write_json_if_changed(target.launch_file, launch, sort_keys=False)
        _line("devcontainer", f"none in process mode; launch configuration {_display(target.launch_file)}"
                              f"{' written' if changed else ''}")
        _merge_user_launch(launch, merge_into_user_launch)
        return
    spec = _container_spec(target)
    folder = target.state_dir.resolve()
    config = devcontainer.render_devcontainer(spec, where.scoring_port, where.debug_port, folder)
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
    deployment = target.resolved()
    running = _running(target)
    assert running is not None
    port = running.scoring_port
    probe = deployment.readiness_probe

    def alive() -> bool:
        return running.host.is_up() and not server.has_exited(running.host, target.runtime_dir)

    def log_of_this_start() -> str:
        status = server.read_status(target.runtime_dir)
        return running.read_log(status.started_at - 1 if status and running.host.owns(status) else None)

    path_map = running.path_map
    seconds = health.wait_until_healthy(
        f"http://{container_stage.LOOPBACK}:{port}/",
        deadline_s=probe.initial_delay + probe.period * probe.failure_threshold,
        request_timeout_s=max(probe.timeout, 1),
        is_alive=alive,
        read_log=log_of_this_start,
        path_map=path_map,
        label="health",
    )
    status = server.read_status(target.runtime_dir)
    if status and running.host.owns(status) and status.started_at >= COMMAND_STARTED:
        what = running.kind if status.generation == 1 else "server"
        _line("health", f"healthy {time.time() - status.started_at:.1f} s after the {what} started")
    else:
        _line("health", f"healthy (answered in {seconds * 1000:.0f} ms)")
    _line("endpoint", f"scoring URI http://{container_stage.LOOPBACK}:{port}/score  (doit invoke request=<file.json>)")


def watch_deployment(target: Target) -> None:
    """Follow saves until Ctrl-C: each settled change runs the debug chain again."""
    # bring it up first (a broken start is reported, and the next save is the fix)
    watch.run_debug_chain(target.spec_path, target.endpoint_yaml)
    resolved = read_json(target.resolved_file) or {}
    endpoint_yaml = str(target.endpoint_yaml) if target.endpoint_yaml else None

    def files() -> list[str]:
        return watch.deployment_files(read_json(target.resolved_file) or resolved, target.spec_path, endpoint_yaml)

    def on_change(changed: list[str]) -> None:
        names = [_relative_to_spec(target, path) for path in changed]
        _line("watch", f"{', '.join(names[:3])}{' …' if len(names) > 3 else ''} changed")
        if watch.run_debug_chain(target.spec_path, target.endpoint_yaml) != 0:
            _line("watch", "not healthy: fix the error above and save again")
        else:
            _line("watch", "ready — waiting for changes (Ctrl-C stops)")

    _line("watch", f"watching {len(files())} files of {target.deployment} (Ctrl-C stops)")
    try:
        watch.watch(files, on_change)
    except KeyboardInterrupt:
        _line("watch", "stopped")


# --- around the endpoint ------------------------------------------------------------


def invoke_endpoint(target: Target, request_path: Path) -> None:
    payload = invoke.read_request(request_path)
    running = _running(target)
    assert running is not None
    url = running.scoring_uri
    timeout_s = max(target.resolved().request_timeout_ms / 1000 * 2, 30) if target.resolved_file.exists() else 60
    sent_at = time.time()
    result = invoke.post(url, payload, timeout_s=timeout_s)
    if not 200 <= result.status < 300:
        # the server answers "check the logs": we do, and show the traceback through run()
        log = running.read_log(sent_at - 1)
        raise invoke.error_for(result, url, health.extract_cause(log, running.path_map))
    _line("invoke", f"{result.status} from {target.deployment} in {result.latency_ms:.0f} ms")
    body = json.dumps(result.body, indent=2) if not isinstance(result.body, str) else result.body
    out.print(Syntax(body, "json", theme="ansi_dark", background_color="default") if out.is_terminal else body)


def show(target: Target) -> None:
    where = _running(target, required=False)
    if where is not None and where.kind == "process":
        deployment = target.resolved()
        status = server.read_status(target.runtime_dir)
        state = "Succeeded" if status and status.state == "running" and where.host.is_up() else "Failed"
        uri = where.scoring_uri
        print(json.dumps({
            "name": deployment.endpoint_name, "location": "local", "kind": "local", "runtime": "process",
            "provisioning_state": state, "scoring_uri": uri, "swagger_uri": uri.replace("/score", "/swagger.json"),
            "traffic": {deployment.deployment_name: 100},
            "deployments": [{"name": deployment.deployment_name, "endpoint_name": deployment.endpoint_name,
                             "location": "local", "runtime": "process", "provisioning_state": state,
                             "scoring_uri": uri, "ports": {"scoring": where.scoring_port, "debug": where.debug_port},
                             "pid": process_runtime.read_record(target.state_dir).supervisor_pid,
                             "environment_variables": deployment.environment_variables}],
        }, indent=2))
        return
    described = lifecycle.describe_endpoint(target.endpoint)
    if described is None:
        raise LocalmlError.one(f"no local endpoint named {target.endpoint}",
                               fix=f"start it: doit debug spec={target.spec_path}")
    print(json.dumps(described, indent=2))


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


def delete(target: Target, with_images: bool) -> None:
    record = process_runtime.read_record(target.state_dir)
    tree = [pid for leader in process_runtime.sessions(target.state_dir, record)
            for pid in process_runtime.session_pids(leader)] if record else []
    stopped = process_runtime.stop(target.state_dir)
    if stopped is not None:
        left = process_runtime.wait_until_gone(tree)
        if left:
            raise LocalmlError.one(f"processes {left} of {target.deployment} did not stop",
                                   fix=f"end them by hand: kill -9 {' '.join(map(str, left))}")
        _line("delete", f"stopped the server process of {target.deployment} (pid {stopped.supervisor_pid}); "
                        "nothing of it is left running")
        return
    name = container_stage.container_name(target.endpoint, target.deployment)
    found = docker_engine.get_container(name)
    image_tag = None
    if found is not None:
        image_tag = (found.image.tags or [None])[0] if found.image else None
        docker_engine.remove_container(found)
        _line("delete", f"removed container {name}")
    else:
        _line("delete", f"no container {name}")
    if with_images and image_tag:
        users = [c for c in docker_engine.list_containers([container_stage.LABEL_LOCAL_ENDPOINT])
                 if image_tag in (c.image.tags if c.image else [])]
        if users:
            _line("delete", f"kept image {image_tag}: still used by {', '.join(c.name for c in users)}")
        elif docker_engine.remove_image(image_tag):
            _line("delete", f"removed image {image_tag}")


def list_endpoints() -> None:
    rows = lifecycle.list_local_endpoints()
    if not rows:
        _line("endpoints", "no local endpoints")
        return
    for row in rows:
        out.print(f"{row['endpoint_name']:<24} {row['name']:<16} {row['provisioning_state']:<10} "
                  f"{row['scoring_uri']:<34} {row['container']['status']}")
