"""azmlinfsrv's own WSGI app in this one process under debugpy; a save reloads the script inside it.

`azmlinfsrv` runs the app in gunicorn's forked workers, where a debugger listening in the parent
never sees init() or run(). Here the server's own configuration code runs as with
`azmlinfsrv --entry_script ... --port ...`, the app is created after debugpy listens (so breakpoints
in init() are hit), and it is served from this process: connections are read on threads of their
own, every call into the app runs on the main thread, one at a time (as in one gunicorn sync worker,
and so that azmlinfsrv's SIGALRM scoring timeout works). A request reaches the main thread only once it
has arrived whole (StrictRequestHandler): a client that stalls holds its own thread, never the app, and is
dropped at a timeout; connections are kept alive (HTTP/1.1) until idle for the idle timeout.

SIGUSR1 (sent by our supervisor) reloads the scoring script between two requests, in this process:
the modules loaded from the code folder are dropped, azmlinfsrv's UserScript loads the script again,
init() runs (or, with keep_state, init()'s globals are carried over when neither init() nor the model
changed), and the new script and its swagger replace the old ones. The debugger stays attached: its
breakpoints bind to the new code. A script that fails to load leaves this process up, answering 503
with the traceback until the next good reload. Only a changed compiled extension needs a new process:
this one then exits with RESTART_EXIT_CODE and the supervisor starts another.

Each load's outcome goes to RUNTIME_DIR/reload.json for the host. Standard library + debugpy + azmlinfsrv.

Environment: LOCALML_SERVER_PORT (5001), LOCALML_DEBUG_PORT (5678), LOCALML_BIND_HOST (0.0.0.0),
LOCALML_DEBUG_WAIT=1 to wait for a debugger before init() runs, LOCALML_DEBUGGER=0 to serve without
debugpy, LOCALML_RUNTIME_DIR: the folder shared with the host, LOCALML_CODE_DIR: the code folder whose
modules a reload drops, LOCALML_PATH_MAP: JSON {folder here: folder on the host} for tracebacks,
LOCALML_IDLE_TIMEOUT_S (30): an idle kept-alive connection is closed, LOCALML_REQUEST_TIMEOUT_S (30): a
request's head must arrive within it, and its body pause no longer.
"""

import ast
import contextlib
import errno
import gc
import importlib
import inspect
import io
import json
import linecache
import os
import re
import signal
import socket
import sys
import textwrap
import threading
import time
import traceback
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from queue import Empty, SimpleQueue
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

RESTART_EXIT_CODE = 75  # "a new process is needed" (a compiled extension in the code folder changed)
RELOAD_FILE = "reload.json"
FAILED_HEADER = "x-localml-script"  # "failed" on the 503 answers while the script cannot load
MAX_MODEL_FILES = 20000  # past this many files the model folder's signature is unknown: init() runs
EXTENSION_SUFFIXES = (".so", ".pyd")


def log(message):
    print(f"localml-debug: {message}", flush=True)


# --- HTTP/1.1 connections that survive their clients -------------------------------------------------
# Also the base of localml's endpoint router (localml_tasks/router_server.py): standard library only, and
# written for the oldest Python an environment may bring (socket.timeout is TimeoutError only from 3.10).

IDLE_TIMEOUT_S = 30.0  # a kept-alive connection with no next request is closed after this long
REQUEST_TIMEOUT_S = 30.0  # a request's line and headers must arrive whole within this; its body may pause no longer
MAX_HEAD_BYTES = 64 * 1024  # the request line and headers together
MAX_LENGTH_DIGITS = 15  # a Content-Length of more digits (a petabyte) is refused, not waited for
LISTEN_BACKLOG = 128  # connections the kernel holds while every thread is busy accepting
SOCKET_TIMEOUT = socket.timeout
ORIGIN_FORM = re.compile(r"/[\x21-\x7e]*\Z")  # a path (and query): printable ASCII, no spaces
_DIGITS = re.compile(r"[0-9]+\Z")
_CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{1,16}\Z")
# never passed on in an answer: they describe one connection, not the answer
HOP_BY_HOP_ANSWER = {"connection", "keep-alive", "proxy-connection", "te", "trailer", "trailers", "transfer-encoding",
                     "upgrade"}
CHUNKED_FIX = "send the body with a Content-Length, or chunked as HTTP/1.1 says (size in hex, CRLF, data, CRLF)"


def timeouts_from_environment(environ=None):
    """(idle, request) timeouts in seconds: LOCALML_IDLE_TIMEOUT_S and LOCALML_REQUEST_TIMEOUT_S, else the defaults."""
    environ = os.environ if environ is None else environ

    def seconds(name, default):
        try:
            value = float(environ.get(name) or default)
        except ValueError:
            return default
        return value if value > 0 else default

    return seconds("LOCALML_IDLE_TIMEOUT_S", IDLE_TIMEOUT_S), seconds("LOCALML_REQUEST_TIMEOUT_S", REQUEST_TIMEOUT_S)


class BadRequest(Exception):
    """A request refused before anything of it is served: the status, why, and (optionally) what to do."""

    def __init__(self, status, message, fix=None):
        super().__init__(message)
        self.status, self.message, self.fix = status, message, fix


