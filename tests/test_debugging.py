"""VS Code debugging without VS Code: the generated dev container fed to the real @devcontainers/cli,
the launch configuration used by a real DAP client against the real debugpy in the container, and
the exact `code` command line we would run (the GUI itself cannot exist here)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, Project, remove_containers, sample_copy
from dap_client import DapClient, host_launch, line_in, post_in_background, scoring_url, state_dir

pytestmark = pytest.mark.docker

DEVCONTAINER_CLI = REPO / ".tools" / "node_modules" / ".bin" / "devcontainer"


SAMPLE = json.loads((REPO / "specs" / "sample-request.json").read_text())


def test_breakpoint_in_run_is_hit_through_the_host_launch_configuration(project, engine):
    result = project.run("debug", f"spec={project.spec}")
    assert result.returncode == 0, result.stdout + result.stderr
    config = host_launch(project)
    score = project.root / "onlinescoring" / "score.py"
    line = line_in(score, "predictions = model.predict(data) * scale")
    # the code folder, and the model folder as Azure mounts it (a model folder may hold code to stop in)
    assert config["pathMappings"] == [{"localRoot": str(project.root / "onlinescoring"),
                                       "remoteRoot": "/var/azureml-app/onlinescoring"},
                                      {"localRoot": str(project.root / "model"),
                                       "remoteRoot": "/var/azureml-app/azureml-models/sample-regression/1/model"}]

    dap = DapClient(config["connect"]["host"], config["connect"]["port"])
    try:
        dap.attach(config, {str(score): [line]})
        thread, answer = post_in_background(scoring_url(project, engine), SAMPLE)
        stopped = dap.wait_event("stopped")
        assert stopped["body"]["reason"] == "breakpoint"
        frame = dap.top_frame(stopped["body"]["threadId"])
        assert (frame["source"]["path"], frame["line"]) == (str(score), line)  # mapped back to the host file
        local = dap.locals_of(frame["id"])
        assert local["rows"].startswith("[[1, 2, 3")  # the request's data, read through the debugger
        assert "shape" not in answer  # the request waits while we are stopped
        dap.request("continue", {"threadId": stopped["body"]["threadId"]})
        thread.join(timeout=60)
        assert answer["status"] == 200 and json.loads(answer["body"])[0] == pytest.approx(41.525434596312586)
    finally:
        dap.close()


def test_wait_for_debugger_then_breakpoint_in_init(project, engine):
    debug = subprocess.Popen([sys.executable, "-m", "localml_tasks", "debug", f"spec={project.spec}", "wait=1"],
                             cwd=project.root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             env={**os.environ, "NO_COLOR": "1"})
    try:
        launch_file = state_dir(project) / "launch.json"
        deadline = time.monotonic() + 300
        while not launch_file.exists() and time.monotonic() < deadline and debug.poll() is None:
            time.sleep(0.2)
        assert launch_file.exists(), debug.stdout.read() if debug.poll() is not None else "no launch.json"
        config = host_launch(project)
        score = project.root / "onlinescoring" / "score.py"
        line = line_in(score, "model = joblib.load(model_path)")
        dap = DapClient(config["connect"]["host"], config["connect"]["port"])
        try:
            dap.attach(config, {str(score): [line]})
            stopped = dap.wait_event("stopped", timeout=120)
            frame = dap.top_frame(stopped["body"]["threadId"])
            assert (frame["source"]["path"], frame["line"], frame["name"]) == (str(score), line, "init")
            assert dap.locals_of(frame["id"])["model_path"].endswith("/model/sklearn_regression_model.pkl'")
            dap.request("continue", {"threadId": stopped["body"]["threadId"]})
        finally:
            dap.close()
        output, _ = debug.communicate(timeout=120)
    finally:
        if debug.poll() is None:
            debug.kill()
    assert debug.returncode == 0, output
    assert "under debugpy, waiting for a debugger (wait=1)" in output
    assert "health        healthy" in output


def test_exception_in_run_stops_as_uncaught_when_the_filter_is_set(project, engine):
    assert project.run("debug", f"spec={project.spec}").returncode == 0
    config = host_launch(project)
    dap = DapClient(config["connect"]["host"], config["connect"]["port"])
    try:
        dap.attach(config, {}, exception_filters=["uncaught", "userUnhandled"])
        thread, answer = post_in_background(scoring_url(project, engine), {"data": [[1, 2, 3]]})
        stopped = dap.wait_event("stopped")
        assert stopped["body"]["reason"] == "exception"
        info = dap.request("exceptionInfo", {"threadId": stopped["body"]["threadId"]})["body"]
        assert "expected 'data' as a list of rows of 10 numbers" in info["description"]
        frame = dap.top_frame(stopped["body"]["threadId"])
        assert frame["source"]["path"] == str(project.root / "onlinescoring" / "score.py")
        dap.request("continue", {"threadId": stopped["body"]["threadId"]})
        thread.join(timeout=60)
        assert answer["status"] == 500
    finally:
        dap.close()


def test_after_a_code_edit_and_reload_breakpoints_on_new_lines_are_hit(project, engine):
    assert project.run("debug", f"spec={project.spec}").returncode == 0
    score = project.root / "onlinescoring" / "score.py"
    project.edit("onlinescoring/score.py", "    predictions = model.predict(data) * scale\n",
                 "    predictions = model.predict(data) * scale\n    doubled = predictions * 2\n"
                 "    predictions = doubled / 2\n")
    result = project.run("debug")
    assert "reloaded in place — onlinescoring/score.py changed" in result.stdout, result.stdout + result.stderr
    config = host_launch(project)
    line = line_in(score, "doubled = predictions * 2") + 1
    dap = DapClient(config["connect"]["host"], config["connect"]["port"])
    try:
        dap.attach(config, {str(score): [line]})
        thread, answer = post_in_background(scoring_url(project, engine), SAMPLE)
        stopped = dap.wait_event("stopped")
        frame = dap.top_frame(stopped["body"]["threadId"])
        assert frame["line"] == line
        assert dap.locals_of(frame["id"])["doubled"].startswith("array([83.05")
        dap.request("continue", {"threadId": stopped["body"]["threadId"]})
        thread.join(timeout=60)
        assert answer["status"] == 200
    finally:
        dap.close()


def test_devcontainer_cli_reads_the_config_and_up_returns_our_container(project, engine):
    assert DEVCONTAINER_CLI.exists(), "scripts/bootstrap installs @devcontainers/cli into .tools/"
    assert project.run("debug", f"spec={project.spec}").returncode == 0
    folder = state_dir(project)
    read = subprocess.run([str(DEVCONTAINER_CLI), "read-configuration", "--workspace-folder", str(folder)],
                          capture_output=True, text=True, timeout=120)
    assert read.returncode == 0, read.stderr
    configuration = json.loads(read.stdout)["configuration"]
    assert configuration["workspaceFolder"] == "/var/azureml-app/onlinescoring"
    assert configuration["customizations"]["vscode"]["settings"]["python.defaultInterpreterPath"] \
        == "/opt/azureml-env/bin/python"

    ours = engine.containers.get(project.container_name())
    up = subprocess.run([str(DEVCONTAINER_CLI), "up", "--workspace-folder", str(folder)],
                        capture_output=True, text=True, timeout=300)
    assert up.returncode == 0, up.stderr
    outcome = json.loads(up.stdout.strip().splitlines()[-1])
    assert outcome["outcome"] == "success"
    assert outcome["containerId"] == ours.id  # reused, not a second container
    assert len(engine.containers.list(all=True, filters={"label": f"endpoint={project.endpoint}"})) == 1


@pytest.fixture
def spaced_project(tmp_path: Path) -> Project:
    proj = sample_copy(tmp_path / "my project" / "with spaces")
    yield proj
    remove_containers(proj.endpoint)


def test_code_on_path_gets_the_exact_folder_uri_even_with_spaces(spaced_project, engine, tmp_path):
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    record = tmp_path / "code-argv.json"
    (fake_bin / "code").write_text(f"#!{sys.executable}\nimport json, sys\n"
                                   f"json.dump(sys.argv[1:], open({str(record)!r}, 'w'))\n")
    (fake_bin / "code").chmod(0o755)
    result = spaced_project.run("debug", f"spec={spaced_project.spec}",
                                env={"PATH": f"{fake_bin}{os.pathsep}{os.environ['PATH']}", "WSL_DISTRO_NAME": ""})
    assert result.returncode == 0, result.stdout + result.stderr
    deadline = time.monotonic() + 10
    while not record.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    host_folder = str(state_dir(spaced_project))
    assert " " in host_folder
    expected = "vscode-remote://dev-container+" + host_folder.encode().hex() + "/var/azureml-app/onlinescoring"
    assert json.loads(record.read_text()) == ["--folder-uri", expected]
    assert bytes.fromhex(expected.split("+")[1].split("/")[0]).decode() == host_folder


def test_without_code_it_says_how_to_attach_and_carries_on(project, engine):
    result = project.run("debug", f"spec={project.spec}", "vscode=1", env={"PATH": os.path.dirname(sys.executable)
                                                                          + os.pathsep + "/usr/bin:/bin"})
    assert result.returncode == 0, result.stdout + result.stderr
    port = engine.containers.get(project.container_name()).labels["localml.debug-port"]
    assert f"`code` is not on PATH: attach a debugger to 127.0.0.1:{port}" in result.stdout
    skipped = project.run("debug", "vscode=0")
    assert "vscode        skipped (vscode=0)" in skipped.stdout


def test_merge_launch_keeps_other_configurations_and_a_backup(project, engine):
    vscode_dir = project.root / ".vscode"
    vscode_dir.mkdir()
    original = """{
  // the user's own, with comments and a trailing comma
  "version": "0.2.0",
  "configurations": [
    {"name": "Python: current file", "type": "debugpy", "request": "launch", "program": "${file}",},
  ]
}
"""
    (vscode_dir / "launch.json").write_text(original)
    result = project.run("debug", f"spec={project.spec}", "merge_launch=1")
    assert result.returncode == 0, result.stdout + result.stderr
    merged = json.loads((vscode_dir / "launch.json").read_text())
    names = [c["name"] for c in merged["configurations"]]
    assert names == ["Python: current file", "Azure ML: Debug Local Endpoint"]
    backups = list(vscode_dir.glob("launch.json.localml-*.bak"))
    assert len(backups) == 1 and backups[0].read_text() == original
    # asked again with nothing new: no second backup, same file
    again = project.run("debug", "merge_launch=1")
    assert again.returncode == 0
    assert len(list(vscode_dir.glob("launch.json.localml-*.bak"))) == 1
