"""A project folder as a new user has it: which of its YAML files are online deployments, and the base images
they name (`localml init`, `localml doctor`, and the one line naming a deployment's YAML when a task does not
exist).

Cheap by design: no file over MAX_BYTES is read, hidden folders (.localml, .git, .venv), node_modules and
virtual environments are not entered, and a file is parsed only when a scan of its top-level keys says it is
an online deployment.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from . import mlflow_model
from .build_context import from_images, parse_dockerfile
from .errors import LocalmlError
from .yamlsource import peek_yaml

MAX_BYTES = 1 << 20  # a deployment YAML is a few hundred bytes; anything this big is data, not a deployment
MAX_DEPTH = 4  # folders below the project folder that are searched
SKIPPED_FOLDERS = {"node_modules", "__pycache__", "site-packages", "venv", "env"}
_TOP_KEY = re.compile(r"^([A-Za-z_$][\w$-]*)\s*:")
_PYTHON_PIN = re.compile(r"^python\s*(?:==?|>=|~=)?\s*(\d+\.\d+)")


@dataclass
class DeploymentFile:
    """One online deployment YAML of the folder, as far as a quick read tells."""

    path: Path  # relative to the folder it was found in
    name: str | None = None
    endpoint_name: str | None = None
    # (image as the YAML or its Dockerfile names it, where: "environment.image" or "Dockerfile:3")
    images: list[tuple[str, str]] = field(default_factory=list)
    python: str | None = None  # the conda file's python=X.Y pin
    workspace_environment: str | None = None  # environment: azureml:name:version (not available locally)
    problem: str | None = None  # not YAML, or not readable: `doit validate` says more

    @property
    def spec(self) -> str:
        return self.path.as_posix()


def find_deployments(folder: Path) -> list[DeploymentFile]:
    """The online deployment YAMLs under folder (sorted by path)."""
    found: list[DeploymentFile] = []
    root = folder.resolve()
    for current, folders, files in os.walk(root):
        depth = len(Path(current).relative_to(root).parts)
        folders[:] = sorted(name for name in folders if depth < MAX_DEPTH and not _skipped(Path(current), name))
        for name in sorted(files):
            if name.endswith((".yml", ".yaml")):
                item = read_deployment(Path(current) / name, root)
                if item is not None:
                    found.append(item)
    return sorted(found, key=lambda item: item.path.as_posix())


def _skipped(parent: Path, name: str) -> bool:
    return name.startswith(".") or name in SKIPPED_FOLDERS or (parent / name / "pyvenv.cfg").exists()


def looks_like_deployment(text: str) -> bool:
    """Top-level keys of an online deployment: code_configuration, or endpoint_name with a model or an
    environment; or an online deployment's $schema. Batch deployments and jobs are not."""
    keys = {match[1] for line in text.splitlines() if (match := _TOP_KEY.match(line))}
    schema = next((line for line in text.splitlines() if line.startswith("$schema")), "").lower()
    if "batch" in schema or "job" in schema:
        return False
    if "onlinedeployment" in schema:
        return True
    return "code_configuration" in keys or ("endpoint_name" in keys and bool(keys & {"model", "environment"}))


def read_deployment(path: Path, root: Path) -> DeploymentFile | None:
    try:
        if path.stat().st_size > MAX_BYTES:
            return None
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    if not looks_like_deployment(text):
        return None
    item = DeploymentFile(path=path.relative_to(root))
    try:
        data = peek_yaml(path)  # bounded (no alias bomb, no runaway nesting), and parsed once per command
    except LocalmlError as exc:
        item.problem = exc.problems[0].message
        return item
    except (yaml.YAMLError, ValueError) as exc:
        item.problem = f"not valid YAML: {str(exc).splitlines()[0]}"
        return item
    if not isinstance(data, dict):
        item.problem = "not a mapping"
        return item
    item.name = data.get("name") if isinstance(data.get("name"), str) else None
    item.endpoint_name = data.get("endpoint_name") if isinstance(data.get("endpoint_name"), str) else None
    environment = data.get("environment")
    if isinstance(environment, str) and environment.startswith("azureml:"):
        item.workspace_environment = environment
    elif isinstance(environment, dict):
        _read_environment(item, environment, path.parent)
    elif (base := _no_code_base_image(data)) is not None:
        item.images.append((base, NO_CODE))
    return item


NO_CODE = "no-code MLflow model"  # where the image comes from: localml's default (no_code_base_image: overrides)


def _no_code_base_image(data: dict) -> str | None:
    """The base image a no-code MLflow deployment (an mlflow_model, no code, no environment) is built on."""
    return mlflow_model.DEFAULT_BASE_IMAGE if mlflow_model.is_no_code(data) else None


def _read_environment(item: DeploymentFile, environment: dict, folder: Path) -> None:
    build = environment.get("build")
    if isinstance(build, dict) and isinstance(build.get("path"), str):
        dockerfile = folder / build["path"] / str(build.get("dockerfile_path") or "Dockerfile")
        try:
            if dockerfile.stat().st_size <= MAX_BYTES:
                text = dockerfile.read_text(encoding="utf-8", errors="replace")
                froms = from_images(parse_dockerfile(text))
                item.images += [(name, f"{dockerfile.name}:{line}") for name, line in froms]
        except OSError:
            pass  # `doit validate` names the missing Dockerfile
    elif isinstance(environment.get("image"), str) and environment["image"].strip():
        item.images.append((environment["image"].strip(), "environment.image"))
    conda = environment.get("conda_file")
    if isinstance(conda, str):
        item.python = conda_python(folder / conda)


def conda_python(conda_file: Path) -> str | None:
    """X.Y of the conda file's python pin (`- python=3.10`), None without one or without the file."""
    try:
        if conda_file.stat().st_size > MAX_BYTES:
            return None
        data = peek_yaml(conda_file)
    except (OSError, LocalmlError, ValueError, yaml.YAMLError):
        return None
    dependencies = data.get("dependencies") if isinstance(data, dict) else None
    for entry in dependencies if isinstance(dependencies, list) else []:
        if isinstance(entry, str) and (match := _PYTHON_PIN.match(entry.strip())):
            return match[1]
    return None


def named(deployments: list[DeploymentFile], deployment: str) -> DeploymentFile | None:
    """The deployment YAML of the folder whose name is `deployment`."""
    return next((item for item in deployments if item.name == deployment), None)
