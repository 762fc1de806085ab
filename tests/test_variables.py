"""Checked variables and task names (issue 17): an unknown or misspelt variable on any command, a value a variable
cannot take, a task or deployment that does not exist: one error with did-you-mean (or the values, or the tasks
that exist), exit 1, before any task runs, no traceback. No Docker engine is reached."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, Project

from localml_tasks import variables
from localml_tasks.errors import LocalmlError

NO_DOCKER = {"DOCKER_HOST": "unix:///nonexistent.sock"}


def run(project: Project, *args: str) -> subprocess.CompletedProcess:
    return project.run(*args, env={**NO_DOCKER, "LOCALML_LOCK_DIR": str(project.root.parent / "locks")}, timeout=120)


def nothing_done(project: Project) -> bool:
    state = project.root / ".localml"
    return not (state / "current.json").exists() and not (state / "endpoints").exists()


# one misspelt variable of each command: (command line, what was given, the did-you-mean)
MISSPELT = [
    (["debug", "spec=blue-deployment.yml", "debuger=0"], "debuger=0", "did you mean debugger=0?"),
    (["debug", "spec=blue-deployment.yml", "wiat=1"], "wiat=1", "did you mean wait=1?"),
    (["validate", "spek=blue-deployment.yml"], "spek=blue-deployment.yml", "did you mean spec=blue-deployment.yml?"),
    (["watch", "spec=blue-deployment.yml", "takover=1"], "takover=1", "did you mean takeover=1?"),
    (["invoke", "spec=blue-deployment.yml", "reqest=sample-request.json"], "reqest=sample-request.json",
     "did you mean request=sample-request.json?"),
    (["show", "spec=blue-deployment.yml", "deploymnet=blue"], "deploymnet=blue", "did you mean deployment=blue?"),
    (["logs", "spec=blue-deployment.yml", "tial=5"], "tial=5", "did you mean tail=5?"),
    (["delete", "spec=blue-deployment.yml", "imagse=1"], "imagse=1", "did you mean images=1?"),
    (["prune", "cach=1"], "cach=1", "did you mean cache=1?"),
    (["environment", "spec=blue-deployment.yml", "relok=1"], "relok=1", "did you mean relock=1?"),
    (["info", "server:blue", "spec=blue-deployment.yml", "keepstate=1"], "keepstate=1",
     "did you mean keep_state=1?"),
    (["list", "spec=blue-deployment.yml", "vscod=0"], "vscod=0", "did you mean vscode=0?"),
]


@pytest.mark.parametrize(("args", "given", "hint"), MISSPELT, ids=[" ".join(case[0]) for case in MISSPELT])
def test_a_misspelt_variable_is_an_error_with_did_you_mean(project: Project, args, given, hint) -> None:
    result = run(project, *args)
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stderr.splitlines()
    assert lines[0].startswith(f"error: {given}: "), result.stderr
    assert "has no variable" in lines[0], result.stderr
    assert lines[1].startswith("  fix: " + hint), result.stderr
    assert "The variables of doit " in lines[1], result.stderr  # and the list of them
    assert "Traceback" not in result.stderr
    assert nothing_done(project)


@pytest.mark.parametrize("command", ["debug", "validate", "invoke", "show", "logs", "delete", "watch", "endpoints",
                                     "prune", "doctor"])
def test_a_variable_from_a_newer_version_is_an_error_on_every_command(project: Project, command: str) -> None:
    spec = [] if command in ("endpoints", "prune", "doctor") else ["spec=blue-deployment.yml"]
    result = run(project, command, *spec, "frobnicate=1")
    assert result.returncode == 1, result.stdout + result.stderr
    name = f"localml {command}" if command == "doctor" else f"doit {command}"  # localml's own, before doit
    assert f"error: frobnicate=1: {name} has no variable 'frobnicate'" in result.stderr, result.stderr
    assert f"fix: The variables of {name}: " in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""  # nothing ran: doctor printed nothing either
    assert nothing_done(project)


def test_the_variables_listed_are_those_of_the_command(project: Project) -> None:
    invoke = run(project, "invoke", "spec=blue-deployment.yml", "reqest=x.json").stderr
    assert "request=, form=, content_type=, header=, output=, force=" in invoke
    assert "debugger=" not in invoke  # invoke does not read it
    debug = run(project, "debug", "spec=blue-deployment.yml", "debuger=0").stderr
    assert "debugger=, wait=, keep_state=, restart=" in debug and "request=" not in debug


def test_a_variable_of_another_command_names_that_command(project: Project) -> None:
    result = run(project, "debug", "spec=blue-deployment.yml", "request=sample-request.json")
    assert result.returncode == 1
    assert ("error: request=sample-request.json: doit debug does not read request= (a variable of doit invoke)"
            in result.stderr), result.stderr
    assert nothing_done(project)


def test_every_problem_at_once(project: Project) -> None:
    result = run(project, "debug", "spec=blue-deployment.yml", "debuger=0", "wiat=1", "runtime=xyz")
    assert result.returncode == 1
    assert [line.split(":")[0] for line in result.stderr.splitlines() if line.startswith("error")] == ["error"] * 3
    assert "debuger=0" in result.stderr and "wiat=1" in result.stderr and "runtime=xyz" in result.stderr


@pytest.mark.parametrize(("args", "error", "fix"), [
    (["debug", "runtime=xyz"], "error: runtime=xyz is not a runtime",
     "fix: runtime=docker (a container), runtime=process (a venv on this machine), or leave it out"),
    (["debug", "wait=maybe"], "error: wait=maybe: wait is a switch, not 'maybe'",
     "fix: wait=1 (on) or wait=0 (off); true/false, yes/no and on/off work too"),
    (["debug", "debugger=2"], "error: debugger=2: debugger is a switch, not '2'", "fix: debugger=1 (on) or debugger=0"),
    (["debug", "vscode=perhaps"], "error: vscode=perhaps: vscode is a switch", "fix: vscode=1 (on) or vscode=0"),
    (["logs", "tail=abc"], "error: tail=abc: tail is a number of lines or all",
     "fix: tail=100 (the last 100 lines), or tail=all (the whole log)"),
    (["delete", "images=sure"], "error: images=sure: images is a switch", "fix: images=1 (on) or images=0 (off)"),
])
def test_a_bad_value_names_the_values_allowed(project: Project, args, error, fix) -> None:
    result = run(project, args[0], "spec=blue-deployment.yml", *args[1:])
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stderr.splitlines()[0].startswith(error), result.stderr
    assert fix in result.stderr.splitlines()[1], result.stderr
    assert "Traceback" not in result.stderr
    assert nothing_done(project)


def test_good_values_pass(project: Project) -> None:
    result = run(project, "list", "spec=blue-deployment.yml", "wait=yes", "debugger=OFF", "vscode=0", "tail=all",
                 "runtime=process")
    assert result.returncode == 0, result.stderr
    assert "validate" in result.stdout


# --- tasks and deployments that do not exist -----------------------------------------------------------------


def test_info_on_a_deployment_that_is_not_selected_names_the_one_that_is(project: Project) -> None:
    result = run(project, "info", "server:green", "spec=blue-deployment.yml")
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "error: there is no task server:green; the deployment selected here is blue (server:blue)",
        "  fix: doit info server:blue, or name green's YAML: doit info server:green spec=green-deployment.yml",
    ], result.stderr


def test_running_a_stage_of_a_deployment_that_is_not_selected(project: Project) -> None:
    result = run(project, "image:green", "spec=blue-deployment.yml")
    assert result.returncode == 1
    assert "error: there is no task image:green; the deployment selected here is blue (image:blue)" in result.stderr
    assert "Traceback" not in result.stderr and nothing_done(project)


def test_info_with_nothing_selected_says_how_to_select(project: Project) -> None:
    result = run(project, "info", "server:blue")
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "error: there is no task server:blue here; no deployment is selected in this folder",
        "  fix: name its YAML: doit info server:blue spec=blue-deployment.yml",
    ], result.stderr


def test_a_stage_of_the_other_runtime(project: Project) -> None:
    result = run(project, "info", "image:blue", "spec=blue-deployment.yml", "runtime=process")
    assert result.returncode == 1
    assert "there is no task image:blue; blue runs in process mode here, so its stage is venv:blue" in result.stderr
    assert "fix: doit info venv:blue" in result.stderr


@pytest.mark.parametrize("args", [["info", "bogus"], ["bogus"], ["info", "inovke"]])
def test_an_unknown_task_names_the_tasks(project: Project, args: list[str]) -> None:
    result = run(project, *args, "spec=blue-deployment.yml")
    assert result.returncode == 1
    assert f"error: there is no task {args[-1]}" in result.stderr, result.stderr
    assert "The tasks: validate, environment, image" in result.stderr and "doctor" in result.stderr
    if args[-1] == "inovke":
        assert "did you mean invoke?" in result.stderr
    assert "Traceback" not in result.stderr and "KeyError" not in result.stderr


def test_a_subtask_of_a_task_without_subtasks(project: Project) -> None:
    result = run(project, "debug:x", "spec=blue-deployment.yml")
    assert result.returncode == 1
    assert result.stderr.splitlines() == ["error: there is no task debug:x; debug has no subtasks", "  fix: doit debug"]


# --- with the folder's own dodo.py (doit itself, not the localml script) --------------------------------------


def test_the_dodos_own_tasks_keep_their_own_variables(tmp_path: Path) -> None:
    """A dodo.py with tasks of its own beside localml's: its variables are not refused, localml's values are."""
    (tmp_path / "dodo.py").write_text(
        "from doit import get_var\n"
        "from localml_tasks.dodo import *  # noqa: F403\n\n"
        "def task_mine():\n"
        "    return {'actions': [lambda: print('mine', get_var('colour'))], 'verbosity': 2}\n")
    doit = [str(Path(sys.executable).with_name("doit"))]
    env = {"NO_COLOR": "1", "PATH": "/usr/bin:/bin", **NO_DOCKER}
    mine = subprocess.run([*doit, "mine", "colour=blue"], cwd=tmp_path, capture_output=True, text=True, env=env)
    assert mine.returncode == 0 and "mine blue" in mine.stdout, mine.stdout + mine.stderr
    assert (tmp_path / ".localml").is_dir()  # made by localml_tasks.dodo: doit's database lives there
    ours = subprocess.run([*doit, "debug", "wiat=1"], cwd=tmp_path, capture_output=True, text=True,
                          env=env)
    assert ours.returncode == 1 and "did you mean wait=1?" in ours.stderr, ours.stderr
    bad = subprocess.run([*doit, "mine", "wait=maybe"], cwd=tmp_path, capture_output=True, text=True, env=env)
    assert bad.returncode == 1 and "wait is a switch" in bad.stderr, bad.stderr


# --- the table itself --------------------------------------------------------------------------------------


def test_every_variable_tasks_py_reads_is_declared() -> None:
    """Each name tasks.py passes to _var/_flag is a variable of some task (READS)."""
    import re

    source = (REPO / "localml_tasks" / "tasks.py").read_text()
    read = set(re.findall(r"_(?:var|flag)\(\"(\w+)\"", source))
    assert read and read <= set(variables.every_variable()), read - set(variables.every_variable())


def test_a_stage_takes_the_variables_of_the_stages_before_it() -> None:
    assert "runtime" in variables.accepted("server") and "takeover" in variables.accepted("image")
    assert set(variables.accepted("debug")) >= {"spec", "debugger", "wait", "vscode", "gpu", "merge_launch"}
    assert "request" not in variables.accepted("debug")


def test_without_doit_on_the_stack_every_variable_is_accepted_and_values_checked() -> None:
    variables.check_command_line({"request": "x", "debugger": "0"}, None, None, lambda: "docker")
    with pytest.raises(LocalmlError) as raised:
        variables.check_command_line({"debuger": "0", "wait": "maybe"}, None, None, lambda: "docker")
    assert [problem.override for problem in raised.value.problems] == ["debuger=0", "wait=maybe"]
