"""Blue and green side by side on one local endpoint: traffic, header routing, mirroring, delete.

Real containers (both from the sample's one image), the real azmlinfsrv, real HTTP through
localml's endpoint router. Green scales its answers by 2, so every answer says who gave it.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from conftest import REPO, Project, remove_containers, sample_copy

pytestmark = pytest.mark.docker

REQUEST_FILE = REPO / "specs" / "sample-request.json"
REQUEST = json.loads(REQUEST_FILE.read_text())
BLUE_FIRST = 41.525434596312586  # the sample model's first prediction; green's is twice it
HEADER = "azureml-model-deployment"


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Project]:
    project = sample_copy(tmp_path_factory.mktemp("bluegreen") / "project")
    try:
        for spec in ("blue-deployment.yml", "green-deployment.yml"):
            result = project.run("debug", f"spec={project.root / spec}", "vscode=0")
            assert result.returncode == 0, result.stdout + result.stderr
        yield project
    finally:
        remove_containers(project.endpoint)


def scoring_uri(project: Project) -> str:
    shown = project.run("show")
    assert shown.returncode == 0, shown.stdout + shown.stderr
    return json.loads(shown.stdout)["scoring_uri"]


def who_answered(answer: requests.Response) -> str:
    """The router's header, checked against the body: green's predictions are blue's times 2."""
    assert answer.status_code == 200, answer.text
    first = answer.json()[0]
    by_body = ("blue" if first == pytest.approx(BLUE_FIRST, rel=1e-9)
               else "green" if first == pytest.approx(2 * BLUE_FIRST, rel=1e-9) else f"neither ({first})")
    assert answer.headers[HEADER] == by_body
    return by_body


def test_both_deployments_run_in_their_own_containers_and_show_lists_them(endpoint, engine):
    blue = engine.containers.get(endpoint.container_name("blue"))
    green = engine.containers.get(endpoint.container_name("green"))
    assert blue.status == green.status == "running"
    assert blue.image.id == green.image.id  # same environment: one image, no second build
    described = json.loads(endpoint.run("show").stdout)
    assert described["traffic"] == {"blue": 90, "green": 10}
    rows = {d["name"]: d for d in described["deployments"]}
    assert set(rows) == {"blue", "green"}
    assert rows["blue"]["traffic"] == 90 and rows["green"]["traffic"] == 10
    assert rows["blue"]["provisioning_state"] == rows["green"]["provisioning_state"] == "Succeeded"
    assert rows["blue"]["ports"]["scoring"] != rows["green"]["ports"]["scoring"]
    assert rows["green"]["swagger_uri"].endswith("/swagger.json")
    # the endpoint's own address is on loopback, and answers the swagger route too
    assert described["scoring_uri"].startswith("http://127.0.0.1:")
    assert requests.get(described["swagger_uri"], timeout=10).status_code == 200
    listed = endpoint.run("endpoints").stdout
    assert f"{endpoint.endpoint}  {described['scoring_uri']}  blue 90 %, green 10 %" in listed
    assert f"  green            Succeeded  {rows['green']['scoring_uri']}" in listed


def test_traffic_90_10_over_200_requests(endpoint):
    uri = scoring_uri(endpoint)
    counts = Counter(who_answered(requests.post(uri, json=REQUEST, timeout=30)) for _ in range(200))
    # binomial(200, 0.1): mean 20, sd 4.2; 6..40 is beyond 3 sd either side
    assert 6 <= counts["green"] <= 40, counts
    assert counts["blue"] + counts["green"] == 200


def test_naming_green_always_reaches_green(endpoint):
    uri = scoring_uri(endpoint)
    assert {who_answered(requests.post(uri, json=REQUEST, headers={HEADER: "green"}, timeout=30))
            for _ in range(30)} == {"green"}
    invoked = endpoint.run("invoke", f"request={REQUEST_FILE}", "deployment=green")
    assert invoked.returncode == 0, invoked.stdout + invoked.stderr
    assert "200 from green (named)" in invoked.stdout
    assert json.loads(invoked.stdout[invoked.stdout.index("["):])[0] == pytest.approx(2 * BLUE_FIRST, rel=1e-9)


def test_an_unknown_deployment_name_is_a_clear_404(endpoint):
    answer = requests.post(scoring_uri(endpoint), json=REQUEST, headers={HEADER: "purple"}, timeout=30)
    assert answer.status_code == 404
    assert "no deployment 'purple'" in answer.json()["error"] and "blue, green" in answer.json()["error"]


def test_mirror_traffic_copies_requests_and_logs_the_answers(endpoint):
    endpoint.edit("endpoint.yml", "traffic:\n  blue: 90\n  green: 10",
                  "traffic:\n  blue: 100\n  green: 0\nmirror_traffic:\n  green: 50")
    try:
        result = endpoint.run("debug", f"spec={endpoint.spec}", "vscode=0")
        assert result.returncode == 0, result.stdout + result.stderr
        assert "blue 100 % (mirror: green 50 %)" in result.stdout
        uri = scoring_uri(endpoint)
        mirror_log = endpoint.root / ".localml" / "endpoints" / endpoint.endpoint / "mirror.log"
        before = len(mirror_log.read_text().splitlines()) if mirror_log.exists() else 0
        answered = Counter(who_answered(requests.post(uri, json=REQUEST, timeout=30)) for _ in range(60))
        assert answered == {"blue": 60}  # the mirror's answers never reach the caller
        time.sleep(1)  # mirrored requests run in the background
        mirrored = mirror_log.read_text().splitlines()[before:]
        assert 12 <= len(mirrored) <= 48, len(mirrored)  # binomial(60, 0.5): mean 30, sd 3.9
        assert all(" green 200 " in line and f"{2 * BLUE_FIRST:.6f}"[:8] in line for line in mirrored)
    finally:
        endpoint.edit("endpoint.yml", "traffic:\n  blue: 100\n  green: 0\nmirror_traffic:\n  green: 50",
                      "traffic:\n  blue: 90\n  green: 10")
        endpoint.run("debug", f"spec={endpoint.spec}", "vscode=0")


def test_deleting_green_leaves_blue_answering_then_the_last_delete_stops_the_router(endpoint, engine):
    uri = scoring_uri(endpoint)
    deleted = endpoint.run("delete", "deployment=green")
    assert deleted.returncode == 0, deleted.stdout + deleted.stderr
    assert f"removed container {endpoint.container_name('green')}" in deleted.stdout
    assert "still routes to blue" in deleted.stdout
    # green's 10 % now goes to blue
    assert {who_answered(requests.post(uri, json=REQUEST, timeout=30)) for _ in range(30)} == {"blue"}
    assert engine.containers.get(endpoint.container_name("blue")).status == "running"
    rows = json.loads(endpoint.run("show").stdout)["deployments"]
    assert [row["name"] for row in rows] == ["blue"]

    record = json.loads((endpoint.root / ".localml" / "endpoints" / endpoint.endpoint / "router.json").read_text())
    deleted = endpoint.run("delete", "deployment=blue")
    assert deleted.returncode == 0, deleted.stdout + deleted.stderr
    assert f"stopped the router of endpoint {endpoint.endpoint} (pid {record['pid']})" in deleted.stdout
    assert not Path(f"/proc/{record['pid']}").exists() or "Z" in Path(f"/proc/{record['pid']}/stat").read_text()
    with pytest.raises(requests.ConnectionError):
        requests.post(uri, json=REQUEST, timeout=5)
