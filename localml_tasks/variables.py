"""The variables each task reads (doit's `name=value`), and the check of the command line before any task runs.

doit hands every `name=value` of the command line to `get_var()` and says nothing about one that no task reads,
so `debuger=0` or `wiat=1` would run the default silently. Each task declares here what it reads (READS); while
doit loads the tasks (tasks.py calls `check_command_line` once per command, through `_refuse_at_load`):

- a variable that none of the command's tasks reads is an error, with "did you mean" and the command's variables
  (a variable of another command says which: `request=` belongs to invoke, not to debug);
- a value a variable cannot take (`runtime=xyz`, `wait=maybe`, `debugger=2`, `tail=abc`) is an error naming the
  values it can take;
- a task or deployment that does not exist (`doit info server:green` with blue selected) is one line naming
  the ones that do, instead of doit's KeyError.

Which tasks the command runs is read from doit itself, not guessed from sys.argv: doit asks the task loader for
the tasks as `load_tasks(cmd=<the command>, pos_args=<the names after it>)` (doit's TaskLoader2 API, called by
keyword in doit 0.36 and 0.37), and every task function runs inside that call, so the check finds the command
on the stack. For `doit debug` (doit's `run`) and `doit info` the variables are those of the tasks named (a
stage of the debug chain also runs the stages before it, so it takes theirs); for commands that run no task
(`list`, `clean`, `forget`, ...) they are the union of every task's. Where the command cannot be found (doit's
API used another way) the union is taken too, and where the folder's dodo.py has tasks of its own, their
variables are unknown here: then only localml's values are checked, not the names.
"""

from __future__ import annotations

import difflib
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import LocalmlError, Problem
from .overrides import VARIABLES as OVERRIDE_VARIABLES

if TYPE_CHECKING:
    from .target import Target

# which deployment a command works on: spec=, endpoint= and the Azure CLI's overrides (remembered together)
SELECT = ("spec", "endpoint", *OVERRIDE_VARIABLES)
MODE = ("debugger", "wait", "keep_state", "restart")  # how the server runs (tasks.py `_mode`)

# What each task reads itself (tasks.py, and the actions it hands them to). In graph order.
# what `doit watch` passes on to each run of the debug chain (no_cache, relock, restart would redo work on every save)
WATCH_PASSES = ("runtime", "allow_python_mismatch", "gpu", "debugger", "wait", "keep_state", "vscode", "merge_launch")
READS: dict[str, tuple[str, ...]] = {
    "validate": (*SELECT, "takeover"),
    "environment": ("runtime", "allow_python_mismatch", "relock", "no_cache"),
    "image": ("no_cache",),
    "venv": (),
    "container": ("gpu", *MODE),
    "process": MODE,
    "server": MODE,
    "devcontainer": ("merge_launch",),
    "vscode": ("vscode",),
    "health": (),
    "endpoint": (),
    "debug": (),
    # watch runs the chain in a child process with spec=, endpoint=, the overrides and WATCH_PASSES
    "watch": (*SELECT, "takeover", *WATCH_PASSES),
    "invoke": (*SELECT, "request", "form", "content_type", "header", "output", "force"),
    "show": SELECT,
    "logs": (*SELECT, "tail", "follow"),
    "delete": (*SELECT, "images", "takeover"),
    "endpoints": (),
    "prune": ("cache",),
    "doctor": (),
}
# the debug chain: each stage runs the ones before it (task_dep), so it takes their variables too
CHAIN = ("validate", "environment", "image", "venv", "container", "process", "server", "devcontainer", "vscode",
         "health", "endpoint", "debug")
# tasks with one subtask per deployment (`image:blue`); `endpoint:<endpoint name>`
PER_DEPLOYMENT = CHAIN[:-2]
ONLY_IN = {"image": "docker", "container": "docker", "venv": "process", "process": "process"}

SWITCHES = ("takeover", "relock", "no_cache", "gpu", "debugger", "wait", "keep_state", "restart", "merge_launch",
            "vscode", "force", "follow", "images", "cache", "allow_python_mismatch")
ON = ("1", "true", "yes", "on")
OFF = ("0", "false", "no", "off")
RUNTIMES = ("docker", "process", "auto")

# doit commands whose positional arguments are task names
NAMING_TASKS = ("run", "info", "list", "clean", "forget", "ignore", "reset-dep")