class ClientGone(Exception):
    """The client closed its side before its request arrived whole: there is no one to answer."""


class _TimedSocket(io.RawIOBase):
    """The connection's socket as a raw stream whose every read waits at most `wait` seconds, and none past
    `deadline` (time.monotonic()): a client that sends nothing, or a byte now and then, cannot hold a thread."""

    def __init__(self, sock):
        super().__init__()
        self.sock = sock
        self.wait = None
        self.deadline = None

    def limit(self, wait, deadline=None):
        self.wait, self.deadline = wait, deadline

    def readable(self):
        return True

    def readinto(self, buffer):
        wait = self.wait
        if self.deadline is not None:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise SOCKET_TIMEOUT("timed out")
            wait = left if wait is None else min(wait, left)
        self.sock.settimeout(wait)
        return self.sock.recv_into(buffer)


def request_body_reader(lengths, transfer_encodings):
    """How to read a request's body, from every Content-Length and Transfer-Encoding value it was sent with:
    a function of the stream that returns the body as sent. Raises BadRequest, before anything is read, when
    the body's size is not known: a length that is not one number of bytes, both headers, a coding other than
    chunked (a server that guessed would read the next request as this one's body, or wait for ever)."""
    if transfer_encodings:
        codings = [coding.strip().lower() for value in transfer_encodings for coding in value.split(",")
                   if coding.strip()]
        if lengths:
            raise BadRequest(400, "the request has both a Transfer-Encoding and a Content-Length header",
                             "send one: Content-Length for a body of known size, or Transfer-Encoding: chunked")
        if codings != ["chunked"]:
            raise BadRequest(400, f"Transfer-Encoding {', '.join(codings)!r} is not supported (only chunked)",
                             CHUNKED_FIX)
        return _read_chunks
    values = {part.strip() for value in lengths for part in value.split(",")}
    if not values:
        return lambda stream: b""
    if len(values) > 1:
        raise BadRequest(400, f"the request's Content-Length values disagree ({', '.join(sorted(values))})",
                         "send one Content-Length: the body's size in bytes")
    value = values.pop()
    if not _DIGITS.match(value):
        raise BadRequest(400, f"Content-Length {value[:40]!r} is not a number of bytes",
                         "send the body's size in bytes: digits only")
    if len(value) > MAX_LENGTH_DIGITS:
        raise BadRequest(413, f"Content-Length {value[:40]} is more than any local endpoint reads",
                         "send a smaller body")
    size = int(value)
    return lambda stream: _read_exactly(stream, size)


def read_request_body(stream, lengths, transfer_encodings):
    """The request's body as sent, by its Content-Length or chunk by chunk (request_body_reader says which)."""
    return request_body_reader(lengths, transfer_encodings)(stream)


def _read_exactly(stream, size):
    parts = []
    while size > 0:
        part = stream.read(min(size, 1 << 20))
        if not part:
            raise ClientGone()
        parts.append(part)
        size -= len(part)
    return b"".join(parts)


def _read_line(stream, limit, what):
    line = stream.readline(limit + 1)
    if not line.endswith(b"\n"):
        if len(line) > limit:
            raise BadRequest(400, f"{what} is longer than {limit} bytes", CHUNKED_FIX)
        raise ClientGone()
    return line


def _read_chunks(stream):
    chunks = []
    while True:
        size_text = _read_line(stream, 4096, "a chunk's size line").split(b";", 1)[0].strip()
        if not _CHUNK_SIZE.match(size_text):
            raise BadRequest(400, f"the chunked body has a bad chunk size {size_text[:20].decode('latin-1')!r}",
                             CHUNKED_FIX)
        size = int(size_text, 16)
        if size == 0:
            budget = MAX_HEAD_BYTES
            while True:  # trailer fields, up to the blank line that ends the request
                trailer = _read_line(stream, budget, "the chunked body's trailer")
                budget -= len(trailer)
                if not trailer.strip():
                    return b"".join(chunks)
        chunks.append(_read_exactly(stream, size))
        end = stream.read(2)
        if end != b"\r\n":
            if len(end) < 2:
                raise ClientGone()
            raise BadRequest(400, "a chunk of the chunked body is longer than its size says", CHUNKED_FIX)


