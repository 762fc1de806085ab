"""Base images that carry conda (Azure's do): the environment is built with `conda env create`.

The pure part checks the rendered Dockerfile. The Docker part checks the detection against a real
image: no conda channel is reachable on this machine, so a real `conda env create` cannot run
here, and the "conda" in the test image is a stand-in script on PATH that only prints a version.
The environment stage must choose the conda path for that image and the pip path for
localml/debian-python (which has no conda).
"""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
from conftest import BASE_IMAGE, REPO, Project, sample_copy

from localml_tasks import image
from localml_tasks.environment import ResolvedEnvironment
from localml_tasks.image import render_conda_dockerfile
from localml_tasks.spec import load_deployment

AZURE_IMAGE = "mcr.microsoft.com/azureml/openmpi4.1.0-ubuntu22.04:latest"  # the sample's base image
FAKE_CONDA_VERSION = "24.1.2"


def env(**overrides) -> ResolvedEnvironment:
    values = dict(conda_file=str(REPO / "specs/environment/conda.yml"), python_version="3.11",
                  requirements=["azureml-inference-server-http==1.5.1", "debugpy"],
                  base_image="localml/conda-base:1", declared_image=AZURE_IMAGE)
    values.update(overrides)
    return ResolvedEnvironment(**values)


# --- pure ---------------------------------------------------------------------------------------


def test_conda_dockerfile_creates_the_env_from_the_conda_file_with_the_ca_in_the_first_stage_only():
    text = render_conda_dockerfile(env(), with_ca=True)
    first, final = text.split("\n\nFROM localml/conda-base:1\n")
    assert (
        "RUN CONDA_SSL_VERIFY=/tmp/localml/ca.crt REQUESTS_CA_BUNDLE=/tmp/localml/ca.crt PIP_CERT=/tmp/localml/ca.crt "
        "conda env create -p /opt/azureml-env -f /tmp/localml/conda.yml \\\n"
        " && PIP_CERT=/tmp/localml/ca.crt /opt/azureml-env/bin/python -m pip install --no-cache-dir "
        "--disable-pip-version-check \\\n"
        "      --progress-bar off debugpy\n"
    ) in text
    assert "FROM localml/conda-base:1 AS environment\n" in first
    assert "COPY conda.yml /tmp/localml/conda.yml\nCOPY localml-ca.crt /tmp/localml/ca.crt\n" in first
    final_lines = final.splitlines()
    assert final_lines[0] == "COPY --from=environment /opt/azureml-env /opt/azureml-env"
    assert final_lines[1].startswith("ENV PATH=/opt/azureml-env/bin:$PATH ")  # python, azmlinfsrv: the env's
    assert "ca.crt" not in final and "CONDA_SSL_VERIFY" not in final
    assert final_lines[-1] == 'CMD ["python", "/var/localml/bin/supervisor.py", "/var/localml/runtime"]'


def test_conda_dockerfile_without_a_host_ca_bundle_has_no_ca_step():
    text = render_conda_dockerfile(env(), with_ca=False)
    assert "ca.crt" not in text and "CONDA_SSL_VERIFY" not in text
    assert "RUN conda env create -p /opt/azureml-env -f /tmp/localml/conda.yml \\\n" in text


def test_conda_failure_boils_down_to_the_missing_package_and_its_line(tmp_path):
    conda_file = tmp_path / "conda.yml"
    conda_file.write_text("dependencies:\n  - python=3.11\n  - nosuchpkg=1.0\n  - pip:\n    - azureml-defaults\n")
    log = ["Step 5/10 : RUN conda env create -p /opt/azureml-env -f /tmp/localml/conda.yml",
           "Collecting package metadata (repodata.json): ...working... done",
           "PackagesNotFoundError: The following packages are not available from current channels:", "",
           "  - nosuchpkg=1.0", ""]
    problem = image.parse_build_failure(log, "returned a non-zero code: 1", str(conda_file)).problems[0]
    assert (problem.file, problem.line) == (str(conda_file), 3)
    assert problem.message == ("conda could not install 'nosuchpkg=1.0': PackagesNotFoundError: The following "
                               "packages are not available from current channels:")


def test_validation_leaves_conda_only_packages_to_the_environment_stage():
    deployment = load_deployment(REPO / "tests" / "bad_specs" / "conda_only_package.yml")
    assert deployment.conda_file and deployment.conda_file.endswith("conda-cudatoolkit.yml")


