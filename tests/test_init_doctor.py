"""`localml init` and `localml doctor` (issue 17): a project folder made ready for `doit debug spec=...`, idempotently
and without rewriting a user's file; the machine checked on one screen, each ✗ with its fix."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import BASE_IMAGE, REPO, SPECS

from localml_tasks import doctor, init
from localml_tasks.config import load_project_config
from localml_tasks.errors import LocalmlError
from localml_tasks.project import find_deployments, looks_like_deployment

NO_DOCKER = {"DOCKER_HOST": "unix:///nonexistent.sock"}
AZURE_IMAGE = "mcr.microsoft.com/azureml/openmpi4.1.0-ubuntu22.04:latest"
DEVCONTAINER_BIN = REPO / ".tools" / "node_modules" / ".bin"


def user_project(tmp_path: Path) -> Path:
    """specs/ as a user has it: no localml.yml, no dodo.py, no .gitignore."""
    root = tmp_path / "my-project"
    shutil.copytree(SPECS, root)
    return root


def localml(root: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "localml_tasks", *args], cwd=root, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "NO_COLOR": "1", "COLUMNS": "250", **(env or {})})


def snapshot(root: Path) -> dict[str, str]:
    return {str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(root.rglob("*")) if path.is_file() and ".localml" not in path.parts}


# --- localml init -------------------------------------------------------------------------------------------


def test_init_twice_the_second_changes_nothing(tmp_path: Path) -> None:
    root = user_project(tmp_path)
    before = snapshot(root)
    first = localml(root, "init", env=NO_DOCKER)
    assert first.returncode == 0, first.stderr
    assert (root / "dodo.py").read_text().splitlines() == list(init.DODO_LINES)
    assert (root / ".gitignore").read_text().splitlines()[-1] == ".localml/"
    assert (root / "localml.yml").exists()
    load_project_config(root)  # valid as written
    assert "doit debug spec=blue-deployment.yml (blue on localml-sample)" in first.stdout
    assert "doit debug spec=green-deployment.yml (green on localml-sample)" in first.stdout
    after_first = snapshot(root)
    assert set(after_first) - set(before) == {"dodo.py", "localml.yml", ".gitignore"}

    second = localml(root, "init", env=NO_DOCKER)
    assert second.returncode == 0, second.stderr
    assert snapshot(root) == after_first
    assert "dodo.py: already imports localml's tasks" in second.stdout
    assert ".gitignore: already has .localml/" in second.stdout
    assert "wrote" not in second.stdout


def test_init_with_a_dodo_and_gitignore_of_the_users_rewrites_neither(tmp_path: Path) -> None:
    root = user_project(tmp_path)
    dodo = "def task_hello():\n    return {'actions': ['echo hello']}\n"
    ignore = "*.pyc\n/build"  # no newline at its end
    config = "image_aliases: {}\n"
    (root / "dodo.py").write_text(dodo)
    (root / ".gitignore").write_text(ignore)
    (root / "localml.yml").write_text(config)
    result = localml(root, "init", env=NO_DOCKER)
    assert result.returncode == 0, result.stderr
    assert (root / "dodo.py").read_text() == dodo
    assert (root / "localml.yml").read_text() == config
    assert (root / ".gitignore").read_text() == ignore + "\n.localml/\n"  # one line added, nothing else touched
    said = result.stdout.splitlines()
    at = next(n for n, text in enumerate(said) if text.startswith("init          dodo.py is yours (left as it is): "
                                                                   "add these two lines"))
    assert [text.strip() for text in said[at + 1:at + 3]] == list(init.DODO_LINES)
    again = localml(root, "init", env=NO_DOCKER)
    assert (root / ".gitignore").read_text() == ignore + "\n.localml/\n"
    assert (root / "dodo.py").read_text() == dodo and "add these two lines" in again.stdout


def test_the_written_dodo_gives_doit_the_tasks_in_a_fresh_folder(tmp_path: Path) -> None:
    root = user_project(tmp_path)
    assert localml(root, "init", env=NO_DOCKER).returncode == 0
    doit = Path(sys.executable).with_name("doit")
    listed = subprocess.run([str(doit), "list"], cwd=root, capture_output=True, text=True, timeout=120,
                            env={**os.environ, **NO_DOCKER})
    assert listed.returncode == 0, listed.stderr
    assert {"debug", "invoke", "doctor", "validate"} <= {text.split()[0] for text in listed.stdout.splitlines()}
    checked = subprocess.run([str(doit), "validate", "spec=blue-deployment.yml"], cwd=root, capture_output=True,
                             text=True, timeout=120, env={**os.environ, **NO_DOCKER, "NO_COLOR": "1"})
    assert checked.returncode == 0 and "blue on endpoint localml-sample: valid" in checked.stdout, checked.stderr
    assert (root / ".localml" / "doit.db").exists()  # doit's state under .localml/, not beside dodo.py
    assert not (root / ".doit.db").exists()


def test_init_finds_deployments_but_not_endpoints_conda_files_or_jobs(tmp_path: Path) -> None:
    root = user_project(tmp_path)
    (root / "jobs").mkdir()
    (root / "jobs" / "train.yml").write_text("$schema: https://azuremlschemas.azureedge.net/latest/commandJob.schema"
                                             ".json\ncode: src\ncommand: python train.py\nenvironment: azureml:x:1\n")
    (root / "deep" / "a" / "b" / "c" / "d").mkdir(parents=True)
    (root / "deep" / "a" / "b" / "c" / "d" / "far.yml").write_text("code_configuration: {}\n")  # too deep
    (root / ".venv").mkdir()
    (root / ".venv" / "x.yml").write_text("code_configuration: {}\n")
    (root / "big.yml").write_text("code_configuration: {}\n" + "#" * (2 << 20))  # data, not read
    found = [item.spec for item in find_deployments(root)]
    assert found[:2] == ["blue-deployment.yml", "green-deployment.yml"], found  # then any other of the sample's
    assert not {"jobs/train.yml", "deep/a/b/c/d/far.yml", ".venv/x.yml", "big.yml", "endpoint.yml"} & set(found)
    assert not looks_like_deployment((root / "endpoint.yml").read_text())
    assert not looks_like_deployment((root / "environment" / "conda.yml").read_text())
    blue = find_deployments(root)[0]
    assert (blue.name, blue.endpoint_name, blue.python) == ("blue", "localml-sample", "3.11")
    assert blue.images == [(AZURE_IMAGE, "environment.image")]


def test_init_with_no_deployment_says_where_to_run_it(tmp_path: Path) -> None:
    result = localml(tmp_path, "init", env=NO_DOCKER)
    assert result.returncode == 0
    assert "no deployment YAML here" in result.stdout


def test_init_takes_no_arguments(tmp_path: Path) -> None:
    result = localml(tmp_path, "init", "somewhere")
    assert result.returncode == 1
    assert result.stderr.splitlines() == ["error: localml init takes no arguments (got somewhere)",
                                          "  fix: run localml init in your project folder"]


@pytest.mark.docker
def test_init_aliases_a_base_image_that_cannot_be_pulled_to_a_local_python_image(tmp_path: Path, engine) -> None:
    root = user_project(tmp_path)
    result = localml(root, "init")
    assert result.returncode == 0, result.stderr
    assert (f"wrote localml.yml: {AZURE_IMAGE} is not here and cannot be pulled; {BASE_IMAGE} stands in for it "
            "(a local image with Python 3.11)") in result.stdout
    assert load_project_config(root).resolve_image(AZURE_IMAGE) == BASE_IMAGE
    text = (root / "localml.yml").read_text()
    assert "# allow_python_mismatch: true" in text  # commented
    again = localml(root, "init")
    assert (root / "localml.yml").read_text() == text and "localml.yml: kept as it is" in again.stdout


@pytest.mark.docker
def test_init_with_a_users_localml_yml_prints_the_alias_to_add(tmp_path: Path, engine) -> None:
    root = user_project(tmp_path)
    (root / "localml.yml").write_text("# mine\n")
    result = localml(root, "init")
    assert (root / "localml.yml").read_text() == "# mine\n"
    assert "localml.yml is yours (left as it is): add under image_aliases:" in result.stdout
    assert f"{AZURE_IMAGE}: {BASE_IMAGE}" in result.stdout


# --- localml doctor -----------------------------------------------------------------------------------------


def lines_of(result: subprocess.CompletedProcess) -> list[str]:
    return [text.removeprefix("doctor").strip() for text in result.stdout.splitlines()]


def fix_after(lines: list[str], start: str) -> str:
    at = next(n for n, text in enumerate(lines) if text.startswith(start))
    assert lines[at + 1].startswith("fix: "), lines
    return lines[at + 1]


def test_doctor_with_the_engine_stopped(tmp_path: Path) -> None:
    root = user_project(tmp_path)
    result = localml(root, "doctor", env={"DOCKER_HOST": "unix:///nonexistent/docker.sock", "PIP_CERT": "/nope.pem"})
    assert result.returncode == 1, result.stdout
    lines = lines_of(result)
    assert "✗ no Docker engine answers at unix:///nonexistent/docker.sock" in lines
    assert fix_after(lines, "✗ no Docker engine").startswith("fix: start it (Linux: `sudo systemctl start docker`")
    assert any(text.startswith("✗ base images (") and "not checked, no Docker engine answers" in text
               for text in lines)
    assert fix_after(lines, "✗ PIP_CERT=/nope.pem: no such file") == (
        "fix: point PIP_CERT at your CA bundle (with the proxy's CA), or unset it")
    assert lines[-1] == "2 problems (✗ above) stop doit debug: fix them first"  # `code` and the CLI are optional
    assert "Traceback" not in result.stderr


def test_doctor_says_when_the_socket_refuses_the_user() -> None:
    import docker.errors

    try:
        raise PermissionError(13, "Permission denied")
    except PermissionError as cause:
        try:
            raise docker.errors.DockerException("Error while fetching server API version") from cause
        except docker.errors.DockerException as exc:
            assert doctor._permission_denied(exc)
    assert not doctor._permission_denied(docker.errors.DockerException("Connection refused"))


def test_doctor_before_a_build_stops_at_the_first_fatal_problem(tmp_path: Path, monkeypatch) -> None:
    from localml_tasks.target import Target

    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "missing.pem"))
    target = Target(SPECS / "blue-deployment.yml", "localml-sample", "blue")
    with pytest.raises(LocalmlError) as raised:
        doctor.preflight(target, "process")
    assert raised.value.render().splitlines() == [
        f"error: SSL_CERT_FILE={tmp_path / 'missing.pem'}: no such file (builds behind a TLS-intercepting proxy "
        "need its CA bundle)",
        "  fix: point SSL_CERT_FILE at your CA bundle (with the proxy's CA), or unset it"]


@pytest.mark.docker
def test_doctor_with_an_alias_target_missing(tmp_path: Path, engine) -> None:
    root = user_project(tmp_path)
    (root / "localml.yml").write_text(f"image_aliases:\n  {AZURE_IMAGE}: localml/not-here:1\n")
    result = localml(root, "doctor")
    assert result.returncode == 1, result.stdout
    lines = lines_of(result)
    line = (f"✗ base image {AZURE_IMAGE} → localml/not-here:1 (alias in localml.yml): localml/not-here:1 is not on "
            "this machine, for blue-deployment.yml, green-deployment.yml")
    assert line in lines, lines
    assert fix_after(lines, line) == ("fix: build or load localml/not-here:1 (docker load, docker pull), or change the "
                                      "alias in localml.yml")
    assert re.fullmatch(r"\d+ problems? \(✗ above\) stop doit debug: fix (it|them) first", lines[-1]), lines[-1]


@pytest.mark.docker
def test_doctor_with_no_alias_for_an_image_that_cannot_be_pulled(tmp_path: Path, engine) -> None:
    root = user_project(tmp_path)
    result = localml(root, "doctor")
    lines = lines_of(result)
    line = (f"✗ base image {AZURE_IMAGE}: not on this machine and cannot be pulled, for blue-deployment.yml, "
            "green-deployment.yml")
    assert line in lines and fix_after(lines, line).startswith("fix: map it to a local image with Python 3 in "
                                                               "localml.yml (image_aliases:; localml init writes one")


def complete_path(tmp_path: Path) -> str:
    """PATH of a complete machine: VS Code's `code` (a stand-in: no GUI here) and the real devcontainer CLI."""
    tools = tmp_path / "bin"
    tools.mkdir()
    (tools / "code").write_text("#!/bin/sh\nexit 0\n")
    (tools / "code").chmod(0o755)
    return os.pathsep.join([str(tools), str(DEVCONTAINER_BIN), os.environ["PATH"]])