class StrictRequestHandler(BaseHTTPRequestHandler):
    """HTTP/1.1 for a threading server (ThreadingMixIn) that no client can hold up. The server has
    `idle_timeout` and `request_timeout` (seconds, timeouts_from_environment()):

    - connections are kept alive; one with no next request within the idle timeout is closed;
    - the request line and headers must arrive whole within the request timeout and fit MAX_HEAD_BYTES
      (else 408 / 431); the body may pause no longer than the request timeout (a slow upload goes on);
    - the target must be a path (request_target), the body's size known (request_body_reader), the method
      one of `methods` (None: any): else an answer at once, JSON (error_body), and the connection closed;
    - the whole body is read (self.body) before respond() is called; respond() answers with send_answer()."""

    protocol_version = "HTTP/1.1"
    # headers and body may go out in separate writes: without this, Nagle's algorithm and the client's
    # delayed ACK add about 40 ms to such an answer
    disable_nagle_algorithm = True
    methods = None

    def setup(self):
        super().setup()
        self.rfile.close()  # the socket's own file, replaced by one whose reads keep the timeouts
        self._socket_reader = _TimedSocket(self.connection)
        self.rfile = io.BufferedReader(self._socket_reader)
        self._unread = False
        self.body = b""

    # --- what a server built on this says -------------------------------------------------------------

    def respond(self):
        raise NotImplementedError

    def request_target(self, target):
        """The path to serve, from the request line's target: origin form only (/path?query)."""
        if not ORIGIN_FORM.match(target):
            raise BadRequest(400, f"the request target {target[:100]!r} is not a path (it must start with /, "
                                  "in printable ASCII)", "send the path alone, e.g. POST /score HTTP/1.1")
        return target

    def error_body(self, code, message, fix):
        return {"message": message}

    # --- one connection -------------------------------------------------------------------------------

    def handle(self):
        self.close_connection = True
        self.handle_one_request()
        while not self.close_connection:
            self.handle_one_request()
        if self._unread:
            self._linger()

    def handle_one_request(self):
        self.close_connection = True
        self.command, self.path, self.request_version, self.requestline = None, "", "HTTP/1.1", ""
        self._expect_continue = False
        self._unread = False
        self.body = b""
        patience = self.server.request_timeout
        try:
            self._socket_reader.limit(self.server.idle_timeout)
            if not self.rfile.peek(1):
                return  # the client closed the connection
        except OSError:
            return  # no request within the idle timeout (or the connection broke): closed without a word
        self._unread = True
        try:
            self._socket_reader.limit(patience, time.monotonic() + patience)
            if not self._read_head():
                return  # parse_request answered
            self.path = self.request_target(self.path)
            if self.methods is not None and self.command not in self.methods:
                raise BadRequest(501, f"method {self.command} is not supported here (only {', '.join(self.methods)})",
                                 f"send one of {', '.join(self.methods)}")
            read_body = request_body_reader(self.headers.get_all("Content-Length") or [],
                                            self.headers.get_all("Transfer-Encoding") or [])
            self._socket_reader.limit(patience)
            if self._expect_continue:
                self.send_response_only(100)
                self.end_headers()
            self.body = read_body(self.rfile)
            self._unread = False
        except BadRequest as refused:
            self.send_error(refused.status, refused.message, fix=refused.fix)
            return
        except SOCKET_TIMEOUT:
            self.send_error(408, f"the request did not arrive within {patience:g} s",
                            fix="send the whole request head at once, and the body without pausing "
                                f"{patience:g} s (LOCALML_REQUEST_TIMEOUT_S)")
            return
        except (ClientGone, OSError):
            return
        try:
            self.connection.settimeout(patience)  # the answer is written under the same patience
            self.respond()
            self.wfile.flush()
        except OSError:
            self.close_connection = True  # the client went away, or stopped reading

    def handle_expect_100(self):
        self._expect_continue = True  # "100 Continue" only once the body's size is known to be good
        return True

    def _read_head(self):
        """The request line and headers, read whole before parse_request sees them."""
        line = self.rfile.readline(MAX_HEAD_BYTES + 1)
        if len(line) > MAX_HEAD_BYTES:
            raise BadRequest(414, f"the request line is longer than {MAX_HEAD_BYTES} bytes", "send a shorter path")
        if not line.endswith(b"\n"):
            raise ClientGone()
        self.requestline = line.decode("iso-8859-1").rstrip("\r\n")
        words = self.requestline.split()
        if len(words) != 3 or not words[2].startswith("HTTP/"):
            raise BadRequest(400, f"bad request line {self.requestline[:100]!r}",
                             "send METHOD /path HTTP/1.1, e.g. POST /score HTTP/1.1")
        budget = MAX_HEAD_BYTES - len(line)
        lines = []
        while True:
            header = self.rfile.readline(budget + 1)
            if len(header) > budget:
                raise BadRequest(431, f"the request's headers are larger than {MAX_HEAD_BYTES // 1024} KiB",
                                 "send fewer or smaller headers")
            if not header.endswith(b"\n"):
                raise ClientGone()
            budget -= len(header)
            lines.append(header)
            if header in (b"\r\n", b"\n"):
                break
        self.raw_requestline = line
        socket_file, self.rfile = self.rfile, io.BytesIO(b"".join(lines))
        try:
            return self.parse_request()
        finally:
            self.rfile = socket_file

    def _linger(self):
        """After an answer sent before the request was read whole: closing a socket that holds unread input
        resets the connection, and the reset can destroy the answer before the client reads it. So: end our
        side, and read what the client still sends for a moment."""
        try:
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_WR)
            self.connection.settimeout(1)
            deadline, drained = time.monotonic() + 2, 0
            while time.monotonic() < deadline and drained < 1 << 20:
                data = self.connection.recv(65536)
                if not data:
                    break
                drained += len(data)
        except OSError:
            pass

    # --- answers --------------------------------------------------------------------------------------

    def send_answer(self, code, headers, body, reason=None):
        """One answer: the headers given but the hop-by-hop ones, Date and Server unless given, the body's
        Content-Length (a HEAD or 304 answer has no body and keeps the length given: what GET would send),
        and Connection: close on the connection's last answer."""
        bodiless = self.command == "HEAD" or code in (204, 304) or code < 200
        listed = {name.strip().lower() for key, value in headers if key.lower() == "connection"
                  for name in value.split(",")}
        self.send_response_only(code, reason)
        given, length = set(), None
        for key, value in headers:
            lower = key.lower()
            if lower == "content-length":
                length = value
            elif lower not in HOP_BY_HOP_ANSWER and lower not in listed:
                given.add(lower)
                self.send_header(key, value)
        if "date" not in given:
            self.send_header("Date", self.date_time_string())
        if "server" not in given:
            self.send_header("Server", self.version_string())
        if not bodiless:
            self.send_header("Content-Length", str(len(body)))
        elif length is not None and code != 204:
            self.send_header("Content-Length", length)
        if self.close_connection:
            self.send_header("Connection", "close")
        elif self.request_version == "HTTP/1.0":
            self.send_header("Connection", "keep-alive")
        self.end_headers()
        if body and not bodiless:
            self.wfile.write(body)

    def send_error(self, code, message=None, explain=None, fix=None):
        """Every refusal (ours and parse_request's) as JSON, error_body's; the connection is closed after it."""
        self.close_connection = True
        if self.request_version == "HTTP/0.9":  # parse_request's stand-in until the version is valid: no
            self.request_version = "HTTP/1.1"  # status line would be written (never a 0.9 request: _read_head)
        message = message or HTTPStatus(code).phrase
        body = json.dumps(self.error_body(code, message, fix)).encode()
        try:
            self.send_answer(code, [("Content-Type", "application/json")], body)
            self.wfile.flush()
        except OSError:
            pass


