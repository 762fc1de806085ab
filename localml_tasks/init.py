"""`localml init`: make a project folder ready for `doit debug spec=blue-deployment.yml`.

- dodo.py: two lines that give doit localml's tasks (written only when there is none; else the lines to add are
  printed);
- localml.yml: commented settings, with an image alias for each base image the folder's deployment YAMLs name that
  is neither here nor pullable, to a local image with Python when one is found (written only when there is none;
  else the aliases it lacks are printed);
- .gitignore: `.localml/` (localml's state) added when missing; created when there is none.

Then the deployments found, with the `doit debug spec=...` of each. Idempotent: a second run changes nothing, and
no file of the user's is rewritten (.gitignore only gets a line appended).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml

from .config import CONFIG_FILE_NAME, ProjectConfig, load_project_config
from .console import line
from .errors import LocalmlError
from .project import DeploymentFile, find_deployments
from .state import STATE_DIR_NAME

STAGE = "init"
DODO_LINES = (
    '"""localml\'s tasks for this folder (localml init): doit list; doit debug spec=<deployment YAML>."""',
    "from localml_tasks.dodo import *  # noqa: F403 - doit collects the task_* functions and DOIT_CONFIG",
)
IGNORED = f"{STATE_DIR_NAME}/"
OUR_REPOSITORIES = ("localml/env", "localml/build")  # localml's own images are no stand-ins
CONFIG_HEAD = """\
# localml's settings for this project folder (written by `localml init`; see localml's README: Image aliases).
# Azure ML never reads this file.
#
# image_aliases: a base image named in a deployment YAML (or a Dockerfile's FROM) -> the local image that stands
# in for it here, where the named one is not on this machine and cannot be pulled (no registry access).
# The stand-in needs Python 3 with its venv module; LOCALML_IMAGE_ALIASES="name=local,..." overrides this file.
"""
CONFIG_TAIL = """
# allow_python_mismatch: build even where a conda file pins another Python than the base image has (a warning
# instead of an error). allow_python_mismatch=1 on the command line does it for one deployment.
# allow_python_mismatch: true
"""


def main(folder: Path | None = None) -> int:
    folder = (folder or Path.cwd()).resolve()
    deployments = find_deployments(folder)
    write_dodo(folder)
    write_config(folder, deployments)
    update_gitignore(folder)
    list_deployments(deployments)
    return 0


# --- dodo.py ------------------------------------------------------------------------------------------------


def write_dodo(folder: Path) -> None:
    dodo = folder / "dodo.py"
    if not dodo.exists():
        dodo.write_text("\n".join(DODO_LINES) + "\n", encoding="utf-8")
        line(STAGE, "wrote dodo.py: doit finds localml's tasks here")
        return
    text = dodo.read_text(encoding="utf-8", errors="replace")
    if re.search(r"^\s*from\s+localml_tasks(\.\w+)?\s+import", text, re.MULTILINE):
        line(STAGE, "dodo.py: already imports localml's tasks (left as it is)")
        return
    line(STAGE, "dodo.py is yours (left as it is): add these two lines to it for localml's tasks "
                "(its DOIT_CONFIG keeps doit's state under .localml/; merge it into yours if you have one)")
    for text_line in DODO_LINES:
        line("", f"  {text_line}")


# --- localml.yml --------------------------------------------------------------------------------------------


def write_config(folder: Path, deployments: list[DeploymentFile]) -> None:
    path = folder / CONFIG_FILE_NAME
    existing: ProjectConfig | None = None
    if path.exists():
        try:
            existing = load_project_config(folder)
        except LocalmlError as exc:
            line(STAGE, f"{CONFIG_FILE_NAME} is yours (left as it is), but localml cannot read it:")
            for text_line in exc.render().splitlines():
                line("", f"  {text_line}")
            return
    client = _engine()
    if client is None:
        line(STAGE, "no Docker engine answers: base images not checked (run localml init again once one runs; "
                    "localml doctor says what is missing)")
    aliases = _aliases_needed(client, deployments, existing or ProjectConfig())
    if existing is not None:
        if not aliases:
            line(STAGE, f"{CONFIG_FILE_NAME}: kept as it is (no image alias missing)")
            return
        line(STAGE, f"{CONFIG_FILE_NAME} is yours (left as it is): add under image_aliases:")
        for alias in aliases:
            line("", f"  {_entry(alias['image'], alias['local'] or '<a local image with Python 3>')}")
        return
    path.write_text(render_config(aliases), encoding="utf-8")
    if aliases:
        for alias in aliases:
            if alias["local"]:
                line(STAGE, f"wrote {CONFIG_FILE_NAME}: {alias['image']} is not here and cannot be pulled; "
                            f"{alias['local']} stands in for it (a local image with Python {alias['python'] or '3'})")
            else:
                line(STAGE, f"wrote {CONFIG_FILE_NAME}: {alias['image']} is not here and cannot be pulled, and no "
                            "local image with Python was found: load one (docker load) and name it there")
    else:
        line(STAGE, f"wrote {CONFIG_FILE_NAME} (commented; no image alias needed here)")


