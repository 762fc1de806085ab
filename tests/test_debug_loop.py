"""The debug loop as a person lives it: attach the debugger once, then edit, save and ask again — the same
debugger session, the same server process, the new code. Real Docker, real debugpy, the suite's DAP client
attached with the generated launch configuration.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import joblib
import numpy as np
import pytest
import requests
from conftest import BASE_IMAGE, REPO, Project
from dap_client import DapClient, host_launch, line_in, post_in_background, scoring_url, state_dir
from sklearn.linear_model import Ridge

# engine_wide: run while no other test runs. On two workers, a container of this module's right after `debug`
# refused the debugger's first connection (docker-proxy accepted it, the container's debugpy did not) in 3 of 4
# runs beside test_process_mode and test_mlflow_nocode, and once in a whole suite run; alone, never. Not yet
# understood: see the issue note of 2026-12-05.
pytestmark = [pytest.mark.docker, pytest.mark.engine_wide]

REQUEST = REPO / "specs" / "sample-request.json"
SAMPLE = json.loads(REQUEST.read_text())
BASE = joblib.load(REPO / "specs" / "model" / "sklearn_regression_model.pkl").predict(
    np.asarray(SAMPLE["data"], dtype=float)).tolist()

HELPER = "def offset(rows):\n    value = {value}\n    return value\n"


def write_helper(project: Project, value: float | str) -> None:
    (project.root / "onlinescoring" / "helper.py").write_text(HELPER.format(value=value))


@pytest.fixture
def loop_project(project: Project) -> Project:
    """The sample, with run() adding helper.offset(): a helper module whose value shows in every answer."""
    write_helper(project, 0.0)
    project.edit("onlinescoring/score.py", "import numpy as np\n", "import numpy as np\n\nimport helper\n")
    project.edit("onlinescoring/score.py", "predictions = model.predict(data) * scale\n",
                 "predictions = model.predict(data) * scale + helper.offset(rows)\n")
    return project


@dataclass
class Started:
    """The loop project brought up by `doit debug`, and what a person attaching to it uses."""

    project: Project
    launch: dict  # the generated "Azure ML: Debug Local Endpoint" configuration
    helper: Path
    line: int  # the helper's `return value` line: where the breakpoint goes
    url: str  # the deployment's scoring URI
    pid: int  # the server process

    def client(self) -> DapClient:
        return DapClient(self.launch["connect"]["host"], self.launch["connect"]["port"])


@pytest.fixture
def started(loop_project: Project, engine) -> Started:
    debug(loop_project, f"spec={loop_project.spec}")
    helper = loop_project.root / "onlinescoring" / "helper.py"
    return Started(loop_project, host_launch(loop_project), helper, line_in(helper, "return value"),
                   scoring_url(loop_project, engine), server_pid(loop_project))


def debug(project: Project, *variables: str) -> subprocess.CompletedProcess:
    result = project.run("debug", *variables)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def server_pid(project: Project) -> int:
    return json.loads((state_dir(project) / "runtime" / "status.json").read_text())["pid"]


def stop_in_helper(dap: DapClient, url: str) -> tuple[threading.Thread, dict, dict, int]:
    """POST the sample; the request stops at the helper's breakpoint: (request thread, its answer, frame, thread id)."""
    thread, answer = post_in_background(url, SAMPLE)
    stopped = dap.wait_event("stopped")
    thread_id = stopped["body"]["threadId"]
    return thread, answer, dap.top_frame(thread_id), thread_id


def first_value(answer: dict) -> float:
    assert answer["status"] == 200, answer
    return json.loads(answer["body"])[0]