class _WSGIHandler(StrictRequestHandler, WSGIRequestHandler):
    """azmlinfsrv's app (served_on_main_thread's) behind StrictRequestHandler: the environ as wsgiref builds
    it, with the body already read whole (a chunked one too), and the answer written with its length so the
    connection can serve the next request."""

    def setup(self):
        # the user's code runs on the main thread only: a connection thread needs no tracing by the debugger,
        # whose tracing of every call here would slow the app's own thread down (they share the GIL)
        if self.server.untrace_this_thread:
            with contextlib.suppress(Exception):  # traced, then: slower, never wrong
                self.server.untrace_this_thread()
        super().setup()

    def log_message(self, format, *args):
        pass

    def respond(self):
        environ = self.get_environ()
        environ.pop("HTTP_TRANSFER_ENCODING", None)  # the chunks are read: the app gets the body whole
        if self.body or "Content-Length" in self.headers or "Transfer-Encoding" in self.headers:
            environ["CONTENT_LENGTH"] = str(len(self.body))
        environ.update({"wsgi.input": io.BytesIO(self.body), "wsgi.errors": sys.stderr, "wsgi.version": (1, 0),
                        "wsgi.url_scheme": "http", "wsgi.multithread": True, "wsgi.multiprocess": False,
                        "wsgi.run_once": False})
        answer = {}

        def start_response(status, headers, exc_info=None):
            answer.update(status=status, headers=headers)
            return lambda data: None

        try:
            body = b"".join(self.server.get_app()(environ, start_response))
            code, _, reason = answer["status"].partition(" ")
            code = int(code)
        except Exception:  # the app's own errors are its answers; this is ours
            log("the server failed to answer a request:\n" + traceback.format_exc())
            self.send_error(500, "the debug server failed to answer: see its log")
            return
        self.send_answer(code, answer["headers"], body, reason or None)


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = LISTEN_BACKLOG
    idle_timeout, request_timeout = IDLE_TIMEOUT_S, REQUEST_TIMEOUT_S
    untrace_this_thread = None  # under debugpy: lambda: debugpy.trace_this_thread(False)


class MainThread:
    """Runs jobs on the main thread, in order: requests handed over by the connection threads, and reloads.

    SIGUSR1 only sets a flag and wakes the loop (SimpleQueue.put may be called from a signal handler),
    so a reload always runs between two requests, never inside one."""

    WAKE = object()
    IDLE_S = 1.0  # no job for this long: the main thread is idle (when_idle runs)

    def __init__(self):
        self.jobs = SimpleQueue()
        self.reload_requested = False
        self.when_idle = None  # run once, on this thread, the next time it is idle

    def call(self, function):
        """From a connection thread: run function on the main thread and return what it returned."""
        done = threading.Event()
        box = {}

        def job():
            try:
                box["value"] = function()
            except BaseException as exc:  # handed back to the connection thread
                box["error"] = exc
            finally:
                done.set()

        self.jobs.put(job)
        done.wait()
        if "error" in box:
            raise box["error"]
        return box["value"]

    def request_reload(self, signum=None, frame=None):
        self.reload_requested = True
        self.jobs.put(self.WAKE)

    def serve(self, reload, before_job=None):
        """before_job(is_reload): called before every job, on this thread (under debugpy: TracedWhileAttached)."""
        while True:
            if self.when_idle is None:
                job = self.jobs.get()
            else:
                try:
                    job = self.jobs.get(timeout=self.IDLE_S)
                except Empty:
                    when_idle, self.when_idle = self.when_idle, None
                    when_idle()
                    continue
            if before_job is not None:
                before_job(job is self.WAKE)
            if job is self.WAKE:
                if self.reload_requested:
                    self.reload_requested = False
                    reload()
            else:
                job()