def render_config(aliases: list[dict[str, Any]]) -> str:
    text = CONFIG_HEAD
    active = [alias for alias in aliases if alias["local"]]
    if active:
        text += "image_aliases:\n"
        for alias in active:
            text += f"  # for {', '.join(alias['users'])}: not on this machine and cannot be pulled here\n"
            text += f"  {_entry(alias['image'], alias['local'])}\n"
    for alias in (alias for alias in aliases if not alias["local"]):
        text += (f"# {alias['image']} (for {', '.join(alias['users'])}) is not here and cannot be pulled: "
                 "name a local image with Python 3 for it\n")
        text += f"# image_aliases:\n#   {_entry(alias['image'], 'my/local-python:3.11')}\n"
    if not aliases:
        text += ("# image_aliases:\n"
                 "#   mcr.microsoft.com/azureml/openmpi4.1.0-ubuntu22.04:latest: my-mirror/azureml/openmpi:latest\n")
    return text + CONFIG_TAIL


def _entry(image: str, local: str) -> str:
    return yaml.safe_dump({image: local}, default_flow_style=False, width=1000).strip()


def _env_aliases() -> dict[str, str]:
    from .config import ALIASES_ENV

    pairs = (item.partition("=") for item in os.environ.get(ALIASES_ENV, "").split(","))
    return {name.strip(): local.strip() for name, sep, local in pairs if sep and name.strip() and local.strip()}


def _engine() -> Any:
    import docker

    try:
        client = docker.from_env(timeout=15)
        client.ping()
    except docker.errors.DockerException:
        return None
    return client


def _aliases_needed(client: Any, deployments: list[DeploymentFile], config: ProjectConfig) -> list[dict[str, Any]]:
    """The base images that are neither here nor pullable nor aliased, each with a stand-in when one is found."""
    if client is None:
        return []
    from .doctor import image_present, image_pullable, needed_images

    config = ProjectConfig(image_aliases={**config.image_aliases, **_env_aliases()})
    aliases = []
    for needed in needed_images(deployments, config):
        if needed.alias_from or image_present(client, needed.declared) or image_pullable(client, needed.declared):
            continue
        users = list(dict.fromkeys(needed.specs))
        pins = {item.python for item in deployments if item.spec in users and item.python}
        python = sorted(pins)[0] if len(pins) == 1 else None
        aliases.append({"image": needed.declared, "local": stand_in(client, python), "python": python,
                        "users": users})
    return aliases


def stand_in(client: Any, python: str | None) -> str | None:
    """A local image that can stand in for a base image: one named for Python (python:3.11-slim,
    localml/debian-python:3.11-bookworm), the one whose tag has the conda file's X.Y first; None without one."""
    names = sorted({tag for image in client.images.list() for tag in image.tags
                    if "python" in tag.lower() and not tag.startswith(OUR_REPOSITORIES)})
    if python:
        matching = [name for name in names if re.search(rf"(?<![\d.]){re.escape(python)}(?![\d])", name)]
        if matching:
            return matching[0]
    return names[0] if names else None


# --- .gitignore ---------------------------------------------------------------------------------------------


def update_gitignore(folder: Path) -> None:
    path = folder / ".gitignore"
    if not path.exists():
        path.write_text(f"# localml's state (localml init)\n{IGNORED}\n", encoding="utf-8")
        line(STAGE, f"wrote .gitignore: {IGNORED} (localml's state) is not for git")
        return
    text = path.read_text(encoding="utf-8", errors="replace")
    wanted = {STATE_DIR_NAME, IGNORED, f"/{STATE_DIR_NAME}", f"/{IGNORED}", f"{IGNORED}*", f"/{IGNORED}*"}
    if any(entry.strip() in wanted for entry in text.splitlines()):
        line(STAGE, f".gitignore: already has {IGNORED}")
        return
    with path.open("a", encoding="utf-8") as handle:
        handle.write(("" if not text or text.endswith("\n") else "\n") + f"{IGNORED}\n")
    line(STAGE, f".gitignore: added {IGNORED} at its end (localml's state is not for git)")


# --- what to run next ---------------------------------------------------------------------------------------


def list_deployments(deployments: list[DeploymentFile]) -> None:
    if not deployments:
        line(STAGE, "no deployment YAML here (a YAML with code_configuration, model, environment, endpoint_name): "
                    "run localml init in your Azure ML project folder")
        return
    line(STAGE, f"{len(deployments)} deployment{'s' if len(deployments) > 1 else ''} found; start one with:")
    for item in deployments:
        who = f" ({item.name} on {item.endpoint_name})" if item.name and item.endpoint_name else ""
        line("", f"  doit debug spec={item.spec}{who}")
    line(STAGE, "then doit invoke request=<request.json>; localml doctor checks this machine first")
