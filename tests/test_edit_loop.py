"""What changes decides what reruns (DESIGN.md), row by row, on a real container.

Each test proves which code/config is live through the response body, and what was (not)
rebuilt or restarted through the image id, the container id and its start time.
"""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import sys
import threading
import time

import joblib
import numpy as np
import pytest
from conftest import REPO, Project
from sklearn.linear_model import Ridge

pytestmark = pytest.mark.docker

REQUEST = REPO / "specs" / "sample-request.json"
ROWS = np.asarray(json.loads(REQUEST.read_text())["data"], dtype=float)


def sample_predictions() -> np.ndarray:
    return joblib.load(REPO / "specs" / "model" / "sklearn_regression_model.pkl").predict(ROWS)


@pytest.fixture
def helper_project(project: Project) -> Project:
    """The sample, with score.py importing a helper module whose value shows in every answer."""
    (project.root / "onlinescoring" / "helper.py").write_text("OFFSET = 0.0\n")
    project.edit("onlinescoring/score.py", "import numpy as np\n", "import numpy as np\n\nimport helper\n")
    project.edit("onlinescoring/score.py", "predictions = model.predict(data) * scale\n",
                 "predictions = model.predict(data) * scale + helper.OFFSET\n")
    return project


def debug(project: Project) -> subprocess.CompletedProcess:
    return project.run("debug", f"spec={project.spec}")


def invoke(project: Project) -> list[float]:
    result = project.run("invoke", f"request={REQUEST}")
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout[result.stdout.index("["):])


def state(project: Project, engine) -> tuple[str, str, str]:
    container = engine.containers.get(project.container_name())
    return container.image.id, container.id, container.attrs["State"]["StartedAt"]


def test_code_edit_reloads_in_place_and_picks_up_helper_modules(helper_project, engine):
    assert debug(helper_project).returncode == 0
    assert invoke(helper_project) == pytest.approx(sample_predictions().tolist())
    before = state(helper_project, engine)

    (helper_project.root / "onlinescoring" / "helper.py").write_text("OFFSET = 100.0\n")
    result = debug(helper_project)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "server        reloaded in place — onlinescoring/helper.py changed" in result.stdout
    assert "image         up to date" in result.stdout and "container     up to date" in result.stdout
    assert state(helper_project, engine) == before  # same image, same container, not restarted
    assert invoke(helper_project) == pytest.approx((sample_predictions() + 100).tolist())


def test_model_change_reloads_and_runs_init_again(project, engine):
    assert debug(project).returncode == 0
    before = state(project, engine)
    rng = np.random.RandomState(7)
    inputs = rng.uniform(0, 10, size=(50, 10))
    other = Ridge().fit(inputs, inputs.sum(axis=1) * 2)
    joblib.dump(other, project.root / "model" / "sklearn_regression_model.pkl")

    result = debug(project)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "reloaded in place — model/sklearn_regression_model.pkl changed" in result.stdout
    assert state(project, engine) == before
    assert invoke(project) == pytest.approx(other.predict(ROWS).tolist())


def test_config_change_recreates_the_container_from_the_same_image(project, engine):
    assert debug(project).returncode == 0
    image_id, container_id, _ = state(project, engine)
    project.edit("blue-deployment.yml", "SAMPLE_OUTPUT_SCALE: 1", "SAMPLE_OUTPUT_SCALE: 2")

    result = debug(project)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "image         up to date" in result.stdout
    assert "container     recreated: configuration or image changed" in result.stdout
    new_image_id, new_container_id, _ = state(project, engine)
    assert new_image_id == image_id and new_container_id != container_id
    assert invoke(project) == pytest.approx((sample_predictions() * 2).tolist())


def test_environment_change_rebuilds_the_image_on_the_cached_base_and_recreates(project, engine):
    assert debug(project).returncode == 0
    image_id, container_id, _ = state(project, engine)
    project.edit("environment/conda.yml", "      - numpy==2.4.6\n", "      - numpy==2.4.6\n      - six==1.16.0\n")

    result = debug(project)
    assert result.returncode == 0, result.stdout + result.stderr
    # built now, or reused when an earlier run on this machine built the same environment (same tag)
    assert "image         built localml/env:" in result.stdout or "image         reused localml/env:" in result.stdout
    new_image_id, new_container_id, _ = state(project, engine)
    assert new_image_id != image_id and new_container_id != container_id
    base_layers = engine.images.get("localml/debian-python:3.11-bookworm").attrs["RootFS"]["Layers"]
    new_layers = engine.images.get(new_image_id).attrs["RootFS"]["Layers"]
    assert new_layers[: len(base_layers)] == base_layers  # the base image's layers are reused as they are
    check = engine.containers.run(new_image_id, ["python", "-c", "import six; print(six.__version__)"], remove=True)
    assert check.decode().strip() == "1.16.0"
    assert invoke(project) == pytest.approx(sample_predictions().tolist())