def _path_map():
    try:
        return json.loads(os.environ.get("LOCALML_PATH_MAP") or "{}")
    except ValueError:
        return {}


def _host_path(path, path_map):
    for inside, outside in path_map.items():
        inside = inside.rstrip("/")
        if path == inside or path.startswith(inside + "/"):
            return outside.rstrip("/") + path[len(inside):]
    return path


def _to_host_paths(text, path_map):
    """The quoted paths of a traceback ("File \"/var/azureml-app/code/x.py\"") as on the host."""
    for inside, outside in path_map.items():
        text = text.replace(f'"{inside.rstrip("/")}/', f'"{outside.rstrip("/")}/')
    return text


def _describe_failure(exc, code_dir):
    """{"message", "traceback", "file", "line", "function"} for a script that failed to load or whose init()
    raised: the user's own exception (azmlinfsrv wraps it: raise ... from ex), the innermost place in the
    code folder where it happened, paths as on the host."""
    user = getattr(exc, "user_ex", None) or exc.__cause__ or exc
    text = "".join(traceback.format_exception(type(user), user, user.__traceback__))
    message = traceback.format_exception_only(type(user), user)[-1].strip()
    where = {}
    for frame in traceback.extract_tb(user.__traceback__):
        if code_dir and _under(os.path.realpath(frame.filename), code_dir):
            where = {"file": frame.filename, "line": frame.lineno, "function": frame.name}
    if isinstance(user, SyntaxError) and user.filename:
        where = {"file": user.filename, "line": user.lineno, "function": None}
    path_map = _path_map()
    if "file" in where:
        where["file"] = _host_path(where["file"], path_map)
    return {"message": _to_host_paths(message, path_map), "traceback": _to_host_paths(text, path_map), **where}


def _global_names(source):
    """The names a function's source declares `global` (for init(): the state it leaves for run())."""
    try:
        tree = ast.parse(textwrap.dedent(source))
    except SyntaxError:
        return []
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Global):
            names.extend(name for name in node.names if name not in names)
    return names


def _source(function):
    try:
        return inspect.getsource(function)
    except (OSError, TypeError):
        return None


def _under(path, folder):
    return bool(path) and (path == folder or path.startswith(folder.rstrip(os.sep) + os.sep))


