"""The debug server's reload bookkeeping, without a server: the names init() keeps, and how a failed load
is described (where in the user's code, paths as on the host)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from localml_tasks.in_container import debug_server


def test_global_names_are_those_init_declares():
    source = "def init():\n    global model, scale\n    model = 1\n    if model:\n        global cache\n"
    assert debug_server._global_names(source) == ["model", "scale", "cache"]
    assert debug_server._global_names("    def init(self):\n        global a\n") == ["a"]  # a method's indent
    assert debug_server._global_names("def init(:\n") == []


def load(path: Path):
    spec = importlib.util.spec_from_file_location("entry_module", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Wrapped(Exception):
    """As azmlinfsrv wraps the user's exception (UserScriptException.user_ex)."""

    def __init__(self, user_ex: BaseException) -> None:
        super().__init__("Caught an unhandled exception from the user script")
        self.user_ex = user_ex


@pytest.fixture
def code(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "onlinescoring"
    folder.mkdir()
    monkeypatch.setenv("LOCALML_PATH_MAP", f'{{"{folder}": "/home/me/project/onlinescoring"}}')
    return folder


def test_an_exception_in_init_names_the_users_line_with_host_paths(code):
    (code / "score.py").write_text("import os\n\n\ndef init():\n    raise KeyError('no such column')\n")
    module = load(code / "score.py")
    try:
        module.init()
    except KeyError as exc:
        failure = debug_server._describe_failure(Wrapped(exc), str(code) + "/")
    assert failure["message"] == "KeyError: 'no such column'"
    assert (failure["file"], failure["line"], failure["function"]) == \
        ("/home/me/project/onlinescoring/score.py", 5, "init")
    assert 'File "/home/me/project/onlinescoring/score.py", line 5, in init' in failure["traceback"]
    assert str(code) not in failure["traceback"]


def test_a_syntax_error_names_its_line(code):
    (code / "helper.py").write_text("def offset(rows):\n    value = (\n")
    try:
        load(code / "helper.py")
    except SyntaxError as exc:
        failure = debug_server._describe_failure(Wrapped(exc), str(code) + "/")
    assert (failure["file"], failure["line"]) == ("/home/me/project/onlinescoring/helper.py", 2)
    assert failure["message"].startswith("SyntaxError:")