def accepted(task: str) -> tuple[str, ...]:
    """The variables doit <task> takes: its own, and those of the tasks it runs first."""
    names = READS.get(task, ())
    if task in CHAIN:
        names = tuple(name for stage in CHAIN[: CHAIN.index(task) + 1] for name in READS[stage])
    return tuple(dict.fromkeys(names))


def every_variable() -> tuple[str, ...]:
    return tuple(dict.fromkeys(name for task in READS for name in accepted(task)))


def switch(value: str, default: bool = False) -> bool:
    """A checked switch's value ("" is the default)."""
    value = value.strip().lower()
    return default if not value else value in ON


# --- what doit is running -----------------------------------------------------------------------------------


@dataclass
class Command:
    name: str  # doit's command: run, info, list, ...
    tasks: list[str]  # the task names given (run: the default tasks when none)
    known_tasks: set[str] | None = None  # the task functions of the folder's dodo (None: not known)
    foreign: bool = False  # the dodo has tasks of its own, beside localml's
    options: bool = False  # an argument starting with "-" among the task names (a task's own option)


def doit_command() -> Command | None:
    """The doit command being run and its task names, from doit's own call of the task loader (see above)."""
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_name == "load_tasks":
            local = frame.f_locals
            cmd, pos_args = local.get("cmd"), local.get("pos_args")
            if cmd is not None and isinstance(pos_args, (list, tuple)) and hasattr(cmd, "get_name"):
                return _command(cmd, [str(arg) for arg in pos_args], getattr(local.get("self"), "namespace", None))
        frame = frame.f_back
    return None


def _command(cmd: Any, pos_args: list[str], namespace: Mapping[str, Any] | None) -> Command:
    name = str(cmd.get_name())
    tasks = [arg for arg in pos_args if not arg.startswith("-")]
    if name == "run" and not tasks:
        tasks = [str(task) for task in getattr(cmd, "sel_tasks", None) or ["debug"]]
    command = Command(name, tasks, options=any(arg.startswith("-") for arg in pos_args))
    if isinstance(namespace, Mapping):
        creators = {key: value for key, value in namespace.items() if key.startswith("task_") and callable(value)}
        command.known_tasks = {key.removeprefix("task_") for key in creators}
        command.foreign = any(getattr(value, "__module__", "") != "localml_tasks.tasks" for value in creators.values())
    return command


# --- the check ----------------------------------------------------------------------------------------------


def check_command_line(given: Mapping[str, str], command: Command | None, target: Target | None,
                       runtime: Callable[[], str]) -> None:
    """Raise one LocalmlError with every problem of the command line (see the module's docstring)."""
    problems = _task_problems(command, target, runtime) if command else []
    if problems:  # the variables of a task that does not exist are beside the point
        raise LocalmlError(problems)
    known, label = _known_variables(command)
    for name, value in given.items():
        if known is not None and name not in known:
            problems.append(unknown(name, value, known, label))
        else:  # a variable of the command, or of the dodo's own tasks (known is None): localml's values checked
            problems.extend(_bad_value(name, value))
    if problems:
        raise LocalmlError(problems)


def _known_variables(command: Command | None) -> tuple[tuple[str, ...] | None, str]:
    """(the variables the command takes, how to name the command); None: not known (the dodo's own tasks)."""
    if command is None:
        return every_variable(), "localml"
    if command.name in ("run", "info"):
        bases = list(dict.fromkeys(_base(name) for name in command.tasks))
        if not bases or any(base not in READS for base in bases):
            return None, ""
        label = f"doit {' '.join(bases)}" if command.name == "run" else f"doit info {command.tasks[0]}"
        extra = SELECT if command.name == "info" else ()  # which deployment's task it is
        return tuple(dict.fromkeys([*(name for base in bases for name in accepted(base)), *extra])), label
    if command.foreign:
        return None, ""
    return every_variable(), f"doit {command.name}"


def unknown(name: str, value: str, known: tuple[str, ...], label: str) -> Problem:
    """A variable the command (label) does not take: did you mean, whose variable it is, the command's own."""
    listing = ", ".join(f"{known_name}=" for known_name in known) or "none"
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    owners = list(dict.fromkeys("debug" if task in CHAIN else task for task in READS if name in READS[task]))
    if close:
        what, hint = f"{label} has no variable '{name}'", f"did you mean {close[0]}={value}? "
    elif owners:
        what = f"{label} does not read {name}= (a variable of {', '.join(f'doit {task}' for task in owners)})"
        hint = "leave it out here. "
    else:
        near = difflib.get_close_matches(name, every_variable(), n=1, cutoff=0.6)
        what = f"{label} has no variable '{name}'"
        hint = f"did you mean {near[0]}= (a variable of other commands)? " if near else ""
    return Problem(what, override=f"{name}={value}", fix=f"{hint}The variables of {label}: {listing}")