class ScriptHost:
    """The scoring script azmlinfsrv's blueprint serves, and how to load it again in this process."""

    def __init__(self, runtime_dir, code_dir, model_dir):
        self.runtime_dir = runtime_dir
        # the folder as given and as resolved, each ending in a separator (prefixes of its files' paths)
        self.code_dir_as_given = os.path.join(code_dir, "") if code_dir else None
        self.code_dir = os.path.join(os.path.realpath(code_dir), "") if code_dir else None
        self.model_dir = model_dir
        self.blueprint = None
        self.failure = None  # what _describe_failure says, while the script cannot load
        self.serial = 0
        self.init_source = None
        self.model_signature = None
        self.extensions = {}
        self.on_load = None  # called with each script that loaded, before it serves (TracedWhileAttached)

    # --- the first load, done by azmlinfsrv itself while the app is created -----------------------

    def create_app(self):
        """azmlinfsrv's app, created as its own entry module does; a script that fails to load keeps
        this process up (azmlinfsrv would exit with code 3) and is reported as a failed load."""
        from azureml_inference_server_http.server.aml_blueprint import AMLInferenceBlueprint

        setup = AMLInferenceBlueprint.setup
        host = self

        def setup_that_survives(blueprint):
            host.blueprint = blueprint
            started, clock = time.time(), time.perf_counter()
            try:
                setup(blueprint)
            except SystemExit as exc:
                # azmlinfsrv logged the traceback (and the model folder's listing); we stay up
                blueprint.swagger = None
                host._record_failure(exc.__context__ or exc, started, clock, first=True)
                return
            host._record_success(blueprint.user_script)
            if host.on_load:
                host.on_load(blueprint.user_script)
            host._write_outcome("loaded", started, clock, init={"ran": True, "why": "the server started"})

        AMLInferenceBlueprint.setup = setup_that_survives
        try:
            from azureml_inference_server_http.server.entry import app
        finally:
            AMLInferenceBlueprint.setup = setup
        return app

    # --- reloads ------------------------------------------------------------------------------------

    def reload(self):
        """Load the scoring script again, in this process, and swap it in (the main thread, between requests)."""
        from azureml_inference_server_http.api import aml_request
        from azureml_inference_server_http.constants import SERVER_ROOT
        from azureml_inference_server_http.server.config import config
        from azureml_inference_server_http.server.swagger import Swagger
        from azureml_inference_server_http.server.user_script import UserScript

        started, clock = time.time(), time.perf_counter()
        changed_extensions = self._changed_extensions()
        if changed_extensions:
            self._write_outcome("restart", started, clock,
                                message=f"a compiled extension changed ({', '.join(changed_extensions)}): "
                                        "a new process loads it")
            log("a compiled extension changed: exiting for a new process")
            os._exit(RESTART_EXIT_CODE)
        old_script = None if self.failure else self.blueprint.user_script
        self._forget_code_modules()
        aml_request._rawHttpRequested = False  # set again by @rawhttp when the new script still has it
        script = UserScript(config.entry_script)
        try:
            script.load_script(config.app_root)
        except Exception as exc:
            self._record_failure(exc, started, clock)
            return
        init_source, model_signature = _source(script._user_init), self._model_signature()
        keep = self._keep_state(old_script, init_source, model_signature)
        init = {"ran": keep is None}
        if keep is None:
            init["why"] = self._why_init_runs(old_script, init_source, model_signature)
            init_clock = time.perf_counter()
            try:
                script.invoke_init()
            except Exception as exc:
                self._record_failure(exc, started, clock)
                return
            init["ms"] = round((time.perf_counter() - init_clock) * 1000, 1)
        else:
            new_globals = script._user_init.__globals__
            old_globals = old_script._user_init.__globals__
            for name in keep:
                new_globals[name] = old_globals[name]
            init["kept"] = keep
        try:
            swagger = Swagger(config.app_root, SERVER_ROOT, script)
        except Exception as exc:
            self._record_failure(exc, started, clock)
            return
        if self.on_load:
            self.on_load(script)
        # the swap: the next request, on this same thread, gets the new script
        self.blueprint.swagger = swagger
        self.blueprint.user_script = script
        self.failure = None
        self.init_source, self.model_signature = init_source, model_signature
        self.extensions = self._loaded_extensions()
        self._write_outcome("loaded", started, clock, init=init)
        how = f"init() state kept: {', '.join(keep) or 'nothing to keep'}" if keep is not None \
            else f"init() ran again: {init['why']}"
        log(f"reloaded the scoring script in this process ({how})")

    def _keep_state(self, old_script, init_source, model_signature):
        """The names to carry over instead of running init(), or None when init() must run."""
        if not _settings(self.runtime_dir).get("keep_state"):
            return None
        if old_script is None or init_source is None or init_source != self.init_source:
            return None
        if model_signature is None or model_signature != self.model_signature:
            return None
        # init()'s source is the same as the old one's: the names it declares global are the same too
        old_globals = old_script._user_init.__globals__
        return [name for name in _global_names(init_source) if name in old_globals]

    def _why_init_runs(self, old_script, init_source, model_signature):
        if not _settings(self.runtime_dir).get("keep_state"):
            return "keep_state is off"
        if old_script is None:
            return "the last load had failed"
        if init_source != self.init_source:
            return "init() changed"
        return "the model changed"

    def _code_modules(self):
        """(name, module, file) of every module loaded from the code folder. A plain prefix test on the
        paths the import system recorded: this runs traced by the debugger, where every call costs."""
        folders = tuple({self.code_dir, self.code_dir_as_given} - {None})
        found = []
        for name, module in list(sys.modules.items()):
            path = getattr(module, "__file__", None)
            paths = [path] if isinstance(path, str) else list(getattr(module, "__path__", None) or [])
            for item in paths:
                if isinstance(item, str) and item.startswith(folders):
                    found.append((name, module, item))
                    break
        return found

    def _forget_code_modules(self):
        names = {"entry_module"}  # azmlinfsrv's name for the scoring script: it is in no sys.modules
        for name, _module, _path in self._code_modules():
            del sys.modules[name]
            names.add(name)
        _forget_schemas(names)
        importlib.invalidate_caches()  # new files in the code folder are found
        linecache.checkcache()  # tracebacks show the new source

    def _loaded_extensions(self):
        return {path: _stat_signature(path) for _name, _module, path in self._code_modules()
                if path.endswith(EXTENSION_SUFFIXES)}

    def _changed_extensions(self):
        return [os.path.basename(path) for path, signature in self.extensions.items()
                if _stat_signature(path) != signature]

    def _model_signature(self):
        """(path, size, mtime) of every model file; None when the folder is too large to tell."""
        if not self.model_dir or not os.path.exists(self.model_dir):
            return ()
        entries = []
        for folder, dirs, names in os.walk(self.model_dir, followlinks=True):
            dirs.sort()
            for name in sorted(names):
                path = os.path.join(folder, name)
                entries.append((path, *_stat_signature(path)))
                if len(entries) > MAX_MODEL_FILES:
                    return None
        return tuple(entries)

    def _record_success(self, script):
        self.init_source = _source(script._user_init)
        self.model_signature = self._model_signature()
        self.extensions = self._loaded_extensions()
        self.failure = None

    def _record_failure(self, exc, started, clock, first=False):
        self.failure = _describe_failure(exc, self.code_dir)
        self._write_outcome("failed", started, clock, **self.failure)
        if not first:  # azmlinfsrv logged the first one itself
            log("the scoring script failed to reload; answering 503 until the next good save:\n"
                + self.failure["traceback"])

    def _write_outcome(self, outcome, started, clock, **details):
        if not self.runtime_dir:
            return
        self.serial += 1
        record = {"pid": os.getpid(), "serial": self.serial, "outcome": outcome, "started_at": started,
                  "took_ms": round((time.perf_counter() - clock) * 1000, 1), **details}
        _write_for_the_host(self.runtime_dir, RELOAD_FILE, record)

    # --- serving ------------------------------------------------------------------------------------

    def failure_answer(self, start_response):
        body = json.dumps({"message": f"the scoring script failed to load: {self.failure['message']}",
                           "traceback": self.failure["traceback"]}).encode()
        start_response("503 Service Unavailable", [("Content-Type", "application/json"),
                                                   ("Content-Length", str(len(body))), (FAILED_HEADER, "failed")])
        return [body]


