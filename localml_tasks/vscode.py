"""Launch VS Code into the dev container, or say how to attach when there is no `code` here."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from .errors import LocalmlError


def is_wsl() -> bool:
    if os.environ.get("WSL_DISTRO_NAME"):
        return True
    try:
        return "microsoft" in Path("/proc/version").read_text(encoding="utf-8", errors="replace").lower()
    except OSError:
        return False


def windows_path(folder: Path) -> str:
    """On WSL, VS Code (a Windows program) needs the Windows form of the folder."""
    try:
        return subprocess.run(["wslpath", "-w", str(folder)], check=True, capture_output=True,
                              text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError) as exc:
        raise LocalmlError.one(f"wslpath could not convert {folder}: {exc}",
                               fix="run from a WSL distribution with wslpath, or pass vscode=0") from None


def folder_uri(host_folder: str, container_folder: str) -> str:
    """VS Code's URI for a folder inside a dev container: the host folder holding .devcontainer/,
    hex-encoded exactly (spaces and all), then the folder inside the container."""
    return f"vscode-remote://dev-container+{host_folder.encode('utf-8').hex()}{container_folder}"


def code_command(host_folder: Path, container_folder: str, *, wsl: bool) -> list[str]:
    host = windows_path(host_folder) if wsl else str(host_folder)
    return ["code", "--folder-uri", folder_uri(host, container_folder)]


def launch(host_folder: Path, container_folder: str) -> list[str] | None:
    """Start VS Code in the dev container; None when there is no `code` on PATH."""
    if shutil.which("code") is None:
        return None
    command = code_command(host_folder, container_folder, wsl=is_wsl())
    # VS Code detaches by itself; do not wait on it, and keep its chatter out of our output
    subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    return command
