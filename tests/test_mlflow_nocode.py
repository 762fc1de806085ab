"""No-code MLflow deployments (issue 16): an MLflow model with neither scoring script nor environment, run as Azure
runs it: localml writes the scoring script and the environment under .localml/, and the real server answers Azure's
MLflow request shapes. Real mlflow saves the model; the Docker tests run it on the real engine."""

from __future__ import annotations

import json
import shutil
import sys
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
import requests
from conftest import REPO, Project, remove_containers, sample_copy
from dap_client import DapClient, host_launch, line_in, post_in_background

from localml_tasks import mlflow_model, watch
from localml_tasks.errors import LocalmlError
from localml_tasks.spec import load_deployment

mlflow = pytest.importorskip("mlflow")  # a test dependency (pyproject: test); importorskip only names it clearly
from mlflow.models import infer_signature  # noqa: E402
from sklearn.linear_model import LinearRegression  # noqa: E402

COLUMNS = ["age", "bmi", "bp"]
TRAIN = pd.DataFrame({"age": [0.1, 0.5, 0.9, 0.3, 0.7], "bmi": [1.0, 0.2, 0.4, 0.8, 0.6],
                      "bp": [3.0, 1.0, 2.0, 5.0, 4.0]})
ROWS = [[1, 2, 3], [0.5, 0.25, 4.0]]  # whole numbers too: JSON has no float type of its own

DEPLOYMENT = """\
$schema: https://azuremlschemas.azureedge.net/latest/managedOnlineDeployment.schema.json
name: blue
endpoint_name: {endpoint}
model:
  name: diabetes-mlflow
  version: 1
  path: model
  type: mlflow_model
instance_type: Standard_DS3_v2
instance_count: 1
"""


def save_model(folder: Path, scale: float = 1.0) -> None:
    """A scikit-learn regression saved by mlflow, with a signature (columns age, bmi, bp; doubles)."""
    target = (TRAIN["age"] * 2 + TRAIN["bmi"] - TRAIN["bp"] * 0.5) * scale
    model = LinearRegression().fit(TRAIN, target)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mlflow.sklearn.save_model(model, str(folder), signature=infer_signature(TRAIN, model.predict(TRAIN)),
                                  serialization_format="cloudpickle")


def expected(folder: Path) -> list[float]:
    loaded = mlflow.pyfunc.load_model(str(folder))
    return loaded.predict(pd.DataFrame(ROWS, columns=COLUMNS).astype(float)).tolist()


def make_project(root: Path, model: Path) -> Project:
    root.mkdir(parents=True)
    shutil.copy(REPO / "localml.yml", root / "localml.yml")
    endpoint = f"t-{uuid.uuid4().hex[:8]}"
    shutil.copytree(model, root / "model")
    (root / "endpoint.yml").write_text(f"name: {endpoint}\nauth_mode: key\n")
    (root / "blue-deployment.yml").write_text(DEPLOYMENT.format(endpoint=endpoint))
    return Project(root=root, endpoint=endpoint)


