"""Invoke — send a request to the scoring URI and show (or save) what came back.

What is sent, as `az ml online-endpoint invoke` and curl would:

- request=<file>: a `.json` file is checked to be JSON (a clear file:line:column error when it is not);
  any file is sent as its bytes, with a Content-Type from its extension (content_type= overrides); a file
  over IN_MEMORY_LIMIT is streamed from disk as it is sent (with its Content-Length), never held in memory,
  and one over REQUEST_LIMIT is refused unless force=1 asks for it;
- form="field=@path name=value": multipart/form-data like `curl -F` (split like a shell line);
- header="Name: value; Other: value": extra headers.

The answer: JSON is pretty-printed, text printed, anything else summarised on one line; output=<file>
saves the body byte for byte.
"""

from __future__ import annotations

import contextlib
import json
import mimetypes
import re
import shlex
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
import urllib3

from .errors import LocalmlError, Problem
from .health import FAILED_HEADER, Cause
from .quantities import describe_bytes
from .router_server import DEPLOYMENT_HEADER

OCTET_STREAM = "application/octet-stream"
REQUEST_FIX = 'pass request=<file> (a .json file is sent as JSON, any other file as its bytes) or form="field=@file"'
FORM_EXAMPLE = 'form="image=@photo.jpg note=\'two words\'"'
HEADER_EXAMPLE = 'header="X-Trace: abc; Authorization: Bearer token"'
# a compressed file's type is its compression, not what it holds (mimetypes reports that as an "encoding")
_COMPRESSED = {"gzip": "application/gzip", "bzip2": "application/x-bzip2", "xz": "application/x-xz",
               "br": "application/x-brotli", "compress": "application/x-compress"}
_TEXT_TYPES = {"application/xml", "application/javascript", "application/x-www-form-urlencoded",
               "application/x-ndjson", "application/yaml", "application/x-yaml", "application/csv"}
_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"  # an HTTP header name (RFC 9110 token)
# a ';' starts a new header only when "Name:" follows it, so values such as "text/plain; charset=utf-8" stay whole
_NEXT_HEADER = re.compile(rf";(?=\s*{_TOKEN}\s*:)")
_FORM_OPTION = re.compile(r"^(type|filename)=(.+)$")
REQUEST_LIMIT = 100 * 1024**2  # a larger request (file, or form files together) is sent only with force=1
IN_MEMORY_LIMIT = 16 * 1024**2  # a larger request file is streamed from disk, and its JSON only sniffed
_SNIFF_BYTES = 64 * 1024  # how much of each end of a large .json file is looked at


@dataclass(frozen=True)
class Asked:
    """What the user asked for on the command line (doit variables), unparsed."""

    request: str = ""
    form: str = ""
    content_type: str = ""
    header: str = ""
    output: str = ""
    deployment: str = ""
    force: bool = False  # force=1: send a request over REQUEST_LIMIT


@dataclass(frozen=True)
class Payload:
    body: bytes  # empty when source streams the body from a file
    content_type: str
    source: Path | None = None  # a large request file, read as it is sent
    source_size: int = 0

    @property
    def size(self) -> int:
        return self.source_size if self.source is not None else len(self.body)


@dataclass(frozen=True)
class FormPart:
    """One `curl -F` item: a text field (value) or a file upload (path)."""

    name: str
    value: str | None = None
    path: Path | None = None
    content_type: str | None = None  # ;type= on a file upload; else guessed from its name
    filename: str | None = None  # ;filename= on a file upload; else the file's own name


@dataclass(frozen=True)
class Prepared:
    """A request ready to send: body, headers (the deployment header included), where to save the answer."""

    payload: Payload
    headers: dict[str, str] = field(default_factory=dict)
    named: str | None = None  # the deployment asked for by name, if any
    output: Path | None = None


