"""HTTP/1.1 that survives its clients, for localml's two servers: the debug server (debug_server.py, one thread:
LoopServer) and the endpoint's router (localml_tasks/router_server.py, a thread per connection:
StrictRequestHandler). Both keep the same rules:

- connections are kept alive (HTTP/1.1, and HTTP/1.0 with Connection: keep-alive); one with no next request
  within the idle timeout is closed without a word;
- the request line and headers must arrive whole within the request timeout and fit MAX_HEAD_BYTES (else
  408 / 414 / 431); the body may pause no longer than the request timeout (a slow upload goes on);
- the target must be a path, the body's size known (request_body_reader): else a JSON answer at once, and the
  connection closed; a request reaches the app only once it has arrived whole;
- an answer the client does not read within the request timeout ends its connection.

Standard library only, and written for the oldest Python an environment may bring: it runs in the
deployment's own Python (socket.timeout is TimeoutError only from 3.10).
"""

import contextlib
import io
import json
import os
import re
import selectors
import socket
import sys
import time
import traceback
from email.utils import formatdate
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from urllib.parse import unquote

# --- the rules: what a request must be --------------------------------------------------------------------

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



def answer_headers(method, version, code, headers, body, date, server, closing):
    """(the headers an answer carries, whether its body is sent): the headers given but the hop-by-hop ones (and
    those their Connection header names), Date and Server unless given, the body's Content-Length (a HEAD or
    304 answer has no body and keeps the length given: what GET would send), and Connection: close on the
    connection's last answer (keep-alive on a kept HTTP/1.0 one)."""
    bodiless = method == "HEAD" or code in (204, 304) or code < 200
    listed = {name.strip().lower() for key, value in headers if key.lower() == "connection"
              for name in value.split(",")}
    fields, given, length = [], set(), None
    for key, value in headers:
        lower = key.lower()
        if lower == "content-length":
            length = value
        elif lower not in HOP_BY_HOP_ANSWER and lower not in listed:
            given.add(lower)
            fields.append((key, value))
    if "date" not in given:
        fields.append(("Date", date))
    if "server" not in given:
        fields.append(("Server", server))
    if not bodiless:
        fields.append(("Content-Length", str(len(body))))
    elif length is not None and code != 204:
        fields.append(("Content-Length", length))
    if closing:
        fields.append(("Connection", "close"))
    elif version == "HTTP/1.0":
        fields.append(("Connection", "keep-alive"))
    return fields, bool(body) and not bodiless


# --- a thread per connection: the router -----------------------------------------------------------------


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
        """One answer, with answer_headers' headers."""
        fields, with_body = answer_headers(self.command, self.request_version, code, headers, body,
                                           self.date_time_string(), self.version_string(), self.close_connection)
        self.send_response_only(code, reason)
        for key, value in fields:
            self.send_header(key, value)
        self.end_headers()
        if with_body:
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


# --- one thread for every connection: the debug server ----------------------------------------------------


_HEAD_END = re.compile(rb"\r?\n\r?\n")
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")
_VERSION = re.compile(r"HTTP/(\d)\.(\d)\Z")
_LINGER_S = 2.0  # after an answer sent before its request was read whole: what the client still sends, for this long
_LINGER_BYTES = 1 << 20
_RECEIVE_BYTES = 1 << 16