@pytest.fixture(scope="session")
def saved_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Saved once (mlflow infers the requirements in a subprocess: seconds); each test copies it."""
    folder = tmp_path_factory.mktemp("mlflow") / "model"
    save_model(folder)
    return folder


@pytest.fixture
def nocode(tmp_path: Path, saved_model: Path) -> Iterator[Project]:
    project = make_project(tmp_path / "project", saved_model)
    yield project
    remove_containers(project.endpoint)


def load(project: Project, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(project.root)  # generated files go to .localml/ of the working directory
    return load_deployment(project.spec)


def problems_of(project: Project, monkeypatch: pytest.MonkeyPatch) -> list:
    with pytest.raises(LocalmlError) as caught:
        load(project, monkeypatch)
    return caught.value.problems


# ---- validation and generation (no Docker) ---------------------------------------------------------------------

def test_no_code_shape_becomes_an_ordinary_deployment_with_generated_files(nocode, monkeypatch):
    before = sorted(p.name for p in (nocode.root / "model").iterdir())
    deployment = load(nocode, monkeypatch)
    state = nocode.root / ".localml"
    assert Path(deployment.code_dir).is_relative_to(state) and Path(deployment.conda_file).is_relative_to(state)
    assert deployment.scoring_script == "score.py"
    script = (Path(deployment.code_dir) / "score.py").read_text()
    assert 'MODEL_FOLDER = os.environ.get("MLFLOW_MODEL_FOLDER", "model")' in script
    assert "def init():" in script and "def run(raw_data):" in script
    conda = (Path(deployment.conda_file)).read_text()
    assert "azureml-inference-server-http" in conda and "scikit-learn==" in conda
    assert "mlflow-skinny==" in conda and "- mlflow==" not in conda
    assert deployment.image == mlflow_model.DEFAULT_BASE_IMAGE
    assert any("no-code MLflow deployment" in note for note in deployment.notes)
    assert sorted(p.name for p in (nocode.root / "model").iterdir()) == before  # nothing written into the model
    # validating again writes nothing new: the files keep their times (doit's hashes stay)
    stamp = (Path(deployment.code_dir) / "score.py").stat().st_mtime_ns
    load(nocode, monkeypatch)
    assert (Path(deployment.code_dir) / "score.py").stat().st_mtime_ns == stamp


def test_swagger_documents_come_from_the_models_signature(nocode, monkeypatch):
    code_dir = Path(load(nocode, monkeypatch).code_dir)
    swagger2 = json.loads((code_dir / "swagger2.json").read_text())
    assert swagger2["swagger"] == "2.0"
    service_input = swagger2["definitions"]["ServiceInput"]
    assert service_input["example"]["input_data"]["columns"] == COLUMNS
    assert "age (double)" in service_input["properties"]["input_data"]["description"]
    assert swagger2["definitions"]["ServiceOutput"] == {"type": "array", "items": {"type": "number",
                                                                                   "format": "double"}}
    swagger3 = json.loads((code_dir / "swagger3.json").read_text())
    assert swagger3["openapi"].startswith("3.") and swagger3["components"]["schemas"]["ServiceInput"] == service_input


def test_watch_treats_mlmodel_and_its_environment_files_as_configuration(nocode, monkeypatch):
    """doit watch: a save of model.pkl reloads in place; of MLmodel or the environment files, reruns the chain."""
    deployment = load(nocode, monkeypatch)
    folders, files = watch.folders_and_files(deployment.to_json(), nocode.spec, None)
    model = Path(deployment.model_path)
    assert str(model) in folders
    names = ("MLmodel", "conda.yaml", "python_env.yaml", "requirements.txt")
    assert {str(model / name) for name in names} <= set(files)
    assert str(model / "model.pkl") not in files


def test_swagger_of_a_tensor_signature(tmp_path):
    model = mlflow_model.MlflowModel(
        folder=tmp_path, loader_module="mlflow.keras", env_file=None, env_kind="conda",
        inputs=[{"type": "tensor", "tensor-spec": {"dtype": "float32", "shape": [-1, 2, 3]}}],
        outputs=[{"type": "tensor", "tensor-spec": {"dtype": "int64", "shape": [-1]}}])
    service_input, service_output = mlflow_model.service_schemas(model)
    assert service_input["example"] == {"input_data": [[[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]]}
    assert service_output == {"type": "array", "items": {"type": "integer", "format": "int64"}}


def test_a_signature_mlflow_cannot_read_is_refused_at_its_line(nocode, monkeypatch):
    mlmodel = nocode.root / "model" / "MLmodel"
    text = mlmodel.read_text()
    start = text.index("  inputs: '")
    end = text.index("  outputs: '")
    mlmodel.write_text(text[:start] + "  inputs: '[{not json'\n" + text[end:])
    problems = problems_of(nocode, monkeypatch)
    assert len(problems) == 1 and "not JSON" in problems[0].message and problems[0].key == "signature.inputs"
    assert problems[0].line == mlmodel.read_text().splitlines().index("  inputs: '[{not json'") + 1


def test_no_code_base_image_setting_overrides_azures_image(nocode, monkeypatch):
    config = nocode.root / "localml.yml"
    config.write_text(config.read_text() + "no_code_base_image: localml/debian-python:3.11-bookworm\n")
    assert load(nocode, monkeypatch).image == "localml/debian-python:3.11-bookworm"


def test_python_env_yaml_with_requirements_gives_the_environment(nocode, monkeypatch):
    mlmodel = nocode.root / "model" / "MLmodel"
    mlmodel.write_text(mlmodel.read_text().replace("      conda: conda.yaml\n", ""))
    (nocode.root / "model" / "conda.yaml").unlink()
    deployment = load(nocode, monkeypatch)
    conda = Path(deployment.conda_file).read_text()
    assert "scikit-learn==" in conda and "azureml-inference-server-http" in conda and "python=3." in conda


def test_a_model_without_python_function_flavor_is_refused_at_mlmodels_line(nocode, monkeypatch):
    mlmodel = nocode.root / "model" / "MLmodel"
    text = mlmodel.read_text()
    start = text.index("  python_function:")
    end = text.index("  sklearn:")
    mlmodel.write_text(text[:start] + text[end:])
    problems = problems_of(nocode, monkeypatch)
    assert len(problems) == 1
    problem = problems[0]
    assert problem.file == str(mlmodel.resolve()) and "python_function" in problem.message
    assert "sklearn" in problem.message  # the flavors it has
    line = mlmodel.read_text().splitlines().index("flavors:") + 1
    assert problem.line == line


def test_a_broken_mlmodel_is_refused_at_its_line(nocode, monkeypatch):
    mlmodel = nocode.root / "model" / "MLmodel"
    lines = mlmodel.read_text().splitlines()
    lines.insert(3, "    env: [unclosed")
    mlmodel.write_text("\n".join(lines) + "\n")
    problems = problems_of(nocode, monkeypatch)
    assert problems and problems[0].file == str(mlmodel.resolve()) and problems[0].line in (4, 5)


def test_a_missing_environment_file_is_refused_at_the_line_naming_it(nocode, monkeypatch):
    (nocode.root / "model" / "conda.yaml").unlink()
    mlmodel = nocode.root / "model" / "MLmodel"
    problems = problems_of(nocode, monkeypatch)
    assert len(problems) == 1 and "conda.yaml" in problems[0].message
    assert problems[0].line == mlmodel.read_text().splitlines().index("      conda: conda.yaml") + 1


def test_a_folder_without_mlmodel_is_refused_at_model_path(nocode, monkeypatch):
    (nocode.root / "model" / "MLmodel").unlink()
    problems = problems_of(nocode, monkeypatch)
    assert len(problems) == 1 and "MLmodel" in problems[0].message
    assert problems[0].file == str(nocode.spec.resolve()) and problems[0].key == "model.path"


def test_anything_else_missing_code_or_environment_keeps_todays_error(nocode, monkeypatch):
    nocode.edit("blue-deployment.yml", "  type: mlflow_model\n", "  type: custom_model\n")
    messages = [p.message for p in problems_of(nocode, monkeypatch)]
    assert "missing required key 'code_configuration'" in messages and "missing required key 'environment'" in messages
    nocode.edit("blue-deployment.yml", "  type: custom_model\n",
                "  type: mlflow_model\nenvironment:\n  image: x\n  conda_file: conda.yml\n")
    messages = [p.message for p in problems_of(nocode, monkeypatch)]
    assert "missing required key 'code_configuration'" in messages


def test_process_mode_serves_the_no_code_deployment(nocode):
    """runtime=process: the same generated script and environment in a venv on this machine (the model reached
    through a link: the script loads its real folder)."""
    try:
        result = nocode.run("debug", f"spec={nocode.spec}", "runtime=process")
        assert result.returncode == 0, result.stdout + result.stderr
        url = json.loads(nocode.run("show").stdout)["deployments"][0]["scoring_uri"]
        body = {"input_data": {"columns": COLUMNS, "index": [0, 1], "data": ROWS}}
        answer = post(url, body)
        assert answer.status_code == 200, answer.text
        assert answer.json() == pytest.approx(expected(nocode.root / "model"), rel=1e-12)
        wrong = post(url, {"dataframe_records": [{"age": 1, "bmi": 2}]})
        assert wrong.status_code == 400 and "'bp'" in wrong.json()["message"]
    finally:
        nocode.run("delete")


def test_a_no_code_deployment_beside_a_coded_one_on_one_endpoint(tmp_path):
    """The sample's coded blue and the MLflow sample as green, on one endpoint (runtime=process): each answers its
    own requests, named or through the endpoint's traffic, and `show` lists both."""
    project = sample_copy(tmp_path / "project")  # specs/ whole: the MLflow sample's model is in mlflow/model
    (project.root / "green-mlflow.yml").write_text(
        (project.root / "mlflow" / "mlflow-deployment.yml").read_text()
        .replace("name: mlflow\n", "name: green\n").replace("endpoint_name: localml-mlflow-sample",
                                                             f"endpoint_name: {project.endpoint}")
        .replace("path: model/", "path: mlflow/model/"))
    try:
        for spec in ("blue-deployment.yml", "green-mlflow.yml"):
            started = project.run("debug", f"spec={spec}", "runtime=process", "vscode=0")
            assert started.returncode == 0, started.stdout + started.stderr
        assert "no-code MLflow deployment" in started.stdout
        shown = json.loads(project.run("show").stdout)
        assert {d["name"]: d["traffic"] for d in shown["deployments"]} == {"blue": 90, "green": 10}
        mlflow_request = json.loads((project.root / "mlflow" / "sample-request.json").read_text())
        sample_request = json.loads((project.root / "sample-request.json").read_text())
        for name, body, length in (("green", mlflow_request, 2), ("blue", sample_request, 2)):
            answer = requests.post(shown["scoring_uri"], json=body, timeout=30,
                                   headers={"azureml-model-deployment": name})
            assert answer.status_code == 200 and answer.headers["azureml-model-deployment"] == name, answer.text
            assert len(answer.json()) == length
        named = project.run("invoke", f"request={project.root / 'mlflow' / 'sample-request.json'}",
                            "deployment=green")
        assert named.returncode == 0 and "200 from green (named)" in named.stdout, named.stdout + named.stderr
        # blue's request is not green's: the MLflow deployment says which column is missing, as Azure's would
        wrong = requests.post(shown["scoring_uri"], json=sample_request, timeout=30,
                              headers={"azureml-model-deployment": "green"})
        assert wrong.status_code == 400, wrong.text
    finally:
        for spec in ("green-mlflow.yml", "blue-deployment.yml"):
            project.run("delete", f"spec={spec}")


