"""The environment's lock (uv, real package index): consistent like conda, stable, reused; and an old
scikit-learn beside an unpinned numpy serving on a real engine."""

from __future__ import annotations

import json
import re

import pytest
import requests
from conftest import Project

from localml_tasks import lock
from localml_tasks.errors import LocalmlError

PLATFORM = lock.lock_platform()


def pins(text: str) -> dict[str, str]:
    return {m[1].lower(): m[2] for m in re.finditer(r"^([A-Za-z0-9._-]+)==(\S+)", text, re.M)}


@pytest.fixture
def conda_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the locks go to ./.localml/locks
    path = tmp_path / "conda.yml"
    path.write_text("dependencies:\n  - python=3.11\n  - pip:\n      - scikit-learn==1.2.2\n      - numpy\n"
                    "      - azureml-inference-server-http\n")
    return path


REQUIREMENTS = ["scikit-learn==1.2.2", "numpy", "azureml-inference-server-http", "debugpy"]


def test_unpinned_requirements_are_resolved_as_of_the_newest_pin(conda_file):
    limits, limited_by = lock.date_limits(REQUIREMENTS)
    assert limits == ["--exclude-newer-package", "numpy=2023-03-10T00:00:00Z"]  # scikit-learn 1.2.2's day
    assert limited_by == "scikit-learn==1.2.2 (2023-03-09)"
    locked = lock.lock_environment(REQUIREMENTS, "3.11", PLATFORM, str(conda_file))
    versions = pins(locked.text)
    assert versions["scikit-learn"] == "1.2.2"
    assert int(versions["numpy"].split(".")[0]) < 2  # the numpy of its day, as conda would choose
    # the serving stack is not dated: the debug server needs azmlinfsrv's current API
    assert int(versions["azureml-inference-server-http"].split(".")[0]) >= 1 and "debugpy" in versions
    assert locked.resolved_now and locked.limited_by == limited_by
    assert "unpinned requirements as of scikit-learn==1.2.2 (2023-03-09)" in locked.describe()


def test_the_lock_is_stable_and_reused_without_resolving(conda_file, monkeypatch):
    first = lock.lock_environment(REQUIREMENTS, "3.11", PLATFORM, str(conda_file))
    again = lock.lock_environment(REQUIREMENTS, "3.11", PLATFORM, str(conda_file), relock=True)
    assert again.text == first.text and again.resolved_now  # two resolutions, one lock

    def no_resolving(*args, **kwargs):
        raise AssertionError("an unchanged environment must not be resolved again")

    monkeypatch.setattr(lock, "compile_lock", no_resolving)
    reused = lock.lock_environment(REQUIREMENTS, "3.11", PLATFORM, str(conda_file))
    assert reused.text == first.text and not reused.resolved_now and reused.path == first.path
    assert reused.limited_by == first.limited_by
    with pytest.raises(AssertionError):  # another Python is another lock
        lock.lock_environment(REQUIREMENTS, "3.12", PLATFORM, str(conda_file))


def test_a_requirement_no_index_has_is_one_error_at_its_line(conda_file):
    conda_file.write_text(conda_file.read_text() + "      - localml-test-no-such-package==0.0.1\n")
    with pytest.raises(LocalmlError) as raised:
        lock.lock_environment([*REQUIREMENTS, "localml-test-no-such-package==0.0.1"], "3.11", PLATFORM,
                              str(conda_file))
    text = raised.value.render()
    assert "conda.yml:7: dependencies: the requirements cannot be resolved" in text
    assert "localml-test-no-such-package" in text and "nothing was built" in text


OLD_SKLEARN_SCORE = '''import json

import numpy as np
import sklearn
from sklearn.linear_model import LinearRegression

model = None


def init():
    global model
    inputs = np.arange(20, dtype=float).reshape(10, 2)
    model = LinearRegression().fit(inputs, inputs.sum(axis=1))


def run(raw_data):
    rows = np.asarray(json.loads(raw_data)["data"], dtype=float)
    return {"predictions": model.predict(rows).tolist(), "numpy": np.__version__, "sklearn": sklearn.__version__}
'''


