"""One owner per deployment (the project folder that created it) and one localml command at a time.

Two copies of the sample in two folders under the same endpoint name: the second folder's `debug`
refuses (naming the first folder) until takeover=1. Two `debug` of one deployment started together:
one waits for the other, and exactly one healthy container is left, without a traceback. Two folders
that need the same new environment at once: it is built once.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import docker
import pytest
from conftest import REPO, Project, remove_containers, sample_copy

pytestmark = pytest.mark.docker

REQUEST = REPO / "specs" / "sample-request.json"
WORKDIR_LABEL = "localml.workdir"


def same_endpoint(root: Path, endpoint: str) -> Project:
    """A copy of the sample whose endpoint is `endpoint` (sample_copy picks a name of its own)."""
    project = sample_copy(root)
    for name in ("endpoint.yml", "blue-deployment.yml", "green-deployment.yml"):
        project.edit(name, project.endpoint, endpoint)
    return Project(root=project.root, endpoint=endpoint)


def debug(project: Project, *extra: str) -> subprocess.CompletedProcess:
    return project.run("debug", f"spec={project.spec}", "vscode=0", *extra)


def test_a_second_folder_refuses_until_takeover(tmp_path, engine):
    endpoint = f"t-{uuid.uuid4().hex[:8]}"
    first = same_endpoint(tmp_path / "first", endpoint)
    second = same_endpoint(tmp_path / "second", endpoint)
    try:
        started = debug(first)
        assert started.returncode == 0, started.stdout + started.stderr
        container = engine.containers.get(first.container_name())
        assert container.labels[WORKDIR_LABEL] == str(first.root.resolve())

        refused = debug(second)
        said = refused.stdout + refused.stderr
        assert refused.returncode != 0, said
        assert str(first.root.resolve()) in said and "belongs to another project folder" in said, said
        assert "doit delete" in said and "endpoint_name=" in said and "takeover=1" in said, said
        assert "Traceback" not in said
        assert engine.containers.get(first.container_name()).id == container.id  # untouched
        answer = first.run("invoke", f"request={REQUEST}")
        assert answer.returncode == 0, answer.stdout + answer.stderr
        # delete from the second folder refuses too, and leaves the container alone
        deleted = second.run("delete", f"spec={second.spec}")
        assert deleted.returncode != 0 and "belongs to another project folder" in deleted.stdout + deleted.stderr
        assert engine.containers.get(first.container_name()).id == container.id

        taken = debug(second, "takeover=1")
        said = taken.stdout + taken.stderr
        assert taken.returncode == 0, said
        assert "takeover=1: removed container" in said and "stopped the router" in said, said
        moved = engine.containers.get(second.container_name())
        assert moved.id != container.id
        assert moved.labels[WORKDIR_LABEL] == str(second.root.resolve())
        answer = second.run("invoke", f"request={REQUEST}")
        assert answer.returncode == 0, answer.stdout + answer.stderr
        # one router for the endpoint: the second folder's
        from localml_tasks import endpoint as endpoint_stage

        assert endpoint_stage.router_folders(endpoint) == [second.root.resolve()]
        # and now the first folder is the one refused
        back = debug(first)
        assert back.returncode != 0 and str(second.root.resolve()) in back.stdout + back.stderr
    finally:
        remove_containers(endpoint)
        for project in (first, second):
            project.run("delete")


def test_two_debugs_at_once_leave_one_healthy_container(project, engine):
    first = debug(project)  # the image and a first container: the races below are of the container stage
    assert first.returncode == 0, first.stdout + first.stderr
    environment = {**os.environ, "NO_COLOR": "1", "COLUMNS": "200"}
    project.edit("blue-deployment.yml", "SAMPLE_OUTPUT_SCALE: 1", "SAMPLE_OUTPUT_SCALE: 1\n  RACE_ATTEMPT: start")
    previous = "start"
    for attempt in range(4):
        # a change of configuration each time, so both commands want to recreate the container
        project.edit("blue-deployment.yml", f"RACE_ATTEMPT: {previous}", f"RACE_ATTEMPT: a{attempt}")
        previous = f"a{attempt}"
        commands = [subprocess.Popen([sys.executable, "-m", "localml_tasks", "debug", f"spec={project.spec}",
                                      "vscode=0"], cwd=project.root, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, env=environment) for _ in range(2)]
        outputs = [command.communicate(timeout=120)[0] for command in commands]
        for command, output in zip(commands, outputs, strict=True):
            assert command.returncode == 0, output
            assert "Traceback" not in output, output
        assert any("waiting for another localml command on" in output for output in outputs), outputs
        containers = engine.containers.list(all=True, filters={"label": f"endpoint={project.endpoint}"})
        assert [c.name for c in containers] == [project.container_name()], outputs
        assert containers[0].status == "running"
        assert containers[0].attrs["Config"]["Env"].count(f"RACE_ATTEMPT=a{attempt}") == 1
        answer = project.run("invoke", f"request={REQUEST}")
        assert answer.returncode == 0, answer.stdout + answer.stderr


def test_two_folders_needing_one_new_environment_build_it_once(tmp_path, engine):
    """Two projects (other endpoints, other folders) with the same environment, not built yet, started together:
    one builds the image, the other waits for it and reuses it."""
    conda_name = f"conda-{uuid.uuid4().hex[:8]}.yml"  # part of the image's recipe: a tag never built before
    projects = [sample_copy(tmp_path / name) for name in ("first", "second")]
    for project in projects:
        (project.root / "environment" / "conda.yml").rename(project.root / "environment" / conda_name)
        project.edit("blue-deployment.yml", "environment/conda.yml", f"environment/{conda_name}")
    environment = {**os.environ, "NO_COLOR": "1", "COLUMNS": "200"}
    commands = [subprocess.Popen([sys.executable, "-m", "localml_tasks", "image", f"spec={project.spec}"],
                                 cwd=project.root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                 env=environment) for project in projects]
    outputs = [command.communicate(timeout=600)[0] for command in commands]
    tags = set()
    try:
        for command, output in zip(commands, outputs, strict=True):
            assert command.returncode == 0 and "Traceback" not in output, output
            tags |= set(re.findall(r"localml/env:\w+", output))
        assert len(tags) == 1, outputs  # one environment, one tag
        built = [output for output in outputs if re.search(r"^image +built localml/env:", output, re.M)]
        waited = [output for output in outputs if "reused localml/env:" in output]
        assert len(built) == 1 and len(waited) == 1, outputs
        assert re.search(r"^image +waiting for another localml command on the image localml/env:\w+ \(pid \d+\) …$",
                         waited[0], re.M), waited[0]
        assert "another localml command built the same environment meanwhile" in waited[0], waited[0]
    finally:
        for tag in tags:
            with contextlib.suppress(docker.errors.APIError):
                engine.images.remove(tag)
