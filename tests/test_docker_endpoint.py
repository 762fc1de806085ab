"""The spine on a real Docker engine: real image build, real azmlinfsrv, real HTTP."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys

import joblib
import numpy as np
import pytest
from conftest import REPO, Project

from localml_tasks.lock import lock_platform, managed_python

SAMPLE_REQUEST = json.loads((REPO / "specs" / "sample-request.json").read_text())


def expected_predictions() -> list[float]:
    model = joblib.load(REPO / "specs" / "model" / "sklearn_regression_model.pkl")
    return model.predict(np.asarray(SAMPLE_REQUEST["data"], dtype=float)).tolist()


def debug(project: Project, *extra: str, env: dict[str, str] | None = None):
    return project.run("debug", f"spec={project.spec}", *extra, env=env)


@pytest.mark.docker
def test_debug_then_invoke_returns_the_models_own_predictions(project, engine):
    result = debug(project)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "health        healthy" in result.stdout

    invoked = project.run("invoke", f"request={REPO / 'specs' / 'sample-request.json'}")
    assert invoked.returncode == 0, invoked.stdout + invoked.stderr
    assert "200 from blue" in invoked.stdout
    body = json.loads(invoked.stdout[invoked.stdout.index("["):])
    assert body == pytest.approx(expected_predictions(), rel=1e-12)

    container = engine.containers.get(project.container_name())
    labels = container.labels
    assert labels["endpoint"] == project.endpoint and labels["deployment"] == "blue"
    assert "azureml-local-endpoint" in labels and labels["azureml-port"] == labels["localml.scoring-port"]
    # every published port listens on loopback only
    bindings = container.attrs["HostConfig"]["PortBindings"]
    assert set(bindings) == {"5001/tcp", "5678/tcp"}
    assert all(bind["HostIp"] == "127.0.0.1" for binds in bindings.values() for bind in binds)
    env = dict(item.split("=", 1) for item in container.attrs["Config"]["Env"])
    assert env["AZUREML_MODEL_DIR"] == "/var/azureml-app/azureml-models/sample-regression/1"
    assert env["AML_APP_ROOT"] == "/var/azureml-app/onlinescoring"
    assert env["AZUREML_ENTRY_SCRIPT"] == "score.py"

    shown = project.run("show")
    assert shown.returncode == 0, shown.stderr
    described = json.loads(shown.stdout)
    assert described["location"] == "local" and described["provisioning_state"] == "Succeeded"
    # the endpoint's address is its router; the deployment keeps its own port
    assert described["scoring_uri"].startswith("http://127.0.0.1:") and described["scoring_uri"].endswith("/score")
    assert described["deployments"][0]["name"] == "blue"
    port = labels["localml.scoring-port"]
    assert described["deployments"][0]["scoring_uri"] == f"http://127.0.0.1:{port}/score"
    # the server offers both: Swagger 2 by default, OpenAPI 3 on request
    assert described["deployments"][0]["swagger_uri"] == f"http://127.0.0.1:{port}/swagger.json"
    assert described["deployments"][0]["openapi_uri"] == f"http://127.0.0.1:{port}/swagger.json?version=3"

    logs = project.run("logs", "tail=50")
    assert "POST /score 200" in logs.stdout

    deleted = project.run("delete")
    assert deleted.returncode == 0 and "removed container" in deleted.stdout
    assert not engine.containers.list(all=True, filters={"name": project.container_name()})


@pytest.mark.docker
def test_second_debug_with_no_change_builds_and_restarts_nothing(project, engine):
    first = debug(project)
    assert first.returncode == 0, first.stdout + first.stderr
    container = engine.containers.get(project.container_name())
    image_id, container_id, started = container.image.id, container.id, container.attrs["State"]["StartedAt"]

    second = debug(project)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "image         up to date" in second.stdout
    assert "container     up to date" in second.stdout
    container = engine.containers.get(project.container_name())
    assert (container.image.id, container.id, container.attrs["State"]["StartedAt"]) == (
        image_id, container_id, started)


@pytest.mark.docker
@pytest.mark.engine_wide  # port 5001 is the machine's: another test's deployment may hold it, then let it go
def test_scoring_port_moves_on_when_5001_is_taken(project, engine):
    blocker = socket.socket()
    blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        blocker.bind(("127.0.0.1", 5001))
        blocker.listen()
    except OSError:
        pass  # something else already holds 5001: the assertion below holds all the same
    try:
        result = debug(project)
        assert result.returncode == 0, result.stdout + result.stderr
        port = int(engine.containers.get(project.container_name()).labels["localml.scoring-port"])
        assert port > 5001
        assert f"scoring on 127.0.0.1:{port}" in result.stdout
    finally:
        blocker.close()


@pytest.mark.docker
def test_init_raising_fails_fast_with_the_exception_and_the_line(project, engine):
    project.edit("onlinescoring/score.py", "    model = joblib.load(model_path)\n",
                 "    raise RuntimeError('weights are corrupt')\n")
    result = debug(project)
    assert result.returncode != 0
    line = next(n for n, text in enumerate((project.root / "onlinescoring/score.py").read_text().splitlines(), 1)
                if "weights are corrupt" in text)
    assert f"onlinescoring/score.py:{line}" in result.stderr
    assert "RuntimeError: weights are corrupt" in result.stderr
    assert "in init()" in result.stderr
    assert "Traceback (most recent call last)" not in result.stdout  # no traceback of ours


def test_no_docker_engine_is_one_line_saying_how_to_start_it(project):
    # runtime=docker: without it, no engine means process mode (tests/test_process_mode.py)
    result = debug(project, "runtime=docker", env={"DOCKER_HOST": "unix:///nonexistent/docker.sock"})
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(errors) == 1, result.stderr
    assert errors[0].startswith("error: no Docker engine answers at unix:///nonexistent/docker.sock")
    assert "dockerd" in errors[0]


@pytest.mark.docker
def test_missing_base_image_names_it_and_the_alias_option(project, engine):
    (project.root / "localml.yml").unlink()
    project.edit("blue-deployment.yml", "mcr.microsoft.com/azureml/openmpi4.1.0-ubuntu22.04:latest",
                 "localml-test/no-such-image:1")
    result = debug(project)
    assert result.returncode != 0
    assert "base image localml-test/no-such-image:1 is not on this machine and cannot be pulled" in result.stderr
    assert "image_aliases" in result.stderr and "LOCALML_IMAGE_ALIASES" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.docker
def test_an_unresolvable_requirement_is_reported_at_its_line_before_any_build(project, engine):
    project.edit("environment/conda.yml", "      - numpy==2.4.6\n",
                 "      - numpy==2.4.6\n      - localml-test-no-such-package==0.0.1\n")
    result = debug(project)
    assert result.returncode != 0
    assert "environment/conda.yml:12: dependencies: the requirements cannot be resolved " \
           "('localml-test-no-such-package==0.0.1')" in result.stderr, result.stderr
    assert "localml-test-no-such-package was not found in the package registry" in result.stderr
    assert "image         building" not in result.stdout and "Traceback" not in result.stderr


@pytest.mark.docker
def test_python_pin_mismatch_is_an_error_unless_allowed(project, engine):
    project.edit("environment/conda.yml", "python=3.11", "python=3.9")
    managed = managed_python("3.9", lock_platform())
    assert managed is not None  # uv has CPython 3.9 builds for this platform
    if managed.reachable:  # uv's own Python 3.9 goes into the image: no mismatch to allow
        served = debug(project)
        assert served.returncode == 0, served.stdout + served.stderr
        assert f"uv installs its own Python {managed.version} into the image" in served.stdout
        return
    refused = debug(project)
    assert refused.returncode != 0
    # uv's Python was looked for first; its download cannot be reached from here
    assert f"uv's Python {managed.version} could be installed into the image, but" in refused.stderr
    assert "pins python=3.9, but the base image localml/debian-python:3.11-bookworm has Python 3.11" \
        in refused.stderr
    assert "environment/conda.yml:5" in refused.stderr
    assert "allow_python_mismatch: true in localml.yml" in refused.stderr  # the way out, for the project
    allowed = debug(project, "allow_python_mismatch=1")
    assert "warning: the conda file pins python=3.9" in allowed.stdout
    assert allowed.returncode == 0, allowed.stdout + allowed.stderr
    # remembered for the deployment: the next plain debug (and watch) builds on
    again = project.run("debug")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "(allowed by allow_python_mismatch=1, remembered for blue" in again.stdout
    forgotten = project.run("debug", "allow_python_mismatch=0")
    assert forgotten.returncode != 0 and "pins python=3.9" in forgotten.stderr
    # said once for the whole project, in localml.yml
    config = project.root / "localml.yml"
    config.write_text(config.read_text() + "allow_python_mismatch: true\n")
    project_wide = project.run("debug")
    assert project_wide.returncode == 0, project_wide.stdout + project_wide.stderr
    assert "(allowed by allow_python_mismatch: true in localml.yml)" in project_wide.stdout


@pytest.mark.docker
def test_ca_bundle_and_proxy_settings_stay_out_of_the_image(project, engine):
    result = debug(project)
    assert result.returncode == 0, result.stdout + result.stderr
    image = engine.containers.get(project.container_name()).image
    listing = engine.containers.run(image.id, ["sh", "-c", "ls -a /tmp; ls /tmp/localml 2>&1; true"],
                                    remove=True).decode()
    assert "ca.crt" not in listing and "No such file" in listing
    history = json.dumps(image.history())
    assert "PIP_CERT" not in history and "PROXY" not in history.upper()


def test_doit_list_from_the_repo_dodo_shows_every_task_with_its_doc():
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "doit", "list"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    tasks = {line.split()[0]: line for line in result.stdout.splitlines() if line.strip()}
    for name in ("validate", "environment", "image", "container", "health", "debug", "invoke", "show", "logs",
                 "delete", "endpoints"):
        assert name in tasks and len(tasks[name].split()) > 3, result.stdout


def test_spec_error_stops_before_any_docker_work(project):
    project.edit("blue-deployment.yml", "scoring_script: score.py", "scoring_script: scoring.py")
    result = debug(project, env={"DOCKER_HOST": "unix:///nonexistent/docker.sock"})
    assert result.returncode != 0
    assert "blue-deployment.yml:10" in result.stderr and "scoring script not found" in result.stderr
    assert "Docker" not in result.stderr


@pytest.mark.docker
def test_failing_run_answers_non_zero_with_the_servers_message_and_the_cause(project, engine, tmp_path):
    assert debug(project).returncode == 0
    bad_request = tmp_path / "three-features.json"
    bad_request.write_text('{"data": [[1, 2, 3]]}')
    result = project.run("invoke", f"request={bad_request}")
    assert result.returncode != 0
    assert "the endpoint answered 500" in result.stderr
    assert "An unexpected error occurred in scoring script" in result.stderr  # the server's own message
    assert "cause in run(): ValueError: expected 'data' as a list of rows of 10 numbers" in result.stderr
    assert "onlinescoring/score.py:32" in result.stderr

    broken_json = tmp_path / "broken.json"
    broken_json.write_text('{"data": [[1, 2, 3]')
    result = project.run("invoke", f"request={broken_json}")
    assert result.returncode != 0
    assert "broken.json:1:20: not valid JSON" in result.stderr


@pytest.mark.docker
def test_a_docker_deployment_stays_in_docker_when_the_engine_is_down(project, engine):
    started = debug(project)
    assert started.returncode == 0, started.stdout + started.stderr
    container_id = engine.containers.get(project.container_name()).id
    down = {"DOCKER_HOST": "tcp://127.0.0.1:1"}  # an engine address where nothing answers
    refused = project.run("debug", env=down)
    assert refused.returncode != 0
    assert "no Docker engine answers at tcp://127.0.0.1:1" in refused.stderr, refused.stderr
    assert "runtime=process runs the deployment without Docker instead" in refused.stderr
    assert "process mode" not in refused.stdout and "Traceback" not in refused.stderr  # no silent switch
    assert not (project.root / ".localml" / "endpoints" / project.endpoint / "blue" / "process.json").exists()
    # the engine back: the same container, and delete removes it
    again = project.run("debug")
    assert again.returncode == 0, again.stdout + again.stderr
    assert engine.containers.get(project.container_name()).id == container_id
    deleted = project.run("delete")
    assert deleted.returncode == 0 and f"removed container {project.container_name()}" in deleted.stdout


def _debug_interrupted_after(project: Project, stage_line: str) -> str:
    """`doit debug`, and Ctrl-C as soon as a line starting with stage_line is printed; everything it printed."""
    process = subprocess.Popen(
        [sys.executable, "-m", "localml_tasks", "debug", f"spec={project.spec}", "vscode=0"],
        cwd=project.root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "NO_COLOR": "1", "COLUMNS": "200"})
    assert process.stdout is not None
    seen = []
    for line in process.stdout:
        seen.append(line)
        if line.startswith(stage_line):
            break
    else:
        raise AssertionError(f"no {stage_line!r} line:\n" + "".join(seen))
    process.send_signal(signal.SIGINT)
    seen.append(process.communicate(timeout=120)[0])
    said = "".join(seen)
    assert "Traceback" not in said, said
    return said


@pytest.mark.docker
def test_ctrl_c_during_debug_leaves_the_container_and_the_next_debug_keeps_it(project, engine):
    """Ctrl-C just after the container started (doit recorded nothing for it), and Ctrl-C early in a debug of a
    healthy deployment: each time the next `debug` finds the same container healthy and recreates nothing."""
    said = _debug_interrupted_after(project, "container     created")
    container_id = engine.containers.get(project.container_name()).id
    again = debug(project, "vscode=0")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "recreated" not in again.stdout and "restarted" not in again.stdout, said + again.stdout
    # doit may or may not have recorded the container stage before the Ctrl-C: either it is up to date for doit
    # (no line), or its action finds the container running with this configuration and says so
    container_line = next(text for text in again.stdout.splitlines() if text.startswith("container "))
    assert container_line in ("container     up to date (blue)",
                              f"container     up to date: {project.container_name()} runs with this configuration"), \
        said + again.stdout
    assert engine.containers.get(project.container_name()).id == container_id
    assert "health        " in again.stdout

    _debug_interrupted_after(project, "validate")
    third = debug(project, "vscode=0")
    assert third.returncode == 0, third.stdout + third.stderr
    assert "recreated" not in third.stdout and "restarted" not in third.stdout, third.stdout
    assert engine.containers.get(project.container_name()).id == container_id
    assert "health        ready" in third.stdout