@dataclass(frozen=True)
class Answer:
    """An answer's body as shown: parsed JSON, text, or binary (summarised, never printed)."""

    kind: str  # "json" | "text" | "binary"
    value: Any
    content_type: str | None
    size: int

    def described(self) -> str:
        """One line for a binary body: its type and size."""
        return f"binary answer: {self.content_type or 'no Content-Type'}, {self.size:,} bytes"

    def summary(self) -> str:
        return f"{self.described()} — use output=FILE to save it"


@dataclass
class InvokeResult:
    status: int
    latency_ms: float
    content: bytes
    content_type: str | None = None
    deployment: str | None = None  # who answered (the endpoint's azureml-model-deployment header)
    script_failed: bool = False  # the debug server's 503: the scoring script failed to load

    @property
    def answer(self) -> Answer:
        return read_answer(self.content_type, self.content)


# --- what to send ------------------------------------------------------------------------------


def prepare(asked: Asked) -> Prepared:
    """Check everything the user gave and read the files, before anything is sent."""
    if asked.request and asked.form:
        raise LocalmlError.one("request= and form= both given: request= sends one file as the body, form= builds "
                               "a multipart body", fix=f'give one: request=photo.jpg, or {FORM_EXAMPLE}')
    if not asked.request and not asked.form:
        raise LocalmlError.one("no request given", fix=f"doit invoke request=path/to/request.json, or {FORM_EXAMPLE}")
    headers = parse_headers(asked.header)
    content_type, headers = _take_header(headers, "Content-Type", asked.content_type, "content_type")
    named, headers = _take_header(headers, DEPLOYMENT_HEADER, asked.deployment, "deployment")
    if content_type:
        check_content_type(content_type)
    output = output_path(asked.output) if asked.output else None
    if asked.form:
        if content_type:
            raise LocalmlError.one("form= sets the Content-Type itself (multipart/form-data with its boundary)",
                                   fix="leave out content_type= and the Content-Type header, or send a file "
                                       "with request=")
        payload = form_payload(parse_form(asked.form), force=asked.force)
    else:
        payload = file_payload(Path(asked.request), content_type or None, force=asked.force)
    if named:
        headers[DEPLOYMENT_HEADER] = named
    return Prepared(payload, headers, named, output)


def content_type_for(path: Path) -> str:
    """The Content-Type a file is sent with, from its name (as curl and browsers guess it)."""
    if path.suffix.lower() == ".json":
        return "application/json"  # whatever the machine's mime.types says
    guessed, encoding = mimetypes.guess_type(path.name, strict=False)
    if encoding:
        return _COMPRESSED.get(encoding, OCTET_STREAM)
    return guessed or OCTET_STREAM


def check_content_type(content_type: str) -> None:
    media = content_type.split(";")[0].strip()
    if not re.fullmatch(rf"{_TOKEN}/{_TOKEN}", media):
        raise LocalmlError.one(f"content_type={content_type}: not a media type",
                               fix="give type/subtype, e.g. content_type=image/png or content_type=text/csv")


def file_payload(path: Path, content_type: str | None, *, force: bool = False) -> Payload:
    """The file's bytes, or (over IN_MEMORY_LIMIT) the file to stream them from; a .json file must hold valid
    JSON (checked whole, with file:line:column; a streamed one by its two ends). Over REQUEST_LIMIT: only with
    force."""
    size = check_file(path, "request file", fix=REQUEST_FIX)
    check_size(size, "request file", str(path), force)
    content_type = content_type or content_type_for(path)
    if size > IN_MEMORY_LIMIT:
        if path.suffix.lower() == ".json":
            sniff_json(path)
        return Payload(b"", content_type, source=path, source_size=size)
    data = read_file(path, "request file", fix=REQUEST_FIX)
    if path.suffix.lower() == ".json":
        check_json(path, data)
    return Payload(data, content_type)


