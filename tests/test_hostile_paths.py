"""Hostile input (issue 15): system folders as code or model, folders too large to watch or hash, mount strings
with commas, request files that are folders or huge. Each gives one `error:` line naming the file:line and key
(or the file), a fix, exit 1 and no traceback; nothing reaches Docker unless the test is marked so.

Huge files are sparse (truncate): their size is real, no disk is used, and reading them would take seconds,
so a test that finishes quickly proves nothing read them whole.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from conftest import BASE_IMAGE, REPO, Project, sample_copy
from doit.cmd_base import ModuleTaskLoader
from doit.doit_cmd import DoitMain

from localml_tasks import filecheck, invoke, server
from localml_tasks.container import render_container
from localml_tasks.devcontainer import render_devcontainer
from localml_tasks.errors import LocalmlError
from localml_tasks.spec import load_deployment, system_folder

NO_DOCKER = {"DOCKER_HOST": "unix:///nonexistent.sock"}  # nothing here may reach a Docker engine
DEVCONTAINER_CLI = REPO / ".tools" / "node_modules" / ".bin" / "devcontainer"
GiB = 1024**3
MiB = 1024**2


def sparse(path: Path, size: int, head: bytes = b"", tail: bytes = b"") -> Path:
    """A file of size bytes that uses no disk: head at its start, tail at its end, holes between."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as file:
        file.write(head)
        file.truncate(size)
        if tail:
            file.seek(size - len(tail))
            file.write(tail)
    return path


def error_of(call, *args, **kwargs) -> str:
    with pytest.raises(LocalmlError) as caught:
        call(*args, **kwargs)
    return caught.value.render()


def line_of(path: Path, anchor: str) -> int:
    return next(number for number, text in enumerate(path.read_text().splitlines(), 1) if anchor in text)


def failed(project: Project, *args: str, env: dict[str, str] | None = None) -> str:
    """Run a command that must fail cleanly: exit 1, `error:` lines with a fix, no traceback. Its stderr."""
    result = project.run(*args, env={**NO_DOCKER, **(env or {})}, timeout=120)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr, result.stderr
    assert result.stderr.startswith("error: ") and "\n  fix: " in result.stderr, result.stderr
    return result.stderr


@pytest.fixture(autouse=True)
def _no_folder_remembered() -> Iterator[None]:
    filecheck.forget_folders()
    yield
    filecheck.forget_folders()


# --- system folders as code, model or build context -----------------------------------------------


def test_code_at_the_root_of_the_file_system_is_refused_at_its_line(project):
    project.edit("blue-deployment.yml", "code: onlinescoring/", "code: /")
    stderr = failed(project, "validate", f"spec={project.spec}")
    line = line_of(project.spec, "code: /")
    assert stderr.count("error: ") == 1, stderr
    assert f"blue-deployment.yml:{line}:3: code_configuration.code: code folder '/' is the root of the file system: " \
           "localml would mount it read-write into the container" in stderr
    assert "fix: point code at the folder holding your scoring script" in stderr


def test_a_model_at_the_root_is_refused_without_walking_the_disk(project, monkeypatch):
    project.edit("blue-deployment.yml", "path: model/", "path: /")
    stderr = failed(project, "validate", f"spec={project.spec}")
    line = line_of(project.spec, "path: /")
    assert f"blue-deployment.yml:{line}:3: model.path: model path '/' is the root of the file system" in stderr
    assert "fix: point model.path at your model file or the folder holding it" in stderr
    # every command loads the tasks, and with them the files the server stage watches: none walks / any more
    listed = project.run("list", env=NO_DOCKER, timeout=120)
    assert listed.returncode == 0 and "Traceback" not in listed.stderr, listed.stderr
    walked = []
    real_survey = filecheck.survey
    monkeypatch.setattr(filecheck, "survey",
                        lambda root, *args, **kwargs: walked.append(str(root)) or real_survey(root, *args, **kwargs))
    error_of(load_deployment, project.spec)
    assert walked == [str(project.root / "onlinescoring")]  # the code folder only, never /


def test_the_home_folder_itself_is_refused_a_project_inside_it_is_not(project, tmp_path):
    home = tmp_path / "home" / "someone"
    (home / "project").mkdir(parents=True)
    (home / "score.py").write_text((project.root / "onlinescoring" / "score.py").read_text())
    project.edit("blue-deployment.yml", "code: onlinescoring/", f"code: {home}")
    stderr = failed(project, "validate", f"spec={project.spec}", env={"HOME": str(home)})
    assert f"code_configuration.code: code folder '{home}' is your home folder ({home})" in stderr


