"""azmlinfsrv's own WSGI app, served in this one process under debugpy (standard library + debugpy).

`azmlinfsrv` runs the app in gunicorn's forked workers, where a debugger listening in the parent
never sees init() or run(). Here the server's own configuration code runs as with
`azmlinfsrv --entry_script ... --port ...`, then the app is served by a single-process WSGI server
after debugpy starts listening, so breakpoints in init() and run() are hit.

Environment: LOCALML_SERVER_PORT (5001), LOCALML_DEBUG_PORT (5678), LOCALML_BIND_HOST (0.0.0.0),
LOCALML_DEBUG_WAIT=1 to wait for a debugger before init() runs, LOCALML_DEBUGGER=0 to serve without
debugpy (process mode), LOCALML_RUNTIME_DIR: where to write debugpy.json once a debugger can attach.
"""

import json
import os
import sys
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format, *args):
        pass


class _Server(WSGIServer):
    allow_reuse_address = True


def _tell_the_host(debug_port):
    """A debugger can attach from now on: say so in the folder shared with the host."""
    runtime_dir = os.environ.get("LOCALML_RUNTIME_DIR")
    if not runtime_dir:
        return
    path = os.path.join(runtime_dir, "debugpy.json")
    with open(path + ".tmp", "w") as handle:
        json.dump({"pid": os.getpid(), "port": debug_port}, handle)
    os.replace(path + ".tmp", path)


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


def main():
    host = os.environ.get("LOCALML_BIND_HOST", "0.0.0.0")
    port = int(os.environ.get("LOCALML_SERVER_PORT", "5001"))
    debug_port = int(os.environ.get("LOCALML_DEBUG_PORT", "5678"))
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

    if os.environ.get("LOCALML_DEBUGGER", "1") != "0":
        try:
            import debugpy
        except ImportError:
            # an environment.build image without debugpy: localml's layer installed it here. Appended
            # only now, so the image's own packages never see it.
            sys.path.append("/opt/localml/site")
            import debugpy

        debugpy.listen((host, debug_port))
        print(f"localml-debug: debugpy listening on port {debug_port}", flush=True)
        _tell_the_host(debug_port)
        if os.environ.get("LOCALML_DEBUG_WAIT") == "1":
            print("localml-debug: waiting for a debugger to attach before init() (wait=1)", flush=True)
            debugpy.wait_for_client()

    from azureml_inference_server_http.server.entry import app  # creating the app runs init()

    if os.environ.get("LOCALML_DEBUGGER", "1") != "0":
        app = _no_timeout_while_attached(app)
    server = make_server(host, port, app, server_class=_Server, handler_class=_QuietHandler)
    print(f"localml-debug: serving on port {port} in one process", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
