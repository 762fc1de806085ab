"""The doit tasks: wiring only, top to bottom in graph order.

    validate -> environment -> image -> container -> server -> devcontainer -> vscode -> health   (doit debug)
                   (process mode: image -> venv, container -> process; runtime=process, or no Docker engine)
    invoke, show, logs, delete, endpoints, prune                  (around a running endpoint: commands.py)
    doctor                                                        (this machine and folder: doctor.py)

The deployment is selected once per command (`_target`, `_runtime`), and its spec parsed once (Target.loaded).

Variables come from doit's command line (`doit debug spec=blue-deployment.yml`); the last
validated spec is remembered in .localml/current.json, so `doit invoke request=...` needs no spec.
The Azure CLI's overrides are variables too (overrides.py): deployment=, endpoint_name=, set=, unset=,
endpoint_set=, endpoint_unset=. Each task declares the variables it reads in variables.py (READS): a variable
the command's tasks do not read, a value a variable cannot take, or a task that does not exist is refused while
the tasks load, before any of them runs (`_target` checks the command line once per command).
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from doit import get_var
from doit.exceptions import TaskFailed

from . import actions, commands, docker_engine, filecheck, invoke, variables
from .console import error
from .errors import LocalmlError
from .overrides import VARIABLES as OVERRIDE_VARIABLES
from .overrides import Overrides
from .reporter import LocalmlReporter
from .runtime import ServerMode
from .spec import check_names, peek_names
from .state import STATE_DIR_NAME, current_file, read_json
from .target import Target

INTERRUPTED = "interrupted (Ctrl-C); run the command again to go on"


def _ctrl_c_in_one_line(kind: type[BaseException], value: BaseException, trace: Any) -> None:
    """Ctrl-C between two stages lands in doit's own code, outside any action's guard: one line there too, for
    `doit ...` as for `localml ...` (whose cli catches it first)."""
    if issubclass(kind, KeyboardInterrupt):
        error(INTERRUPTED)
        return
    _previous_hook(kind, value, trace)


_previous_hook = sys.excepthook
sys.excepthook = _ctrl_c_in_one_line

DOIT_CONFIG = {
    "default_tasks": ["debug"],
    "dep_file": f"{STATE_DIR_NAME}/doit.db",
    "backend": "sqlite3",
    "verbosity": 2,
    "reporter": LocalmlReporter,
    # content hashes, except files too big to read on every command: those by size, mtime and inode
    "check_file_uptodate": filecheck.ContentOrMetadataChecker,
}


def _var(name: str, default: str = "") -> str:
    value = get_var(name, default)
    return value if isinstance(value, str) else default


def _flag(name: str, default: bool = False) -> bool:
    """A switch: 1/true/yes/on or 0/false/no/off (anything else was refused at load: variables.py)."""
    return variables.switch(_var(name), default)


def _mode(target: Target) -> ServerMode:
    """debugger= and wait= as given now; keep_state= as given, else as this deployment's server last had it."""
    keep_state = _var("keep_state")
    return ServerMode(debugger=_flag("debugger", True), wait=_flag("wait"),
                      keep_state=_flag("keep_state") if keep_state else actions.keeps_state(target),
                      restart=_flag("restart"))


RUNTIMES = ("docker", "process")


@functools.cache
def _runtime() -> tuple[str, bool]:
    """(docker | process, whether it was chosen automatically).

    runtime= wins; else the runtime the deployment was created in (a Docker deployment stays in Docker
    when the engine is down: its stages say so, rather than move it); else Docker when an engine
    answers, process mode when none does."""
    chosen = _var("runtime", "auto").lower()
    if chosen in RUNTIMES:
        return chosen, False
    if chosen != "auto":
        _refuse_at_load(LocalmlError.one(f"runtime={_var('runtime')} is not a runtime",
                                         fix="runtime=docker (a container), runtime=process (a venv on this "
                                             "machine), or leave it out (as the deployment was created)"))
    target = _selected()
    remembered = actions.remembered_runtime(target) if target else None
    if remembered:
        return remembered, False
    return ("docker", True) if docker_engine.engine_available() else ("process", True)