def _bad_value(name: str, value: str) -> list[Problem]:
    text = value.strip().lower()
    if name in SWITCHES and text and text not in (*ON, *OFF):
        return [Problem(f"{name} is a switch, not '{value}'", override=f"{name}={value}",
                        fix=f"{name}=1 (on) or {name}=0 (off); true/false, yes/no and on/off work too")]
    if name == "runtime" and text and text not in RUNTIMES:
        return [Problem(f"runtime={value} is not a runtime",
                        fix="runtime=docker (a container), runtime=process (a venv on this machine), or leave it "
                            "out (as the deployment was created)")]
    if name == "tail" and text and not text.isdigit() and text != "all":
        return [Problem("tail is a number of lines or all", override=f"tail={value}",
                        fix="tail=100 (the last 100 lines), or tail=all (the whole log)")]
    return []


def _base(task: str) -> str:
    return task.split(":", 1)[0]


def _task_problems(command: Command, target: Target | None, runtime: Callable[[], str]) -> list[Problem]:
    """A task named on the command line that does not exist: one line naming the ones that do."""
    if command.name not in NAMING_TASKS or command.options:
        return []
    problems = []
    for name in command.tasks:
        if any(char in name for char in "*?[") or "/" in name or Path(name).exists():
            continue  # a pattern, or a target (a file) that doit itself looks for
        base, _, sub = name.partition(":")
        if base in READS:
            problem = _subtask_problem(command, name, base, sub, target, runtime)
        elif command.known_tasks is not None and base not in command.known_tasks and not command.foreign:
            tasks = [task for task in READS if task in command.known_tasks]
            close = difflib.get_close_matches(base, tasks, n=1, cutoff=0.6)
            problem = Problem(f"there is no task {name}",
                              fix=(f"did you mean {close[0]}? " if close else "")
                              + f"The tasks: {', '.join(tasks)} (doit list says what each does)")
        else:
            problem = None
        if problem:
            problems.append(problem)
    return problems


def _subtask_problem(command: Command, name: str, base: str, sub: str, target: Target | None,
                     runtime: Callable[[], str]) -> Problem | None:
    verb = "doit info" if command.name == "info" else "doit"
    if not sub:
        return None
    if base not in (*PER_DEPLOYMENT, "endpoint"):
        return Problem(f"there is no task {name}; {base} has no subtasks", fix=f"{verb} {base}")
    if target is None:
        return Problem(f"there is no task {name} here; no deployment is selected in this folder",
                       fix=f"name its YAML: {verb} {name} {_spec_of(sub)}")
    existing = f"{base}:{target.endpoint if base == 'endpoint' else target.deployment}"
    if name == existing:
        if base in ONLY_IN and runtime() != ONLY_IN[base]:
            other = {"image": "venv", "container": "process", "venv": "image", "process": "container"}[base]
            return Problem(f"there is no task {name}; {target.deployment} runs in {runtime()} mode here, so its "
                           f"stage is {other}:{target.deployment}", fix=f"{verb} {other}:{target.deployment}")
        return None
    if base == "endpoint":
        return Problem(f"there is no task {name}; the endpoint selected here is {target.endpoint} ({existing})",
                       fix=f"{verb} {existing}, or name a deployment of {sub}: {verb} {name} spec=<its deployment "
                           "YAML>")
    return Problem(f"there is no task {name}; the deployment selected here is {target.deployment} ({existing})",
                   fix=f"{verb} {existing}, or name {sub}'s YAML: {verb} {name} {_spec_of(sub)}")


def _spec_of(deployment: str) -> str:
    """spec=<the folder's YAML of that deployment>, when one is found."""
    from .project import find_deployments, named

    found = named(find_deployments(Path.cwd()), deployment)
    return f"spec={found.spec}" if found else "spec=<its deployment YAML>"


def given_variables() -> dict[str, str]:
    """Every name=value of doit's command line (what doit's get_var reads from)."""
    from doit import doit_cmd

    return {str(name): str(value) for name, value in (getattr(doit_cmd, "_CMDLINE_VARS", None) or {}).items()}