@pytest.mark.docker
def test_doctor_with_code_absent_is_an_optional_cross(tmp_path: Path, engine) -> None:
    root = user_project(tmp_path)
    shutil.copy(REPO / "localml.yml", root / "localml.yml")
    path = os.pathsep.join(part for part in complete_path(tmp_path).split(os.pathsep)
                           if not (Path(part) / "code").exists())
    result = localml(root, "doctor", env={"PATH": path})
    lines = lines_of(result)
    line = "✗ `code` is not on PATH: doit debug cannot open VS Code, it says how to attach instead"
    assert line in lines, lines
    assert fix_after(lines, line).startswith("fix: install VS Code's `code` command")
    assert result.returncode == 0, result.stdout  # not fatal: doit debug says how to attach instead
    assert lines[-1] == "ready (1 optional ✗): doit debug spec=blue-deployment.yml"


@pytest.mark.docker
def test_doctor_all_ticks_on_a_complete_machine(tmp_path: Path, engine) -> None:
    root = user_project(tmp_path)
    shutil.copy(REPO / "localml.yml", root / "localml.yml")
    result = localml(root, "doctor", env={"PATH": complete_path(tmp_path)})
    assert result.returncode == 0, result.stdout
    lines = lines_of(result)
    assert all(text.startswith("✓ ") for text in lines[:-1]), lines
    for start in ("✓ Docker engine ", "✓ disk: ", f"✓ base image {AZURE_IMAGE} → {BASE_IMAGE} (alias in localml.yml): "
                  "present, for blue-deployment.yml, green-deployment.yml", "✓ ports free on 127.0.0.1: scoring ",
                  "✓ package index ", "✓ uv ", "✓ devcontainer CLI 0.", "✓ `code` on PATH"):
        assert any(text.startswith(start) for text in lines), (start, lines)
    assert lines[-1] == "ready: doit debug spec=blue-deployment.yml"


@pytest.mark.docker
def test_the_doctor_task_is_the_same_check(tmp_path: Path, engine) -> None:
    """`doit doctor` in a folder with the dodo.py init writes prints what `localml doctor` prints."""
    root = user_project(tmp_path)
    shutil.copy(REPO / "localml.yml", root / "localml.yml")
    (root / "dodo.py").write_text("\n".join(init.DODO_LINES) + "\n")
    env = {"PATH": complete_path(tmp_path)}
    own = localml(root, "doctor", env=env)
    ran = subprocess.run([str(Path(sys.executable).with_name("doit")), "doctor"], cwd=root, capture_output=True,
                         text=True, timeout=300, env={**os.environ, "NO_COLOR": "1", "COLUMNS": "250", **env})
    assert ran.returncode == own.returncode == 0, ran.stdout + ran.stderr
    # the same checks in the same order (ports and free space may move between the two runs)
    assert [text.split(" ")[:3] for text in lines_of(ran)] == [text.split(" ")[:3] for text in lines_of(own)]
