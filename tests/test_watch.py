"""Watch mode's file following, on real file-system events (no Docker): what counts as a save, what is
ignored, and a burst of saves as one change."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from localml_tasks import watch


def follow(folders: list[Path], polled: list[Path]) -> tuple[list[tuple[list[str], list[str]]], threading.Event,
                                                            threading.Thread]:
    calls: list[tuple[list[str], list[str]]] = []
    stop, ready = threading.Event(), threading.Event()
    thread = threading.Thread(target=watch.watch, args=([str(f) for f in folders], lambda: [str(p) for p in polled],
                                                        lambda a, b: calls.append((a, b))),
                              kwargs={"stop": stop, "on_ready": ready.set}, daemon=True)
    thread.start()
    assert ready.wait(10)  # the watcher reports events from here on
    return calls, stop, thread


def wait_for_calls(calls: list, count: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while len(calls) < count and time.monotonic() < deadline:
        time.sleep(0.02)


def test_a_burst_of_saves_is_one_change_and_editor_litter_is_ignored(tmp_path):
    code = tmp_path / "code"
    (code / "__pycache__").mkdir(parents=True)
    (code / ".git").mkdir()
    calls, stop, thread = follow([code], [])
    try:
        # litter only: nothing to report
        (code / "__pycache__" / "score.cpython-311.pyc").write_bytes(b"x")
        (code / ".git" / "index").write_bytes(b"x")
        (code / ".score.py.swp").write_text("swap")
        (code / "score.py~").write_text("backup")
        (code / "4913").write_text("")
        (code / ".#score.py").write_text("lock")
        time.sleep(1.0)
        assert calls == []
        # format-on-save: the file written three times in quick succession, a helper beside it
        for text in ("a = 1\n", "a = 1\n\n", "a = 2\n"):
            (code / "score.py").write_text(text)
            time.sleep(0.01)
        (code / "helper.py").write_text("b = 1\n")
        wait_for_calls(calls, 1)
        time.sleep(0.5)
        assert len(calls) == 1
        in_folders, among_files = calls[0]
        assert sorted(Path(p).name for p in in_folders) == ["helper.py", "score.py"] and among_files == []
    finally:
        stop.set()
        thread.join(timeout=5)


def test_configuration_files_are_followed_by_their_stat(tmp_path):
    code = tmp_path / "code"
    code.mkdir()
    spec = tmp_path / "blue-deployment.yml"
    spec.write_text("name: blue\n")
    calls, stop, thread = follow([code], [spec])
    try:
        spec.write_text("name: blue\ninstance_count: 1\n")
        wait_for_calls(calls, 1)
        assert calls == [([], [str(spec)])]
    finally:
        stop.set()
        thread.join(timeout=5)


def test_a_one_file_model_is_polled_and_folders_get_events(tmp_path):
    code, model = tmp_path / "code", tmp_path / "model.pkl"
    code.mkdir()
    model.write_bytes(b"m")
    resolved = {"code_dir": str(code), "model_path": str(model), "conda_file": str(tmp_path / "conda.yml"),
                "endpoint_path": None}
    folders, files = watch.folders_and_files(resolved, tmp_path / "blue.yml", str(tmp_path / "endpoint.yml"))
    assert folders == [str(code)]
    assert files == [str(tmp_path / "blue.yml"), str(tmp_path / "conda.yml"), str(tmp_path / "endpoint.yml"),
                     str(model)]


def test_a_save_made_while_the_watcher_starts_is_not_lost(tmp_path, monkeypatch):
    code = tmp_path / "code"
    code.mkdir()
    (code / "score.py").write_text("a = 1\n")
    calls: list[tuple[list[str], list[str]]] = []
    stop = threading.Event()

    def save_while_starting() -> None:
        (code / "score.py").write_text("a = 22\n")  # before the operating system watches the folder

    thread = threading.Thread(target=watch.watch, args=([str(code)], list, lambda a, b: calls.append((a, b))),
                              kwargs={"stop": stop, "on_ready": lambda: None}, daemon=True)
    original = watch.signature
    first = True

    def signature_then_save(paths):
        nonlocal first
        taken = original(paths)
        if first and paths:
            first = False
            save_while_starting()
        return taken

    monkeypatch.setattr(watch, "signature", signature_then_save)
    try:
        thread.start()
        wait_for_calls(calls, 1)
    finally:
        stop.set()
        thread.join(timeout=5)
    assert calls and [Path(p).name for p in calls[0][0]] == ["score.py"]