def test_attached_once_each_save_is_hit_in_the_new_code(started):
    loop_project, helper, line, url = started.project, started.helper, started.line, started.url
    dap = started.client()
    try:
        dap.attach(started.launch, {str(helper): [line]})
        for value in (0.0, 5.0, 11.0):
            if value:
                write_helper(loop_project, value)
                result = debug(loop_project)
                assert "server        reloaded in place — onlinescoring/helper.py changed" in result.stdout
                assert "image         up to date" in result.stdout and "container     up to date" in result.stdout
            thread, answer, frame, thread_id = stop_in_helper(dap, url)
            assert (frame["source"]["path"], frame["line"]) == (str(helper), line)
            assert dap.locals_of(frame["id"])["value"] == repr(value)  # the new code's locals
            dap.request("continue", {"threadId": thread_id})
            thread.join(timeout=60)
            assert first_value(answer) == pytest.approx(BASE[0] + value)
        assert not dap.disconnected.is_set()  # one debugging session all along
        assert server_pid(loop_project) == started.pid  # one server process all along
    finally:
        dap.close()


class Watch:
    """`localml watch` in the background, its output read line by line."""

    def __init__(self, project: Project) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "localml_tasks", "watch", f"spec={project.spec}"], cwd=project.root,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, "NO_COLOR": "1"})
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        assert self.process.stdout is not None
        threading.Thread(target=lambda: [self.lines.put(x) for x in self.process.stdout], daemon=True).start()

    def wait_for(self, fragment: str, timeout: float = 300) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.2)
            except queue.Empty:
                continue
            self.seen.append(line)
            if fragment in line:
                return line
        raise AssertionError(f"{fragment!r} never printed; got:\n{''.join(self.seen)}")

    def stop(self) -> int:
        self.process.send_signal(signal.SIGINT)
        return self.process.wait(timeout=30)


def test_with_watch_running_a_save_is_live_under_the_same_session(loop_project, engine):
    watcher = Watch(loop_project)
    dap = None
    try:
        watcher.wait_for("watch         watching")
        config = host_launch(loop_project)
        helper = loop_project.root / "onlinescoring" / "helper.py"
        line = line_in(helper, "return value")
        url = scoring_url(loop_project, engine)
        pid = server_pid(loop_project)
        dap = DapClient(config["connect"]["host"], config["connect"]["port"])
        dap.attach(config, {str(helper): [line]})
        for value in (0.0, 3.0, 8.0):
            if value:
                write_helper(loop_project, value)
                reloaded = watcher.wait_for("server        reloaded in place")
                assert "onlinescoring/helper.py changed" in reloaded
            thread, answer, frame, thread_id = stop_in_helper(dap, url)
            assert dap.locals_of(frame["id"])["value"] == repr(value)
            dap.request("continue", {"threadId": thread_id})
            thread.join(timeout=60)
            assert first_value(answer) == pytest.approx(BASE[0] + value)
        assert not dap.disconnected.is_set() and server_pid(loop_project) == pid
        # a broken save: watch says why and keeps going; the next good save recovers
        helper.write_text("def offset(rows):\n    value = (\n")
        watcher.wait_for("onlinescoring/helper.py:2: the scoring script failed to load")
        watcher.wait_for("watch         the server keeps running: fix the error above and save again")
        write_helper(loop_project, 9.0)
        watcher.wait_for("server        reloaded in place")
        thread, answer, frame, thread_id = stop_in_helper(dap, url)  # the breakpoint still holds
        assert dap.locals_of(frame["id"])["value"] == "9.0"
        dap.request("continue", {"threadId": thread_id})
        thread.join(timeout=60)
        assert first_value(answer) == pytest.approx(BASE[0] + 9.0)
        # a burst of saves (format-on-save writes twice, an editor's swap file beside it) is one reload
        write_helper(loop_project, 20.0)
        (helper.parent / ".helper.py.swp").write_text("swap")
        write_helper(loop_project, 21.0)
        watcher.wait_for("server        reloaded in place")
        time.sleep(1.0)
        assert not [x for x in list(watcher.lines.queue) if "reloaded in place" in x]
    finally:
        if dap is not None:
            dap.close()
        assert watcher.stop() == 0


