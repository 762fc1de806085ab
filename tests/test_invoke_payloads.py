"""doit invoke for any payload: bytes with their content type, multipart forms, headers, binary answers.

The pure parts (content types, form= and header= specs, reading an answer) are tested directly; the
rest against one real deployment per module: azmlinfsrv in raw HTTP mode behind localml's router,
with a scoring script that reports what arrived (or echoes a JPEG back).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests
from conftest import REPO, Project, remove_containers, sample_copy

from localml_tasks import invoke
from localml_tasks.errors import LocalmlError
from localml_tasks.router_server import DEPLOYMENT_HEADER, forward, read_body

# a small JPEG-like body: the JPEG markers, an ASCII tag we can look for in output, every byte value
JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00" + bytes(range(256)) + b"\xff\xd9"
REQUEST_FILE = REPO / "specs" / "sample-request.json"

# azmlinfsrv 1.x ships the raw HTTP classes as azureml_inference_server_http.api (the older
# azureml.contrib.services modules are not in its image); @rawhttp must be this module's to take effect
ECHO_SCORE = '''"""Reports what arrived, in azmlinfsrv's raw HTTP mode."""

import hashlib
import json

from azureml_inference_server_http.api.aml_request import AMLRequest, rawhttp
from azureml_inference_server_http.api.aml_response import AMLResponse


def init():
    pass