# ---- the deployment up, on the real engine -------------------------------------------------------------------------

def post(url: str, body: object) -> requests.Response:
    return requests.post(url, json=body, timeout=30)


@pytest.mark.docker
def test_no_code_deployment_answers_azures_request_shapes_like_the_model(nocode, engine):
    result = nocode.run("debug", f"spec={nocode.spec}")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "health        healthy" in result.stdout
    assert "no-code MLflow deployment" in result.stdout
    shown = json.loads(nocode.run("show").stdout)
    url = shown["deployments"][0]["scoring_uri"]
    want = expected(nocode.root / "model")

    split = {"columns": COLUMNS, "index": [0, 1], "data": ROWS}
    shapes = {
        "input_data split": {"input_data": split},
        "input_data split without index": {"input_data": {"columns": COLUMNS, "data": ROWS}},
        "input_data list": {"input_data": ROWS},
        "input_data named lists": {"input_data": {name: [row[i] for row in ROWS] for i, name in enumerate(COLUMNS)}},
        "input_data with params": {"input_data": split, "params": {}},
        "dataframe_split": {"dataframe_split": {"columns": COLUMNS, "data": ROWS}},
        "dataframe_records": {"dataframe_records": [dict(zip(COLUMNS, row, strict=True)) for row in ROWS]},
        "inputs": {"inputs": {name: [row[i] for row in ROWS] for i, name in enumerate(COLUMNS)}},
        "instances": {"instances": [dict(zip(COLUMNS, row, strict=True)) for row in ROWS]},
    }
    for shape, body in shapes.items():
        answer = post(url, body)
        assert answer.status_code == 200, f"{shape}: {answer.status_code} {answer.text}"
        assert answer.json() == pytest.approx(want, rel=1e-12), shape

    # through the endpoint and localml's own invoke command
    request = nocode.root / "request.json"
    request.write_text(json.dumps({"input_data": split}))
    invoked = nocode.run("invoke", f"request={request}")
    assert invoked.returncode == 0, invoked.stdout + invoked.stderr
    assert json.loads(invoked.stdout[invoked.stdout.index("["):]) == pytest.approx(want, rel=1e-12)

    # a wrong column, a wrong type: 400 naming them
    wrong = post(url, {"input_data": {"columns": ["age", "bmi", "blood_pressure"], "data": ROWS}})
    assert wrong.status_code == 400 and "'bp'" in wrong.json()["message"]
    assert "'blood_pressure'" in wrong.json()["message"]
    typed = post(url, {"input_data": {"columns": COLUMNS, "data": [["old", 2, 3]]}})
    assert typed.status_code == 400 and "column age" in typed.json()["message"]
    assert post(url, {"data": ROWS}).status_code == 400

    # swagger from the model's signature, served by the server
    swagger = requests.get(shown["deployments"][0]["swagger_uri"], timeout=30).json()
    assert swagger["definitions"]["ServiceInput"]["example"]["input_data"]["columns"] == COLUMNS

    # the debugger attaches with the generated launch configuration and stops in the generated run()
    score = nocode.root / ".localml" / "endpoints" / nocode.endpoint / "blue" / "mlflow-scoring" / "score.py"
    run_line = line_in(score, "predictions = model.predict(data")
    launch = host_launch(nocode)
    dap = DapClient(launch["connect"]["host"], launch["connect"]["port"])
    try:
        dap.attach(launch, {str(score): [run_line]})
        thread, answered = post_in_background(url, {"input_data": split})
        stopped = dap.wait_event("stopped")
        frame = dap.top_frame(stopped["body"]["threadId"])
        assert (frame["source"]["path"], frame["line"]) == (str(score), run_line)
        assert dap.evaluate("list(data.columns)", frame["id"]) == repr(COLUMNS)
        dap.request("continue", {"threadId": stopped["body"]["threadId"]})
        thread.join(timeout=60)
    finally:
        dap.close()
    assert answered["status"] == 200 and json.loads(answered["body"]) == pytest.approx(want, rel=1e-12)

    # a model file edited: the next debug reloads the model in the running server (init() runs again)
    retrained = nocode.root.parent / "retrained"
    save_model(retrained, scale=3.0)
    shutil.copy(retrained / "model.pkl", nocode.root / "model" / "model.pkl")
    again = nocode.run("debug", f"spec={nocode.spec}")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "image         up to date" in again.stdout  # the environment did not change
    answer = post(url, {"input_data": split})
    assert answer.status_code == 200, answer.text
    assert answer.json() == pytest.approx(expected(retrained), rel=1e-12)
    assert answer.json() != pytest.approx(want, rel=1e-6)