def test_a_syntax_error_keeps_the_process_and_the_session_and_the_fix_recovers(started):
    loop_project, helper, url, pid = started.project, started.helper, started.url, started.pid
    dap = started.client()
    try:
        dap.attach(started.launch, {str(helper): [started.line]})
        helper.write_text("def offset(rows):\n    value = (\n    return value\n")
        broken = loop_project.run("debug")
        assert broken.returncode == 1
        assert "onlinescoring/helper.py:2: the scoring script failed to load" in broken.stderr, broken.stderr
        assert "SyntaxError" in broken.stderr and "Traceback" not in broken.stderr.split("error:")[0]

        invoked = loop_project.run("invoke", f"request={REQUEST}")
        assert invoked.returncode == 1
        assert "onlinescoring/helper.py:2: the scoring script failed to load (deployment blue answered 503)" \
            in invoked.stderr, invoked.stderr
        direct = requests.post(url, json=SAMPLE, timeout=30)
        assert direct.status_code == 503 and str(helper) in direct.json()["traceback"]  # host paths

        dap.request("threads")  # the session answers
        assert not dap.disconnected.is_set() and server_pid(loop_project) == pid

        write_helper(loop_project, 2.0)
        fixed = debug(loop_project)
        assert "reloaded in place — onlinescoring/helper.py changed" in fixed.stdout, fixed.stdout
        thread, answer, frame, thread_id = stop_in_helper(dap, url)
        assert dap.locals_of(frame["id"])["value"] == "2.0"
        dap.request("continue", {"threadId": thread_id})
        thread.join(timeout=60)
        assert first_value(answer) == pytest.approx(BASE[0] + 2.0)
        assert server_pid(loop_project) == pid
    finally:
        dap.close()


def test_keep_state_keeps_what_init_set_until_init_or_the_model_changes(project, engine):
    project.edit("onlinescoring/score.py", "import os\n", "import os\nimport time\n")
    project.edit("onlinescoring/score.py", "    global model, scale\n", "    global model, scale, stamp\n"
                 "    stamp = time.time_ns()  # changes on every call of init()\n")
    project.edit("onlinescoring/score.py", "    return predictions.tolist()\n",
                 "    return [stamp, *predictions.tolist()]\n")
    debug(project, f"spec={project.spec}", "keep_state=1")

    def stamp_and_first() -> tuple[int, float]:
        result = project.run("invoke", f"request={REQUEST}")
        assert result.returncode == 0, result.stdout + result.stderr
        answer = json.loads(result.stdout[result.stdout.index("["):])
        return answer[0], answer[1]

    started, first = stamp_and_first()
    assert first == pytest.approx(BASE[0])

    # run() edited: init() is not run again, its globals carry over (keep_state remembered, not given again)
    project.edit("onlinescoring/score.py", "    return [stamp, *predictions.tolist()]\n",
                 "    return [stamp, *(predictions + 1).tolist()]\n")
    kept = debug(project)
    assert "run() reloaded, init() state kept: model, scale, stamp" in kept.stdout, kept.stdout
    stamp, first = stamp_and_first()
    assert stamp == started and first == pytest.approx(BASE[0] + 1)

    # init() edited: it runs
    project.edit("onlinescoring/score.py", "    stamp = time.time_ns()", "    stamp = time.time_ns() + 0")
    ran = debug(project)
    assert "init() ran again: init() changed" in ran.stdout, ran.stdout
    after_init_edit, _ = stamp_and_first()
    assert after_init_edit > started

    # the model changed: init() runs
    inputs = np.random.RandomState(3).uniform(0, 10, size=(40, 10))
    joblib.dump(Ridge().fit(inputs, inputs.sum(axis=1)), project.root / "model" / "sklearn_regression_model.pkl")
    ran = debug(project)
    assert "init() ran again: the model changed" in ran.stdout, ran.stdout
    after_model, _ = stamp_and_first()
    assert after_model > after_init_edit

    # keep_state=0: every reload runs init()
    project.edit("onlinescoring/score.py", "(predictions + 1)", "(predictions + 2)")
    ran = debug(project, "keep_state=0")
    assert "init() ran again: keep_state is off" in ran.stdout, ran.stdout
    last, _ = stamp_and_first()
    assert last > after_model