class LoopServer:
    """An HTTP/1.1 server whose one thread, the caller's, reads and writes every connection (non-blocking
    sockets, a select loop) and calls the WSGI app itself, one request at a time, in the order the requests
    arrived whole.

    The app runs on the main thread (azmlinfsrv's SIGALRM scoring timeout needs it; debugpy traces it), and
    nothing else competes with it for the GIL: threads reading connections did, in no particular order, and
    under 16 concurrent clients that disorder made the slowest answers (bench/load.py). A client that stalls
    costs nothing: its bytes wait in its own buffer until its request is whole or its time is up.

    serve_forever(reload, before_job) runs until interrupted. request_reload() (safe in a signal handler) asks
    for reload() to be called between two requests; before_job(is_reload) is called before each request and
    each reload; when_idle, when set, is called once the next time no connection has had anything for
    IDLE_S seconds."""

    IDLE_S = 1.0

    def __init__(self, host, port, app, idle_timeout=IDLE_TIMEOUT_S, request_timeout=REQUEST_TIMEOUT_S):
        self.app = app
        self.idle_timeout, self.request_timeout = idle_timeout, request_timeout
        self.listener = socket.create_server((host, port), backlog=LISTEN_BACKLOG, reuse_port=False)
        self.listener.setblocking(False)
        self.server_name, self.server_port = host, str(self.listener.getsockname()[1])
        self.software = "localml-debug-server Python/" + sys.version.split()[0]
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.listener, selectors.EVENT_READ, self._accept)
        # request_reload() writes a byte here: it wakes select() from a signal handler
        self._wake_reader, self._wake_writer = socket.socketpair()
        for end in (self._wake_reader, self._wake_writer):
            end.setblocking(False)
        self.selector.register(self._wake_reader, selectors.EVENT_READ, self._drain_wake)
        self.connections = set()
        self.answered = set()
        self.before_job = None
        self.reload_requested = False
        self.when_idle = None
        self._last_activity = time.monotonic()
        self._accept_paused_until = None
        self._date = (0, "")

    @property
    def port(self):
        return int(self.server_port)

    def request_reload(self, signum=None, frame=None):
        self.reload_requested = True
        with contextlib.suppress(OSError):  # full (a wake-up is pending already) or closed
            self._wake_writer.send(b"r")

    def serve_forever(self, reload, before_job=None):
        self.before_job = before_job
        while True:
            if self.reload_requested:
                self.reload_requested = False
                if before_job is not None:
                    before_job(True)
                reload()
                self._last_activity = time.monotonic()
                continue
            events = self.selector.select(self._wait())
            if events:
                self._last_activity = time.monotonic()
            for key, mask in events:
                key.data(key.fileobj, mask)
            self._serve_answered()
            self._expire()
            if self._accept_paused_until is not None and time.monotonic() >= self._accept_paused_until:
                self._accept_paused_until = None
                self.selector.register(self.listener, selectors.EVENT_READ, self._accept)
            if self.when_idle is not None and time.monotonic() - self._last_activity >= self.IDLE_S:
                when_idle, self.when_idle = self.when_idle, None
                when_idle()

    def close(self):
        for connection in list(self.connections):
            connection.close()
        self.selector.close()
        for end in (self.listener, self._wake_reader, self._wake_writer):
            end.close()

    # --- the loop's parts -------------------------------------------------------------------------------

    def _wait(self):
        """Seconds select() may wait: until the next connection's deadline, the idle hook or the listener."""
        moments = [connection.deadline for connection in self.connections]
        if self.when_idle is not None:
            moments.append(self._last_activity + self.IDLE_S)
        if self._accept_paused_until is not None:
            moments.append(self._accept_paused_until)
        if not moments:
            return None
        return max(0.0, min(moments) - time.monotonic())

    def _accept(self, listener, mask):
        for _ in range(64):  # a burst of new connections is taken at once, not one per turn of the loop
            try:
                sock, address = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # out of file descriptors, say: the connections wait in the backlog for a moment
                self.selector.unregister(listener)
                self._accept_paused_until = time.monotonic() + 0.1
                return
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            connection = _Connection(self, sock, address)
            self.connections.add(connection)
            self.selector.register(sock, selectors.EVENT_READ, connection.on_ready)

    def _drain_wake(self, sock, mask):
        with contextlib.suppress(OSError):
            while sock.recv(4096):
                pass

    def _serve_answered(self):
        while self.answered:  # connections whose answer went out since: their next requests, if here
            self.answered.pop().advance()

    def _expire(self):
        if not any(connection.deadline <= time.monotonic() for connection in self.connections):
            return
        # what arrived while the app ran (a breakpoint may have held it for minutes) is read before anyone's
        # time is up: a request sent meanwhile is served, not dropped with its connection
        for key, mask in self.selector.select(0):
            key.data(key.fileobj, mask)
        self._serve_answered()
        now = time.monotonic()
        for connection in [c for c in self.connections if c.deadline <= now]:
            connection.expire()

    def date(self):
        """The Date header's value, made once a second."""
        second = int(time.time())
        if self._date[0] != second:
            self._date = (second, formatdate(second, usegmt=True))
        return self._date[1]


