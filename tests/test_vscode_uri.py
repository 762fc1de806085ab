"""The `code --folder-uri` command line, including WSL's path conversion (no VS Code needed)."""

import os
import sys
from pathlib import Path

from localml_tasks.vscode import code_command, folder_uri


def test_folder_uri_is_the_hex_of_the_exact_host_folder_then_the_container_folder():
    uri = folder_uri("/home/me/my project/.localml/endpoints/ep/blue", "/var/azureml-app/onlinescoring")
    hex_part = uri.removeprefix("vscode-remote://dev-container+").removesuffix("/var/azureml-app/onlinescoring")
    assert bytes.fromhex(hex_part).decode() == "/home/me/my project/.localml/endpoints/ep/blue"


def test_on_wsl_the_folder_is_converted_with_wslpath_first(tmp_path, monkeypatch):
    fake = tmp_path / "wslpath"
    fake.write_text(f"#!{sys.executable}\nimport sys\n"
                    "assert sys.argv[1] == '-w', sys.argv\n"
                    "print('\\\\\\\\wsl.localhost\\\\Debian' + sys.argv[2].replace('/', '\\\\'))\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    command = code_command(Path("/home/me/my project/state"), "/var/azureml-app/code", wsl=True)
    windows = "\\\\wsl.localhost\\Debian\\home\\me\\my project\\state"
    assert command == ["code", "--folder-uri", folder_uri(windows, "/var/azureml-app/code")]
    assert command[2] == "vscode-remote://dev-container+" + windows.encode().hex() + "/var/azureml-app/code"
