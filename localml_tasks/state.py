"""Where generated state lives: everything under .localml/ in the working directory."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

STATE_DIR_NAME = ".localml"


def state_root() -> Path:
    return Path.cwd() / STATE_DIR_NAME


def deployment_dir(endpoint: str, deployment: str) -> Path:
    return state_root() / "endpoints" / endpoint / deployment


def current_file() -> Path:
    return state_root() / "current.json"


def write_if_changed(path: Path, text: str) -> bool:
    """Write atomically, and only when the content differs: keeps doit's file hashes honest."""
    try:
        if path.read_text(encoding="utf-8") == text:
            return False
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return True


def write_json_if_changed(path: Path, data: Any, *, sort_keys: bool = True) -> bool:
    return write_if_changed(path, json.dumps(data, indent=2, sort_keys=sort_keys) + "\n")


def read_json(path: Path) -> Any | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None
