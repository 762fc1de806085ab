"""The README's "In your own project", end to end (issue 17): a folder outside this repository with an Azure ML
deployment (the sample's files, as a user has them: no dodo.py, no localml.yml), localml installed by pip from
its built wheel into a fresh venv, `localml init`, `doit debug spec=blue-deployment.yml`, a breakpoint in run()
hit through the generated launch configuration, `doit invoke`, `doit delete`. Only that venv's commands run.

The venv's packages come through pip's own cache (a second run downloads nothing); the wheel is built from a
copy of the sources (the repository gets no build/ or egg-info from this test).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from conftest import REPO, SPECS, remove_containers, stop_routers
from dap_client import DapClient, line_in

pytestmark = pytest.mark.docker

SAMPLE = json.loads((SPECS / "sample-request.json").read_text())


def build_wheel(work: Path) -> Path:
    """localml's wheel, built from a copy of its sources (templates/ is a symlink in the repository: copied)."""
    source = work / "localml-src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    shutil.copytree(REPO / "localml_tasks", source / "localml_tasks",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    uv = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")
    assert uv, "uv (a dependency of localml) is not installed beside this Python"
    subprocess.run([uv, "build", "--quiet", "--wheel", "--out-dir", str(work / "dist"), str(source)], check=True,
                   capture_output=True, text=True, timeout=300)
    wheels = list((work / "dist").glob("localml-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def fresh_venv(work: Path, wheel: Path) -> Path:
    """`python -m venv` and `pip install <wheel>`, as the README says; the venv's bin folder."""
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True, timeout=300)
    installed = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", str(wheel)],
                               capture_output=True, text=True, timeout=900)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    return venv / "bin"


@pytest.fixture
def own_project(tmp_path: Path):
    """A user's Azure ML project folder outside the repository, under an endpoint name of its own."""
    root = tmp_path / "my-azureml-project"
    shutil.copytree(SPECS, root)
    endpoint = f"own-{uuid.uuid4().hex[:8]}"
    for name in ("endpoint.yml", "blue-deployment.yml", "green-deployment.yml"):
        path = root / name
        path.write_text(path.read_text().replace("localml-sample", endpoint))
    yield root, endpoint
    remove_containers(endpoint)
    stop_routers(tmp_path)


def test_from_pip_install_to_a_breakpoint_in_your_own_project(tmp_path: Path, own_project, engine) -> None:
    root, endpoint = own_project
    assert REPO not in root.parents
    started = time.monotonic()
    bin_dir = fresh_venv(tmp_path, build_wheel(tmp_path))
    installed_in = time.monotonic() - started
    # an activated venv: its bin first on PATH; nothing of this repository on sys.path
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "VIRTUAL_ENV": str(bin_dir.parent),
           "NO_COLOR": "1", "COLUMNS": "200"}
    env.pop("PYTHONPATH", None)

    def run(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
        return subprocess.run([str(bin_dir / args[0]), *args[1:]], cwd=root, capture_output=True, text=True,
                              timeout=timeout, env=env)

    where = run("python", "-c", "import localml_tasks; print(localml_tasks.__file__)")
    assert where.stdout.startswith(str(bin_dir.parent)), where.stdout  # the installed package, not the repository

    init = run("localml", "init")
    assert init.returncode == 0, init.stdout + init.stderr
    assert (root / "dodo.py").exists() and ".localml/" in (root / ".gitignore").read_text()
    assert "doit debug spec=blue-deployment.yml" in init.stdout
    assert "localml/debian-python:3.11-bookworm stands in" in init.stdout, init.stdout  # no registry here

    debug = run("doit", "debug", "spec=blue-deployment.yml", "vscode=0")
    assert debug.returncode == 0, debug.stdout + debug.stderr
    assert f"endpoint      {endpoint} " in debug.stdout, debug.stdout

    # VS Code's part: attach with the generated "Azure ML: Debug Local Endpoint", a breakpoint in run()
    launch = json.loads((root / ".localml" / "endpoints" / endpoint / "blue" / "launch.json").read_text())
    config = launch["configurations"][0]
    assert config["name"] == "Azure ML: Debug Local Endpoint"
    score = root / "onlinescoring" / "score.py"
    line = line_in(score, "predictions = model.predict(data) * scale")
    dap = DapClient(config["connect"]["host"], config["connect"]["port"])
    try:
        dap.attach(config, {str(score): [line]})
        invoke = subprocess.Popen([str(bin_dir / "doit"), "invoke", "request=sample-request.json"], cwd=root,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        stopped = dap.wait_event("stopped", timeout=120)
        assert stopped["body"]["reason"] == "breakpoint"
        frame = dap.top_frame(stopped["body"]["threadId"])
        assert (frame["source"]["path"], frame["line"]) == (str(score), line)  # your file, on your machine
        dap.request("continue", {"threadId": stopped["body"]["threadId"]})
        out, err = invoke.communicate(timeout=120)
    finally:
        dap.close()
    assert invoke.returncode == 0, out + err
    assert "invoke        200 from blue" in out, out
    assert json.loads(out[out.index("["):])[0] == pytest.approx(41.525434596312586)

    deleted = run("doit", "delete")
    assert deleted.returncode == 0, deleted.stdout + deleted.stderr
    assert not engine.containers.list(all=True, filters={"label": f"endpoint={endpoint}"})
    print(f"venv with localml installed in {installed_in:.1f} s; the walkthrough in {time.monotonic() - started:.1f} s")
