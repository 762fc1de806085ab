"""No-code MLflow deployments: a deployment whose model is an MLflow model (`type: mlflow_model`, a local folder
holding an MLmodel file) and that gives neither code_configuration nor environment. Azure generates the scoring
script and the environment for it; so does localml, under .localml/ (never in the user's folders):

- the MLmodel file is read and checked (a python_function flavor, its loader, the environment file it names,
  the signature), each problem at MLmodel's own line;
- the environment is the model's conda.yaml (or python_env.yaml + requirements.txt) with what serving needs
  (the inference server, mlflow-skinny in place of mlflow, pandas), written as a conda file for the usual lock;
- the scoring script is templates/mlflow_score.py, with the model's folder name filled in;
- the base image is Azure's MLflow inference image, or `no_code_base_image:` of localml.yml (image aliases apply).

The deployment then flows like a coded one: code_dir is the generated folder, scoring_script its score.py.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from . import state
from .errors import LocalmlError, Problem
from .yamlsource import YamlDocument, load_yaml

MLMODEL = "MLmodel"
# the image Azure builds a no-code MLflow deployment on (its MLflow inference base image)
DEFAULT_BASE_IMAGE = "mcr.microsoft.com/azureml/mlflow-ubuntu20.04-py38-cpu-inference:latest"
SCORING_FOLDER = "mlflow-scoring"  # mounted at /var/azureml-app/mlflow-scoring, like a code folder
SCORE_FILE = "score.py"
ENVIRONMENT_FILE = "mlflow-environment.yml"
# what the generated script needs beside the model's own requirements (the same server as the sample's)
INFERENCE_SERVER = "azureml-inference-server-http==1.5.1"
PYFUNC = "python_function"
SAVE_FIX = ("save the model with mlflow (mlflow.<flavor>.save_model or log_model writes MLmodel and its "
            "environment files)")


@dataclass
class MlflowModel:
    """What the MLmodel file says, checked."""

    folder: Path
    loader_module: str
    env_file: Path | None  # conda.yaml (env_kind conda) or python_env.yaml (virtualenv)
    env_kind: str
    python_version: str | None = None
    input_columns: list[str] = field(default_factory=list)
    mlflow_version: str | None = None
    # the signature as MLflow writes it: lists of column specs ({"name", "type"}) or tensor specs
    inputs: list[dict[str, Any]] = field(default_factory=list)
    outputs: list[dict[str, Any]] = field(default_factory=list)


def is_no_code(data: Any) -> bool:
    """The shape of a no-code deployment: an mlflow_model with neither code_configuration nor environment."""
    if not isinstance(data, dict):
        return False
    model = data.get("model")
    return (isinstance(model, dict) and str(model.get("type", "")).lower() == "mlflow_model"
            and data.get("code_configuration") is None and data.get("environment") is None)


def read_model(folder: Path, where_path: dict[str, Any]) -> tuple[MlflowModel | None, list[Problem]]:
    """Check the MLflow model in folder. where_path: Problem keywords for the deployment's model.path (problems
    about the folder itself go there; problems inside the model at MLmodel's lines)."""
    if not folder.is_dir():
        return None, [Problem(f"an MLflow model is a folder holding an {MLMODEL} file; {folder.name} is a file",
                              fix="point model.path at the model's folder (the one holding MLmodel)", **where_path)]
    mlmodel = folder / MLMODEL
    if not mlmodel.is_file():
        return None, [Problem(f"no {MLMODEL} file in {folder}: type mlflow_model needs an MLflow model folder",
                              fix=f"point model.path at the folder mlflow saved (it holds {MLMODEL}), or "
                                  f"{SAVE_FIX}; a model without MLmodel needs code_configuration and environment "
                                  "(and type: custom_model)", **where_path)]
    try:
        doc = load_yaml(mlmodel)
    except LocalmlError as exc:
        return None, exc.problems
    problems: list[Problem] = []

    def problem(key: tuple, message: str, fix: str | None = None) -> None:
        problems.append(Problem(message, fix=fix, **doc.where(key)))

    data = doc.data
    if not isinstance(data, dict):
        problem((), f"expected a mapping (flavors:, signature:, ...), found {type(data).__name__}", SAVE_FIX)
        return None, problems
    flavors = data.get("flavors")
    if not isinstance(flavors, dict):
        problem(("flavors",), "missing or not a mapping: an MLmodel file lists the model's flavors", SAVE_FIX)
        return None, problems
    pyfunc = flavors.get(PYFUNC)
    if pyfunc is None:
        names = ", ".join(map(str, flavors)) or "none"
        problem(("flavors",), f"the model has no {PYFUNC} flavor (its flavors: {names}): a no-code deployment "
                              "loads it with mlflow.pyfunc.load_model, in Azure as here",
                "save it with an mlflow flavor that adds python_function (mlflow.sklearn, mlflow.pyfunc, ...), "
                "or deploy it with a scoring script and an environment (code_configuration, environment)")
        return None, problems
    if not isinstance(pyfunc, dict):
        problem(("flavors", PYFUNC), f"expected a mapping, found {type(pyfunc).__name__}", SAVE_FIX)
        return None, problems
    loader = pyfunc.get("loader_module")
    if not isinstance(loader, str) or not loader.strip():
        problem(("flavors", PYFUNC, "loader_module") if "loader_module" in pyfunc else ("flavors", PYFUNC),
                "missing loader_module: mlflow.pyfunc.load_model imports it to load the model", SAVE_FIX)
        loader = ""
    env_file, env_kind = _env_file(doc, folder, pyfunc, problem)
    inputs = _signature_specs(doc, "inputs", problem)
    outputs = _signature_specs(doc, "outputs", problem)
    columns = [str(item["name"]) for item in inputs if item.get("type") != "tensor" and "name" in item]
    python_version = pyfunc.get("python_version")
    if problems:
        return None, problems
    return MlflowModel(folder=folder, loader_module=loader, env_file=env_file, env_kind=env_kind,
                       python_version=str(python_version) if python_version is not None else None,
                       input_columns=columns, inputs=inputs, outputs=outputs,
                       mlflow_version=str(data["mlflow_version"]) if data.get("mlflow_version") else None), problems


