"""Debug ports reachable only from this machine: no other container reaches the server or debugpy.

debugpy runs whatever code a client sends, so the container's server and debugpy must not be reachable from
other containers, on localml's network or on Docker's default one; only the ports published on 127.0.0.1 lead
in. Checked with real connections from a second container.
"""

from __future__ import annotations

import json

import pytest
import requests
from conftest import BASE_IMAGE, REPO, Project

from localml_tasks.contract import CONTAINER_PORT, DEBUG_CONTAINER_PORT, NETWORK

pytestmark = pytest.mark.docker

PROBE = """
import socket, sys
for port in map(int, sys.argv[2:]):
    probe = socket.socket()
    probe.settimeout(3)
    try:
        probe.connect((sys.argv[1], port))
        print(port, "open")
    except OSError as exc:
        print(port, "closed", type(exc).__name__)
"""


def _probe_from_a_container(engine, address: str, network: str | None) -> dict[int, str]:
    said = engine.containers.run(BASE_IMAGE, ["python3", "-c", PROBE, address, str(CONTAINER_PORT),
                                              str(DEBUG_CONTAINER_PORT)],
                                 network=network, remove=True, stdout=True, stderr=True).decode()
    return {int(line.split()[0]): line.split()[1] for line in said.splitlines() if line.strip()}


def test_other_containers_cannot_reach_the_server_or_debugpy_but_this_machine_can(project: Project, engine):
    started = project.run("debug", f"spec={project.spec}", "vscode=0")
    assert started.returncode == 0, started.stdout + started.stderr
    container = engine.containers.get(project.container_name())
    networks = container.attrs["NetworkSettings"]["Networks"]
    assert list(networks) == [NETWORK]
    address = networks[NETWORK]["IPAddress"]
    labels = container.labels
    # this machine, through the ports published on 127.0.0.1: the server answers, debugpy accepts
    request = json.loads((REPO / "specs" / "sample-request.json").read_text())
    answer = requests.post(f"http://127.0.0.1:{labels['localml.scoring-port']}/score", json=request, timeout=30)
    assert answer.status_code == 200
    published = {binding["HostIp"] for bindings in container.attrs["NetworkSettings"]["Ports"].values()
                 for binding in bindings or []}
    assert published == {"127.0.0.1"}
    # the same two ports from another container on localml's network, and on Docker's default bridge
    for network in (NETWORK, None):
        reached = _probe_from_a_container(engine, address, network)
        assert reached == {CONTAINER_PORT: "closed", DEBUG_CONTAINER_PORT: "closed"}, (network, reached)
    # the probe can tell open from closed: from inside the deployment's own container both ports are open
    inside = container.exec_run(["python", "-c", PROBE, "127.0.0.1", str(CONTAINER_PORT),
                                 str(DEBUG_CONTAINER_PORT)]).output.decode()
    assert {int(line.split()[0]): line.split()[1] for line in inside.splitlines()} == \
        {CONTAINER_PORT: "open", DEBUG_CONTAINER_PORT: "open"}