def _refuse_at_load(exc: LocalmlError) -> None:
    """While doit loads the tasks, before any of them runs: the message alone, and exit 1 as for any bad input."""
    error(exc.render())
    raise SystemExit(1) from None


@functools.cache
def _target() -> Target | None:
    """The deployment named by spec=... (with its overrides), else the one last used in this folder; the first
    task function to ask (task_validate, whatever the command) has the command line checked, before any task runs:
    unknown variables, bad values, tasks that do not exist (variables.py)."""
    target = _selected()
    try:
        variables.check_command_line(variables.given_variables(), variables.doit_command(), target,
                                     lambda: _runtime()[0])
    except LocalmlError as exc:
        _refuse_at_load(exc)
    return target


@functools.cache
def _selected() -> Target | None:
    """The deployment named by spec=... (with its overrides), else the one last used in this folder."""
    spec = _var("spec")
    endpoint_yaml = _var("endpoint") or None
    given = Overrides.from_vars({name: _var(name) for name in OVERRIDE_VARIABLES})
    overrides = given  # spec= given: only the overrides given now, none remembered
    if not spec:
        current = read_json(current_file()) or {}
        spec = current.get("spec", "")
        endpoint_yaml = endpoint_yaml or current.get("endpoint_yaml")
        # the last run's overrides still apply; a variable given now replaces the remembered one of its name
        overrides = Overrides.from_vars({**(current.get("overrides") or {}), **given.as_vars()})
        if not spec:
            return None
    path = Path(spec)
    endpoint, deployment = peek_names(path, overrides.parse(lenient=True))
    try:
        check_names(path, endpoint, deployment, overrides)  # they become folders: refused before any path is built
    except LocalmlError as exc:
        _refuse_at_load(exc)
    return Target(path, endpoint, deployment, Path(endpoint_yaml) if endpoint_yaml else None, overrides)


def _guard(function: Callable[..., Any], *args: Any) -> Callable[[], Any]:
    """A doit action that shows a LocalmlError as its message alone, never as a traceback; Ctrl-C too."""

    def action() -> Any:
        try:
            function(*args)
        except LocalmlError as exc:
            error(exc.render())
            return TaskFailed(exc.render(), report=False)
        except KeyboardInterrupt:
            # the stage cleaned up on its way out (an install container, a build's stages): say so, briefly
            message = f"interrupted (Ctrl-C) in {function.__name__.replace('_', ' ')}; run the command again to go on"
            error(message)
            return TaskFailed(message, report=False)
        return None

    action.__name__ = function.__name__
    action.__doc__ = function.__doc__
    return action


def _guard_with_changes(function: Callable[..., Any], *args: Any) -> Callable[..., Any]:
    """Like _guard, and passes on doit's list of changed file_dep (doit fills `changed` by name)."""

    def action(changed: list[str]) -> Any:
        return _guard(function, *args, changed)()

    action.__name__ = function.__name__
    return action


def _no_target(command: str) -> dict[str, Any]:
    def explain() -> TaskFailed:
        message = f"error: no deployment selected\n  fix: doit {command} spec=path/to/deployment.yml"
        error(message)
        return TaskFailed(message, report=False)

    return {"actions": [explain], "uptodate": [False]}


# --- doit debug: the chain --------------------------------------------------------------


def task_validate() -> Iterator[dict[str, Any]] | dict[str, Any]:
    """Check the deployment and endpoint YAML (overridden by set=, unset=, endpoint_set=, endpoint_unset=)."""
    target = _target()
    if not target:
        return _no_target("validate")
    # takeover=1: take the deployment (and the endpoint's router) over from another project folder
    # a generator (doit takes a dict or a generator, not any iterator)
    validate = {"name": target.deployment, "actions": [_guard(actions.validate, target, _flag("takeover"))],
                "targets": [target.resolved_file], "uptodate": [False]}
    return (task for task in [validate])