def check_size(size: int, what: str, file: str | None, force: bool) -> None:
    """Refuse a request over REQUEST_LIMIT unless force=1 asks for it."""
    if size > REQUEST_LIMIT and not force:
        raise LocalmlError.one(f"{what} is {describe_bytes(size)}, over the {describe_bytes(REQUEST_LIMIT)} invoke "
                               "sends without asking", file=file,
                               fix="send it anyway with force=1 (it is streamed from the file, not loaded into "
                                   "memory), or send a smaller request")


def sniff_json(path: Path) -> None:
    """A .json file too large to parse here: its start and end must look like JSON (an object or a list)."""
    try:
        with path.open("rb") as file:
            head = file.read(_SNIFF_BYTES)
            file.seek(max(path.stat().st_size - _SNIFF_BYTES, 0))
            tail = file.read()
    except OSError as exc:
        raise LocalmlError.one(f"request file cannot be read: {exc.strerror or exc}", file=str(path),
                               fix=REQUEST_FIX) from None
    start, end = head.lstrip(b" \t\r\n")[:1], tail.rstrip(b" \t\r\n")[-1:]
    closing = {b"{": b"}", b"[": b"]"}
    if start not in closing:
        shown = head.lstrip(b" \t\r\n")[:20]
        raise LocalmlError.one(f"not valid JSON: it starts with {shown!r}, not {{ or [", file=str(path), line=1,
                               fix="the request body must be JSON (a file this large is checked only at its ends)")
    if end != closing[start]:
        raise LocalmlError.one(f"not valid JSON: it starts with {start.decode()} but ends with {end!r}, not "
                               f"{closing[start].decode()} (cut short?)", file=str(path),
                               fix="the request body must be JSON (a file this large is checked only at its ends)")


def check_json(path: Path, data: bytes) -> None:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise LocalmlError.one(f"not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start})", file=str(path),
                               fix="save the JSON as UTF-8, or send the bytes unchecked from a file with "
                                   "another extension") from None
    try:
        json.loads(text)
    except json.JSONDecodeError as exc:
        raise LocalmlError.one(f"not valid JSON: {exc.msg}", file=str(path), line=exc.lineno,
                               column=exc.colno, fix="the request body must be JSON") from None


def check_file(path: Path, what: str, *, fix: str) -> int:
    """A regular file this process may read: its size, or one clear error (missing, a folder, a pipe or device,
    unreadable). Nothing is read."""
    try:
        info = path.stat()
    except (FileNotFoundError, NotADirectoryError):
        raise LocalmlError.one(f"{what} not found", file=str(path), fix=fix) from None
    except OSError as exc:
        raise LocalmlError.one(f"{what} cannot be read: {exc.strerror or exc}", file=str(path), fix=fix) from None
    if stat.S_ISDIR(info.st_mode):
        raise LocalmlError.one(f"{what} is a folder, not a file", file=str(path), fix=fix)
    if not stat.S_ISREG(info.st_mode):
        # reading a pipe or a device could wait forever or never end
        raise LocalmlError.one(f"{what} is not a regular file ({_kind(info.st_mode)})", file=str(path),
                               fix="save what it holds to a file and pass that")
    try:
        with path.open("rb"):
            pass
    except OSError as exc:
        raise _unreadable(path, what, fix, exc) from None
    return info.st_size


def read_file(path: Path, what: str, *, fix: str) -> bytes:
    """A regular file's bytes, or one clear error (missing, a folder, a pipe or device, unreadable)."""
    check_file(path, what, fix=fix)
    try:
        return path.read_bytes()
    except OSError as exc:
        raise _unreadable(path, what, fix, exc) from None


def _unreadable(path: Path, what: str, fix: str, exc: OSError) -> LocalmlError:
    if isinstance(exc, PermissionError):
        return LocalmlError.one(f"{what} cannot be read: permission denied", file=str(path),
                                fix=f"make it readable (chmod u+r {path}) or pass another file")
    return LocalmlError.one(f"{what} cannot be read: {exc.strerror or exc}", file=str(path), fix=fix)


