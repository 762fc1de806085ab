"""A custom container (environment.inference_config): the image runs as-is, its routes honoured.

The image is built here: a small standard-library server with its own scoring route on its own
port, and its readiness route on another port that answers 503 for its first two seconds.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import BASE_IMAGE, Project, remove_containers

pytestmark = pytest.mark.docker

IMAGE = "localml-test/custom-server:1"

SERVER = '''
import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

STARTED = time.monotonic()
readiness_checks = 0


class Handler(BaseHTTPRequestHandler):
    def send(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        global readiness_checks
        if self.path == "/live" and self.server.server_port == 8080:
            self.send(200, {"alive": True})
        elif self.path == "/ready" and self.server.server_port == 8081:
            readiness_checks += 1
            ready = time.monotonic() - STARTED > 2
            self.send(200 if ready else 503, {"ready": ready})
        else:
            self.send(404, {"error": "no such route"})

    def do_POST(self):
        if self.path != "/predict" or self.server.server_port != 8080:
            self.send(404, {"error": "no such route"})
            return
        request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        model_dir = os.environ["AZUREML_MODEL_DIR"]
        with open(os.path.join(model_dir, "model", "weights.txt")) as handle:
            weights = handle.read().strip()
        self.send(200, {"weights": weights, "model_dir": model_dir, "echo": request,
                        "readiness_checks": readiness_checks})

    def log_message(self, format, *args):
        print(self.requestline, args[1] if len(args) > 1 else "", flush=True)


threading.Thread(target=ThreadingHTTPServer(("0.0.0.0", 8081), Handler).serve_forever, daemon=True).start()
ThreadingHTTPServer(("0.0.0.0", 8080), Handler).serve_forever()
'''

DEPLOYMENT = """\
name: custom
endpoint_name: {endpoint}
model:
  name: tiny
  version: 3
  path: model/
model_mount_path: /var/tiny-models
environment:
  image: {image}
  inference_config:
    liveness_route:
      path: /live
      port: 8080
    readiness_route:
      path: /ready
      port: 8081
    scoring_route:
      path: /predict
      port: 8080
instance_type: Standard_DS3_v2
instance_count: 1
"""


@pytest.fixture(scope="module")
def custom_image(engine) -> str:
    context = Path(__file__).resolve().parent / ".custom-server-build"
    context.mkdir(exist_ok=True)
    (context / "server.py").write_text(SERVER)
    (context / "Dockerfile").write_text(f'FROM {BASE_IMAGE}\nCOPY server.py /srv/server.py\n'
                                        'CMD ["python3", "-u", "/srv/server.py"]\n')
    try:
        engine.images.build(path=str(context), tag=IMAGE, rm=True)
    finally:
        for item in context.iterdir():
            item.unlink()
        context.rmdir()
    return IMAGE


@pytest.fixture
def custom(tmp_path: Path, custom_image: str) -> Iterator[Project]:
    root = tmp_path / "project"
    (root / "model").mkdir(parents=True)
    (root / "model" / "weights.txt").write_text("w=42\n")
    endpoint = f"t-{uuid.uuid4().hex[:8]}"
    (root / "custom-deployment.yml").write_text(DEPLOYMENT.format(endpoint=endpoint, image=custom_image))
    (root / "request.json").write_text(json.dumps({"inputs": [1, 2, 3]}))
    yield Project(root=root, endpoint=endpoint)
    remove_containers(endpoint)


def test_custom_container_serves_its_own_routes_through_invoke(custom, engine):
    spec = custom.root / "custom-deployment.yml"
    result = custom.run("debug", f"spec={spec}", "vscode=0")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"custom container {IMAGE}" in result.stdout and "runs as-is" in result.stdout
    assert "a custom container serving itself: scoring /predict" in result.stdout
    assert "devcontainer  none for a custom container" in result.stdout

    container = engine.containers.get(custom.container_name("custom"))
    assert container.attrs["Config"]["Cmd"] == ["python3", "-u", "/srv/server.py"]  # the image's own command
    bindings = container.attrs["HostConfig"]["PortBindings"]
    assert set(bindings) == {"8080/tcp", "8081/tcp"}
    assert all(bind["HostIp"] == "127.0.0.1" for binds in bindings.values() for bind in binds)
    mounts = {m["Destination"]: m for m in container.attrs["Mounts"]}
    assert mounts["/var/tiny-models/tiny/3/model"]["Source"] == str(custom.root / "model")

    # health used the readiness route (503 for the first two seconds, so it was asked more than once)
    log = container.logs().decode()
    assert "GET /ready HTTP/1.1 503" in log and "GET /ready HTTP/1.1 200" in log, log
    assert "GET /live HTTP/1.1 200" in log

    invoked = custom.run("invoke", f"request={custom.root / 'request.json'}")
    assert invoked.returncode == 0, invoked.stdout + invoked.stderr
    assert "200 from custom" in invoked.stdout
    body = json.loads(invoked.stdout[invoked.stdout.index("{"):])
    assert body["weights"] == "w=42" and body["model_dir"] == "/var/tiny-models/tiny/3"
    assert body["echo"] == {"inputs": [1, 2, 3]} and body["readiness_checks"] >= 2

    shown = json.loads(custom.run("show").stdout)
    row = shown["deployments"][0]
    assert row["runtime"] == "custom container" and row["scoring_uri"].endswith("/predict")
    assert row["readiness_uri"].endswith("/ready") and row["liveness_uri"].endswith("/live")
    assert row["swagger_uri"] is None  # this server offers none


def test_a_model_edit_restarts_the_custom_container(custom, engine):
    spec = custom.root / "custom-deployment.yml"
    assert custom.run("debug", f"spec={spec}", "vscode=0").returncode == 0
    again = custom.run("debug", f"spec={spec}", "vscode=0")
    assert again.returncode == 0 and "container     up to date" in again.stdout, again.stdout

    (custom.root / "model" / "weights.txt").write_text("w=43\n")
    edited = custom.run("debug", f"spec={spec}", "vscode=0")
    assert edited.returncode == 0, edited.stdout + edited.stderr
    assert "restarted the custom container — model/weights.txt changed" in edited.stdout
    invoked = custom.run("invoke", f"request={custom.root / 'request.json'}")
    assert json.loads(invoked.stdout[invoked.stdout.index("{"):])["weights"] == "w=43"