def task_environment() -> Iterator[dict[str, Any]]:
    """Resolve conda file + base image into a build plan (Dockerfile, requirements), or a venv plan."""
    target = _target()
    if target:
        runtime, automatic = _runtime()
        allow = _var("allow_python_mismatch")  # "": as remembered for the deployment, or as localml.yml says
        relock = _flag("relock") or _flag("no_cache")  # resolve the lock again (new releases of unpinned packages)
        action = (_guard(actions.resolve, target, allow, relock) if runtime == "docker"
                  else _guard(actions.resolve_for_process, target, allow, automatic, relock))
        yield {
            "name": target.deployment,
            "actions": [action],
            "targets": [target.build_dir / "plan.json" if runtime == "docker" else target.state_dir / "venv-plan.json"],
            "task_dep": [f"validate:{target.deployment}"],
            "uptodate": [False],
        }


def task_image() -> Iterator[dict[str, Any]]:
    """Build the environment image (only when the build plan changed or the image is gone)."""
    target = _target()
    if target and _runtime()[0] == "docker":
        build = target.build_dir
        no_cache = _flag("no_cache")  # rebuild from the base image, e.g. to pick up new releases of unpinned packages
        yield {
            "name": target.deployment,
            "actions": [_guard(actions.build, target, no_cache)],
            "task_dep": [f"environment:{target.deployment}"],
            "file_dep": [build / "plan.json"],  # its tag is a hash of everything the image is built from
            "uptodate": [(actions.image_is_current, [target]) if not no_cache else False],
        }


def task_venv() -> Iterator[dict[str, Any]]:
    """Process mode: the environment's venv under .localml/envs/ (built only when it changed)."""
    target = _target()
    if target and _runtime()[0] == "process":
        yield {
            "name": target.deployment,
            "actions": [_guard(actions.build_venv, target)],
            "task_dep": [f"environment:{target.deployment}"],
            "file_dep": [target.state_dir / "venv-plan.json"],
            "uptodate": [(actions.venv_is_current, [target])],
        }


def task_container() -> Iterator[dict[str, Any]]:
    """Run the deployment's container (recreated only when its configuration changed)."""
    target = _target()
    if target and _runtime()[0] == "docker":
        gpu = _flag("gpu")  # request the machine's GPUs (checked with nvidia-smi first)
        yield {
            "name": target.deployment,
            "actions": [_guard(actions.start_container, target, _mode(target), gpu)],
            "task_dep": [f"image:{target.deployment}"],
            "file_dep": [target.resolved_file],
            "uptodate": [(actions.container_is_current, [target, gpu])],
        }


def task_process() -> Iterator[dict[str, Any]]:
    """Process mode: run the server's supervisor on this machine (restarted only when the config changed)."""
    target = _target()
    if target and _runtime()[0] == "process":
        yield {
            "name": target.deployment,
            "actions": [_guard(actions.start_process, target, _mode(target))],
            "task_dep": [f"venv:{target.deployment}"],
            "file_dep": [target.resolved_file],
            "uptodate": [(actions.process_is_current, [target])],
        }


def task_server() -> Iterator[dict[str, Any]]:
    """Reload the scoring script inside the running server when code or model changed (keep_state=1, restart=1)."""
    target = _target()
    if target:
        mode = _mode(target)
        yield {
            "name": target.deployment,
            "actions": [_guard_with_changes(actions.refresh_server, target, mode)],
            "task_dep": [f"{'container' if _runtime()[0] == 'docker' else 'process'}:{target.deployment}"],
            "file_dep": actions.watched_files(target),
            "uptodate": [(actions.server_is_current, [target, mode])],
        }


def task_devcontainer() -> Iterator[dict[str, Any]]:
    """Write .devcontainer/devcontainer.json and the launch configuration for the running container."""
    target = _target()
    if target:
        yield {
            "name": target.deployment,
            "actions": [_guard(actions.write_devcontainer, target, _flag("merge_launch"))],
            "task_dep": [f"server:{target.deployment}"],
            "uptodate": [False],
        }


def task_vscode() -> Iterator[dict[str, Any]]:
    """Open VS Code in the dev container (vscode=0: don't); without `code`, say how to attach."""
    target = _target()
    if target:
        yield {
            "name": target.deployment,
            "actions": [_guard(actions.open_vscode, target, _flag("vscode", True))],
            "task_dep": [f"devcontainer:{target.deployment}"],
            "uptodate": [False],
        }