def _kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a named pipe"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "not a file"


def parse_form(spec: str) -> list[FormPart]:
    """form="image=@photo.jpg;type=image/png note='two words'" -> its parts, in order (as `curl -F`)."""
    try:
        tokens = shlex.split(spec)
    except ValueError as exc:
        raise LocalmlError.one(f"form={spec}: {exc}", fix=f"quote values with spaces: {FORM_EXAMPLE}") from None
    if not tokens:
        raise LocalmlError.one("form= is empty", fix=FORM_EXAMPLE)
    return [_form_part(token) for token in tokens]


def _form_part(token: str) -> FormPart:
    name, equals, value = token.partition("=")
    if not equals or not name:
        raise LocalmlError.one(f'form: "{token}" is not name=value or name=@file', fix=FORM_EXAMPLE)
    if not value.startswith("@"):
        return FormPart(name, value=value)
    pieces = value[1:].split(";")
    options: dict[str, str] = {}
    # ;type= and ;filename= end the item, as in curl; a ';' before them belongs to the path
    while len(pieces) > 1 and (option := _FORM_OPTION.match(pieces[-1])):
        options.setdefault(option[1], option[2])
        pieces.pop()
    path = ";".join(pieces)
    if not path:
        raise LocalmlError.one(f'form: "{token}": no file after @', fix=FORM_EXAMPLE)
    return FormPart(name, path=Path(path), content_type=options.get("type"), filename=options.get("filename"))


def form_payload(parts: list[FormPart], *, force: bool = False) -> Payload:
    """multipart/form-data of the parts, files read now (a missing one named with its field); over REQUEST_LIMIT
    in all, only with force."""
    sizes = [check_file(part.path, f"form file of field {part.name}", fix=f"check the path after {part.name}=@")
             for part in parts if part.path is not None]
    check_size(sum(sizes), "the form's files together" if len(sizes) > 1 else "the form's file", None, force)
    fields: list[tuple[str, tuple[str | None, bytes | str] | tuple[str, bytes, str]]] = []
    for part in parts:
        if part.path is None:
            fields.append((part.name, (None, part.value or "")))
            continue
        data = read_file(part.path, f"form file of field {part.name}", fix=f"check the path after {part.name}=@")
        fields.append((part.name, (part.filename or part.path.name, data,
                                   part.content_type or content_type_for(part.path))))
    return multipart(fields)


def multipart(fields: list[Any]) -> Payload:
    """requests' own multipart encoder (a fresh boundary each time); fields as requests' files= takes them."""
    prepared = requests.Request("POST", "http://localhost/", files=fields).prepare()
    body = prepared.body if isinstance(prepared.body, bytes) else str(prepared.body or "").encode()
    return Payload(body, prepared.headers["Content-Type"])


def parse_headers(spec: str) -> dict[str, str]:
    """header="Name: value; Other: value" (or one per line) -> {Name: value}; a name given twice joins with ", "."""
    headers: dict[str, str] = {}
    for item in (piece.strip() for line in spec.splitlines() for piece in _NEXT_HEADER.split(line)):
        if not item:
            continue
        name, colon, value = item.partition(":")
        name, value = name.strip(), value.strip()
        if not colon or not re.fullmatch(_TOKEN, name):
            raise LocalmlError.one(f'header: "{item}" is not "Name: value"', fix=HEADER_EXAMPLE)
        try:
            value.encode("latin-1")  # what HTTP/1.1 can carry in a header
        except UnicodeEncodeError:
            raise LocalmlError.one(f"header {name}: only Latin-1 characters can be sent in a header value",
                                   fix="encode the value (e.g. percent- or base64-encoding)") from None
        existing = next((key for key in headers if key.lower() == name.lower()), None)
        if existing:
            headers[existing] += f", {value}"
        else:
            headers[name] = value
    return headers