def _forget_schemas(module_names):
    """inference-schema keeps every decorated function's schema in module-level registries keyed by
    "module.function", and merges a decorator's schema into what is there: without this, a reloaded run()
    would keep a renamed parameter, or still count as decorated once the decorator is gone."""
    registries = sys.modules.get("inference_schema.schema_util")
    if registries is None:
        return
    for registry in (registries.__functions_schema__, registries.__versions__):
        for key in [key for key in registry if key.rsplit(".", 1)[0] in module_names]:
            del registry[key]


def _stat_signature(path):
    try:
        stat = os.stat(path)
    except OSError:
        return (None, None)
    return (stat.st_size, stat.st_mtime_ns)


def _settings(runtime_dir):
    """Settings the host may change without a new process (command.json's "settings")."""
    try:
        with open(os.path.join(runtime_dir, "command.json")) as handle:
            return json.load(handle).get("settings") or {}
    except (OSError, ValueError, AttributeError):
        return {}


def served_on_main_thread(app, main, script_host):
    """The WSGI app as the connection threads call it: the request was read whole on the connection's thread
    (StrictRequestHandler, under its timeouts), the app runs on the main thread, the answer is written back
    on the connection's thread. A client that stalls never reaches the main thread."""

    def call(environ, start_response):
        def on_main_thread():
            if script_host.failure:
                answer = {}
                chunks = script_host.failure_answer(lambda status, headers: answer.update(s=status, h=headers))
                return answer["s"], answer["h"], chunks
            answer = {}
            written = []

            def collect(status, headers, exc_info=None):
                answer.update(s=status, h=headers)
                return written.append

            result = app(environ, collect)
            try:
                written.extend(bytes(chunk) for chunk in result)
            finally:
                if hasattr(result, "close"):
                    result.close()
            return answer["s"], answer["h"], written

        status, headers, chunks = main.call(on_main_thread)
        start_response(status, headers)
        return chunks

    return call


def _no_timeout_while_attached(app):
    """The scoring timeout (SCORING_TIMEOUT_MS, from request_settings.request_timeout_ms) applies as in
    Azure, except while a debugger is attached: a breakpoint in run() must not turn into a timeout."""
    import debugpy
    from azureml_inference_server_http.server.config import config

    limit = config.scoring_timeout

    def wrapped(environ, start_response):
        config.scoring_timeout = 24 * 3600 * 1000 if debugpy.is_client_connected() else limit
        return app(environ, start_response)

    return wrapped


def _freeze_what_is_loaded():
    """What is loaded now (azmlinfsrv, Flask, the user's modules, what init() built) lives until the next
    reload: moved out of the cyclic garbage collector's reach (gc.freeze), no full collection walks it during a
    request. Measured on the sample: full collections of 60-200 ms (the p99 of 16 concurrent clients) before,
    none after. Unfrozen at a reload (_reload_then_freeze), so the old script's objects can go."""
    gc.collect()
    gc.freeze()


def _reload_then_freeze(script_host, main_thread):
    def reload():
        gc.unfreeze()  # the old script, its model and its modules can be collected again
        script_host.reload()
        # the collection that frees them runs once the main thread is idle, not in the reload's time
        main_thread.when_idle = _freeze_what_is_loaded

    return reload


class TracedWhileAttached:
    """What of the main thread debugpy traces, and only while a debugger is attached: a reload whole (the
    script's import and init()), and of a request only the user's run() and what it calls.

    debugpy.listen() traces every call of every thread from the start, attached or not: about 12 times slower
    for call-heavy code, and azmlinfsrv and Flask around run() are call-heavy (measured on the sample under 16
    concurrent clients: a request's time on the main thread went from about 1.7 ms to 4 ms with a debugger
    attached). Breakpoints can only be set while one is attached, and they stop in the user's code (init(),
    run(), what they call): the framework around run() needs no tracing. Tracing is set before every job and
    around every run(), not only on a change: debugpy may turn it on for every thread itself when a debugger
    attaches or a breakpoint is added."""

    def __init__(self, debugpy):
        self.debugpy = debugpy
        self.failed = False

    def before_job(self, reload):
        """For MainThread.serve, before each job: a reload is traced while attached, a request is not."""
        self._trace(reload and self.debugpy.is_client_connected())

    def around_run(self, script):
        """For ScriptHost.on_load: the loaded script's run(), as azmlinfsrv calls it, traced while attached."""
        run = script._wrapped_user_run  # azmlinfsrv's call of the user's run(): every request goes through it
        debugpy = self.debugpy

        def run_traced_while_attached(**arguments):
            if not debugpy.is_client_connected():
                return run(**arguments)
            self._trace(True)  # calls from here on are traced: run()'s frame is the first
            try:
                return run(**arguments)
            finally:
                self._trace(False)

        script._wrapped_user_run = run_traced_while_attached

    def _trace(self, on):
        try:
            self.debugpy.trace_this_thread(on)
        except Exception as exc:  # debugpy's own trouble must never end the server: it traces as it will
            if not self.failed:
                self.failed = True
                log(f"could not switch debugpy's tracing of the main thread: {exc!r}")