# ---- a custom pyfunc model with code: breakpoints over DAP ------------------------------------------------------

PYFUNC_CODE = '''\
import mlflow.pyfunc


class Doubler(mlflow.pyfunc.PythonModel):
    """Doubles every value: a pyfunc model whose own code is in the model folder (code_paths)."""

    def predict(self, context, model_input, params=None):
        doubled = model_input * 2.0
        return doubled
'''


def save_pyfunc_model(source: Path, folder: Path) -> None:
    """A custom pyfunc model saved with its code (model/code/doubler.py), explicit requirements, a signature."""
    (source / "doubler.py").write_text(PYFUNC_CODE)
    import importlib.util
    spec = importlib.util.spec_from_file_location("doubler", source / "doubler.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["doubler"] = module  # pickled by reference: loading imports doubler from the model's code folder
    frame = pd.DataFrame({"x": [1.0, 2.0]})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # mlflow's advice to add type hints to predict
        spec.loader.exec_module(module)
        mlflow.pyfunc.save_model(str(folder), python_model=module.Doubler(), code_paths=[str(source / "doubler.py")],
                                 signature=infer_signature(frame, frame * 2.0),
                                 pip_requirements=[f"mlflow-skinny=={mlflow.__version__}",
                                                   f"pandas=={pd.__version__}", "cloudpickle"])
    del sys.modules["doubler"]


@pytest.mark.parametrize("runtime", ["process", pytest.param("docker", marks=pytest.mark.docker)])
def test_breakpoints_in_the_generated_script_and_the_models_own_code_over_dap(tmp_path, saved_model, runtime):
    """The debugger attached once stops in the generated run() and in the pyfunc model's predict
    (model/code/doubler.py), set by their paths on this machine: in process mode the host's own files (the model
    loaded from its real folder), in a container the mounted ones (launch.json maps the code and model folders)."""
    project = make_project(tmp_path / "project", saved_model)
    shutil.rmtree(project.root / "model")
    (tmp_path / "source").mkdir()
    save_pyfunc_model(tmp_path / "source", project.root / "model")
    try:
        result = project.run("debug", f"spec={project.spec}", f"runtime={runtime}", "vscode=0")
        assert result.returncode == 0, result.stdout + result.stderr
        launch = host_launch(project)
        score = project.root / ".localml" / "endpoints" / project.endpoint / "blue" / "mlflow-scoring" / "score.py"
        model_code = project.root / "model" / "code" / "doubler.py"
        assert model_code.is_file()
        run_line = line_in(score, "predictions = model.predict(data")
        predict_line = line_in(model_code, "doubled = model_input * 2.0")
        url = json.loads(project.run("show").stdout)["deployments"][0]["scoring_uri"]
        dap = DapClient(launch["connect"]["host"], launch["connect"]["port"])
        try:
            dap.attach(launch, {str(score): [run_line], str(model_code): [predict_line]})
            thread, answer = post_in_background(url, {"input_data": {"columns": ["x"], "data": [[1], [4]]}})
            for path, line in ((score, run_line), (model_code, predict_line)):
                stopped = dap.wait_event("stopped")
                frame = dap.top_frame(stopped["body"]["threadId"])
                assert (frame["source"]["path"], frame["line"]) == (str(path), line)
                dap.request("continue", {"threadId": stopped["body"]["threadId"]})
            thread.join(timeout=60)
        finally:
            dap.close()
        assert answer["status"] == 200, answer
        assert json.loads(answer["body"]) == [{"x": 2.0}, {"x": 8.0}]  # a data frame answers as records
    finally:
        project.run("delete")
