"""azmlinfsrv's own WSGI app in this one process under debugpy; a save reloads the script inside it.

`azmlinfsrv` runs the app in gunicorn's forked workers, where a debugger listening in the parent
never sees init() or run(). Here the server's own configuration code runs as with
`azmlinfsrv --entry_script ... --port ...`, the app is created after debugpy listens (so breakpoints
in init() are hit), and it is served from this process by its main thread alone (http_serving.LoopServer):
one request at a time, in the order they arrived whole (as in one gunicorn sync worker, and so that
azmlinfsrv's SIGALRM scoring timeout works). A client that stalls holds nothing up and is dropped at a
timeout; connections are kept alive (HTTP/1.1) until idle for the idle timeout.

SIGUSR1 (sent by our supervisor) reloads the scoring script between two requests, in this process:
the modules loaded from the code folder are dropped, azmlinfsrv's UserScript loads the script again,
init() runs (or, with keep_state, init()'s globals are carried over when neither init() nor the model
changed), and the new script and its swagger replace the old ones. The debugger stays attached: its
breakpoints bind to the new code. A script that fails to load leaves this process up, answering 503
with the traceback until the next good reload. Only a changed compiled extension needs a new process:
this one then exits with RESTART_EXIT_CODE and the supervisor starts another.

Each load's outcome goes to RUNTIME_DIR/reload.json for the host. Standard library (and http_serving.py beside
it) + debugpy + azmlinfsrv.

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
import json
import linecache
import os
import signal
import sys
import textwrap
import time
import traceback

try:  # run as a script (in the container, in process mode): this folder is on sys.path
    from http_serving import LoopServer, timeouts_from_environment
except ModuleNotFoundError:  # imported as localml_tasks.in_container.debug_server (the tests)
    from .http_serving import LoopServer, timeouts_from_environment

RESTART_EXIT_CODE = 75  # "a new process is needed" (a compiled extension in the code folder changed)
RELOAD_FILE = "reload.json"
FAILED_HEADER = "x-localml-script"  # "failed" on the 503 answers while the script cannot load
MAX_MODEL_FILES = 20000  # past this many files the model folder's signature is unknown: init() runs
EXTENSION_SUFFIXES = (".so", ".pyd")


def log(message):
    print(f"localml-debug: {message}", flush=True)


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


def answering_while_failed(app, script_host):
    """The WSGI app, or while the scoring script cannot load, the 503 that says why."""

    def call(environ, start_response):
        if script_host.failure:
            return script_host.failure_answer(start_response)
        return app(environ, start_response)

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


def _reload_then_freeze(script_host, server):
    def reload():
        gc.unfreeze()  # the old script, its model and its modules can be collected again
        script_host.reload()
        # the collection that frees them runs once the main thread is idle, not in the reload's time
        server.when_idle = _freeze_what_is_loaded

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
        """For LoopServer.serve_forever, before each job: a reload is traced while attached, a request is not."""
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
    # first of all: a reload asked for during start-up waits for the first load instead of ending us
    asked_early = []
    signal.signal(signal.SIGUSR1, lambda signum, frame: asked_early.append(signum))

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
    server = LoopServer(host, port, answering_while_failed(app, script_host), *timeouts_from_environment())
    signal.signal(signal.SIGUSR1, server.request_reload)
    if asked_early:
        server.request_reload()
    log(f"serving on port {port} from this process; saves reload the scoring script in place")
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever(_reload_then_freeze(script_host, server), tracing.before_job if debugger else None)


if __name__ == "__main__":
    main()