def test_switching_the_debugger_with_a_client_attached_always_comes_back(started):
    loop_project, config, helper, line, url = started.project, started.launch, started.helper, started.line, \
        started.url
    attached = started.client()
    attached.attach(config, {})
    try:
        off = debug(loop_project, "debugger=0")
        assert "restarted in a new process — now as azmlinfsrv (debugger=0)" in off.stdout, off.stdout
        assert "must attach again" not in off.stdout
        assert attached.disconnected.wait(10)  # the old session ended with its server (VS Code shows it)
        assert first_value({"status": 200, "body": requests.post(url, json=SAMPLE, timeout=60).text}) \
            == pytest.approx(BASE[0])

        on = debug(loop_project)
        assert "restarted in a new process — now under debugpy" in on.stdout and "must attach again" in on.stdout
        again = started.client()
        try:
            again.attach(config, {str(helper): [line]})
            # a new process while this client is attached: the port comes back for the next one
            restarted = debug(loop_project, "restart=1")
            assert "restarted in a new process — restart=1" in restarted.stdout
            assert again.disconnected.wait(10)
        finally:
            again.close()
        third = started.client()
        try:
            third.attach(config, {str(helper): [line]})
            thread, answer, frame, thread_id = stop_in_helper(third, url)
            assert frame["line"] == line
            third.request("continue", {"threadId": thread_id})
            thread.join(timeout=60)
            assert first_value(answer) == pytest.approx(BASE[0])
        finally:
            third.close()
    finally:
        attached.close()
    logs = loop_project.run("logs", "tail=all").stdout
    assert "already in use" not in logs and "Can't listen" not in logs


@pytest.mark.parametrize("debugger", ["1", "0"], ids=["debug-server", "gunicorn"])
def test_requests_across_ten_reloads_all_answer_from_old_or_new_code(loop_project, engine, debugger):
    debug(loop_project, f"spec={loop_project.spec}", f"debugger={debugger}")
    url = scoring_url(loop_project, engine)
    answers: list[tuple[int, float | None]] = []
    stop = threading.Event()

    def keep_asking() -> None:
        session = requests.Session()
        while not stop.is_set():
            try:
                reply = session.post(url, json=SAMPLE, timeout=60)
                answers.append((reply.status_code, reply.json()[0] if reply.status_code == 200 else None))
            except requests.RequestException as exc:  # a refused or dropped connection
                answers.append((0, repr(exc)))  # type: ignore[arg-type]

    client = threading.Thread(target=keep_asking, daemon=True)
    client.start()
    try:
        for value in range(1, 11):
            write_helper(loop_project, float(value))
            result = debug(loop_project, f"debugger={debugger}")
            assert "server        reloaded in place — onlinescoring/helper.py changed" in result.stdout, result.stdout
    finally:
        stop.set()
        client.join(timeout=60)
    assert len(answers) > 10
    assert [a for a in answers if a[0] != 200] == []
    allowed = [BASE[0] + value for value in range(11)]
    assert all(any(abs(v - a) < 1e-6 for a in allowed) for _, v in answers)
    assert first_value({"status": 200, "body": requests.post(url, json=SAMPLE, timeout=60).text}) \
        == pytest.approx(BASE[0] + 10)