def _env_file(doc: YamlDocument, folder: Path, pyfunc: dict[str, Any], problem: Any) -> tuple[Path | None, str]:
    key: tuple = ("flavors", PYFUNC, "env")
    env = pyfunc.get("env")
    if env is None:
        if (folder / "conda.yaml").is_file():  # mlflow before 2.0 did not name it
            return folder / "conda.yaml", "conda"
        problem(("flavors", PYFUNC), "names no environment file (env:), and the model folder has no conda.yaml",
                "save the model with mlflow, which writes conda.yaml and python_env.yaml beside MLmodel")
        return None, "conda"
    if isinstance(env, str):
        name, kind = env, "conda"
    elif isinstance(env, dict) and isinstance(env.get("conda"), str):
        name, kind, key = env["conda"], "conda", (*key, "conda")
    elif isinstance(env, dict) and isinstance(env.get("virtualenv"), str):
        name, kind, key = env["virtualenv"], "virtualenv", (*key, "virtualenv")
    else:
        problem(key, "expected the environment file's name, or a mapping with conda: or virtualenv:",
                "env: {conda: conda.yaml, virtualenv: python_env.yaml}")
        return None, "conda"
    path = (folder / name).resolve()
    if not path.is_relative_to(folder.resolve()):
        problem(key, f"the environment file {name} is outside the model folder", "keep it beside MLmodel")
        return None, kind
    if not path.is_file():
        problem(key, f"environment file not found: {name} (looked for {path})",
                "save the model again with mlflow, or put the file beside MLmodel")
        return None, kind
    return path, kind


def _signature_specs(doc: YamlDocument, part: str, problem: Any) -> list[dict[str, Any]]:
    """signature.inputs or .outputs: MLflow writes each as a JSON string holding a list of specs."""
    signature = doc.data.get("signature")
    if signature is None:
        return []
    if not isinstance(signature, dict):
        if part == "inputs":
            problem(("signature",), "expected a mapping with inputs: and outputs:")
        return []
    value = signature.get(part)
    if value is None:
        return []
    fix = "let mlflow write it (signature=infer_signature(...) when saving)"
    try:
        specs = json.loads(value) if isinstance(value, str) else None
    except ValueError as exc:
        problem(("signature", part), f"the {part[:-1]} signature is not JSON: {exc}", fix)
        return []
    if not isinstance(specs, list) or not all(isinstance(item, dict) for item in specs):
        problem(("signature", part), f"the {part[:-1]} signature must be a JSON list of column or tensor specs", fix)
        return []
    return specs


