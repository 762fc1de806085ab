"""Environment resolution: conda file -> Python version + pip requirements (pure, no Docker)."""

from pathlib import Path

import pytest

from localml_tasks.environment import requirement_line, resolve_environment
from localml_tasks.errors import LocalmlError

SAMPLE_CONDA = Path(__file__).resolve().parent.parent / "specs" / "environment" / "conda.yml"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "conda.yml"
    path.write_text(text)
    return path


def test_sample_conda_file_resolves_to_pinned_pip_requirements():
    env = resolve_environment(SAMPLE_CONDA, "declared:1", "local:1")
    assert env.python_version == "3.11"
    assert env.requirements == [
        "pip",  # listed as a conda package: the lock keeps it, as conda would install it
        "azureml-inference-server-http==1.5.1",
        "scikit-learn==1.9.1",
        "joblib==1.6.0",
        "numpy==2.4.6",
        "debugpy",
    ]
    assert (env.base_image, env.declared_image) == ("local:1", "declared:1")


def test_conda_packages_map_to_pypi_names_and_versions(tmp_path):
    conda = write(tmp_path, """
dependencies:
  - python=3.10.4
  - pip
  - conda-forge::numpy=1.26
  - pytorch==2.1.0
  - py-xgboost>=2.0
  - pandas 2.1.4 py311h_0
  - pip:
    - azureml-defaults
""")
    env = resolve_environment(conda, "i", "i")
    assert env.python_version == "3.10"
    assert env.requirements[:5] == ["pip", "numpy==1.26.*", "torch==2.1.0", "xgboost>=2.0", "pandas==2.1.4"]
    assert "azureml-defaults" in env.requirements


def test_conda_only_package_is_an_error_naming_it_and_its_line(tmp_path):
    conda = write(tmp_path, "dependencies:\n  - python=3.11\n  - cudatoolkit=11.8\n"
                            "  - pip:\n    - azureml-inference-server-http\n")
    with pytest.raises(LocalmlError) as caught:
        resolve_environment(conda, "i", "i")
    problem = caught.value.problems[0]
    assert "'cudatoolkit' has no PyPI equivalent" in problem.message
    assert (problem.file, problem.line) == (str(conda), 3)


def test_missing_inference_server_is_reported(tmp_path):
    conda = write(tmp_path, "dependencies:\n  - python=3.11\n  - pip:\n    - numpy\n")
    with pytest.raises(LocalmlError) as caught:
        resolve_environment(conda, "i", "i")
    assert "does not install the Azure ML inference server" in caught.value.render()
    assert "azureml-inference-server-http" in caught.value.problems[0].fix


def test_dependencies_must_be_a_list(tmp_path):
    conda = write(tmp_path, "name: x\ndependencies: numpy\n")
    with pytest.raises(LocalmlError) as caught:
        resolve_environment(conda, "i", "i")
    assert caught.value.problems[0].line == 2


def test_requirement_line_finds_the_package_in_the_file():
    assert requirement_line(SAMPLE_CONDA, "numpy==2.4.6") == 11
    assert requirement_line(SAMPLE_CONDA, "scikit_learn") == 9
    assert requirement_line(SAMPLE_CONDA, "not-there") is None
