"""localml.yml: image references matched as Docker matches them, and the project's settings."""

from __future__ import annotations

import pytest

from localml_tasks.config import ProjectConfig, load_project_config, normalize_image_reference
from localml_tasks.errors import LocalmlError

AZURE = "mcr.microsoft.com/azureml/openmpi4.1.0-ubuntu22.04"


@pytest.mark.parametrize(("given", "normalized"), [
    ("python", "python:latest"),
    ("python:3.11", "python:3.11"),
    ("docker.io/library/python:3.11", "python:3.11"),
    ("index.docker.io/library/python", "python:latest"),
    ("docker.io/someone/tool", "someone/tool:latest"),
    (AZURE, f"{AZURE}:latest"),
    (f"{AZURE}:latest", f"{AZURE}:latest"),
    ("localhost:5000/team/image", "localhost:5000/team/image:latest"),  # a registry's port is no tag
    ("localhost:5000/team/image:1.0", "localhost:5000/team/image:1.0"),
    ("python@sha256:" + "a" * 64, "python@sha256:" + "a" * 64),  # a digest is kept as it is
])
def test_references_are_normalized_as_docker_reads_them(given, normalized):
    assert normalize_image_reference(given) == normalized


def test_an_alias_matches_every_spelling_of_its_image():
    config = ProjectConfig(image_aliases={AZURE: "local/base:1", "docker.io/library/python:3.11": "local/py:3.11"})
    for spelling in (AZURE, f"{AZURE}:latest"):
        assert config.resolve_image(spelling) == "local/base:1"
    for spelling in ("python:3.11", "docker.io/library/python:3.11", "index.docker.io/library/python:3.11"):
        assert config.resolve_image(spelling) == "local/py:3.11"
    assert config.resolve_image(f"{AZURE}:other-tag") == f"{AZURE}:other-tag"
    assert config.resolve_image("python@sha256:" + "b" * 64) == "python@sha256:" + "b" * 64


def test_the_environment_variable_wins_over_localml_yml_whatever_the_spelling(tmp_path, monkeypatch):
    (tmp_path / "localml.yml").write_text(f"image_aliases:\n  {AZURE}:latest: from/file:1\n")
    monkeypatch.setenv("LOCALML_IMAGE_ALIASES", f"{AZURE}=from/env:1")
    assert load_project_config(tmp_path).resolve_image(AZURE) == "from/env:1"


def test_allow_python_mismatch_is_a_project_setting(tmp_path, monkeypatch):
    monkeypatch.delenv("LOCALML_IMAGE_ALIASES", raising=False)
    assert load_project_config(tmp_path).allow_python_mismatch is False
    (tmp_path / "localml.yml").write_text("allow_python_mismatch: true\n")
    assert load_project_config(tmp_path).allow_python_mismatch is True
    (tmp_path / "localml.yml").write_text("allow_python_mismatch: maybe\n")
    with pytest.raises(LocalmlError) as raised:
        load_project_config(tmp_path)
    assert "localml.yml:1" in raised.value.render() and "allow_python_mismatch: true" in raised.value.render()
    (tmp_path / "localml.yml").write_text("allow_python_mismach: true\n")
    with pytest.raises(LocalmlError) as raised:
        load_project_config(tmp_path)
    assert "unknown setting 'allow_python_mismach'" in raised.value.render()
    assert "image_aliases, allow_python_mismatch" in raised.value.render()
