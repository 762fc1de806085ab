"""environment.build: the user's own Dockerfile built as-is, with localml's thin layer on top.

No container registry is reachable here, and the user's Dockerfile gets no proxy CA, so the
Dockerfiles below are network-free: they start FROM one of Azure's inference images, which the
test project's localml.yml aliases to the sample's environment image (built first; like Azure's
minimal inference images it ships azmlinfsrv).
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
from conftest import BASE_IMAGE, REPO, Project, remove_containers, sample_copy

from localml_tasks.build_context import (
    PYTHON_CANDIDATES,
    from_images,
    layer_failure,
    parse_dockerfile,
    render_layer_dockerfile,
    render_layer_script,
    user_build_failure,
)

AZURE_IMAGE = "mcr.microsoft.com/azureml/minimal-py311-inference:latest"

SCORE = '''"""Returns the greeting the deployment's own Dockerfile put into the image."""

greeting = None


def init():
    global greeting
    with open("/opt/greeting/greeting.txt", encoding="utf-8") as handle:
        greeting = handle.read().strip()


def run(raw_data):
    return {"greeting": greeting}
'''

DEPLOYMENT = """name: ctx
endpoint_name: {endpoint}
model:
  path: ../model/
code_configuration:
  code: greeter/
  scoring_script: score.py
environment:
  build:
    path: greeter-env/
instance_type: Standard_DS3_v2
instance_count: 1
"""


# --- pure: reading the user's Dockerfile, rendering our layer, boiling failures down ----------


def test_layer_dockerfile_puts_only_opt_localml_and_path_on_the_users_image():
    text = render_layer_dockerfile("localml/build:abc", "Dockerfile", with_ca=True)
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert lines == [
        "FROM localml/build:abc AS localml",
        "USER root",
        "COPY localml-layer.sh /tmp/localml/layer.sh",
        "COPY localml-ca.crt /tmp/localml/ca.crt",
        "RUN sh /tmp/localml/layer.sh /tmp/localml/ca.crt",
        "FROM localml/build:abc",
        "COPY --from=localml /opt/localml /opt/localml",
        "ENV PATH=/opt/localml/bin:$PATH PYTHONUNBUFFERED=1",
        "WORKDIR /var/azureml-app",
        "EXPOSE 5001",
        "ENTRYPOINT []",
        'CMD ["python", "/var/localml/bin/supervisor.py", "/var/localml/runtime"]',
    ]
    without_ca = render_layer_dockerfile("localml/build:abc", "Dockerfile", with_ca=False)
    assert "ca.crt" not in without_ca and "RUN sh /tmp/localml/layer.sh\n" in without_ca


def test_layer_script_finds_the_servers_python_and_installs_debugpy_only_when_missing():
    script = render_layer_script()
    assert f"for candidate in {' '.join(PYTHON_CANDIDATES)}; do" in script
    assert '"$path" -c "import azureml_inference_server_http"' in script
    # a venv's python must be started by its own path: a wrapper, not a symlink
    assert "printf '#!/bin/sh\\nexec \"%s\" \"$@\"\\n' \"$found\" > /opt/localml/bin/python" in script
    assert 'ln -s "$scripts/azmlinfsrv" /opt/localml/bin/azmlinfsrv' in script
    install = script.index("--target /opt/localml/site debugpy")
    assert script.index('if "$found" -c "import debugpy"') < install
    assert 'export PIP_CERT="$ca"' in script


def test_dockerfile_instructions_keep_their_lines_and_from_images_skip_stages():
    text = (
        "# escape=\\\n"
        "ARG BASE=mcr.microsoft.com/azureml/minimal-py311-inference:latest\n"
        "# a comment\n"
        "FROM --platform=linux/amd64 ${BASE} AS build\n"
        "RUN echo a \\\n"
        "  # comment inside\n"
        "  && echo b\n"
        "FROM build AS again\n"
        "from scratch\n"
        "FROM $UNKNOWN\n"
        "FROM localml/other:1\n"
        "COPY --from=build /x /y\n"
    )
    instructions = parse_dockerfile(text)
    assert [(i.keyword, i.line) for i in instructions] == [
        ("ARG", 2), ("FROM", 4), ("RUN", 5), ("FROM", 8), ("FROM", 9), ("FROM", 10), ("FROM", 11), ("COPY", 12)]
    assert instructions[2].args == "echo a && echo b"
    assert from_images(instructions) == [(AZURE_IMAGE, 4), ("localml/other:1", 11)]


def test_a_failing_step_names_the_users_dockerfile_line_and_output(tmp_path):
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text("FROM base:1\n\nRUN echo hello \\\n  && false\nCOPY x /x\n")
    log = ["Step 1/3 : FROM base:1", " ---> 1234", "Step 2/3 : RUN echo hello   && false",
           " ---> Running in abc", "hello"]
    error = user_build_failure(log, "The command '/bin/sh -c echo hello   && false' returned a non-zero code: 1",
                               dockerfile, str(tmp_path))
    problem = error.problems[0]
    assert (problem.file, problem.line) == (str(dockerfile), 3)
    assert problem.message.startswith("your Dockerfile failed at RUN echo hello   && false: The command")
    assert problem.message.endswith("\n    hello")
    parse = user_build_failure([], "dockerfile parse error line 5: unknown instruction: FOO", dockerfile, "ctx")
    assert parse.problems[0].line == 5


def test_an_image_without_the_inference_server_is_one_clear_error():
    log = ["Step 5/5 : RUN sh /tmp/localml/layer.sh", "localml-layer: no-server: tried python python3"]
    error = layer_failure(log, "The command ... returned a non-zero code: 3", "/ctx/Dockerfile")
    text = error.render()
    assert text.startswith("error: /ctx/Dockerfile: environment.build: no Python in the image built from this "
                           "Dockerfile can import azureml_inference_server_http")
    assert "must install azureml-inference-server-http" in text and "Azure requires it" in text


# --- real Docker ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sample_env_image(engine: docker.DockerClient, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The sample's environment image under a name of this module's own (removed afterwards)."""
    project = sample_copy(tmp_path_factory.mktemp("sample") / "project")
    built = project.run("image", f"spec={project.spec}")
    assert built.returncode == 0, built.stdout + built.stderr
    plan = json.loads(next((project.root / ".localml").glob("endpoints/*/blue/build/plan.json")).read_text())
    name = f"localml-imgtest/sample-env:{uuid.uuid4().hex[:8]}"
    engine.images.get(plan["tag"]).tag(*name.split(":"))
    yield name
    ours = engine.images.get(name).id
    try:
        if engine.images.get(AZURE_IMAGE).id == ours:  # the name localml gave it for the aliased FROM
            engine.images.remove(AZURE_IMAGE)
    except docker.errors.ImageNotFound:
        pass
    engine.images.remove(name)


class ContextProject:
    """The sample copy plus, in ctx/, a deployment on an endpoint of its own, built from its own
    folder (ctx/greeter-env/)."""

    def __init__(self, project: Project, engine: docker.DockerClient) -> None:
        self.project, self.engine = project, engine
        self.endpoint = f"{project.endpoint}-ctx"
        self.spec = project.root / "ctx" / "deployment.yml"
        self.context = project.root / "ctx" / "greeter-env"
        self.tags: set[str] = set()
        self.existing = {tag for image in engine.images.list() for tag in image.tags}

    def debug(self, *extra: str):
        result = self.project.run("debug", f"spec={self.spec}", *extra)
        plan = self.plan()
        if plan:
            self.tags |= {plan["tag"], plan["user_tag"]}
        return result

    def plan(self) -> dict | None:
        found = list((self.project.root / ".localml").glob("endpoints/*/ctx/build/plan.json"))
        return json.loads(found[0].read_text()) if found else None

    def invoke(self) -> dict:
        invoked = self.project.run("invoke", f"spec={self.spec}", f"request={self.spec.parent / 'hello.json'}")
        assert invoked.returncode == 0, invoked.stdout + invoked.stderr
        return json.loads(invoked.stdout[invoked.stdout.index("{"):])

    def snapshot(self) -> dict[str, tuple[int, bytes]]:
        return {str(path.relative_to(self.context)): (path.stat().st_mode, path.read_bytes() if path.is_file() else b"")
                for path in sorted(self.context.rglob("*"))}

    def cleanup(self) -> None:
        remove_containers(self.endpoint)
        remove_containers(self.project.endpoint)
        for tag in sorted(self.tags - self.existing, key=lambda t: t.startswith("localml/build")):
            with contextlib.suppress(docker.errors.APIError):
                self.engine.images.remove(tag)  # ours first, then the user image under it


@pytest.fixture
def ctx(tmp_path: Path, engine: docker.DockerClient, sample_env_image: str) -> Iterator[ContextProject]:
    project = sample_copy(tmp_path / "project")
    aliases = (project.root / "localml.yml").read_text() + f"  {AZURE_IMAGE}: {sample_env_image}\n"
    (project.root / "localml.yml").write_text(aliases)
    root = project.root / "ctx"
    (root / "greeter").mkdir(parents=True)
    (root / "deployment.yml").write_text(DEPLOYMENT.format(endpoint=f"{project.endpoint}-ctx"))
    (root / "greeter" / "score.py").write_text(SCORE)
    (root / "hello.json").write_text('{"data": "hello"}\n')
    context = root / "greeter-env"
    context.mkdir()
    (context / "Dockerfile").write_text(f"FROM {AZURE_IMAGE}\nCOPY greeting.txt /opt/greeting/greeting.txt\n")
    (context / "greeting.txt").write_text("hello from the build context\n")
    (context / ".dockerignore").write_text("notes.md\n")
    (context / "notes.md").write_text("not sent to Docker\n")
    found = ContextProject(project, engine)
    yield found
    found.cleanup()


def image_names(engine: docker.DockerClient) -> set[str]:
    return {tag for image in engine.images.list() for tag in image.tags}


@pytest.mark.docker
@pytest.mark.engine_wide
def test_build_context_runs_unchanged_rebuilds_only_on_context_changes(ctx):
    before = ctx.snapshot()
    named_before = image_names(ctx.engine)
    first = ctx.debug()
    assert first.returncode == 0, first.stdout + first.stderr
    assert f"FROM {AZURE_IMAGE} in Dockerfile: the local localml-imgtest/sample-env:" in first.stdout
    # the alias target stood in under the FROM name for the build only: no such tag is left behind
    assert (AZURE_IMAGE in image_names(ctx.engine)) == (AZURE_IMAGE in named_before)
    assert "health        healthy" in first.stdout
    assert ctx.invoke() == {"greeting": "hello from the build context"}
    assert ctx.snapshot() == before  # nothing written into the user's folder

    second = ctx.debug()
    assert second.returncode == 0, second.stdout + second.stderr
    assert "image         up to date" in second.stdout and "container     up to date" in second.stdout

    (ctx.context / "notes.md").write_text("edited, but .dockerignore keeps it out of the context\n")
    ignored = ctx.debug()
    assert "image         up to date" in ignored.stdout, ignored.stdout + ignored.stderr

    (ctx.context / "greeting.txt").write_text("edited greeting\n")
    third = ctx.debug()
    assert third.returncode == 0, third.stdout + third.stderr
    assert "image         building" in third.stdout
    assert ctx.invoke() == {"greeting": "edited greeting"}
    assert set(ctx.snapshot()) == set(before)


@pytest.mark.docker
def test_image_without_debugpy_gets_it_in_localmls_layer_only(ctx):
    """The user's image lacks debugpy: our layer pip-installs it (through the proxy, with the CA) into
    /opt/localml/site, and the debug server finds it there."""
    (ctx.context / "Dockerfile").write_text(
        f"FROM {AZURE_IMAGE}\nRUN python -m pip uninstall -y debugpy\nCOPY greeting.txt /opt/greeting/greeting.txt\n")
    result = ctx.debug()
    assert result.returncode == 0, result.stdout + result.stderr
    assert "health        healthy" in result.stdout
    container = ctx.engine.containers.get(f"localml-{ctx.endpoint}-ctx")
    assert "debugpy listening" in container.logs().decode()
    # (the build's own "localml-layer:" lines are not checked: Docker's cache may skip the step)
    assert container.exec_run(["python", "-c", "import debugpy"]).exit_code != 0  # not in the image's env
    assert b"debugpy" in container.exec_run(["ls", "/opt/localml/site"]).output
    assert ctx.invoke() == {"greeting": "hello from the build context"}


@pytest.mark.docker
def test_failing_user_dockerfile_names_its_line_and_dockers_error(ctx):
    (ctx.context / "Dockerfile").write_text(f"FROM {AZURE_IMAGE}\n\nCOPY missing.txt /opt/missing.txt\n")
    result = ctx.debug()
    assert result.returncode != 0
    assert "greeter-env/Dockerfile:3: environment.build: your Dockerfile failed at COPY missing.txt" in result.stderr
    assert "COPY failed: file not found in build context" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


@pytest.mark.docker
def test_image_without_the_inference_server_says_the_dockerfile_must_install_it(ctx):
    (ctx.context / "Dockerfile").write_text(f"FROM {BASE_IMAGE}\n")
    result = ctx.debug()
    assert result.returncode != 0
    assert "greeter-env/Dockerfile: environment.build: no Python in the image built from this Dockerfile " \
           "can import azureml_inference_server_http" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


@pytest.mark.docker
def test_process_mode_still_refuses_a_build_context(ctx):
    result = ctx.debug("runtime=process")
    assert result.returncode != 0
    assert "environment.build needs Docker" in result.stderr


IMAGE_ONLY = """name: img
endpoint_name: {endpoint}
model:
  path: ../model/
code_configuration:
  code: ../onlinescoring/
  scoring_script: score.py
environment:
  image: {image}
instance_type: Standard_DS3_v2
instance_count: 1
"""


@pytest.mark.docker
def test_an_image_only_environment_serves_with_localmls_layer_on_the_image(tmp_path, engine, sample_env_image):
    """Azure's image-only environment: the image already holds azmlinfsrv; nothing is installed."""
    project = sample_copy(tmp_path / "project")
    aliases = (project.root / "localml.yml").read_text() + f"  {AZURE_IMAGE}: {sample_env_image}\n"
    (project.root / "localml.yml").write_text(aliases)
    spec = project.root / "img" / "deployment.yml"
    spec.parent.mkdir()
    spec.write_text(IMAGE_ONLY.format(endpoint=f"{project.endpoint}-img", image=AZURE_IMAGE))
    plan_file = project.root / ".localml" / "endpoints" / f"{project.endpoint}-img" / "img" / "build" / "plan.json"
    try:
        result = project.run("debug", f"spec={spec}", "vscode=0")
        assert result.returncode == 0, result.stdout + result.stderr
        assert f"the image {sample_env_image} (alias of {AZURE_IMAGE}) as it is, localml's layer on top" \
            in result.stdout
        assert "health        healthy" in result.stdout
        request = REPO / "specs" / "sample-request.json"
        invoked = project.run("invoke", f"spec={spec}", f"request={request}")
        assert invoked.returncode == 0, invoked.stdout + invoked.stderr
        plan = json.loads(plan_file.read_text())
        assert plan["kind"] == "image" and plan["base_image"] == sample_env_image
        # the image as it is: no conda file, no lock, nothing of the environment built again
        assert not any(line.startswith("image ") and "downloading" in line for line in result.stdout.splitlines())
    finally:
        remove_containers(f"{project.endpoint}-img")
        if plan_file.exists():
            with contextlib.suppress(docker.errors.APIError):
                engine.images.remove(json.loads(plan_file.read_text())["tag"])


@pytest.mark.docker
def test_an_image_only_environment_without_the_server_names_the_image(tmp_path, engine):
    project = sample_copy(tmp_path / "project")
    spec = project.root / "img" / "deployment.yml"
    spec.parent.mkdir()
    spec.write_text(IMAGE_ONLY.format(endpoint=f"{project.endpoint}-img", image=BASE_IMAGE))
    result = project.run("debug", f"spec={spec}", "vscode=0")
    assert result.returncode != 0
    assert (f"environment.image: no Python in the image {BASE_IMAGE} can import azureml_inference_server_http"
            in result.stderr), result.stderr
    assert "use an image that has azureml-inference-server-http" in result.stderr and "Traceback" not in result.stderr
    remove_containers(f"{project.endpoint}-img")