def _take_header(headers: dict[str, str], name: str, variable: str, variable_name: str) -> tuple[str, dict[str, str]]:
    """A header that has its own variable (Content-Type: content_type=): one value, from either place."""
    from_header = next((value for key, value in headers.items() if key.lower() == name.lower()), "")
    rest = {key: value for key, value in headers.items() if key.lower() != name.lower()}
    if variable and from_header and variable != from_header:
        raise LocalmlError.one(f"{variable_name}={variable} and header {name}: {from_header} disagree",
                               fix=f"give one of them: {variable_name}= or the {name} header")
    return variable or from_header, rest


def output_path(text: str) -> Path:
    """output=<file>: may be overwritten (the user asked for it), but must not be a folder or in a missing one."""
    path = Path(text)
    if text.endswith(("/", "\\")) or path.is_dir():
        raise LocalmlError.one("output= is a folder", file=text, fix=f"name a file: output={path / 'answer.bin'}")
    folder = path.parent
    if not folder.is_dir():
        raise LocalmlError.one(f"folder {folder} does not exist", file=text,
                               fix=f"create it (mkdir -p {folder}) or choose another output=")
    return path


def save(path: Path, content: bytes) -> None:
    try:
        path.write_bytes(content)
    except OSError as exc:
        raise LocalmlError.one(f"cannot write the answer: {exc.strerror or exc}", file=str(path),
                               fix="choose another output= (a file you may write)") from None


# --- sending and reading the answer ------------------------------------------------------------


LARGE_REQUEST = 10 * 1024**2  # a timeout on a larger request names its size


def post(url: str, payload: Payload, *, timeout_s: float, headers: dict[str, str] | None = None) -> InvokeResult:
    """Send the payload (a large file streamed from disk, with its Content-Length) and read the answer."""
    started = time.perf_counter()
    try:
        with _body(payload) as body:
            answer = requests.post(url, data=body, timeout=timeout_s,
                                   headers={**(headers or {}), "Content-Type": payload.content_type})
    except requests.Timeout:
        raise _timeout(url, payload, timeout_s) from None
    except requests.ConnectionError as exc:
        if _caused_by(exc, ConnectionRefusedError, urllib3.exceptions.NewConnectionError):
            raise LocalmlError.one(f"nothing answers at {url}",
                                   fix="start the endpoint with doit debug spec=<deployment.yml>") from None
        if _caused_by(exc, TimeoutError):  # the socket timed out while the body was being sent
            raise _timeout(url, payload, timeout_s) from None
        raise LocalmlError.one(f"the connection to {url} was closed while sending a {describe_bytes(payload.size)} "
                               f"request ({_reason(exc)})",
                               fix="doit logs shows whether the server stopped; try again, or send a smaller "
                                   "request") from None
    latency_ms = (time.perf_counter() - started) * 1000
    return InvokeResult(status=answer.status_code, latency_ms=latency_ms, content=answer.content,
                        content_type=answer.headers.get("Content-Type"),
                        deployment=answer.headers.get(DEPLOYMENT_HEADER),
                        script_failed=answer.status_code == 503 and answer.headers.get(FAILED_HEADER) == "failed")


@contextlib.contextmanager
def _body(payload: Payload) -> Iterator[Any]:
    """The bytes to send, or the open file they are streamed from: requests sends a file object in blocks, with
    a Content-Length from its size."""
    if payload.source is None:
        yield payload.body
        return
    try:
        file = payload.source.open("rb")
    except OSError as exc:
        raise _unreadable(payload.source, "request file", REQUEST_FIX, exc) from None
    with file:
        yield file


