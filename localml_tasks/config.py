"""Project settings that are not part of Azure's YAML (localml.yml): image aliases for machines without a
registry, and allow_python_mismatch for a project whose conda files pin a Python its base images lack."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from .errors import LocalmlError
from .yamlsource import load_yaml

CONFIG_FILE_NAME = "localml.yml"
ALIASES_ENV = "LOCALML_IMAGE_ALIASES"


SETTINGS = ("image_aliases", "allow_python_mismatch", "no_code_base_image")
DOCKER_HUB = ("docker.io", "index.docker.io", "registry-1.docker.io")


def normalize_image_reference(reference: str) -> str:
    """An image reference as Docker reads it: `name` is `name:latest`, `docker.io/library/name` is `name`,
    `docker.io/user/name` is `user/name`. A digest reference (`name@sha256:...`) is kept as it is."""
    reference = reference.strip()
    if "@" in reference:
        return reference
    registry, slash, rest = reference.partition("/")
    if slash and registry in DOCKER_HUB:
        reference = rest.removeprefix("library/") if rest.count("/") == 1 else rest
    if ":" not in reference.rsplit("/", 1)[-1]:  # a registry's port is before the last slash
        reference += ":latest"
    return reference


@dataclass
class ProjectConfig:
    # image name in the deployment YAML -> image name to use locally
    image_aliases: dict[str, str] = field(default_factory=dict)
    # build even where a conda file pins a Python the base image does not have (a warning, not an error)
    allow_python_mismatch: bool = False
    # the base image of a no-code MLflow deployment (None: Azure's MLflow inference image; aliases apply)
    no_code_base_image: str | None = None

    def resolve_image(self, image: str) -> str:
        """The local image standing in for image: matched as Docker matches names (see normalize_image_reference)."""
        # later entries win (LOCALML_IMAGE_ALIASES over localml.yml), also where both spell a name differently
        normalized = {normalize_image_reference(name): local for name, local in self.image_aliases.items()}
        return normalized.get(normalize_image_reference(image), image)


def load_project_config(directory: Path | None = None) -> ProjectConfig:
    """localml.yml in the working directory, then LOCALML_IMAGE_ALIASES (wins)."""
    aliases: dict[str, str] = {}
    allow = False
    no_code_image = None
    path = (directory or Path.cwd()) / CONFIG_FILE_NAME
    if path.exists():
        doc = load_yaml(path)
        data = doc.data or {}
        if not isinstance(data, dict):
            raise LocalmlError.one("expected a mapping", **doc.where(()), fix="see README: Image aliases")
        unknown = set(data) - set(SETTINGS)
        if unknown:
            key = sorted(unknown)[0]
            raise LocalmlError.one(
                f"unknown setting '{key}'", **doc.where((key,)), fix=f"the settings are {', '.join(SETTINGS)}"
            )
        allow = data.get("allow_python_mismatch", False)
        if not isinstance(allow, bool):
            raise LocalmlError.one("expected true or false", **doc.where(("allow_python_mismatch",)),
                                   fix="allow_python_mismatch: true")
        no_code_image = data.get("no_code_base_image")
        if no_code_image is not None and (not isinstance(no_code_image, str) or not no_code_image.strip()):
            raise LocalmlError.one("expected an image name", **doc.where(("no_code_base_image",)),
                                   fix="no_code_base_image: mcr.microsoft.com/azureml/<image>:<tag>")
        raw = data.get("image_aliases") or {}
        if not isinstance(raw, dict) or not all(isinstance(v, str) for v in raw.values()):
            raise LocalmlError.one(
                "expected a mapping of image name -> local image name",
                **doc.where(("image_aliases",)),
                fix="e.g. image_aliases: {'mcr.microsoft.com/azureml/x:latest': 'my/local:tag'}",
            )
        aliases.update({str(k): v for k, v in raw.items()})
    for item in filter(None, (part.strip() for part in os.environ.get(ALIASES_ENV, "").split(","))):
        name, sep, local = item.partition("=")
        if not sep or not name or not local:
            raise LocalmlError.one(
                f"{ALIASES_ENV}: '{item}' is not NAME=LOCAL_NAME",
                fix=f"set {ALIASES_ENV}=registry/image:tag=local/image:tag[,...]",
            )
        aliases[name] = local
    return ProjectConfig(image_aliases=aliases, allow_python_mismatch=allow, no_code_base_image=no_code_image)