def task_health() -> Iterator[dict[str, Any]]:
    """Wait until the deployment is ready (its readiness probe and route), or report why it never will."""
    target = _target()
    if target:
        yield {
            "name": target.deployment,
            "actions": [_guard(actions.check_health, target)],
            "task_dep": [f"vscode:{target.deployment}"],
            "uptodate": [False],
        }


def task_endpoint() -> Iterator[dict[str, Any]]:
    """Route the endpoint's address to its running deployments by the endpoint YAML's traffic."""
    target = _target()
    if target:
        yield {
            "name": target.endpoint,
            "actions": [_guard(actions.update_endpoint, target)],
            "task_dep": [f"health:{target.deployment}"],
            "uptodate": [False],
        }


def task_debug() -> dict[str, Any]:
    """Bring the local endpoint up to date and debuggable; wait=1 waits for a debugger, debugger=0 runs azmlinfsrv."""
    target = _target()
    if not target:
        return _no_target("debug")
    return {"actions": None, "task_dep": [f"endpoint:{target.endpoint}"]}


def task_watch() -> dict[str, Any]:
    """Bring the endpoint up, then follow every save (code, model, YAML, conda) until Ctrl-C."""
    target = _target()
    if not target:
        return _no_target("watch")
    passed = tuple(f"{name}={_var(name)}" for name in variables.WATCH_PASSES if _var(name))  # for each debug run
    return {"actions": [_guard(actions.watch_deployment, target, _flag("takeover"), passed)], "uptodate": [False]}


# --- around a running endpoint ---------------------------------------------------------------


def task_invoke() -> dict[str, Any]:
    """Send request=<file> (.json as JSON, else bytes) or form="f=@file k=v"; deployment=, header=, output=<file>."""
    target = _target()
    if not target:
        return _no_target("invoke request=req.json")
    asked = invoke.Asked(request=_var("request"), form=_var("form"), content_type=_var("content_type"),
                         header=_var("header"), output=_var("output"), deployment=_var("deployment"),
                         force=_flag("force"))
    return {"actions": [_guard(commands.invoke_endpoint, target, asked)], "uptodate": [False]}


def task_show() -> dict[str, Any]:
    """Print the endpoint and every deployment as Azure-style JSON (scoring_uri, traffic, swagger_uri, ports)."""
    target = _target()
    if not target:
        return _no_target("show")
    return {"actions": [_guard(commands.show, target)], "uptodate": [False]}


def task_logs() -> dict[str, Any]:
    """Print the server log: tail=<lines> (default 100), follow=1 to keep following."""
    target = _target()
    if not target:
        return _no_target("logs")
    return {"actions": [_guard(commands.logs, target, _var("tail", "100"), _flag("follow"))], "uptodate": [False]}


def task_delete() -> dict[str, Any]:
    """Remove the deployment's container (the others keep serving); images=1 removes its image too."""
    target = _target()
    if not target:
        return _no_target("delete")
    return {"actions": [_guard(commands.delete, target, _flag("images"), _flag("takeover"))], "uptodate": [False]}


def task_endpoints() -> dict[str, Any]:
    """List every local endpoint (its address and traffic) and deployment on this machine, and localml's disk use."""
    return {"actions": [_guard(commands.list_endpoints)], "uptodate": [False]}


def task_prune() -> dict[str, Any]:
    """Remove localml's images that no container uses; cache=1 empties the download cache too."""
    return {"actions": [_guard(commands.prune, _flag("cache"))], "uptodate": [False]}


def task_doctor() -> dict[str, Any]:
    """Check this machine and folder for localml: Docker engine, base images, `code`, ports, disk, proxy CA, uv."""

    def doctor() -> TaskFailed | None:
        from . import doctor

        return None if doctor.main() == 0 else TaskFailed("doctor found a problem (✗ above)", report=False)

    return {"actions": [doctor], "uptodate": [False], "verbosity": 2}