def test_home_and_the_folders_above_it(monkeypatch, tmp_path):
    home = tmp_path / "users" / "someone"
    home.mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    assert system_folder(home) == f"your home folder ({home})"
    assert system_folder(home.parent) == f"a folder above your home folder ({home})"
    assert system_folder(home / "project") is None


@pytest.mark.parametrize("folder", ["/", "/usr", "/etc", "/var", "/bin", "/lib", "/proc", "/sys", "/dev", "/boot",
                                    "/opt", "/root", "/tmp", "/home", "/usr/local", "/var/tmp"])
def test_system_folders_are_refused(folder, monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # whoever runs the tests: /root is refused as a system folder
    resolved = Path(folder).resolve()  # as load_deployment passes it: /bin is /usr/bin on a merged-/usr system
    assert system_folder(resolved) in ("the root of the file system", "a system folder")


def test_folders_inside_system_folders_are_fine(tmp_path):
    assert system_folder(tmp_path) is None  # under /tmp
    assert system_folder(Path("/opt/models/resnet")) is None
    assert system_folder(Path("/mnt/c")) == "a system folder"  # WSL: a whole Windows drive
    assert system_folder(Path("/mnt/data")) is None


def test_a_symlink_to_the_root_is_refused_and_named_with_where_it_leads(project):
    (project.root / "rootlink").symlink_to("/")
    project.edit("blue-deployment.yml", "code: onlinescoring/", "code: rootlink")
    stderr = failed(project, "validate", f"spec={project.spec}")
    assert "code_configuration.code: code folder 'rootlink' (resolved: /) is the root of the file system" in stderr


def test_a_set_override_to_a_system_folder_names_the_override(project):
    stderr = failed(project, "validate", f"spec={project.spec}", "set=model.path=/etc")
    assert "set=model.path=/etc: model.path: model path '/etc' is a system folder" in stderr


def test_a_build_context_at_the_root_is_refused(tmp_path):
    project = sample_copy(tmp_path / "project")
    project.spec.write_text(project.spec.read_text().replace(
        "  conda_file: environment/conda.yml\n", "").replace(
        "  image: mcr.microsoft.com/azureml/openmpi4.1.0-ubuntu22.04:latest\n", "  build:\n    path: /\n"))
    message = error_of(load_deployment, project.spec)
    assert "environment.build.path: build context folder '/' is the root of the file system: docker build would " \
           "send every file under it" in message
    assert "fix: point build.path at the folder holding your Dockerfile" in message


# --- folders too large to watch, files too large to hash ------------------------------------------


def test_a_code_folder_with_too_many_files_is_refused_before_the_walk_ends(tmp_path, monkeypatch):
    project = sample_copy(tmp_path / "project")
    for number in range(12):
        (project.root / "onlinescoring" / f"data-{number}.csv").write_text("1\n")
    monkeypatch.setattr(filecheck, "MAX_FILES", 10)
    message = error_of(load_deployment, project.spec)
    line = line_of(project.spec, "code: onlinescoring/")
    assert f"blue-deployment.yml:{line}:3: code_configuration.code: code folder 'onlinescoring/' holds more than " \
           "10 files (counting stopped after" in message
    assert "fix: point code at the folder holding your scoring script" in message
    # and no command walks further than that to list the files it watches
    assert len(server.watched_files(str(project.root / "onlinescoring"), None)) == 10


def test_a_huge_model_file_is_tracked_by_metadata_and_validate_says_so(project):
    sparse(project.root / "model" / "weights.bin", 5 * GiB)
    result = project.run("validate", f"spec={project.spec}", env=NO_DOCKER, timeout=120)
    assert result.returncode == 0, result.stderr
    notes = [line for line in result.stdout.splitlines() if "weights.bin" in line]
    assert notes == ["validate      note: model.path: weights.bin (5 GiB) is over 256 MiB: changes to it are seen by "
                     "size, modification time and inode, not by content (hashing it would take about 13 s); a touch "
                     "reloads the server too"], result.stdout


def test_the_checker_never_hashes_a_huge_file_and_sees_a_touch_or_a_replacement(tmp_path):
    big = sparse(tmp_path / "model" / "weights.bin", 5 * GiB)
    checker = filecheck.ContentOrMetadataChecker()
    started = time.perf_counter()
    state = checker.get_state(str(big), None)
    assert time.perf_counter() - started < 1  # hashing 5 GiB takes 10 s or more
    assert state[2].startswith("metadata size=5368709120 mtime_ns=")
    assert not checker.check_modified(str(big), os.stat(big), state)
    assert checker.get_state(str(big), state) is None  # unchanged: nothing to save
    os.utime(big, ns=(time.time_ns(), time.time_ns() + 1_000_000_000))
    assert checker.check_modified(str(big), os.stat(big), state)  # touched: seen, without reading it
    state = checker.get_state(str(big), state)
    copy = sparse(tmp_path / "copy.bin", 5 * GiB)
    stat = os.stat(big)
    os.utime(copy, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    os.replace(copy, big)  # same size and time, another file (inode)
    assert checker.check_modified(str(big), os.stat(big), state)


def test_small_files_are_checked_by_content_as_doit_does(tmp_path):
    small = tmp_path / "score.py"
    small.write_text("def run(data): return data\n")
    checker = filecheck.ContentOrMetadataChecker()
    state = checker.get_state(str(small), None)
    assert state[2] == hashlib.md5(small.read_bytes()).hexdigest()
    os.utime(small, ns=(time.time_ns(), time.time_ns() + 1_000_000_000))
    assert not checker.check_modified(str(small), os.stat(small), state)  # touched, same content
    small.write_text("def run(data): return [data]\n")
    assert checker.check_modified(str(small), os.stat(small), state)


def test_a_folder_too_large_to_hash_is_tracked_by_metadata_file_by_file(tmp_path, monkeypatch):
    monkeypatch.setattr(filecheck, "FOLDER_CONTENT_LIMIT", 3 * MiB)
    folder = tmp_path / "model"
    for number in range(4):
        sparse(folder / f"shard-{number}.bin", MiB)
    found = filecheck.survey(folder)
    assert found.by_metadata and len(found.files) == 4 and found.total_bytes == 4 * MiB
    assert found.note("model.path") == ("model.path: 4 MiB in 4 files (over 3 MiB): changes to them are seen by "
                                        "size, modification time and inode, not by content (hashing them would take "
                                        "about 1 s); a touch reloads the server too")
    shard = str(folder / "shard-0.bin")
    state = filecheck.ContentOrMetadataChecker().get_state(shard, None)
    assert state[2].startswith("metadata ")
    assert not filecheck.tracked_by_metadata(str(tmp_path / "model-other" / "x.bin"), 10)  # only that folder's


def _dodo(dep_file: Path, files: list[str], log: Path) -> dict:
    """A doit module of one task depending on files, run with localml's checker."""

    def task_reload() -> dict:
        return {"actions": [lambda: log.open("a").write("ran\n") and None], "file_dep": files}

    return {"task_reload": task_reload,
            "DOIT_CONFIG": {"dep_file": str(dep_file), "backend": "json", "verbosity": 0,
                            "check_file_uptodate": filecheck.ContentOrMetadataChecker}}


def test_doit_with_the_checker_runs_on_a_touch_of_a_huge_file_and_not_on_a_same_content_save(tmp_path):
    code, model = tmp_path / "code", tmp_path / "model"
    code.mkdir()
    (code / "score.py").write_text("def init(): pass\ndef run(data): return data\n")
    big = sparse(model / "weights.bin", 5 * GiB)
    log = tmp_path / "runs.log"

    def run_doit() -> int:
        files = server.watched_files(str(code), str(model))  # what tasks.py gives the server stage as file_dep
        module = _dodo(tmp_path / "doit.json", files, log)
        code_ = DoitMain(ModuleTaskLoader(module), config_filenames=()).run(["run"])
        assert code_ == 0
        return len(log.read_text().splitlines()) if log.exists() else 0

    started = time.perf_counter()
    assert run_doit() == 1  # first run: the small file hashed, the big one not
    assert time.perf_counter() - started < 5
    assert run_doit() == 1  # nothing changed
    later = time.time_ns() + 2_000_000_000
    os.utime(code / "score.py", ns=(later, later))
    assert run_doit() == 1  # saved with the same content: up to date, as with doit's own checker
    os.utime(big, ns=(later, later))
    assert run_doit() == 2  # the huge file touched: seen by its metadata
    (code / "score.py").write_text("def init(): pass\ndef run(data): return [data]\n")
    assert run_doit() == 3


# --- mount strings with commas ----------------------------------------------------------------------


def _comma_project(root: Path) -> Project:
    project = sample_copy(root)
    (project.root / "onlinescoring").rename(project.root / "co,de")
    (project.root / "model").rename(project.root / 'mo"del,s')
    project.edit("blue-deployment.yml", "code: onlinescoring/", "code: co,de/")
    project.edit("blue-deployment.yml", "path: model/", "path: 'mo\"del,s/'")
    return project


def _rendered(project: Project) -> dict:
    deployment = load_deployment(project.spec)
    spec = render_container(deployment, BASE_IMAGE, "sha256:1", project.root / "runtime", project.root)
    return render_devcontainer(spec, 5001, 5678, project.root / "state")


def test_a_code_folder_with_a_comma_is_quoted_in_the_mount_strings(tmp_path):
    project = _comma_project(tmp_path / "project")
    config = _rendered(project)
    fields = next(csv.reader([config["workspaceMount"]]))  # Docker reads --mount as one CSV record
    assert fields == [f"source={project.root / 'co,de'}", "target=/var/azureml-app/co,de", "type=bind"]
    assert config["workspaceFolder"] == "/var/azureml-app/co,de"
    model = [next(csv.reader([mount])) for mount in config["mounts"] if "del,s" in mount]
    model_folder = project.root / 'mo"del,s'
    assert model == [[f"source={model_folder}", model[0][1], "type=bind", "readonly"]]
    plain = next(m for m in config["mounts"] if "," in m and '"' not in m)  # paths without commas stay as they were
    assert plain.startswith("source=/")


@pytest.mark.docker
def test_the_devcontainer_cli_mounts_a_folder_with_a_comma(tmp_path, engine):
    project = _comma_project(tmp_path / "project")
    config = _rendered(project)
    label = f"localml-test-comma={uuid.uuid4().hex[:8]}"
    folder = tmp_path / "workspace"
    (folder / ".devcontainer").mkdir(parents=True)
    # the mounts as rendered, on a plain container: `devcontainer up` passes each to `docker run --mount`
    (folder / ".devcontainer" / "devcontainer.json").write_text(json.dumps({
        "image": BASE_IMAGE, "workspaceMount": config["workspaceMount"], "workspaceFolder": config["workspaceFolder"],
        "mounts": [m for m in config["mounts"] if "del,s" in m], "runArgs": [f"--label={label}"]}))
    up = subprocess.run([str(DEVCONTAINER_CLI), "up", "--workspace-folder", str(folder)],
                        capture_output=True, text=True, timeout=300)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        container = engine.containers.get(json.loads(up.stdout.strip().splitlines()[-1])["containerId"])
        mounts = {m["Destination"]: (m["Source"], m["RW"]) for m in container.attrs["Mounts"]}
        assert mounts["/var/azureml-app/co,de"] == (str(project.root / "co,de"), True)
        assert (str(project.root / 'mo"del,s'), False) in mounts.values()
    finally:
        for container in engine.containers.list(all=True, filters={"label": label}):
            container.remove(force=True)


# --- invoke: request files that are folders, missing, unreadable, huge ---------------------------


def test_a_request_that_is_a_folder_is_one_error(project, tmp_path):
    stderr = failed(project, "invoke", f"spec={project.spec}", f"request={tmp_path}")
    assert f"{tmp_path}: request file is a folder, not a file" in stderr and stderr.count("error: ") == 1


def test_a_missing_request_file_is_one_error(project, tmp_path):
    stderr = failed(project, "invoke", f"spec={project.spec}", f"request={tmp_path / 'nope.json'}")
    assert "nope.json: request file not found" in stderr


def test_an_unreadable_request_file_is_one_error(tmp_path, monkeypatch):
    locked = tmp_path / "locked.json"
    locked.write_text("{}")
    real_open = Path.open

    def refuse(self, *args, **kwargs):  # what open() says without read permission (root reads anything)
        if self == locked:
            raise PermissionError(13, "Permission denied")
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", refuse)
    message = error_of(invoke.prepare, invoke.Asked(request=str(locked)))
    assert "locked.json: request file cannot be read: permission denied" in message
    assert f"fix: make it readable (chmod u+r {locked})" in message


def test_a_request_over_the_limit_needs_force(project, tmp_path):
    big = sparse(tmp_path / "big.bin", 150 * MiB)
    stderr = failed(project, "invoke", f"spec={project.spec}", f"request={big}")
    assert "big.bin: request file is 150 MiB, over the 100 MiB invoke sends without asking" in stderr
    assert "fix: send it anyway with force=1" in stderr
    prepared = invoke.prepare(invoke.Asked(request=str(big), force=True))  # accepted, not read
    assert (prepared.payload.source, prepared.payload.size, prepared.payload.body) == (big, 150 * MiB, b"")
    assert prepared.payload.content_type == "application/octet-stream"


def test_form_files_over_the_limit_together_need_force(tmp_path):
    first, second = sparse(tmp_path / "a.bin", 60 * MiB), sparse(tmp_path / "b.bin", 60 * MiB)
    asked = invoke.Asked(form=f"a=@{first} b=@{second}")
    assert "the form's files together is 120 MiB, over the 100 MiB" in error_of(invoke.prepare, asked)


def test_a_large_json_file_is_sniffed_not_parsed(tmp_path):
    not_json = sparse(tmp_path / "zeros.json", 40 * MiB)
    assert "zeros.json:1: not valid JSON: it starts with b'\\x00" in error_of(invoke.file_payload, not_json, None)
    cut = sparse(tmp_path / "cut.json", 40 * MiB, head=b'{"data": [', tail=b"1, 2,")
    assert "starts with { but ends with b','" in error_of(invoke.file_payload, cut, None)
    whole = sparse(tmp_path / "rows.json", 40 * MiB, head=b'{"data": [', tail=b"0]}\n")
    payload = invoke.file_payload(whole, None)
    assert (payload.source, payload.content_type) == (whole, "application/json")


class _Sink(BaseHTTPRequestHandler):
    """Reads the body block by block (never whole) and answers with its length and hash; /slow never answers;
    /drop hangs up after the first block."""

    def do_POST(self) -> None:
        length = int(self.headers["Content-Length"])
        if self.path == "/drop":
            self.rfile.read(1 << 16)
            return  # closed with the rest unread: the sender sees the connection reset
        digest, left = hashlib.sha256(), length
        while left:
            block = self.rfile.read(min(left, 1 << 16))
            digest.update(block)
            left -= len(block)
        if self.path == "/slow":
            time.sleep(3)
            return
        answer = json.dumps({"length": length, "sha256": digest.hexdigest(),
                             "chunked": "Transfer-Encoding" in self.headers}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def sink() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Sink)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_port}"
    httpd.shutdown()
    httpd.server_close()


def test_a_large_request_is_streamed_from_the_file_with_its_length(sink, tmp_path):
    import tracemalloc

    big = sparse(tmp_path / "big.bin", 48 * MiB, head=b"start", tail=b"end")
    payload = invoke.prepare(invoke.Asked(request=str(big))).payload
    assert payload.source == big
    tracemalloc.start()
    try:
        result = invoke.post(f"{sink}/score", payload, timeout_s=60)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    expected = hashlib.sha256()
    with big.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            expected.update(block)
    assert json.loads(result.content) == {"length": 48 * MiB, "sha256": expected.hexdigest(), "chunked": False}
    assert peak < 8 * MiB  # never the whole 48 MiB (the server's side reads 64 KiB at a time, in this process too)


def test_a_timeout_on_a_large_request_names_its_size(sink, tmp_path):
    big = sparse(tmp_path / "big.bin", 20 * MiB)
    payload = invoke.prepare(invoke.Asked(request=str(big))).payload
    message = error_of(invoke.post, f"{sink}/slow", payload, timeout_s=1)
    assert "within 1 s to a large request (20 MiB)" in message
    assert "fix: a request this large takes long to send and to score" in message
    small = invoke.Payload(b"{}", "application/json")
    assert "fix: check run() in the scoring script" in error_of(invoke.post, f"{sink}/slow", small, timeout_s=1)


def test_a_connection_dropped_while_sending_says_so_with_the_size(sink, tmp_path):
    big = sparse(tmp_path / "big.bin", 20 * MiB)
    payload = invoke.prepare(invoke.Asked(request=str(big))).payload
    message = error_of(invoke.post, f"{sink}/drop", payload, timeout_s=30)
    assert f"the connection to {sink}/drop was closed while sending a 20 MiB request (" in message
    assert "fix: doit logs shows whether the server stopped" in message


def test_nothing_listening_still_says_so(tmp_path):
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    message = error_of(invoke.post, f"http://127.0.0.1:{port}/score", invoke.Payload(b"{}", "application/json"),
                       timeout_s=5)
    assert f"nothing answers at http://127.0.0.1:{port}/score" in message


def test_small_payloads_stay_in_memory_and_force_is_off_by_default(tmp_path):
    small = tmp_path / "request.json"
    small.write_text('{"data": [1, 2]}')
    assert invoke.file_payload(small, None) == invoke.Payload(b'{"data": [1, 2]}', "application/json")
    assert invoke.Payload(b"abc", "text/plain").size == 3
    assert invoke.Asked().force is False