def _listen_for_debugger(host, port):
    """debugpy.listen, retried while the port is still held by a previous server's adapter that is ending, and
    once more when debugpy's adapter process is too slow to report back (a busy machine)."""
    try:
        import debugpy
    except ImportError:
        # an environment.build image without debugpy: localml's layer installed it here. Appended
        # only now, so the image's own packages never see it.
        sys.path.append("/opt/localml/site")
        import debugpy
    deadline = time.monotonic() + 10
    slow_adapter_retries = 1  # on a machine busy enough, debugpy's adapter process may not report back in time
    while True:
        try:
            debugpy.listen((host, port))
            return debugpy
        except RuntimeError as exc:
            in_use = "in use" in str(exc) or str(errno.EADDRINUSE) in str(exc)
            if "timed out waiting for adapter" in str(exc) and slow_adapter_retries:
                slow_adapter_retries -= 1
                continue
            if not in_use or time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def _write_for_the_host(runtime_dir, name, data):
    """A JSON file in the folder shared with the host, replaced whole: the host never reads half of one."""
    path = os.path.join(runtime_dir, name)
    with open(path + ".tmp", "w") as handle:
        json.dump(data, handle)
    os.replace(path + ".tmp", path)


def _tell_the_host(runtime_dir, debug_port):
    """A debugger can attach from now on: say so in the folder shared with the host."""
    if runtime_dir:
        _write_for_the_host(runtime_dir, "debugpy.json", {"pid": os.getpid(), "port": debug_port})


def main():
    main_thread = MainThread()
    # first of all: a reload asked for during start-up waits for the first load instead of ending us
    signal.signal(signal.SIGUSR1, main_thread.request_reload)

    host = os.environ.get("LOCALML_BIND_HOST", "0.0.0.0")
    port = int(os.environ.get("LOCALML_SERVER_PORT", "5001"))
    debug_port = int(os.environ.get("LOCALML_DEBUG_PORT", "5678"))
    runtime_dir = os.environ.get("LOCALML_RUNTIME_DIR")
    debugger = os.environ.get("LOCALML_DEBUGGER", "1") != "0"
    # AZUREML_DEBUG_PORT makes the server dial out to a debugger; we listen instead
    os.environ.pop("AZUREML_DEBUG_PORT", None)

    from azureml_inference_server_http import amlserver
    from azureml_inference_server_http.args import parse_arguments
    from azureml_inference_server_http.constants import PACKAGE_ROOT
    from azureml_inference_server_http.log_config import load_logging_config

    entry = os.path.join(os.environ["AML_APP_ROOT"], os.environ["AZUREML_ENTRY_SCRIPT"])
    sys.argv = ["azmlinfsrv", "--entry_script", entry, "--port", str(port)]
    load_logging_config(PACKAGE_ROOT)
    amlserver.merge_configuration(parse_arguments())
    amlserver.validate_environment_variables()
    amlserver.set_path_variable()

    if debugger:
        debugpy = _listen_for_debugger(host, debug_port)
        log(f"debugpy listening on port {debug_port}")
        _tell_the_host(runtime_dir, debug_port)
        if os.environ.get("LOCALML_DEBUG_WAIT") == "1":
            log("waiting for a debugger to attach before init() (wait=1)")
            debugpy.wait_for_client()

    script_host = ScriptHost(runtime_dir, os.environ.get("LOCALML_CODE_DIR") or os.environ["AML_APP_ROOT"],
                             os.environ.get("AZUREML_MODEL_DIR"))
    if debugger:
        tracing = TracedWhileAttached(debugpy)
        script_host.on_load = tracing.around_run
    app = script_host.create_app()  # runs init()
    if debugger:
        app = _no_timeout_while_attached(app)
    _freeze_what_is_loaded()  # before the port listens: no request waits for it
    server = make_server(host, port, served_on_main_thread(app, main_thread, script_host),
                         server_class=_ThreadingServer, handler_class=_WSGIHandler)
    server.idle_timeout, server.request_timeout = timeouts_from_environment()
    before_job = None
    if debugger:
        server.untrace_this_thread = lambda: debugpy.trace_this_thread(False)
        before_job = tracing.before_job
    threading.Thread(target=server.serve_forever, name="localml-connections", daemon=True).start()
    log(f"serving on port {port} from this process; saves reload the scoring script in place")
    with contextlib.suppress(KeyboardInterrupt):
        main_thread.serve(_reload_then_freeze(script_host, main_thread), before_job)


if __name__ == "__main__":
    main()