# ---- swagger from the signature ----------------------------------------------------------------------------

_JSON_TYPES = {"double": ("number", "double", 0.0), "float": ("number", "float", 0.0),
               "long": ("integer", "int64", 0), "integer": ("integer", "int32", 0),
               "boolean": ("boolean", None, False), "string": ("string", None, "text"),
               "binary": ("string", "binary", ""), "datetime": ("string", "date-time", "2024-01-01T00:00:00")}


def _json_type(mlflow_type: Any) -> tuple[dict[str, Any], Any]:
    """(JSON schema, example value) of one MLflow data type (a numpy dtype name for tensors)."""
    name = str(mlflow_type)
    if name.startswith(("float", "double")):
        name = "double"
    elif name.startswith(("int", "uint")):
        name = "long"
    elif name in ("bool",):
        name = "boolean"
    elif name in ("str", "object"):
        name = "string"
    kind, fmt, example = _JSON_TYPES.get(name, ("object", None, None))
    schema: dict[str, Any] = {"type": kind}
    if fmt:
        schema["format"] = fmt
    return schema, example


def _tensor_schema(spec: dict[str, Any]) -> tuple[dict[str, Any], Any]:
    tensor = spec.get("tensor-spec") or {}
    schema, example = _json_type(tensor.get("dtype", "float64"))
    shape = tensor.get("shape") or [-1]
    for size in reversed(shape[1:]):
        count = size if isinstance(size, int) and size > 0 else 1
        schema, example = {"type": "array", "items": schema}, [example] * count
    return {"type": "array", "items": schema}, [example]


def service_schemas(model: MlflowModel) -> tuple[dict[str, Any], dict[str, Any]]:
    """(ServiceInput, ServiceOutput) as JSON schemas: Azure's input_data shapes, the output the script gives."""
    columns = [spec for spec in model.inputs if spec.get("type") != "tensor"]
    params = {"type": "object", "description": "optional: the model's inference parameters"}
    if columns:
        names = [str(spec.get("name", index)) for index, spec in enumerate(columns)]
        examples = [_json_type(spec.get("type"))[1] for spec in columns]
        described = ", ".join(f"{name} ({spec.get('type')})" for name, spec in zip(names, columns, strict=True))
        service_input: dict[str, Any] = {
            "type": "object",
            "properties": {"input_data": {
                "type": "object",
                "description": f"a data frame in pandas' split orientation; its columns: {described}",
                "properties": {"columns": {"type": "array", "items": {"type": "string"}},
                               "index": {"type": "array", "items": {"type": "integer"}},
                               "data": {"type": "array", "items": {"type": "array", "items": {}}}},
                "required": ["data"]}, "params": params},
            "required": ["input_data"],
            "example": {"input_data": {"columns": names, "index": [0], "data": [examples]}}}
    elif model.inputs:
        tensors = {str(spec.get("name", "input")): _tensor_schema(spec) for spec in model.inputs}
        if len(tensors) == 1 and "name" not in model.inputs[0]:
            schema, example = next(iter(tensors.values()))
            data, data_example = schema, example
        else:
            data = {"type": "object", "properties": {name: item[0] for name, item in tensors.items()}}
            data_example = {name: item[1] for name, item in tensors.items()}
        service_input = {"type": "object", "properties": {"input_data": data, "params": params},
                         "required": ["input_data"], "example": {"input_data": data_example}}
    else:
        service_input = {"type": "object", "description": "the model has no signature: any of Azure's MLflow "
                         "request shapes (input_data, dataframe_split, dataframe_records, inputs, instances)"}
    output_columns = [spec for spec in model.outputs if spec.get("type") != "tensor"]
    if len(output_columns) > 1 or (output_columns and "name" in output_columns[0]):
        properties = {str(spec.get("name", index)): _json_type(spec.get("type"))[0]
                      for index, spec in enumerate(output_columns)}
        service_output: dict[str, Any] = {"type": "array", "items": {"type": "object", "properties": properties}}
    elif output_columns:
        service_output = {"type": "array", "items": _json_type(output_columns[0].get("type"))[0]}
    elif model.outputs:
        service_output = _tensor_schema(model.outputs[0])[0]
    else:
        service_output = {"type": "array", "items": {}}
    return service_input, service_output


