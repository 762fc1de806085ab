"""Signals only to localml's own processes, and names checked before they become paths (issue 14).

A state file (process.json, router.json) that names someone else's pid — after a reboot, a reused pid —
is stale: localml says so, removes it and signals nothing. Endpoint and deployment names become folders
under .localml/: one that breaks Azure's rule (`endpoint_name=../x`) is refused before any file is touched.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Project

from localml_tasks import endpoint as endpoint_stage
from localml_tasks import ownership, process_runtime
from localml_tasks.server import process_is_alive

NO_DOCKER = {"DOCKER_HOST": "unix:///nonexistent/docker.sock"}


@pytest.fixture
def bystander() -> Iterator[subprocess.Popen]:
    """An unrelated process whose pid a stale state file names."""
    process = subprocess.Popen(["sleep", "300"])
    yield process
    process.kill()
    process.wait()


def endpoint_folder(project: Project) -> Path:
    return project.root / ".localml" / "endpoints" / project.endpoint


def write_process_json(state_dir: Path, pid: int, **extra: object) -> Path:
    """process.json as process_runtime.start writes it."""
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / "process.json"
    path.write_text(json.dumps({"supervisor_pid": pid, "scoring_port": 5999, "debug_port": 5998,
                                "venv": str(state_dir / "no-venv"), "config_hash": "0" * 16,
                                "log_file": str(state_dir / "runtime" / "server.log"), **extra}))
    return path


def write_router_json(folder: Path, pid: int) -> Path:
    """router.json as endpoint.ensure_router writes it."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "router.json"
    path.write_text(json.dumps({"pid": pid, "port": 5199}))
    return path


# --- the pure parts ------------------------------------------------------------------------------------


def test_stat_fields_are_read_after_the_command_name_even_with_spaces_and_parentheses():
    fields = " ".join(["S", "1", "42", "42", "0", "-1"] + ["0"] * 13 + ["123456", "99"])
    assert ownership.parse_stat(f"42 (a) b (c)) {fields}") == ("S", 1, 42, 123456)


def test_matches_needs_every_argument_environment_entry_and_the_recorded_start():
    seen = ownership.Seen(argv=("/venv/bin/python", "/pkg/in_container/supervisor.py", "/p/.localml/rt"),
                          environ=("A=1", "LOCALML_RUNTIME_DIR=/p/.localml/rt"), start_ticks=500, boot_id="b1")
    ours = ownership.Identity(argv=("supervisor.py", "/p/.localml/rt"), start_ticks=500, boot_id="b1")
    assert ownership.matches(seen, ours)
    assert not ownership.matches(seen, ownership.Identity(argv=("supervisor.py", "/q/.localml/rt")))
    assert not ownership.matches(seen, ownership.Identity(argv=("upervisor.py",)))  # a whole path part only
    assert not ownership.matches(seen, ownership.Identity(argv=("supervisor.py",), start_ticks=499))
    assert not ownership.matches(seen, ownership.Identity(argv=("supervisor.py",), boot_id="b0"))
    assert ownership.matches(seen, ownership.Identity(environ=("LOCALML_RUNTIME_DIR=/p/.localml/rt",),
                                                      started_after=500))
    assert not ownership.matches(seen, ownership.Identity(environ=("LOCALML_RUNTIME_DIR=/p/.localml/rt",),
                                                          started_after=501))
    assert not ownership.matches(seen, ownership.Identity(environ=("LOCALML_RUNTIME_DIR=/q",)))


def test_a_live_unrelated_process_is_foreign_a_dead_pid_gone(bystander):
    identity = ownership.Identity(argv=("supervisor.py",))
    assert ownership.verdict(bystander.pid, identity) == ownership.FOREIGN
    assert ownership.verdict(bystander.pid, ownership.Identity(argv=("sleep", "300"))) == ownership.OURS
    finished = subprocess.Popen(["true"])
    finished.wait()
    assert ownership.verdict(finished.pid, identity) == ownership.GONE


def test_the_right_command_line_with_another_start_time_is_not_ours(tmp_path, monkeypatch):
    """A reused pid whose command line happens to look like our supervisor's: the start time tells."""
    monkeypatch.chdir(tmp_path)
    state_dir = tmp_path / ".localml" / "endpoints" / "ep1" / "blue"
    runtime = (state_dir / "runtime")
    runtime.mkdir(parents=True)
    lookalike = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)", "supervisor.py",
                                  str(runtime.resolve())])
    try:
        deadline = time.monotonic() + 10
        while b"supervisor.py" not in Path(f"/proc/{lookalike.pid}/cmdline").read_bytes():  # exec'd yet?
            assert time.monotonic() < deadline
            time.sleep(0.01)
        stamp = ownership.stamp(lookalike.pid)
        record = process_runtime.ProcessRecord(lookalike.pid, 1, 2, "v", "h", "l", **stamp)
        assert process_runtime.supervisor_verdict(state_dir, record) == ownership.OURS
        wrong = process_runtime.ProcessRecord(lookalike.pid, 1, 2, "v", "h", "l",
                                              start_ticks=stamp["start_ticks"] - 1, boot_id=stamp["boot_id"])
        write_process_json(state_dir, lookalike.pid, start_ticks=wrong.start_ticks, boot_id=wrong.boot_id)
        stopped = process_runtime.stop(state_dir)
        assert stopped is not None and stopped.stale and stopped.ended == []
        assert lookalike.poll() is None  # still running: nothing was signalled
        assert not (state_dir / "process.json").exists()
    finally:
        lookalike.kill()
        lookalike.wait()