def test_a_changed_compiled_extension_gets_a_new_process(project, engine):
    """A compiled extension cannot be loaded twice into one process: its change is the one code change that
    needs a new server process (an edit beside it still reloads in place)."""
    extension = "_json.cpython-311-x86_64-linux-gnu.so"  # any compiled module will do: the base image's own
    package = project.root / "onlinescoring" / "ext"
    package.mkdir()
    (package / "__init__.py").write_text("")
    engine.containers.run(BASE_IMAGE, ["cp", f"/usr/lib/python3.11/lib-dynload/{extension}", "/out/"],
                          volumes={str(package): {"bind": "/out", "mode": "rw"}}, remove=True)
    project.edit("onlinescoring/score.py", "import numpy as np\n",
                 "import numpy as np\nfrom ext import _json as compiled  # noqa: F401  (from the code folder)\n")
    debug(project, f"spec={project.spec}")
    pid = server_pid(project)

    project.edit("onlinescoring/score.py", "FEATURES = 10\n", "FEATURES = 10  # edited\n")
    beside = debug(project)
    assert "reloaded in place — onlinescoring/score.py changed" in beside.stdout and server_pid(project) == pid

    with open(package / extension, "ab") as handle:
        handle.write(b"\0")  # a rebuilt extension: other bytes
    rebuilt = debug(project)
    assert "restarted in a new process — a compiled extension in the code folder changed" in rebuilt.stdout, \
        rebuilt.stdout
    assert server_pid(project) != pid
    answer = requests.post(scoring_url(project, engine), json=SAMPLE, timeout=60)
    assert answer.status_code == 200 and answer.json()[0] == pytest.approx(BASE[0])


SCHEMA_IMPORTS = """import json

from azureml_inference_server_http.api.aml_request import rawhttp
from azureml_inference_server_http.api.aml_response import AMLResponse
from inference_schema.parameter_types.standard_py_parameter_type import StandardPythonParameterType
from inference_schema.schema_decorators import input_schema, output_schema


def init():
    pass


"""
DECORATED = """@input_schema("data", StandardPythonParameterType([[1.0, 2.0]]))
@output_schema(StandardPythonParameterType([3.0]))
def run(data):
    return [sum(row) for row in data]
"""
RENAMED = """@input_schema("rows", StandardPythonParameterType([[5.0, 6.0, 7.0]]))
@output_schema(StandardPythonParameterType([3]))
def run(rows):
    return [len(row) for row in rows]
"""
PLAIN = """def run(raw_data):
    return {"raw": json.loads(raw_data)}
"""
RAW = """@rawhttp
def run(request):
    return AMLResponse(request.get_data()[::-1], 200, {"Content-Type": "application/octet-stream"})
"""


def test_reloads_follow_the_scripts_decorators_and_swagger_as_a_new_process_would(project, engine):
    score = project.root / "onlinescoring" / "score.py"

    def save(run: str) -> None:
        score.write_text(SCHEMA_IMPORTS + run)

    def swagger(url: str) -> dict:
        answer = requests.get(url.replace("/score", "/swagger.json"), timeout=30)
        assert answer.status_code == 200, answer.text
        return answer.json()

    save(DECORATED)
    debug(project, f"spec={project.spec}")
    url = scoring_url(project, engine)
    assert requests.post(url, json={"data": [[1, 2], [3, 4]]}, timeout=30).json() == [3, 7]
    assert list(swagger(url)["definitions"]["ServiceInput"]["properties"]) == ["data"]

    save(RENAMED)  # a parameter renamed: the old name must not linger in the schema
    assert "reloaded in place" in debug(project).stdout
    reloaded = swagger(url)
    assert list(reloaded["definitions"]["ServiceInput"]["properties"]) == ["rows"]
    assert requests.post(url, json={"rows": [[1, 2, 3]]}, timeout=30).json() == [3]
    assert "restarted in a new process" in debug(project, "restart=1").stdout
    assert swagger(url) == reloaded  # what a fresh process builds from the same script

    save(PLAIN)  # no decorator any more: run() gets the body as text again
    assert "reloaded in place" in debug(project).stdout
    assert requests.post(url, json={"a": 1}, timeout=30).json() == {"raw": {"a": 1}}

    save(RAW)  # @rawhttp: run() gets the request
    assert "reloaded in place" in debug(project).stdout
    assert requests.post(url, data=b"abc", timeout=30).content == b"cba"

    save(PLAIN)  # and without it again
    assert "reloaded in place" in debug(project).stdout
    assert requests.post(url, json={"b": 2}, timeout=30).json() == {"raw": {"b": 2}}
