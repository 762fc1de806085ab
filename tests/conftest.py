"""Shared fixtures: a private copy of the sample per test, the localml CLI, Docker clean-up.

Docker tests never skip: a missing engine is a failure (scripts/test starts one).

scripts/test runs the suite on two pytest-xdist workers, a file per worker at a time: each test has its own copy
of the sample (its own endpoint name, folder and ports), so two run side by side. A test marked engine_wide
looks at what the whole machine shares (it prunes images, counts the dangling ones or the install containers, or
holds port 5001): it runs while no other test of the run does (_one_at_a_time_when_engine_wide).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
import pytest

REPO = Path(__file__).resolve().parent.parent
SPECS = REPO / "specs"
BASE_IMAGE = "localml/debian-python:3.11-bookworm"


@dataclass
class Project:
    """A copy of specs/ with a unique endpoint name, so tests never share containers."""

    root: Path
    endpoint: str

    @property
    def spec(self) -> Path:
        return self.root / "blue-deployment.yml"

    def container_name(self, deployment: str = "blue") -> str:
        return f"localml-{self.endpoint}-{deployment}"

    def run(self, *args: str, env: dict[str, str] | None = None, timeout: float = 900) -> subprocess.CompletedProcess:
        """Run the localml console entry point (python -m localml_tasks) in this project."""
        return subprocess.run(
            [sys.executable, "-m", "localml_tasks", *args],
            cwd=self.root, capture_output=True, text=True, timeout=timeout,
            env={**os.environ, "NO_COLOR": "1", "COLUMNS": "200", **(env or {})},
        )

    def edit(self, relative: str, old: str, new: str) -> None:
        path = self.root / relative
        text = path.read_text()
        assert old in text, f"{old!r} not in {relative}"
        path.write_text(text.replace(old, new))


def sample_copy(root: Path) -> Project:
    """specs/ and localml.yml copied to root, under an endpoint name of its own."""
    shutil.copytree(SPECS, root)
    shutil.copy(REPO / "localml.yml", root / "localml.yml")
    endpoint = f"t-{uuid.uuid4().hex[:8]}"
    proj = Project(root=root, endpoint=endpoint)
    proj.edit("endpoint.yml", "name: localml-sample", f"name: {endpoint}")
    proj.edit("blue-deployment.yml", "endpoint_name: localml-sample", f"endpoint_name: {endpoint}")
    proj.edit("green-deployment.yml", "endpoint_name: localml-sample", f"endpoint_name: {endpoint}")
    return proj


@pytest.fixture
def project(tmp_path: Path) -> Iterator[Project]:
    proj = sample_copy(tmp_path / "project")
    yield proj
    remove_containers(proj.endpoint)


def remove_containers(endpoint: str) -> None:
    try:
        engine = docker.from_env()
        for container in engine.containers.list(all=True, filters={"label": f"endpoint={endpoint}"}):
            container.remove(force=True)
    except docker.errors.DockerException:
        pass


def stop_routers(root: Path) -> None:
    """End the endpoint routers (background processes) that localml started for projects under root."""
    for record in root.glob("**/.localml/endpoints/*/router.json"):
        with contextlib.suppress(OSError, ValueError, KeyError):
            os.kill(int(json.loads(record.read_text())["pid"]), signal.SIGTERM)


@pytest.fixture(scope="session", autouse=True)
def _no_routers_left(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    yield
    stop_routers(tmp_path_factory.getbasetemp())


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    """Each test's setup, call and teardown (the module fixtures it starts or ends too) in its turn."""
    with _one_at_a_time_when_engine_wide(item.get_closest_marker("engine_wide") is not None):
        yield


@contextlib.contextmanager
def _one_at_a_time_when_engine_wide(alone: bool) -> Iterator[None]:
    """Under pytest-xdist: every test holds a shared lock of the run while it runs, an engine_wide test the same
    lock exclusively. A second lock, the gate, is held while waiting for the first, so a waiting engine_wide
    test is not overtaken by the other worker's next tests."""
    run = os.environ.get("PYTEST_XDIST_TESTRUNUID")  # the same in every worker of one run
    if not run:
        yield  # one process: one test at a time anyway
        return
    folder = Path(tempfile.gettempdir()) / f"localml-tests-{run}"
    folder.mkdir(exist_ok=True)
    with open(folder / "gate", "a") as gate, open(folder / "room", "a") as room:
        fcntl.flock(gate, fcntl.LOCK_EX)
        try:
            fcntl.flock(room, fcntl.LOCK_EX if alone else fcntl.LOCK_SH)
        finally:
            fcntl.flock(gate, fcntl.LOCK_UN)
        yield  # the room is let go when the file closes


def pytest_runtest_setup(item: pytest.Item) -> None:
    """A test reaching `engine` (itself or through a fixture) must carry the docker mark, or the fast loop breaks.

    Checked before any fixture is set up, so the message is this one with or without an engine."""
    if "engine" in getattr(item, "fixturenames", ()) and item.get_closest_marker("docker") is None:
        pytest.fail(f"{item.nodeid} uses the Docker engine: mark it @pytest.mark.docker (or set "
                    "`pytestmark = pytest.mark.docker` in its module) so `pytest -m \"not docker\"` leaves it out",
                    pytrace=False)


@pytest.fixture(scope="session")
def engine() -> docker.DockerClient:
    """The real Docker engine, with the sample's base image. Fails (never skips) when absent."""
    try:
        client = docker.from_env()
        client.ping()
    except docker.errors.DockerException as exc:
        pytest.fail(f"these tests need a Docker engine (scripts/test starts one): {exc}")
    try:
        client.images.get(BASE_IMAGE)
    except docker.errors.ImageNotFound:
        pytest.fail(f"base image {BASE_IMAGE} missing: run scripts/build-base-image")
    return client