@pytest.mark.docker
@pytest.mark.engine_wide
def test_an_old_scikit_learn_beside_an_unpinned_numpy_serves(project: Project, engine):
    project.root.joinpath("environment", "conda.yml").write_text(
        "name: old-sklearn\ndependencies:\n  - python=3.11\n  - pip\n  - pip:\n"
        "      - azureml-inference-server-http\n      - scikit-learn==1.2.2\n      - numpy\n")
    project.root.joinpath("onlinescoring", "score.py").write_text(OLD_SKLEARN_SCORE)
    dangling_before = {image.id for image in engine.images.list(filters={"dangling": True})}
    result = project.run("debug", f"spec={project.spec}", "no_cache=1")  # a real build, even on a used machine
    assert result.returncode == 0, result.stdout + result.stderr
    assert "unpinned requirements as of scikit-learn==1.2.2 (2023-03-09)" in result.stdout
    assert "image         built localml/env:" in result.stdout
    port = engine.containers.get(project.container_name()).labels["localml.scoring-port"]
    answer = requests.post(f"http://127.0.0.1:{port}/score", json={"data": [[1, 2], [3, 4]]}, timeout=60)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["sklearn"] == "1.2.2" and int(body["numpy"].split(".")[0]) < 2
    assert body["predictions"] == pytest.approx([3.0, 7.0])
    lock_file = re.search(r"in (\.localml/locks/\w+\.txt)", result.stdout)[1]
    assert pins((project.root / lock_file).read_text())["numpy"] == body["numpy"]  # the image holds the lock
    # the build's discarded stage (the pip install, hundreds of MB) is not left behind untagged
    assert {image.id for image in engine.images.list(filters={"dangling": True})} <= dangling_before
    assert json.loads((project.root / ".localml" / "endpoints" / project.endpoint / "blue" / "build"
                       / "plan.json").read_text())["lock_file"].endswith(lock_file)


def test_a_numpy_binary_mismatch_is_called_an_environment_problem():
    from localml_tasks.health import environment_fix

    died = ("  File \"/opt/azureml-env/lib/python3.11/site-packages/sklearn/__check_build/__init__.py\", line 48\n"
            "ValueError: numpy.dtype size changed, may indicate binary incompatibility. Expected 96 from C header, "
            "got 88 from PyObject\n")
    fix = environment_fix(died, "/home/me/project/environment/conda.yml")
    assert fix and "pin numpy in /home/me/project/environment/conda.yml" in fix and "rebuilt" in fix
    assert environment_fix("KeyError: 'no such column'", "conda.yml") is None


def test_a_fully_pinned_file_asks_the_index_for_no_dates(monkeypatch):
    def no_asking(name, version):
        raise AssertionError("nothing unpinned: no date is needed")

    monkeypatch.setattr(lock, "upload_day", no_asking)
    assert lock.date_limits(["scikit-learn==1.2.2", "numpy==1.24.2", "debugpy"]) == ([], None)


def test_installers_are_not_dated_and_ask_the_index_nothing(monkeypatch):
    def no_asking(name, version):
        raise AssertionError("only installers are unpinned: no date is needed")

    monkeypatch.setattr(lock, "upload_day", no_asking)
    assert lock.date_limits(["pip", "setuptools", "scikit-learn==1.2.2", "debugpy"]) == ([], None)


def test_adding_a_requirement_keeps_the_previous_locks_versions(conda_file):
    """An earlier lock's versions stay where the new requirements allow, as conda keeps what is installed;
    without it (or with relock=1) the same requirements resolve to today's versions."""
    first = lock.lock_environment(["scikit-learn", "numpy<2"], "3.11", PLATFORM, str(conda_file))
    older = first.text.replace(f"scikit-learn=={pins(first.text)['scikit-learn']}", "scikit-learn==1.4.2")
    earlier = conda_file.parent / "earlier.txt"
    earlier.write_text(older)
    added = lock.lock_environment(["scikit-learn", "numpy<2", "six"], "3.11", PLATFORM, str(conda_file),
                                  prefer=earlier)
    assert pins(added.text)["scikit-learn"] == "1.4.2"  # kept: it still fits
    assert "six" in pins(added.text)
    fresh = lock.lock_environment(["scikit-learn", "numpy<2", "six"], "3.11", PLATFORM, str(conda_file),
                                  prefer=earlier, relock=True)
    assert pins(fresh.text)["scikit-learn"] == pins(first.text)["scikit-learn"] != "1.4.2"