def test_stop_router_ends_our_router_and_leaves_a_stale_files_pid_alone(tmp_path, monkeypatch, bystander):
    monkeypatch.chdir(tmp_path)
    endpoint_stage.write_routes("ep1", endpoint_stage.render_routes("ep1", {}, {}))
    router, started = endpoint_stage.ensure_router("ep1", set())
    assert started
    recorded = json.loads((endpoint_stage.endpoint_dir("ep1") / "router.json").read_text())
    assert recorded["start_ticks"] == ownership.start_ticks(router.pid)  # recorded when started
    assert endpoint_stage.stop_router("ep1") == (router.pid, ownership.OURS)
    assert not process_is_alive(router.pid)

    router_json = write_router_json(endpoint_stage.endpoint_dir("ep1"), bystander.pid)
    assert endpoint_stage.find_router("ep1") is None
    assert endpoint_stage.stop_router("ep1") == (bystander.pid, ownership.FOREIGN)
    assert bystander.poll() is None and not router_json.exists()


# --- through the CLI -------------------------------------------------------------------------------------


@pytest.mark.docker  # delete asks the engine for containers once the stale process.json is removed
def test_delete_with_stale_process_and_router_files_signals_nothing(project, bystander):
    process_json = write_process_json(endpoint_folder(project) / "blue", bystander.pid)
    router_json = write_router_json(endpoint_folder(project), bystander.pid)
    result = project.run("delete", f"spec={project.spec}")
    assert result.returncode == 0, result.stdout + result.stderr
    assert bystander.poll() is None, "the unrelated process was signalled"
    assert (f"process.json named pid {bystander.pid}, which is not localml's (a stale file): removed it, "
            "signalled nothing") in result.stdout
    assert (f"router.json named pid {bystander.pid}, which is not localml's (a stale file): removed it, "
            "signalled nothing") in result.stdout
    assert not process_json.exists() and not router_json.exists()


def test_process_mode_debug_over_a_stale_process_file_starts_afresh_and_signals_nothing(project, bystander):
    process_json = write_process_json(endpoint_folder(project) / "blue", bystander.pid)
    try:
        result = project.run("debug", f"spec={project.spec}", "runtime=process", "vscode=0", env=NO_DOCKER)
        assert result.returncode == 0, result.stdout + result.stderr
        assert bystander.poll() is None, "the unrelated process was signalled"
        assert (f"process.json named pid {bystander.pid}, which is not localml's (a stale file): removed it, "
                "signalled nothing") in result.stdout
        record = json.loads(process_json.read_text())
        assert record["supervisor_pid"] != bystander.pid
        assert record["start_ticks"] == ownership.start_ticks(record["supervisor_pid"])
    finally:
        deleted = project.run("delete", f"spec={project.spec}", env=NO_DOCKER)
    assert "nothing of it is left running" in deleted.stdout, deleted.stdout + deleted.stderr
    assert bystander.poll() is None


@pytest.mark.parametrize(("variable", "where"), [
    ("endpoint_name=../x", ".localml/x"),  # .localml/endpoints/../x
    ("endpoint_name={outside}", "{outside}"),
    ("deployment=a/b", ".localml/endpoints/{endpoint}/a/b"),
])
def test_a_name_that_is_not_azures_is_refused_before_any_file_is_touched(project, tmp_path, variable, where):
    outside = tmp_path / "outside"
    variable = variable.format(outside=outside)
    folder = project.root / where.format(outside=outside, endpoint=project.endpoint)
    folder.mkdir(parents=True)
    sentinels = [folder / name for name in ("routes.json", "router.json", "process.json")]
    for sentinel in sentinels:
        sentinel.write_text('{"pid": 1, "port": 1}')
    for command in ("delete", "debug"):
        result = project.run(command, f"spec={project.spec}", variable, "vscode=0", env=NO_DOCKER)
        assert result.returncode != 0
        name, value = variable.split("=", 1)
        kind = "endpoint" if name == "endpoint_name" else "deployment"
        assert f"error: {variable}: the {kind} name {value!r} is not valid: 3-32 characters, starts with a letter" \
            in result.stderr, result.stderr
        assert "Traceback" not in result.stderr
    assert all(sentinel.read_text() == '{"pid": 1, "port": 1}' for sentinel in sentinels)


def test_a_bad_name_in_the_yaml_is_refused_too(project):
    project.edit("blue-deployment.yml", "name: blue", "name: ../../evil")
    result = project.run("delete", f"spec={project.spec}")
    assert result.returncode != 0
    assert "the deployment name '../../evil' is not valid" in result.stderr, result.stderr
    assert "blue-deployment.yml:2" in result.stderr  # the line that names it
