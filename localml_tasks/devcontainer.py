"""Generate the dev container and the launch configurations (pure rendering + writing them).

From the templates in .devcontainer-templates/ (shipped in the package as localml_tasks/templates):
- .devcontainer/devcontainer.json in the deployment's state folder: the same image, mounts,
  environment, labels and ports as the container localml runs, so VS Code's "Reopen in Container"
  and `devcontainer up` attach to that container instead of starting a second one;
- launch.json beside it, for VS Code on the host: attach to 127.0.0.1:<debug port>, with the
  host code folder mapped to its container path.
Nothing is written into the user's folders unless asked (merge_launch=1), and then with a backup.
"""

from __future__ import annotations

import json
import re
import time
from importlib import resources
from pathlib import Path
from typing import Any

from .container import ContainerSpec
from .contract import (
    CONTAINER_PORT,
    DEBUG_CONTAINER_PORT,
    LABEL_DEVCONTAINER_CONFIG,
    LABEL_DEVCONTAINER_FOLDER,
    LOOPBACK,
)
from .errors import LocalmlError
from .image import ENV_PREFIX

LAUNCH_NAME = "Azure ML: Debug Local Endpoint"
_PLACEHOLDER = re.compile(r"\$\{localml:([a-z_]+)\}")


def load_template(name: str) -> Any:
    return json.loads(resources.files("localml_tasks").joinpath("templates", name).read_text(encoding="utf-8"))


def fill(template: Any, values: dict[str, Any]) -> Any:
    """Replace ${localml:name} placeholders. A string that is only a placeholder takes the value as is
    (a list, a mapping, a number); inside a longer string the value is inserted as text."""
    if isinstance(template, dict):
        return {key: fill(value, values) for key, value in template.items()}
    if isinstance(template, list):
        out: list[Any] = []
        for item in template:
            filled = fill(item, values)
            # a list placeholder inside a list splices its items in
            if isinstance(item, str) and _PLACEHOLDER.fullmatch(item) and isinstance(filled, list):
                out.extend(filled)
            else:
                out.append(filled)
        return out
    if isinstance(template, str):
        whole = _PLACEHOLDER.fullmatch(template)
        if whole:
            return values[whole[1]]
        return _PLACEHOLDER.sub(lambda match: str(values[match[1]]), template)
    return template


def _mount(source: str, target: str, read_only: bool) -> str:
    """A `docker run --mount` value (what devcontainer.json's workspaceMount and mounts hold). Docker reads it as
    one CSV record: a field holding a comma or a double quote is quoted, its quotes doubled, as the devcontainer
    CLI quotes its own default workspace mount (source=/a,b: "source=/a,b")."""
    fields = [f"source={source}", f"target={target}", "type=bind"] + (["readonly"] if read_only else [])
    return ",".join(_csv_field(item) for item in fields)


def _csv_field(text: str) -> str:
    if any(char in text for char in ',"\n\r'):
        return '"' + text.replace('"', '""') + '"'
    return text


def render_launch(debug_host: str, debug_port: int, local_root: str, remote_root: str) -> dict[str, Any]:
    return fill(load_template("launch.json"), {"debug_host": debug_host, "debug_port": debug_port,
                                               "local_root": local_root, "remote_root": remote_root})


def render_devcontainer(spec: ContainerSpec, scoring_port: int, debug_port: int, folder: Path,
                        python: str | None = None) -> dict[str, Any]:
    """devcontainer.json for the container localml runs (spec), whose host ports are already chosen.
    python: the interpreter VS Code should use (default: the environment's venv)."""
    workspace = next(m for m in spec.mounts if m["target"] == spec.code_target)
    other_mounts = [_mount(m["source"], m["target"], m["read_only"]) for m in spec.mounts if m is not workspace]
    labels = {**spec.labels, LABEL_DEVCONTAINER_FOLDER: str(folder),
              LABEL_DEVCONTAINER_CONFIG: str(folder / ".devcontainer" / "devcontainer.json")}
    run_args = [f"--name={spec.name}"]
    for key, value in labels.items():
        run_args.append(f"--label={key}={value}")
    run_args += [f"--network={spec.network}",  # as localml runs it: no other container reaches debugpy
                 f"--publish={LOOPBACK}:{scoring_port}:{CONTAINER_PORT}",
                 f"--publish={LOOPBACK}:{debug_port}:{DEBUG_CONTAINER_PORT}"]
    if spec.gpu:
        run_args.append("--gpus=all")  # as the container localml runs (gpu=1)
    in_container = render_launch("localhost", DEBUG_CONTAINER_PORT, "${workspaceFolder}", spec.code_target)
    return fill(load_template("devcontainer.json"), {
        "name": f"Azure ML local endpoint {spec.labels.get('endpoint')}/{spec.labels.get('deployment')}",
        "image": spec.image,
        "workspace_mount": _mount(workspace["source"], workspace["target"], workspace["read_only"]),
        "workspace_folder": spec.code_target,
        "mounts": other_mounts,
        "container_env": spec.environment,
        "run_args": run_args,
        "forward_ports": [CONTAINER_PORT, DEBUG_CONTAINER_PORT],
        "python": python or f"{ENV_PREFIX}/bin/python",
        "launch_in_container": in_container,
    })


