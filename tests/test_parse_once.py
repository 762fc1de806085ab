"""A command parses the deployment YAML (and the endpoint YAML) once, however many stages read it.

Every task used to load the spec again (about 18 parses per command): a 1 MB YAML made each command take
seconds. The count is taken inside the real command: a wrapper counts every PyYAML reader opened on text
that carries a marker comment written into the YAML files for this test.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import pytest
from conftest import Project

# runs localml's console entry point in-process, counting the YAML readers opened on each marked file
COUNTING_RUN = """
import sys
import yaml.reader

markers = {"spec": sys.argv[1], "endpoint": sys.argv[2]}
counts = {name: 0 for name in markers}
opened = yaml.reader.Reader.__init__


def counting(self, stream):
    text = stream if isinstance(stream, str) else stream.decode("utf-8", "replace") if isinstance(stream, bytes) \\
        else ""
    for name, marker in markers.items():
        counts[name] += marker in text
    opened(self, stream)


yaml.reader.Reader.__init__ = counting
from localml_tasks import cli

code = cli.main(sys.argv[3:])
print(f"PARSES spec={counts['spec']} endpoint={counts['endpoint']}", file=sys.stderr)
sys.exit(code)
"""


def _mark(project: Project) -> tuple[str, str]:
    markers = (f"parse-marker-{uuid.uuid4().hex}", f"parse-marker-{uuid.uuid4().hex}")
    for name, marker in zip(("blue-deployment.yml", "endpoint.yml"), markers, strict=True):
        path = project.root / name
        path.write_text(path.read_text() + f"# {marker}\n")
    return markers


def _parses(project: Project, markers: tuple[str, str], *args: str) -> tuple[dict[str, int], str]:
    result = subprocess.run([sys.executable, "-c", COUNTING_RUN, *markers, *args], cwd=project.root,
                            capture_output=True, text=True, timeout=900,
                            env={**os.environ, "NO_COLOR": "1", "COLUMNS": "200"})
    said = result.stdout + result.stderr
    line = next((text for text in result.stderr.splitlines() if text.startswith("PARSES ")), None)
    assert line is not None, said
    counts = {key: int(value) for key, value in (word.split("=") for word in line.split()[1:])}
    return counts, said


@pytest.mark.parametrize("command", [["validate", "spec=blue-deployment.yml"], ["list"],
                                     ["info", "validate:blue"]])
def test_a_command_parses_each_yaml_once(project: Project, command: list[str]) -> None:
    markers = _mark(project)
    if command[0] != "validate":  # commands without spec= work on the deployment validated last
        assert project.run("validate", "spec=blue-deployment.yml").returncode == 0
    counts, said = _parses(project, markers, *command)
    assert counts == {"spec": 1, "endpoint": 1}, said


def test_the_whole_debug_chain_parses_each_yaml_once(project: Project) -> None:
    """debug in process mode runs every stage (validate … endpoint) and the router's start commands, then delete."""
    markers = _mark(project)
    counts, said = _parses(project, markers, "debug", "spec=blue-deployment.yml", "runtime=process", "vscode=0")
    try:
        assert "endpoint " in said and "healthy" in said, said
        assert counts == {"spec": 1, "endpoint": 1}, said
    finally:
        counts, said = _parses(project, markers, "delete")
    assert "stopped the server process of blue" in said, said
    assert counts == {"spec": 1, "endpoint": 1}, said
