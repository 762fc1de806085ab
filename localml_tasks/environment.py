"""Stage 2 — resolve the environment: conda file -> Python version + pip requirements.

Two ways to build it. The conda path (the base image has conda, as Azure's do): conda creates
the environment from the conda file itself, as Azure does. The pip path (a base image with
Python and no conda): we install the conda file's packages from PyPI into a venv. Conda package
names are mapped to their PyPI names; on the pip path, packages that only exist on conda
channels (toolkits, system libraries) are reported with their line.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from .errors import LocalmlError, Problem
from .yamlsource import load_yaml

# conda name -> PyPI name, where they differ
CONDA_TO_PYPI = {
    "pytorch": "torch",
    "pytorch-cpu": "torch",
    "py-xgboost": "xgboost",
    "py-xgboost-cpu": "xgboost",
    "pytables": "tables",
    "matplotlib-base": "matplotlib",
    "py-opencv": "opencv-python",
    "opencv": "opencv-python",
    "tensorflow-base": "tensorflow",
    "msgpack-python": "msgpack",
    "pyqt": "PyQt5",
    "lightgbm": "lightgbm",
    "python-graphviz": "graphviz",
    "pywin32": "pywin32",
    "ruamel_yaml": "ruamel.yaml",
    "typing_extensions": "typing-extensions",
}

# conda packages with no PyPI counterpart: native toolkits and system libraries
CONDA_ONLY = {
    "cudatoolkit", "cuda-toolkit", "cudnn", "nccl", "cuda-nvcc", "cuda-runtime", "mkl",
    "mkl-service", "mkl_fft", "mkl_random", "blas", "libblas", "liblapack", "openblas",
    "libopenblas", "intel-openmp", "openmpi", "mpich", "libgcc-ng", "libstdcxx-ng",
    "libgfortran-ng", "openssl", "zlib", "ca-certificates", "certifi-conda", "libffi",
    "ncurses", "readline", "sqlite", "tk", "xz", "bzip2", "ld_impl_linux-64", "_libgcc_mutex",
    "libuuid", "libxcb", "cpuonly", "magma-cuda",
}

# Azure requires one of these in the environment: they bring the inference server
INFERENCE_SERVER_PACKAGES = ("azureml-inference-server-http", "azureml-defaults")

# always installed beside the user's packages: the debugger the devcontainer attaches to
EXTRA_REQUIREMENTS = ("debugpy",)

_CONDA_SPEC = re.compile(r"^\s*(?:[\w.-]+::)?(?P<name>[A-Za-z0-9_.\-]+)\s*(?P<rest>.*)$")


@dataclass
class ResolvedEnvironment:
    conda_file: str
    python_version: str | None  # "3.11" from python=3.11, None when not pinned
    requirements: list[str]  # pip requirement lines, in the file's order
    base_image: str  # after image aliases
    declared_image: str  # as written in the deployment YAML

    def to_json(self) -> dict:
        return asdict(self)

    @property
    def content_hash(self) -> str:
        """What goes into the image, so the image tag changes exactly when it must."""
        digest = hashlib.sha256()
        for part in (self.base_image, self.python_version or "", *self.requirements):
            digest.update(part.encode() + b"\0")
        return digest.hexdigest()


def resolve_environment(conda_file: Path, declared_image: str, base_image: str, *,
                        conda_builds: bool = False) -> ResolvedEnvironment:
    """conda_builds: conda will create the environment, so conda-only packages are fine (validation,
    which cannot know the base image yet, passes True; the environment stage knows)."""
    doc = load_yaml(conda_file)
    data = doc.data
    if not isinstance(data, dict):
        raise LocalmlError.one("expected a conda environment (name:, channels:, dependencies:)",
                               **doc.where(()), fix="see specs/environment/conda.yml")
    deps = data.get("dependencies")
    if not isinstance(deps, list):
        raise LocalmlError.one("missing or not a list", **doc.where(("dependencies",)),
                               fix="add dependencies: [python=3.11, pip, {pip: [azureml-inference-server-http]}]")
    problems: list[Problem] = []
    python_version: str | None = None
    conda_reqs: list[str] = []
    pip_reqs: list[str] = []
    for index, item in enumerate(deps):
        where = doc.where(("dependencies", index))
        if isinstance(item, dict):
            pip_list = item.get("pip")
            if set(item) != {"pip"} or not isinstance(pip_list, list):
                problems.append(Problem("only a 'pip:' list may appear as a mapping here", **where,
                                        fix="write `- pip: [package==version, ...]`, or the package as a string"))
                continue
            for pip_index, req in enumerate(pip_list):
                if not isinstance(req, str) or not req.strip():
                    problems.append(Problem("expected a pip requirement string",
                                            **doc.where(("dependencies", index, "pip", pip_index)),
                                            fix="write it as pip would read it: package==version"))
                else:
                    pip_reqs.append(req.strip())
            continue
        if not isinstance(item, str):
            problems.append(Problem(f"expected a package spec string, found {item!r}", **where,
                                    fix="write it as conda reads it: package=version"))
            continue
        match = _CONDA_SPEC.match(item)
        if not match:
            problems.append(Problem(f"cannot read conda package spec '{item}'", **where,
                                    fix="write it as conda reads it: package=version"))
            continue
        name, rest = match["name"].lower(), match["rest"].strip()
        if name == "python":
            python_version = _python_minor(rest)
            continue
        # pip, when listed, is a package like the others: the lock keeps it (uv's venv has none of its own)
        if name in CONDA_ONLY:
            if not conda_builds:
                problems.append(Problem(
                    f"conda package '{name}' has no PyPI equivalent, and this environment is built with pip",
                    fix="remove it (the base image must provide it), or use a base image with conda", **where))
            continue
        conda_reqs.append(CONDA_TO_PYPI.get(name, name) + _conda_version_to_pip(rest))
    requirements = conda_reqs + pip_reqs
    names = {_requirement_name(r) for r in requirements}
    if not names & set(INFERENCE_SERVER_PACKAGES):
        problems.append(Problem(
            "the environment does not install the Azure ML inference server",
            fix="add azureml-inference-server-http under dependencies: - pip: (Azure requires it too)",
            **doc.where(("dependencies",))))
    if problems:
        raise LocalmlError(problems)
    for extra in EXTRA_REQUIREMENTS:
        if extra not in names:
            requirements.append(extra)
    return ResolvedEnvironment(
        conda_file=str(conda_file), python_version=python_version, requirements=requirements,
        base_image=base_image, declared_image=declared_image,
    )


def _python_minor(spec: str) -> str | None:
    match = re.search(r"(\d+)\.(\d+)", spec)
    return f"{match[1]}.{match[2]}" if match else None


def _conda_version_to_pip(rest: str) -> str:
    """conda's 'name=1.2' means 1.2.*; 'name==1.2' is exact; operators carry over; build strings drop."""
    rest = rest.split()[0] if rest else ""
    if not rest:
        return ""
    if rest.startswith("==") or rest[0] in "<>!~":
        return rest
    if rest.startswith("="):
        version = rest[1:]
        return f"=={version}" if version.endswith("*") or version.count(".") >= 2 else f"=={version}.*"
    return f"=={rest}"


def _requirement_name(requirement: str) -> str:
    match = re.match(r"^\s*([A-Za-z0-9_.\-]+)", requirement)
    return re.sub(r"[-_.]+", "-", match[1]).lower() if match else requirement


def requirement_line(conda_file: Path, requirement: str) -> int | None:
    """The line of conda_file that names this requirement's package, for build errors."""
    name = _requirement_name(requirement)
    try:
        lines = conda_file.read_text(encoding="utf-8").splitlines()
    except OSError:
        return None
    for number, text in enumerate(lines, start=1):
        item = text.strip().lstrip("-").strip().strip("'\"")
        if item and _requirement_name(item) == name:
            return number
    return None