def test_failing_reload_reports_the_cause_and_the_next_good_edit_recovers(helper_project, engine):
    assert debug(helper_project).returncode == 0
    before = state(helper_project, engine)
    score = helper_project.root / "onlinescoring" / "score.py"
    good = score.read_text()

    score.write_text(good.replace("def run(raw_data):", "def run(raw_data)"))  # a syntax error
    result = debug(helper_project)
    assert result.returncode != 0
    assert "onlinescoring/score.py:" in result.stderr and "syntax error" in result.stderr

    score.write_text(good.replace('    scale = float(os.environ.get("SAMPLE_OUTPUT_SCALE", "1"))\n',
                                  '    scale = float(os.environ.get("SAMPLE_OUTPUT_SCALE", "1"))\n'
                                  '    raise KeyError("no such column")\n'))
    result = debug(helper_project)
    assert result.returncode != 0
    assert "KeyError: 'no such column'" in result.stderr and "in init()" in result.stderr
    line = next(n for n, text in enumerate(score.read_text().splitlines(), 1) if "no such column" in text)
    assert f"onlinescoring/score.py:{line}" in result.stderr

    score.write_text(good)
    (helper_project.root / "onlinescoring" / "helper.py").write_text("OFFSET = 5.0\n")
    result = debug(helper_project)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "reloaded in place" in result.stdout
    assert state(helper_project, engine) == before
    assert invoke(helper_project) == pytest.approx((sample_predictions() + 5).tolist())


def test_a_crashed_server_is_restarted_by_the_next_debug(project, engine):
    assert debug(project).returncode == 0
    before = state(project, engine)
    status = json.loads((project.root / ".localml" / "endpoints" / project.endpoint / "blue" / "runtime"
                         / "status.json").read_text())
    engine.containers.get(project.container_name()).exec_run(["sh", "-c", f"kill -9 {status['pid']}"])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and "exited" not in (project.root / ".localml" / "endpoints"
                                                         / project.endpoint / "blue" / "runtime"
                                                         / "status.json").read_text():
        time.sleep(0.1)

    result = debug(project)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "restarted in a new process — it had exited with code" in result.stdout
    assert state(project, engine) == before
    assert invoke(project) == pytest.approx(sample_predictions().tolist())


def test_watch_mode_reloads_on_save_and_stops_cleanly_on_ctrl_c(helper_project, engine):
    process = subprocess.Popen(
        [sys.executable, "-m", "localml_tasks", "watch", f"spec={helper_project.spec}"],
        cwd=helper_project.root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**__import__("os").environ, "NO_COLOR": "1"},
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in process.stdout], daemon=True).start()
    seen: list[str] = []

    def wait_for(fragment: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = lines.get(timeout=0.5)
            except queue.Empty:
                continue
            seen.append(line)
            if fragment in line:
                return
        raise AssertionError(f"{fragment!r} never printed; got:\n{''.join(seen)}")

    try:
        wait_for("watch         watching")
        (helper_project.root / "onlinescoring" / "helper.py").write_text("OFFSET = 42.0\n")
        wait_for("server        reloaded in place — onlinescoring/helper.py changed")
        assert invoke(helper_project) == pytest.approx((sample_predictions() + 42).tolist())
        # a YAML edit is no reload in place: the whole chain runs again (the container is recreated)
        helper_project.edit("blue-deployment.yml", "SAMPLE_OUTPUT_SCALE: 1", "SAMPLE_OUTPUT_SCALE: 2")
        wait_for("watch         blue-deployment.yml changed")
        wait_for("container     recreated: configuration or image changed")
        wait_for("watch         ready")
        assert invoke(helper_project) == pytest.approx((sample_predictions() * 2 + 42).tolist())
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=20)
    wait_for("watch         stopped", timeout=5)
    assert process.returncode == 0
