"""Project settings that are not part of Azure's YAML: image aliases for machines without a registry."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from .errors import LocalmlError
from .yamlsource import load_yaml

CONFIG_FILE_NAME = "localml.yml"
ALIASES_ENV = "LOCALML_IMAGE_ALIASES"


@dataclass
class ProjectConfig:
    # image name in the deployment YAML -> image name to use locally
    image_aliases: dict[str, str] = field(default_factory=dict)

    def resolve_image(self, image: str) -> str:
        return self.image_aliases.get(image, image)


def load_project_config(directory: Path | None = None) -> ProjectConfig:
    """localml.yml in the working directory, then LOCALML_IMAGE_ALIASES (wins)."""
    aliases: dict[str, str] = {}
    path = (directory or Path.cwd()) / CONFIG_FILE_NAME
    if path.exists():
        doc = load_yaml(path)
        data = doc.data or {}
        if not isinstance(data, dict):
            raise LocalmlError.one("expected a mapping", **doc.where(()), fix="see README: Image aliases")
        unknown = set(data) - {"image_aliases"}
        if unknown:
            key = sorted(unknown)[0]
            raise LocalmlError.one(
                f"unknown setting '{key}'", **doc.where((key,)), fix="the only setting is image_aliases"
            )
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
    return ProjectConfig(image_aliases=aliases)