def digest(data):
    return {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


@rawhttp
def run(request: AMLRequest):
    content_type = request.headers.get("Content-Type", "")
    seen = {"content_type": content_type, "headers": {k.lower(): v for k, v in request.headers.items()}}
    if content_type.startswith("multipart/form-data"):
        files = [{"field": name, "filename": upload.filename, "content_type": upload.content_type,
                  **digest(upload.read())} for name, upload in request.files.items(multi=True)]
        return {**seen, "files": files, "form": request.form.to_dict(flat=False)}
    body = request.get_data()
    if content_type == "image/jpeg":
        return AMLResponse(body, 200, {"Content-Type": "image/jpeg"})
    if content_type.startswith("text/plain"):
        return AMLResponse("you said: " + body.decode("utf-8"), 200, {"Content-Type": "text/plain; charset=utf-8"})
    if content_type == "application/json":
        return {**seen, "json": json.loads(body)}
    return {**seen, **digest(body)}
'''


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def error_of(call, *args) -> str:
    with pytest.raises(LocalmlError) as caught:
        call(*args)
    return caught.value.render()


# --- pure: what is sent -----------------------------------------------------------------------------


def test_a_file_goes_with_the_content_type_of_its_extension():
    assert invoke.content_type_for(Path("photo.JPG")) == "image/jpeg"
    assert invoke.content_type_for(Path("request.json")) == "application/json"
    assert invoke.content_type_for(Path("notes.txt")) == "text/plain"
    assert invoke.content_type_for(Path("data.weird-extension")) == "application/octet-stream"
    assert invoke.content_type_for(Path("no-extension")) == "application/octet-stream"
    assert invoke.content_type_for(Path("rows.json.gz")) == "application/gzip"  # what it is, not what it holds


def test_form_specs_split_like_curl_F():
    parts = invoke.parse_form("image=@'my photo.jpg' note='two words' empty= "
                              "table=@rows;v2.bin;type=text/csv;filename=rows.csv")
    assert parts == [
        invoke.FormPart("image", path=Path("my photo.jpg")),
        invoke.FormPart("note", value="two words"),
        invoke.FormPart("empty", value=""),
        invoke.FormPart("table", path=Path("rows;v2.bin"), content_type="text/csv", filename="rows.csv"),
    ]
    assert 'form: "photo.jpg" is not name=value or name=@file' in error_of(invoke.parse_form, "photo.jpg")
    assert 'form: "=x" is not name=value' in error_of(invoke.parse_form, "=x")
    assert 'form: "image=@": no file after @' in error_of(invoke.parse_form, "image=@")
    assert "No closing quotation" in error_of(invoke.parse_form, "note='open")
    assert "form= is empty" in error_of(invoke.parse_form, "  ")


def test_headers_split_at_a_semicolon_before_a_name_and_keep_colons_and_parameters_in_values():
    assert invoke.parse_headers("X-Trace: abc:123; Content-Type: text/plain; charset=utf-8\nX-Url: http://a/b") == {
        "X-Trace": "abc:123", "Content-Type": "text/plain; charset=utf-8", "X-Url": "http://a/b"}
    assert invoke.parse_headers("X-A: 1; x-a: 2; X-Empty:") == {"X-A": "1, 2", "X-Empty": ""}
    assert invoke.parse_headers("") == {}
    assert 'header: "Bearer token" is not "Name: value"' in error_of(invoke.parse_headers, "Bearer token")
    assert "only Latin-1" in error_of(invoke.parse_headers, "X-Name: 名前")


def test_prepare_checks_the_variables_together_before_anything_is_sent(tmp_path: Path):
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(JPEG)
    both = error_of(invoke.prepare, invoke.Asked(request=str(photo), form=f"image=@{photo}"))
    assert "request= and form= both given" in both and "fix: give one" in both
    assert "no request given" in error_of(invoke.prepare, invoke.Asked())
    assert "form= sets the Content-Type itself" in error_of(
        invoke.prepare, invoke.Asked(form=f"image=@{photo}", content_type="image/png"))
    assert "disagree" in error_of(invoke.prepare, invoke.Asked(request=str(photo), content_type="image/png",
                                                               header="Content-Type: image/gif"))
    assert "not a media type" in error_of(invoke.prepare, invoke.Asked(request=str(photo), content_type="png"))

    sent = invoke.prepare(invoke.Asked(request=str(photo), header=f"{DEPLOYMENT_HEADER}: green; X-A: 1"))
    assert sent.payload == invoke.Payload(JPEG, "image/jpeg")
    assert sent.named == "green" and sent.headers == {"X-A": "1", DEPLOYMENT_HEADER: "green"}
    as_header = invoke.prepare(invoke.Asked(request=str(photo), header="content-type: application/x-raw"))
    assert as_header.payload.content_type == "application/x-raw" and as_header.headers == {}


def test_a_form_payload_is_multipart_with_the_files_name_type_and_bytes(tmp_path: Path):
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(JPEG)
    payload = invoke.form_payload(invoke.parse_form(f"image=@{photo} note=hi"))
    boundary = payload.content_type.split("boundary=")[1]
    assert payload.content_type.startswith("multipart/form-data; boundary=")
    assert b'name="image"; filename="photo.jpg"\r\nContent-Type: image/jpeg\r\n\r\n' + JPEG in payload.body
    assert b'name="note"\r\n\r\nhi\r\n' in payload.body and payload.body.endswith(f"--{boundary}--\r\n".encode())
    missing = error_of(invoke.form_payload, invoke.parse_form(f"image=@{tmp_path / 'nope.jpg'}"))
    assert "nope.jpg: form file of field image not found" in missing and "fix: check the path after image=@" in missing


def test_request_files_that_cannot_be_sent_are_one_clear_error(tmp_path: Path):
    assert "request file not found" in error_of(invoke.file_payload, tmp_path / "nope.bin", None)
    assert "request file is a folder, not a file" in error_of(invoke.file_payload, tmp_path, None)
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    assert "request file is not a regular file (a named pipe)" in error_of(invoke.file_payload, fifo, None)
    latin = tmp_path / "latin.json"
    latin.write_bytes(b'{"name": "caf\xe9"}')
    assert "latin.json: not UTF-8 text (byte 0xe9 at offset 13)" in error_of(invoke.file_payload, latin, None)
    broken = tmp_path / "broken.json"
    broken.write_text('{"data": [1,')
    assert "broken.json:1:13: not valid JSON" in error_of(invoke.file_payload, broken, None)
    # bytes that are not JSON are fine in a file that does not claim to be JSON
    other = tmp_path / "broken.txt"
    other.write_text('{"data": [1,')
    assert invoke.file_payload(other, None) == invoke.Payload(b'{"data": [1,', "text/plain")


def test_output_must_name_a_file_in_an_existing_folder(tmp_path: Path):
    assert invoke.output_path(str(tmp_path / "answer.jpg")) == tmp_path / "answer.jpg"
    assert "output= is a folder" in error_of(invoke.output_path, str(tmp_path))
    assert "output= is a folder" in error_of(invoke.output_path, f"{tmp_path}/new/")
    missing = error_of(invoke.output_path, str(tmp_path / "new" / "answer.jpg"))
    assert f"folder {tmp_path / 'new'} does not exist" in missing and "mkdir -p" in missing


# --- pure: what came back ---------------------------------------------------------------------------


def test_answers_are_json_text_or_binary_by_type_and_by_what_decodes():
    assert invoke.read_answer("application/json", b'{"a": 1}').value == {"a": 1}
    assert invoke.read_answer(None, b"[1, 2]").kind == "json"
    assert invoke.read_answer("text/plain", b"[1, 2]").kind == "json"  # a custom server's JSON, loosely typed
    assert invoke.read_answer("text/html", b"<p>hi</p>").value == "<p>hi</p>"
    assert invoke.read_answer("text/plain; charset=latin-1", b"caf\xe9").value == "café"
    assert invoke.read_answer("application/json", b"not json").kind == "text"
    assert invoke.read_answer("image/jpeg", JPEG).kind == "binary"
    assert invoke.read_answer("text/plain", b"caf\xe9").kind == "binary"  # does not decode as UTF-8
    assert invoke.read_answer(None, b"\x1b[2J wipe").kind == "binary"  # control characters stay off the terminal
    summary = invoke.read_answer("image/jpeg", JPEG).summary()
    assert summary == f"binary answer: image/jpeg, {len(JPEG):,} bytes — use output=FILE to save it"


def test_the_router_reads_chunked_bodies_and_bodies_by_length():
    chunked = io.BytesIO(b"3;ext=1\r\nabc\r\n2\r\n\xff\x00\r\n0\r\nTrailer: x\r\n\r\nnext request")
    assert read_body(chunked, None, "chunked") == b"abc\xff\x00"
    assert chunked.read() == b"next request"  # the request's end, no further
    assert read_body(io.BytesIO(b"12345"), "3", None) == b"123"
    assert read_body(io.BytesIO(b""), None, None) == b""


class _Recorder(BaseHTTPRequestHandler):
    """Answers every POST with what it received: its headers and body (as a deployment would see them)."""

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        answer = json.dumps({"headers": dict(self.headers.items()), "sha256": sha256(body)}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def recorder() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


def test_the_router_forwards_the_content_type_as_sent_and_none_when_none_was_sent(recorder):
    target = {"base": recorder, "scoring": f"{recorder}/score"}
    typed = "multipart/form-data; boundary=abc123"
    status, _, answer = forward(target, "POST", "/score", {"Content-Type": typed}, JPEG)
    assert status == 200 and json.loads(answer)["headers"]["Content-Type"] == typed
    assert json.loads(answer)["sha256"] == sha256(JPEG)
    status, _, answer = forward(target, "POST", "/score", {}, b"raw bytes")
    # urllib alone would add Content-Type: application/x-www-form-urlencoded
    assert status == 200 and "Content-Type" not in json.loads(answer)["headers"]


# --- one real deployment ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, engine) -> Iterator[Project]:
    project = sample_copy(tmp_path_factory.mktemp("payloads") / "project")
    project.root.joinpath("onlinescoring", "score.py").write_text(ECHO_SCORE)
    try:
        result = project.run("debug", f"spec={project.spec}", "vscode=0")
        assert result.returncode == 0, result.stdout + result.stderr
        yield project
    finally:
        remove_containers(project.endpoint)


def invoked(project: Project, *variables: str) -> subprocess.CompletedProcess:
    result = project.run("invoke", *variables)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    return result


def json_answer(result: subprocess.CompletedProcess) -> dict:
    return json.loads(result.stdout[result.stdout.index("{"):])


def failed(project: Project, *variables: str) -> str:
    """The CLI's error: exit code non-zero, one message, no traceback."""
    result = project.run("invoke", *variables)
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stdout + result.stderr, result.stdout + result.stderr
    return result.stderr


@pytest.mark.docker
def test_a_jpeg_goes_as_image_jpeg_and_output_saves_the_answer_byte_for_byte(served, tmp_path):
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(JPEG)
    saved = tmp_path / "echo.jpg"
    saved.write_bytes(b"an older answer")  # output= is the user's explicit wish: overwritten
    result = invoked(served, f"request={photo}", f"output={saved}")
    assert saved.read_bytes() == JPEG  # the script echoes only an image/jpeg body as image/jpeg
    assert "200 from blue (by traffic)" in result.stdout
    assert f"saved the answer (200, image/jpeg, {len(JPEG):,} bytes) to {saved}" in result.stdout


@pytest.mark.docker
def test_a_binary_answer_without_output_is_summarised_never_dumped(served, tmp_path):
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(JPEG)
    result = invoked(served, f"request={photo}")
    assert f"binary answer: image/jpeg, {len(JPEG):,} bytes — use output=FILE to save it" in result.stdout
    assert "JFIF" not in result.stdout


@pytest.mark.docker
def test_a_multipart_upload_arrives_with_its_file_name_size_hash_and_text_fields(served, tmp_path):
    photo = tmp_path / "my photo.jpg"
    photo.write_bytes(JPEG)
    rows = tmp_path / "rows.bin"
    rows.write_bytes(b"a,b\n1,2\n")
    answer = json_answer(invoked(served, f"form=image=@'{photo}' note='two words' table=@{rows};type=text/csv"))
    assert answer["content_type"].startswith("multipart/form-data; boundary=")
    assert answer["files"] == [
        {"field": "image", "filename": "my photo.jpg", "content_type": "image/jpeg",
         "size": len(JPEG), "sha256": sha256(JPEG)},
        {"field": "table", "filename": "rows.bin", "content_type": "text/csv",
         "size": 8, "sha256": sha256(rows.read_bytes())},
    ]
    assert answer["form"] == {"note": ["two words"]}


@pytest.mark.docker
def test_headers_reach_run_and_the_deployment_header_names_one(served):
    answer = json_answer(invoked(served, f"request={REQUEST_FILE}", "header=X-Trace: abc:123; X-Note: two words"))
    assert answer["headers"]["x-trace"] == "abc:123" and answer["headers"]["x-note"] == "two words"
    named = invoked(served, f"request={REQUEST_FILE}", f"header={DEPLOYMENT_HEADER}: blue")
    assert "200 from blue (named)" in named.stdout


@pytest.mark.docker
def test_json_requests_still_go_as_json_and_deployment_picks_one(served):
    result = invoked(served, f"request={REQUEST_FILE}", "deployment=blue")
    assert "200 from blue (named)" in result.stdout
    answer = json_answer(result)
    assert answer["content_type"] == "application/json"
    assert answer["json"] == json.loads(REQUEST_FILE.read_text())


@pytest.mark.docker
def test_other_files_go_as_bytes_typed_by_extension_or_content_type(served, tmp_path):
    blob = tmp_path / "weights.weird"
    blob.write_bytes(JPEG)
    answer = json_answer(invoked(served, f"request={blob}"))
    assert answer["content_type"] == "application/octet-stream"
    assert (answer["size"], answer["sha256"]) == (len(JPEG), sha256(JPEG))
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(JPEG)
    retyped = json_answer(invoked(served, f"request={photo}", "content_type=application/x-raw-image"))
    assert retyped["content_type"] == "application/x-raw-image" and retyped["sha256"] == sha256(JPEG)


@pytest.mark.docker
def test_a_text_answer_prints_as_text(served, tmp_path):
    note = tmp_path / "note.txt"
    note.write_text("hello [bold]there[/bold]")  # printed as is, not as rich markup
    assert "you said: hello [bold]there[/bold]" in invoked(served, f"request={note}").stdout


@pytest.mark.docker
def test_what_cannot_be_sent_is_one_clear_error_with_a_fix(served, tmp_path):
    assert "request file is a folder, not a file" in failed(served, f"request={tmp_path}")
    assert "missing.bin: request file not found" in failed(served, f"request={tmp_path / 'missing.bin'}")
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    assert "not a regular file (a named pipe)" in failed(served, f"request={fifo}")
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(JPEG)
    assert "form file of field image not found" in failed(served, f"form=image=@{tmp_path / 'nope.jpg'}")
    assert "is not name=value or name=@file" in failed(served, "form=just-a-word")
    both = failed(served, f"request={photo}", f"form=image=@{photo}")
    assert "request= and form= both given" in both and "fix: give one" in both
    nowhere = failed(served, f"request={photo}", f"output={tmp_path / 'new' / 'answer.jpg'}")
    assert "does not exist" in nowhere and "fix: create it (mkdir -p" in nowhere
    assert "output= is a folder" in failed(served, f"request={photo}", f"output={tmp_path}")


def _obeying_permissions(locked: Path) -> list[str] | None:
    """A command prefix under which locked (mode 000) cannot be read, even by root: [] when not root;
    as root, setpriv without CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH; None when that cannot be done here."""
    if os.geteuid() != 0:
        return []
    prefix = ["setpriv", "--inh-caps=-all", "--bounding-set=-dac_override,-dac_read_search"]
    try:
        probe = subprocess.run([*prefix, sys.executable, "-c", f"open({str(locked)!r}, 'rb')"], capture_output=True)
    except FileNotFoundError:
        return None
    return prefix if b"PermissionError" in probe.stderr else None


@pytest.mark.docker
def test_an_unreadable_request_file_is_a_clear_error(served, tmp_path):
    locked = tmp_path / "locked.json"
    locked.write_text("{}")
    locked.chmod(0)
    prefix = _obeying_permissions(locked)
    if prefix is None:
        pytest.skip("running as root, and setpriv cannot drop CAP_DAC_OVERRIDE here: root reads any file")
    result = subprocess.run([*prefix, sys.executable, "-m", "localml_tasks", "invoke", f"request={locked}"],
                            cwd=served.root, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "NO_COLOR": "1", "COLUMNS": "200"})
    assert result.returncode != 0 and "Traceback" not in result.stdout + result.stderr, result.stderr
    assert "locked.json: request file cannot be read: permission denied" in result.stderr
    assert f"fix: make it readable (chmod u+r {locked})" in result.stderr


@pytest.mark.docker
def test_the_router_forwards_a_chunked_body_whole(served):
    scoring_uri = json.loads(served.run("show").stdout)["scoring_uri"]
    chunked = requests.post(scoring_uri, data=iter([b"abc", b"\xff\x00"]), timeout=60,  # a generator goes chunked
                            headers={"Content-Type": "application/x-raw"})
    assert chunked.status_code == 200, chunked.text
    assert (chunked.json()["size"], chunked.json()["sha256"]) == (5, sha256(b"abc\xff\x00"))