def render_host_launch_file(code_dir: str, code_target: str, debug_port: int,
                            more_paths: dict[str, str] | None = None) -> dict[str, Any]:
    """more_paths: {host folder: its folder in the container} beside the code folder (a model's own code)."""
    launch = render_launch(LOOPBACK, debug_port, code_dir, code_target)
    for host, target in (more_paths or {}).items():
        launch["pathMappings"].append({"localRoot": host, "remoteRoot": target})
    return {"version": "0.2.0", "configurations": [launch]}


# --- merging into the user's own .vscode/launch.json (only when asked) ------------------------------


def strip_jsonc(text: str) -> str:
    """VS Code's launch.json is JSON with comments and trailing commas: make it plain JSON."""
    out: list[str] = []
    i, in_string = 0, False
    while i < len(text):
        char = text[i]
        if in_string:
            out.append(char)
            if char == "\\":
                out.append(text[i + 1: i + 2])
                i += 2
                continue
            if char == '"':
                in_string = False
            i += 1
            continue
        if char == '"':
            in_string = True
            out.append(char)
            i += 1
        elif text.startswith("//", i):
            newline = text.find("\n", i)
            i = len(text) if newline < 0 else newline
        elif text.startswith("/*", i):
            end = text.find("*/", i + 2)
            # keep the newlines so error line numbers stay right
            chunk = text[i: len(text) if end < 0 else end + 2]
            out.append("\n" * chunk.count("\n"))
            i += len(chunk)
        else:
            out.append(char)
            i += 1
    return re.sub(r",(\s*[}\]])", r"\1", "".join(out))


def merge_launch(user_file: Path, configuration: dict[str, Any]) -> Path | None:
    """Put our configuration into the user's launch.json, keeping every other one.

    Returns the backup written (None when the file did not exist or nothing changed)."""
    existing: dict[str, Any] = {"version": "0.2.0", "configurations": []}
    original = None
    if user_file.exists():
        original = user_file.read_text(encoding="utf-8")
        try:
            existing = json.loads(strip_jsonc(original)) if original.strip() else existing
        except json.JSONDecodeError as exc:
            raise LocalmlError.one(f"cannot read it as JSON: {exc.msg}", file=str(user_file), line=exc.lineno,
                                   column=exc.colno,
                                   fix="fix the file (nothing was changed), or leave out merge_launch=1") from None
        if not isinstance(existing, dict) or not isinstance(existing.get("configurations", []), list):
            raise LocalmlError.one("expected {\"configurations\": [...]}", file=str(user_file),
                                   fix="fix the file (nothing was changed), or leave out merge_launch=1")
    configurations = [c for c in existing.get("configurations", []) if c.get("name") != configuration["name"]]
    merged = {**existing, "version": existing.get("version", "0.2.0"),
              "configurations": [*configurations, configuration]}
    text = json.dumps(merged, indent=2) + "\n"
    if original is not None and json.loads(strip_jsonc(original) or "{}") == merged:
        return None
    backup = None
    if original is not None:
        backup = user_file.with_name(f"{user_file.name}.localml-{time.strftime('%Y%m%d-%H%M%S')}.bak")
        backup.write_text(original, encoding="utf-8")
    user_file.parent.mkdir(parents=True, exist_ok=True)
    user_file.write_text(text, encoding="utf-8")
    return backup
