"""Process mode: the same commands without Docker — a venv on this machine, the real server in
one process on 127.0.0.1, reloads, debugging over DAP, and nothing left running after delete.

One copy of the repository's layout (dodo.py, localml.yml, specs/) for the whole module, so its
venv (about 45 s of pip) is built once; the first test runs the README's main command in it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import joblib
import numpy as np
import pytest
import requests
from conftest import REPO, Project
from dap_client import DapClient, post_in_background

from localml_tasks.process_runtime import session_pids
from localml_tasks.server import process_is_alive

NO_DOCKER = {"DOCKER_HOST": "unix:///nonexistent/docker.sock"}
REQUEST = REPO / "specs" / "sample-request.json"
ROWS = np.asarray(json.loads(REQUEST.read_text())["data"], dtype=float)


def expected() -> list[float]:
    return joblib.load(REPO / "specs" / "model" / "sklearn_regression_model.pkl").predict(ROWS).tolist()


class RepoCopy(Project):
    """The repository's layout: commands run at its top, like the README's; specs/ holds the sample."""

    @property
    def spec(self) -> Path:
        return self.root / "specs" / "blue-deployment.yml"

    @property
    def state(self) -> Path:
        return self.root / ".localml" / "endpoints" / self.endpoint / "blue"


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> RepoCopy:
    top = tmp_path_factory.mktemp("process") / "repo"
    shutil.copytree(REPO / "specs", top / "specs")
    shutil.copy(REPO / "dodo.py", top / "dodo.py")
    shutil.copy(REPO / "localml.yml", top / "localml.yml")
    endpoint = f"p-{uuid.uuid4().hex[:8]}"
    proj = RepoCopy(root=top, endpoint=endpoint)
    root = top / "specs"
    proj.edit("specs/endpoint.yml", "name: localml-sample", f"name: {endpoint}")
    proj.edit("specs/blue-deployment.yml", "endpoint_name: localml-sample", f"endpoint_name: {endpoint}")
    (root / "onlinescoring" / "helper.py").write_text("OFFSET = 0.0\n")
    proj.edit("specs/onlinescoring/score.py", "import numpy as np\n", "import numpy as np\n\nimport helper\n")
    proj.edit("specs/onlinescoring/score.py", "predictions = model.predict(data) * scale\n",
              "predictions = model.predict(data) * scale + helper.OFFSET\n")
    yield proj
    proj.run("delete", env=NO_DOCKER)


def record(project: RepoCopy) -> dict:
    return json.loads((project.state / "process.json").read_text())


def invoke(project: Project) -> list[float]:
    result = project.run("invoke", f"request={REQUEST}", env=NO_DOCKER)
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout[result.stdout.index("["):])


def test_no_docker_engine_means_process_mode_end_to_end(project):
    # the README's main command, through the repository's dodo.py, with no Docker engine answering
    result = subprocess.run([sys.executable, "-m", "doit", "debug", "spec=specs/blue-deployment.yml"],
                            cwd=project.root, capture_output=True, text=True, timeout=900,
                            env={**os.environ, "NO_COLOR": "1", **NO_DOCKER})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "runtime       no Docker engine answers: process mode" in result.stdout
    assert "process       started (pid" in result.stdout
    assert invoke(project) == pytest.approx(expected())  # the same predictions as the Docker runtime

    # the server listens on loopback only
    port = record(project)["scoring_port"]
    listening = Path("/proc/net/tcp").read_text().splitlines()[1:]
    local = [line.split()[1] for line in listening if line.split()[3] == "0A"]
    assert f"0100007F:{port:04X}" in local and f"00000000:{port:04X}" not in local

    again = project.run("debug", env=NO_DOCKER)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "process       up to date" in again.stdout and "server        up to date" in again.stdout
    assert "venv          up to date" in again.stdout


def test_code_edit_reloads_the_process_in_place(project):
    supervisor = record(project)["supervisor_pid"]
    (project.root / "specs" / "onlinescoring" / "helper.py").write_text("OFFSET = 7.0\n")
    result = project.run("debug", env=NO_DOCKER)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "server        reloaded in place — onlinescoring/helper.py changed" in result.stdout, result.stdout
    assert record(project)["supervisor_pid"] == supervisor
    assert invoke(project) == pytest.approx((np.asarray(expected()) + 7).tolist())


def test_breakpoint_in_run_over_dap_in_process_mode(project):
    launch = json.loads((project.state / "launch.json").read_text())["configurations"][0]
    code_dir = str(project.root / "specs" / "onlinescoring")
    assert launch["pathMappings"] == [{"localRoot": code_dir, "remoteRoot": code_dir}]
    score = project.root / "specs" / "onlinescoring" / "score.py"
    line = next(n for n, text in enumerate(score.read_text().splitlines(), 1) if "helper.OFFSET" in text)
    dap = DapClient(launch["connect"]["host"], launch["connect"]["port"])
    answer: dict = {}
    try:
        dap.attach(launch, {str(score): [line]})
        url = f"http://127.0.0.1:{record(project)['scoring_port']}/score"
        thread = threading.Thread(target=lambda: answer.update(
            status=requests.post(url, json=json.loads(REQUEST.read_text()), timeout=60).status_code), daemon=True)
        thread.start()
        stopped = dap.wait_event("stopped")
        frame = dap.top_frame(stopped["body"]["threadId"])
        assert (frame["source"]["path"], frame["line"]) == (str(score), line)
        assert dap.locals_of(frame["id"])["rows"].startswith("[[1, 2, 3")
        dap.request("continue", {"threadId": stopped["body"]["threadId"]})
        thread.join(timeout=30)
    finally:
        dap.close()
    assert answer["status"] == 200


def test_attached_once_a_save_is_hit_in_the_new_code_in_process_mode(project):
    launch = json.loads((project.state / "launch.json").read_text())["configurations"][0]
    score = project.root / "specs" / "onlinescoring" / "score.py"
    helper = project.root / "specs" / "onlinescoring" / "helper.py"
    line = next(n for n, text in enumerate(score.read_text().splitlines(), 1) if "helper.OFFSET" in text)
    url = f"http://127.0.0.1:{record(project)['scoring_port']}/score"
    server = json.loads((project.state / "runtime" / "status.json").read_text())["pid"]
    dap = DapClient(launch["connect"]["host"], launch["connect"]["port"])
    try:
        dap.attach(launch, {str(score): [line]})
        for offset in (7.0, 9.0, 7.0):  # ends as it began, for the tests after this one
            if helper.read_text() != f"OFFSET = {offset}\n":
                helper.write_text(f"OFFSET = {offset}\n")
                result = project.run("debug", env=NO_DOCKER)
                assert "reloaded in place — onlinescoring/helper.py changed" in result.stdout, result.stdout
            thread, answer = post_in_background(url, json.loads(REQUEST.read_text()))
            stopped = dap.wait_event("stopped")
            frame = dap.top_frame(stopped["body"]["threadId"])
            assert (frame["source"]["path"], frame["line"]) == (str(score), line)
            assert dap.evaluate("helper.OFFSET", frame["id"]) == repr(offset)  # the new module, seen by the debugger
            dap.request("continue", {"threadId": stopped["body"]["threadId"]})
            thread.join(timeout=30)
            assert json.loads(answer["body"]) == pytest.approx((np.asarray(expected()) + offset).tolist())
        assert not dap.disconnected.is_set()
        assert json.loads((project.state / "runtime" / "status.json").read_text())["pid"] == server
    finally:
        dap.close()


def test_a_crashed_server_is_reported_and_restarted(project):
    status_file = project.state / "runtime" / "status.json"
    os.kill(json.loads(status_file.read_text())["pid"], signal.SIGKILL)
    deadline = time.monotonic() + 10
    while '"exited"' not in status_file.read_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    result = project.run("debug", env=NO_DOCKER)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "restarted in a new process — it had exited with code -9" in result.stdout

    os.kill(record(project)["supervisor_pid"], signal.SIGKILL)  # the supervisor itself
    time.sleep(0.5)
    result = project.run("debug", env=NO_DOCKER)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "process       restarted: it was not running" in result.stdout
    assert invoke(project) == pytest.approx((np.asarray(expected()) + 7).tolist())


def test_init_failure_in_process_mode_names_the_line(project):
    score = project.root / "specs" / "onlinescoring" / "score.py"
    good = score.read_text()
    score.write_text(good.replace("    model = joblib.load(model_path)\n",
                                  "    raise RuntimeError('cannot load in process mode')\n"))
    try:
        result = project.run("debug", env=NO_DOCKER)
        assert result.returncode != 0
        assert "RuntimeError: cannot load in process mode" in result.stderr and "in init()" in result.stderr
        line = next(n for n, t in enumerate(score.read_text().splitlines(), 1) if "cannot load" in t)
        assert f"specs/onlinescoring/score.py:{line}" in result.stderr
    finally:
        score.write_text(good)
    assert project.run("debug", env=NO_DOCKER).returncode == 0


def test_delete_ends_the_whole_process_tree(project):
    supervisor = record(project)["supervisor_pid"]
    status = json.loads((project.state / "runtime" / "status.json").read_text())
    tree = session_pids(supervisor) + session_pids(status["pid"])
    assert supervisor in tree and status["pid"] in tree  # the supervisor, the server (and debugpy's adapter)
    result = project.run("delete", env=NO_DOCKER)
    assert result.returncode == 0, result.stderr
    assert "nothing of it is left running" in result.stdout
    assert not [pid for pid in tree if process_is_alive(pid)]
    assert session_pids(supervisor) == [] and session_pids(status["pid"]) == []