def swagger_documents(model: MlflowModel, deployment: str) -> dict[str, dict[str, Any]]:
    """swagger2.json and swagger3.json for the generated code folder: azmlinfsrv serves a code folder's own."""
    service_input, service_output = service_schemas(model)
    error = {"type": "object", "properties": {"message": {"type": "string"}}}
    info = {"title": deployment, "version": "1.0",
            "description": f"The no-code MLflow deployment {deployment}: its model's signature, Azure's request shapes"}
    health = {"operationId": "ServiceHealthCheck", "description": "Liveness: 'Healthy' while the server is up"}
    score = {"operationId": "RunMLService", "description": "Score the model"}
    swagger2 = {
        "swagger": "2.0", "info": info, "schemes": ["http"], "consumes": ["application/json"],
        "produces": ["application/json"],
        "paths": {
            "/": {"get": {**health, "responses": {"200": {"description": "Healthy", "schema": {"type": "string"}}}}},
            "/score": {"post": {**score, "parameters": [{"name": "serviceInputPayload", "in": "body",
                                                         "schema": {"$ref": "#/definitions/ServiceInput"}}],
                                "responses": {"200": {"description": "the predictions",
                                                      "schema": {"$ref": "#/definitions/ServiceOutput"}},
                                              "400": {"description": "the input does not fit the model",
                                                      "schema": {"$ref": "#/definitions/ErrorResponse"}}}}}},
        "definitions": {"ServiceInput": service_input, "ServiceOutput": service_output, "ErrorResponse": error}}

    def content(name: str) -> dict[str, Any]:
        return {"application/json": {"schema": {"$ref": f"#/components/schemas/{name}"}}}

    swagger3 = {
        "openapi": "3.0.1", "info": info,
        "paths": {
            "/": {"get": {**health, "responses": {"200": {"description": "Healthy",
                                                          "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
            "/score": {"post": {**score, "requestBody": {"content": content("ServiceInput"), "required": True},
                                "responses": {"200": {"description": "the predictions",
                                                      "content": content("ServiceOutput")},
                                              "400": {"description": "the input does not fit the model",
                                                      "content": content("ErrorResponse")}}}}},
        "components": {"schemas": {"ServiceInput": service_input, "ServiceOutput": service_output,
                                   "ErrorResponse": error}}}
    return {"swagger2.json": swagger2, "swagger3.json": swagger3}


# ---- the environment -------------------------------------------------------------------------------------------

def _requirement_name(line: str) -> str:
    match = re.match(r"^\s*([A-Za-z0-9_.\-]+)", line)
    return re.sub(r"[-_.]+", "-", match[1]).lower() if match else ""


def _serving_requirements(requirements: list[str], notes: list[str]) -> list[str]:
    """The model's pip requirements, with mlflow as mlflow-skinny, plus the inference server and pandas."""
    out: list[str] = []
    for line in requirements:
        if _requirement_name(line) == "mlflow":
            skinny = re.sub(r"^\s*mlflow", "mlflow-skinny", line, count=1)
            notes.append(f"the model's requirement {line.strip()} is installed as {skinny.strip()} (what loading and "
                         "scoring need, as in Azure's MLflow images)")
            line = skinny
        out.append(line)
    names = {_requirement_name(line) for line in out}
    if not names & {"mlflow-skinny", "mlflow"}:
        out.append("mlflow-skinny")
    if not names & {"azureml-inference-server-http", "azureml-defaults"}:
        out.append(INFERENCE_SERVER)
    if "pandas" not in names:
        out.append("pandas")
    return out


def environment(model: MlflowModel, notes: list[str]) -> dict[str, Any]:
    """The conda environment localml builds for the model (a dict to write as YAML)."""
    assert model.env_file is not None
    if model.env_kind == "virtualenv":
        return _from_python_env(model, notes)
    doc = load_yaml(model.env_file)
    data = doc.data
    deps = data.get("dependencies") if isinstance(data, dict) else None
    if not isinstance(deps, list):
        raise LocalmlError.one("missing or not a list: the model's conda file lists its packages here",
                               **doc.where(("dependencies",)), fix=SAVE_FIX)
    conda: list[Any] = []
    pip: list[str] = []
    for item in deps:
        if isinstance(item, dict) and isinstance(item.get("pip"), list):
            pip += [str(req) for req in item["pip"]]
        else:
            conda.append(item)
    if not any(isinstance(item, str) and _requirement_name(item) == "python" for item in conda) \
            and model.python_version:
        conda.insert(0, f"python={model.python_version}")
    if not any(isinstance(item, str) and _requirement_name(item) == "pip" for item in conda):
        conda.append("pip")
    return {"name": "mlflow-env", "channels": data.get("channels") or ["conda-forge"],
            "dependencies": [*conda, {"pip": _serving_requirements(pip, notes)}]}


def _from_python_env(model: MlflowModel, notes: list[str]) -> dict[str, Any]:
    assert model.env_file is not None
    doc = load_yaml(model.env_file)
    data = doc.data if isinstance(doc.data, dict) else {}
    python = data.get("python") or model.python_version
    requirements: list[str] = []
    for index, line in enumerate(data.get("dependencies") or []):
        line = str(line).strip()
        if line.startswith("-r"):
            included = (model.env_file.parent / line[2:].strip()).resolve()
            if not included.is_file():
                raise LocalmlError.one(f"requirements file not found: {line[2:].strip()}",
                                       **doc.where(("dependencies", index)), fix=SAVE_FIX)
            requirements += [text.strip() for text in included.read_text(encoding="utf-8").splitlines()
                             if text.strip() and not text.strip().startswith("#")]
        elif line:
            requirements.append(line)
    conda: list[Any] = [f"python={python}"] if python else []
    return {"name": "mlflow-env", "channels": ["conda-forge"],
            "dependencies": [*conda, "pip", {"pip": _serving_requirements(requirements, notes)}]}


# ---- the generated files ---------------------------------------------------------------------------------------

def scoring_script(model_folder_name: str) -> str:
    template = resources.files("localml_tasks").joinpath("templates", "mlflow_score.py").read_text(encoding="utf-8")
    return template.replace('"__MODEL_FOLDER__"', json.dumps(model_folder_name))


@dataclass
class Generated:
    code_dir: Path
    scoring_script: str
    conda_file: Path
    image: str
    notes: list[str]


def generate(model: MlflowModel, endpoint: str, deployment: str, base_image: str | None = None) -> Generated:
    """Write the scoring script and the conda file under .localml/ (only when they change: doit's hashes stay)."""
    notes: list[str] = []
    folder = state.deployment_dir(endpoint, deployment)
    code_dir = folder / SCORING_FOLDER
    state.write_if_changed(code_dir / SCORE_FILE, scoring_script(model.folder.name))
    for name, document in swagger_documents(model, deployment).items():
        state.write_json_if_changed(code_dir / name, document, sort_keys=False)
    conda = environment(model, notes)
    conda_file = folder / ENVIRONMENT_FILE
    header = (f"# written by localml for the no-code MLflow deployment {deployment}, from "
              f"{model.env_file}; do not edit: it is written anew from the model's own environment file\n")
    state.write_if_changed(conda_file, header + yaml.safe_dump(conda, sort_keys=False))
    image = base_image or DEFAULT_BASE_IMAGE
    notes.insert(0, f"no-code MLflow deployment: localml generated its scoring script "
                    f"({_relative(code_dir / SCORE_FILE)}) and its environment ({_relative(conda_file)}, from the "
                    f"model's {model.env_file.name if model.env_file else 'environment'}), on {image}")
    return Generated(code_dir=code_dir, scoring_script=SCORE_FILE, conda_file=conda_file, image=image, notes=notes)


def _relative(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def environment_sources(resolved: dict[str, Any]) -> list[str]:
    """The model files a no-code deployment's generated environment and script come from (MLmodel and its
    environment files), for `doit watch` to treat as configuration: a change reruns the chain, not a reload."""
    conda_file, model = resolved.get("conda_file"), resolved.get("model_path")
    if not conda_file or not model or Path(conda_file).name != ENVIRONMENT_FILE \
            or Path(conda_file).parent.parent.parent.parent.name != state.STATE_DIR_NAME:
        return []
    names = (MLMODEL, "conda.yaml", "python_env.yaml", "requirements.txt")
    return [str(Path(model) / name) for name in names if (Path(model) / name).is_file()]

