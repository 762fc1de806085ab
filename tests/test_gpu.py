"""gpu=1: the GPU request we hand Docker and the dev container, and the errors without a GPU.

This machine has no GPU and no NVIDIA driver, so the request itself cannot succeed here. The tests
check the exact request (container and devcontainer.json), the error when nvidia-smi is missing,
and, with a stand-in nvidia-smi that lists a GPU, what the real Docker engine says to the real
device request.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import docker
import pytest
from conftest import REPO, Project

from localml_tasks.container import render_container
from localml_tasks.devcontainer import render_devcontainer
from localml_tasks.spec import load_deployment


def rendered(gpu: bool):
    deployment = load_deployment(REPO / "specs" / "blue-deployment.yml")
    return render_container(deployment, "localml/env:abc", "sha256:1", Path("/state/runtime"), Path("/state"), gpu=gpu)


def test_gpu_is_part_of_the_container_and_devcontainer_configuration():
    with_gpu, without = rendered(True), rendered(False)
    assert with_gpu.gpu and not without.gpu
    assert with_gpu.config_hash != without.config_hash  # turning gpu=1 on or off recreates the container
    # the label tells later stages (the devcontainer) that this container has the GPUs
    assert with_gpu.labels["localml.gpu"] == "1" and "localml.gpu" not in without.labels
    run_args = render_devcontainer(with_gpu, 5001, 5678, Path("/state"))["runArgs"]
    assert "--gpus=all" in run_args
    assert "--gpus=all" not in render_devcontainer(without, 5001, 5678, Path("/state"))["runArgs"]


def test_the_device_request_is_every_gpu():
    from localml_tasks.docker_engine import gpu_device_requests

    [request] = gpu_device_requests()
    assert isinstance(request, docker.types.DeviceRequest)
    assert request["Count"] == -1 and request["Capabilities"] == [["gpu"]]  # as `docker run --gpus all`


def path_without_nvidia_smi(tmp_path: Path) -> str:
    folders = [p for p in os.environ["PATH"].split(os.pathsep) if not (Path(p) / "nvidia-smi").exists()]
    return os.pathsep.join(folders)


@pytest.mark.docker
def test_gpu_without_an_nvidia_driver_is_a_clear_error(project: Project, engine, tmp_path):
    result = project.run("debug", f"spec={project.spec}", "vscode=0", "gpu=1",
                         env={"PATH": path_without_nvidia_smi(tmp_path)})
    assert result.returncode != 0
    assert "gpu=1 asks for GPUs, but this machine has no NVIDIA driver (nvidia-smi is not on PATH)" in result.stderr
    assert "fix: install the NVIDIA driver and the NVIDIA Container Toolkit, or leave out gpu=1" in result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    with pytest.raises(docker.errors.NotFound):
        engine.containers.get(project.container_name())


@pytest.mark.docker
def test_an_engine_without_gpu_support_refuses_the_request_with_a_clear_error(project: Project, engine, tmp_path):
    stand_in = tmp_path / "bin" / "nvidia-smi"
    stand_in.parent.mkdir()
    stand_in.write_text("#!/bin/sh\necho 'GPU 0: Stand-in GPU (UUID: GPU-00000000-0000-0000-0000-000000000000)'\n")
    stand_in.chmod(stand_in.stat().st_mode | stat.S_IEXEC)
    result = project.run("debug", f"spec={project.spec}", "vscode=0", "gpu=1",
                         env={"PATH": f"{stand_in.parent}{os.pathsep}{path_without_nvidia_smi(tmp_path)}"})
    assert result.returncode != 0
    assert "gpu=1: requesting 1 GPU (GPU 0: Stand-in GPU" in result.stdout
    # the engine's own words, about the device request we sent it
    assert "the Docker engine cannot give the container a GPU" in result.stderr
    assert "could not select device driver" in result.stderr, result.stderr
    assert "NVIDIA Container Toolkit" in result.stderr
    with pytest.raises(docker.errors.NotFound):
        engine.containers.get(project.container_name())  # nothing half-made is left behind
    assert json.loads((project.root / ".localml" / "current.json").read_text())["deployment"] == "blue"