class _Connection:
    """One client's connection: its unparsed input, the request being read, the answer being written."""

    def __init__(self, server, sock, address):
        self.server, self.sock, self.address = server, sock, address
        self.inbox = bytearray()
        self.scanned = 0  # bytes of inbox already searched for the end of the head
        self.outbox = bytearray()
        self.sent = 0  # bytes of outbox written
        self.head = None  # the request whose body is being read: (method, target, version, headers, keep_alive)
        self.read_body = None
        self.body_size = None  # its Content-Length (0 without one); None when chunked
        self.body_tried_at = 0  # inbox's size when a chunked body was last tried
        self.continue_sent = False
        self.answering = False  # an answer is being written: the next request waits for it
        self.close_when_written = False
        self.linger_after_answer = False  # the answer went out before its request was read whole
        self.lingering = False
        self.lingered = 0
        self.closed = False
        self.deadline = time.monotonic() + server.idle_timeout

    # --- events -----------------------------------------------------------------------------------------

    def on_ready(self, sock, mask):
        if mask & selectors.EVENT_WRITE:
            self.flush()
        if mask & selectors.EVENT_READ and not self.closed:
            self.receive()

    def receive(self):
        try:
            data = self.sock.recv(_RECEIVE_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.close()
            return
        if self.lingering:
            self.lingered += len(data)
            if not data or self.lingered > _LINGER_BYTES:
                self.close()
            return
        if not data:  # the client closed its side: an answer under way is still written, nothing more is read
            if self.answering:
                self.close_when_written = True
                self._watch()
            else:
                self.close()
            return
        self.inbox += data
        if self.head is not None:
            self.deadline = time.monotonic() + self.server.request_timeout  # the body may pause this long
        self.advance()

    def expire(self):
        if self.lingering or self.answering:
            self.close()  # done lingering, or a client that does not read its answer
        elif self.head is None and not self.inbox:
            self.close()  # idle past the idle timeout: closed without a word
        else:
            patience = self.server.request_timeout
            self.refuse(408, f"the request did not arrive within {patience:g} s")

    # --- requests ---------------------------------------------------------------------------------------

    def advance(self):
        """Serve every request that has arrived whole, one after another, while no answer is being written."""
        while not (self.closed or self.answering or self.lingering):
            try:
                request = self._next_request()
            except BadRequest as refused:
                self.refuse(refused.status, refused.message)
                return
            if request is None:
                return
            self._serve(request)

    def _next_request(self):
        """(head, body) when a whole request is in the inbox, else None (its deadline set)."""
        if self.head is None:
            while self.inbox[:2] == b"\r\n" or self.inbox[:1] == b"\n":  # empty lines before a request: ignored
                del self.inbox[:2 if self.inbox[:1] == b"\r" else 1]
            if not self.inbox:
                return None
            if self.scanned == 0:  # the first bytes of this request: its head must be whole in time
                self.deadline = time.monotonic() + self.server.request_timeout
            end = _HEAD_END.search(self.inbox, max(0, self.scanned - 3))
            if end is None:
                self.scanned = len(self.inbox)
                if len(self.inbox) > MAX_HEAD_BYTES:
                    if b"\n" not in self.inbox[:MAX_HEAD_BYTES]:
                        raise BadRequest(414, f"the request line is longer than {MAX_HEAD_BYTES} bytes")
                    raise BadRequest(431, f"the request's headers are larger than {MAX_HEAD_BYTES // 1024} KiB")
                return None
            if end.end() > MAX_HEAD_BYTES:
                raise BadRequest(431, f"the request's headers are larger than {MAX_HEAD_BYTES // 1024} KiB")
            head = parse_head(bytes(self.inbox[:end.start()]))
            del self.inbox[:end.end()]
            self.scanned = 0
            lengths, encodings = _all(head[3], "content-length"), _all(head[3], "transfer-encoding")
            self.read_body = request_body_reader(lengths, encodings)  # BadRequest unless its size is known
            if encodings:
                self.body_size = None  # chunked: request_body_reader allows no other coding
            else:  # the one length every Content-Length gave (request_body_reader checked them), or none
                self.body_size = int(lengths[0].split(",")[0]) if lengths else 0
            self.head = head
            self.continue_sent = False
            self.body_tried_at = 0
            self.deadline = time.monotonic() + self.server.request_timeout
        body = self._whole_body()
        if body is None:
            if not self.continue_sent and "100-continue" in [v.lower() for v in _all(self.head[3], "expect")]:
                self.continue_sent = True  # the body's size is known to be good: the client may send it
                self._send(b"HTTP/1.1 100 Continue\r\n\r\n")
            return None
        head, self.head = self.head, None
        return head, body

    def _whole_body(self):
        """The body when it is whole in the inbox (taken out of it), else None."""
        if self.body_size is not None:
            if len(self.inbox) < self.body_size:
                return None
            body = bytes(self.inbox[:self.body_size])
            del self.inbox[:self.body_size]
            return body
        # chunked: read again only when it may have ended (a blank line last) or the inbox has doubled, so a
        # body arriving in many small reads is not read from its start every time
        ends = self.inbox.endswith(b"\n\n") or self.inbox.endswith(b"\n\r\n")
        if not ends and len(self.inbox) < 2 * max(self.body_tried_at, 4096):
            return None
        self.body_tried_at = len(self.inbox)
        stream = io.BytesIO(self.inbox)
        try:
            body = self.read_body(stream)
        except ClientGone:  # not all here yet
            return None
        del self.inbox[:stream.tell()]
        return body

    def _serve(self, request):
        (method, target, version, headers, keep_alive), body = request
        environ = self._environ(method, target, version, headers, body)
        if self.server.before_job is not None:
            self.server.before_job(False)
        answer = {}

        def start_response(status, answer_headers, exc_info=None):
            answer.update(status=status, headers=answer_headers)
            return lambda data: None

        try:
            result = self.server.app(environ, start_response)
            try:
                chunks = b"".join(bytes(chunk) for chunk in result)
            finally:
                if hasattr(result, "close"):
                    result.close()
            code, _, reason = answer["status"].partition(" ")
            code = int(code)
        except Exception:  # the app's own errors are its answers; this is ours
            print("localml-debug: the server failed to answer a request:\n" + traceback.format_exc(), flush=True)
            self.refuse(500, "the debug server failed to answer: see its log", read_whole=True)
            return
        if not keep_alive:
            self.close_when_written = True
        self._answer(method, version, code, reason or _phrase(code), answer["headers"], chunks)

    def _environ(self, method, target, version, headers, body):
        path, _, query = target.partition("?")
        environ = {
            "REQUEST_METHOD": method, "SCRIPT_NAME": "", "PATH_INFO": unquote(path, "iso-8859-1"),
            "QUERY_STRING": query, "SERVER_NAME": self.server.server_name, "SERVER_PORT": self.server.server_port,
            "SERVER_PROTOCOL": version, "SERVER_SOFTWARE": self.server.software, "GATEWAY_INTERFACE": "CGI/1.1",
            "REMOTE_ADDR": self.address[0] if isinstance(self.address, tuple) else "",
            "wsgi.input": io.BytesIO(body), "wsgi.errors": sys.stderr, "wsgi.version": (1, 0),
            "wsgi.url_scheme": "http", "wsgi.multithread": False, "wsgi.multiprocess": False, "wsgi.run_once": False,
        }
        sized = False
        for name, value in headers:
            key = name.upper().replace("-", "_")
            if key in ("CONTENT_LENGTH", "TRANSFER_ENCODING"):
                sized = True  # the body is read whole: the app gets its length below
                continue
            if key == "CONTENT_TYPE":
                environ["CONTENT_TYPE"] = value
                continue
            if "_" in name:  # as wsgiref and gunicorn: such a header could pose as another one
                continue
            key = "HTTP_" + key
            environ[key] = environ[key] + "," + value if key in environ else value
        if body or sized:
            environ["CONTENT_LENGTH"] = str(len(body))
        return environ

    # --- answers ----------------------------------------------------------------------------------------

    def _answer(self, method, version, code, reason, headers, body):
        """One answer, with answer_headers' headers."""
        fields, with_body = answer_headers(method, version, code, headers, body, self.server.date(),
                                           self.server.software, self.close_when_written)
        lines = [f"HTTP/1.1 {code} {reason}".rstrip(), *(f"{key}: {value}" for key, value in fields)]
        data = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        self.answering = True
        self._send(data + body if with_body else data)

    def refuse(self, code, message, read_whole=False):
        """A JSON answer of ours, then the connection closed; when the request was not read whole, the client's
        remaining input is read for a moment first (closing on unread input resets the connection, and the
        reset can destroy the answer before the client reads it)."""
        self.head, self.inbox = None, bytearray()
        self.close_when_written = True
        self.linger_after_answer = not read_whole
        body = json.dumps({"message": message}).encode()
        # as to a POST over HTTP/1.1: whatever the request was, this answer has its body
        self._answer("POST", "HTTP/1.1", code, _phrase(code), [("Content-Type", "application/json")], body)

    def _send(self, data):
        self.outbox += data
        self.flush()

    def flush(self):
        while self.sent < len(self.outbox):
            try:
                with memoryview(self.outbox) as whole:
                    self.sent += self.sock.send(whole[self.sent:])
            except (BlockingIOError, InterruptedError):
                break
            except OSError:  # the client went away
                self.close()
                return
            self.deadline = time.monotonic() + self.server.request_timeout  # it reads: it may take this long
        if self.sent == len(self.outbox):
            self.outbox, self.sent = bytearray(), 0
        if not self.outbox and self.answering:
            self.answering = False
            if self.close_when_written:
                if self.linger_after_answer:
                    self._linger()
                else:
                    self.close()
                return
            self.deadline = time.monotonic() + self.server.idle_timeout
            if self.inbox:
                self.server.answered.add(self)  # a next request came meanwhile: the loop serves it
        self._watch()

    def _linger(self):
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self.close()
            return
        self.lingering = True
        self.deadline = time.monotonic() + _LINGER_S
        self._watch()

    def _watch(self):
        if self.closed:
            return
        events = selectors.EVENT_WRITE if self.outbox else 0
        last_answer = self.close_when_written and self.answering
        # while an answer is written, what the client sends meanwhile is read, up to a point
        if not last_answer and len(self.inbox) <= _LINGER_BYTES:
            events |= selectors.EVENT_READ
        if not events:
            events = selectors.EVENT_WRITE if self.outbox else selectors.EVENT_READ
        self.server.selector.modify(self.sock, events, self.on_ready)

    def close(self):
        if self.closed:
            return
        self.closed = True
        self.server.connections.discard(self)
        with contextlib.suppress(KeyError, ValueError):
            self.server.selector.unregister(self.sock)
        self.sock.close()


_PHRASES = {status.value: status.phrase for status in HTTPStatus}


def _phrase(code):
    return _PHRASES.get(code, "")


def _all(headers, name):
    return [value for key, value in headers if key.lower() == name]


def parse_head(head):
    """(method, target, version, headers, keep_alive) of a request's line and headers (bytes, without the blank
    line that ends them); BadRequest when they are not HTTP/1.x as it is written."""
    lines = head.decode("iso-8859-1").split("\n")
    request_line = lines[0].rstrip("\r")
    words = request_line.split()
    if len(words) != 3 or not words[2].startswith("HTTP/"):
        raise BadRequest(400, f"bad request line {request_line[:100]!r}",
                         "send METHOD /path HTTP/1.1, e.g. POST /score HTTP/1.1")
    method, target, version = words
    matched = _VERSION.match(version)
    if matched is None or matched.group(1) == "0":
        raise BadRequest(400, f"bad request version {version[:20]!r}", "send HTTP/1.1")
    if matched.group(1) != "1":
        raise BadRequest(505, f"HTTP version {version[:20]} is not supported", "send HTTP/1.1")
    if not _TOKEN.match(method):
        raise BadRequest(400, f"bad method {method[:40]!r}", "send POST, GET or another HTTP method")
    if not ORIGIN_FORM.match(target):
        raise BadRequest(400, f"the request target {target[:100]!r} is not a path (it must start with /, in "
                              "printable ASCII)", "send the path alone, e.g. POST /score HTTP/1.1")
    headers = []
    for line in lines[1:]:
        line = line.rstrip("\r")
        if line[:1] in (" ", "\t"):
            raise BadRequest(400, "a header is continued on the next line (obsolete line folding)",
                             "send each header on one line")
        name, colon, value = line.partition(":")
        if not colon or not _TOKEN.match(name):
            raise BadRequest(400, f"bad header line {line[:100]!r}", "send each header as Name: value")
        headers.append((name, value.strip(" \t")))
    connection = {word.strip().lower() for value in _all(headers, "connection") for word in value.split(",")}
    keep_alive = "close" not in connection and (version == "HTTP/1.1" or "keep-alive" in connection)
    return method, target, version, headers, keep_alive