def _timeout(url: str, payload: Payload, timeout_s: float) -> LocalmlError:
    if payload.size > LARGE_REQUEST:
        return LocalmlError.one(
            f"no answer from {url} within {timeout_s:.0f} s to a large request ({describe_bytes(payload.size)})",
            fix="a request this large takes long to send and to score: send a smaller one, or give the server more "
                "time with request_settings.request_timeout_ms (invoke waits longer with it); doit logs shows the "
                "server's log")
    return LocalmlError.one(f"no answer from {url} within {timeout_s:.0f} s",
                            fix="check run() in the scoring script (doit logs shows the server's log)")


def _caused_by(exc: BaseException, *kinds: type[BaseException]) -> bool:
    """Whether exc, or an exception it wraps (requests -> urllib3 -> socket), is one of kinds."""
    return any(isinstance(item, kinds) for item in _chain(exc))


def _chain(exc: BaseException) -> list[BaseException]:
    """exc and the exceptions it wraps (in args, reason, cause, context), outermost first."""
    found: list[BaseException] = []
    pending: list[Any] = [exc]
    while pending:
        item = pending.pop(0)
        if not isinstance(item, BaseException) or any(item is seen for seen in found):
            continue
        found.append(item)
        pending += [*item.args, getattr(item, "reason", None), item.__cause__, item.__context__]
    return found


def _reason(exc: BaseException) -> str:
    """The innermost cause, in a few words: "RemoteDisconnected: Remote end closed connection without response"."""
    inner = _chain(exc)[-1]
    text = inner.strerror if isinstance(inner, OSError) and inner.strerror else str(inner)
    return f"{type(inner).__name__}: {text}"[:200]


def read_answer(content_type: str | None, content: bytes) -> Answer:
    """JSON when it parses (and is JSON, text or untyped), text when it decodes cleanly, else binary."""
    media, charset = _media_type(content_type)
    binary = Answer("binary", None, content_type, len(content))
    if media and not _textual(media):
        return binary
    text = _decode(content, charset)
    if text is None:
        return binary
    if media is None or media == "text/plain" or _is_json(media):
        try:
            return Answer("json", json.loads(text), content_type, len(content))
        except ValueError:
            pass
    return Answer("text", text, content_type, len(content))


def _media_type(content_type: str | None) -> tuple[str | None, str]:
    """("image/jpeg", charset or "utf-8") from a Content-Type header; (None, "utf-8") when absent."""
    if not content_type or not content_type.strip():
        return None, "utf-8"
    media, *params = (piece.strip() for piece in content_type.split(";"))
    charset = next((p.split("=", 1)[1].strip('"') for p in params if p.lower().startswith("charset=")), "utf-8")
    return media.lower(), charset


def _is_json(media: str) -> bool:
    return media == "application/json" or media.endswith("+json")


def _textual(media: str) -> bool:
    return media.startswith("text/") or _is_json(media) or media.endswith("+xml") or media in _TEXT_TYPES


def _decode(content: bytes, charset: str) -> str | None:
    """The text, or None when it does not decode or holds control characters (printing those harms a terminal)."""
    try:
        text = content.decode(charset)
    except LookupError:  # a charset Python does not know
        return _decode(content, "utf-8")
    except UnicodeDecodeError:
        return None
    if any((ord(char) < 32 and char not in "\t\n\r") or char == "\x7f" for char in text):
        return None
    return text


def error_for(result: InvokeResult, url: str, cause: Cause | None, deployment: str | None = None) -> LocalmlError:
    answer = result.answer
    if answer.kind == "binary":
        message = answer.described()
    else:
        message = json.dumps(answer.value) if answer.kind == "json" else answer.value
    who = f" (deployment {deployment})" if deployment else ""
    text = f"the endpoint answered {result.status} at {url}{who}: {message.strip()[:2000]}"
    if cause is None:
        return LocalmlError.one(text, fix="the server's log may say more: doit logs")
    return LocalmlError([Problem(
        f"{text}\n  cause{cause.described()}",
        file=cause.user_file, line=cause.user_line,
        fix="fix run() in the scoring script, then doit debug and invoke again",
    )])