# --- real Docker: detection ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def fake_conda_image(engine: docker.DockerClient) -> Iterator[str]:
    """localml/debian-python with a stand-in `conda` on PATH (no conda channel is reachable here)."""
    name = f"localml-imgtest/fake-conda:{uuid.uuid4().hex[:8]}"
    dockerfile = (
        f"FROM {BASE_IMAGE}\n"
        f"RUN printf '#!/bin/sh\\necho conda {FAKE_CONDA_VERSION}\\n' > /usr/local/bin/conda"
        " && chmod 755 /usr/local/bin/conda\n"
    )
    engine.images.build(fileobj=io.BytesIO(dockerfile.encode()), tag=name, rm=True, pull=False)
    yield name
    engine.images.remove(name)


def aliased_to(project: Project, local_image: str) -> Project:
    (project.root / "localml.yml").write_text(f"image_aliases:\n  {AZURE_IMAGE}: {local_image}\n")
    return project


def environment_stage(project: Project) -> tuple[str, dict, str]:
    """Run validate + environment; (stdout+stderr, plan.json, the generated Dockerfile or uv install script)."""
    result = project.run("environment", f"spec={project.spec}")
    build = next((project.root / ".localml").glob("endpoints/*/blue/build"), None)
    if result.returncode != 0 or build is None:
        return result.stdout + result.stderr, {}, ""
    recipe = next(path for path in (build / "Dockerfile", build / "install.sh") if path.exists())
    return result.stdout + result.stderr, json.loads((build / "plan.json").read_text()), recipe.read_text()


@pytest.mark.docker
def test_conda_is_detected_in_the_base_image_and_cached_per_image_id(engine, fake_conda_image, tmp_path,
                                                                      monkeypatch):
    monkeypatch.chdir(tmp_path)  # the cache lives under .localml/ of the working directory
    fake_id = engine.images.get(fake_conda_image).id
    assert image.base_conda_version(fake_conda_image, fake_id) == FAKE_CONDA_VERSION
    plain_id = engine.images.get(BASE_IMAGE).id
    assert image.base_conda_version(BASE_IMAGE, plain_id) is None
    cache = json.loads((tmp_path / ".localml" / "cache" / "base-conda.json").read_text())
    assert cache == {fake_id: FAKE_CONDA_VERSION, plain_id: ""}


@pytest.mark.docker
def test_environment_stage_takes_the_conda_path_for_a_conda_base(engine, fake_conda_image, tmp_path):
    project = aliased_to(sample_copy(tmp_path / "project"), fake_conda_image)
    output, plan, dockerfile = environment_stage(project)
    assert plan, output
    assert plan["kind"] == "conda" and plan["conda_version"] == FAKE_CONDA_VERSION
    assert f"conda {FAKE_CONDA_VERSION} in the base image: conda env create from conda.yml" in output
    assert f"FROM {fake_conda_image} AS environment" in dockerfile
    assert "conda env create -p /opt/azureml-env -f /tmp/localml/conda.yml" in dockerfile
    build = Path(next((project.root / ".localml").glob("endpoints/*/blue/build")))
    assert (build / "conda.yml").read_text() == (project.root / "environment" / "conda.yml").read_text()


@pytest.mark.docker
def test_environment_stage_takes_the_uv_path_without_conda(engine, tmp_path):
    project = sample_copy(tmp_path / "project")  # localml.yml: the Azure image -> localml/debian-python
    output, plan, script = environment_stage(project)
    assert plan, output
    assert plan["kind"] == "uv" and plan["conda_version"] is None
    assert "python=python3\n" in script and "uv\" venv --python \"$python\" /opt/azureml-env" in script
    assert "conda env" not in script
    assert not (project.root / ".localml" / "endpoints" / project.endpoint / "blue" / "build" / "Dockerfile").exists()


@pytest.mark.docker
def test_conda_only_packages_and_python_pins_matter_on_the_pip_path_only(engine, fake_conda_image, tmp_path):
    """python=3.9 on a Python 3.11 base and cudatoolkit: fine for conda, which installs both."""
    for base, name in ((fake_conda_image, "conda"), (BASE_IMAGE, "pip")):
        project = aliased_to(sample_copy(tmp_path / name), base)
        project.edit("environment/conda.yml", "  - python=3.11\n", "  - python=3.9\n  - cudatoolkit=11.8\n")
        conda_file = project.root / "environment" / "conda.yml"
        output, plan, _ = environment_stage(project)
        if name == "conda":
            assert plan.get("kind") == "conda", output  # conda installs python 3.9 and cudatoolkit itself
            assert plan["base_python"] == "3.9"
        else:
            assert not plan
            line = conda_file.read_text().splitlines().index("  - cudatoolkit=11.8") + 1
            assert "valid" in output  # validation passed it on: only the pip path rejects it
            assert f"error: environment/conda.yml:{line}:" in output
            assert "conda package 'cudatoolkit' has no PyPI equivalent, and this environment is built with pip" \
                in output
            assert "use a base image with conda" in output
