"""The scoring script of a no-code MLflow deployment, written by localml (as Azure generates one).

localml writes this file anew from its template on every `doit debug`: edits here do not last. The model
is loaded with mlflow.pyfunc from $AZUREML_MODEL_DIR/<model folder>; run() takes Azure's MLflow request
shapes (input_data as a data frame in split orientation, a list, or named lists; optional params) and
MLflow's own (dataframe_split, dataframe_records, inputs, instances), checks them against the model's
signature, and answers a JSON list for arrays and series, records for data frames.
"""

import json
import logging
import os

import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.pyfunc import load_model
from mlflow.types import DataType

try:  # azureml-inference-server-http 1.x
    from azureml_inference_server_http.api.aml_response import AMLResponse
except ImportError:  # older servers ship the azureml.contrib name
    from azureml.contrib.services.aml_response import AMLResponse

MODEL_FOLDER = os.environ.get("MLFLOW_MODEL_FOLDER", "__MODEL_FOLDER__")
INPUT_KEYS = ("input_data", "dataframe_split", "dataframe_records", "inputs", "instances")
SPLIT_KEYS = {"columns", "index", "data"}

logger = logging.getLogger("localml.mlflow")
model = None


class BadRequest(Exception):
    """The request does not fit the model: answered with 400 and this message."""


def init():
    global model
    path = os.path.join(os.environ["AZUREML_MODEL_DIR"], MODEL_FOLDER)
    # the real folder: MLflow refuses a model reached through a link that leads out of it (runtime=process links it)
    model = load_model(os.path.realpath(path))
    logger.info("loaded the MLflow model at %s", path)


def run(raw_data):
    try:
        body = json.loads(raw_data) if isinstance(raw_data, str | bytes) else raw_data
    except ValueError as exc:
        return _error(f"the request is not JSON: {exc}")
    try:
        data, params = _parse(body)
        _check_columns(data)
        data = _as_signature_types(data)
        try:
            predictions = model.predict(data, params=params) if params else model.predict(data)
        except MlflowException as exc:
            message = str(exc.message)
            # MLflow repeats the whole input before its reason: keep the reason, which names the column or type
            reason = message.split(" Error: ", 1)[1] if " Error: " in message else message
            raise BadRequest(f"the input does not match the model's signature: {reason}") from None
    except BadRequest as exc:
        return _error(str(exc))
    return _answer(predictions)


def _error(message):
    return AMLResponse({"message": message}, 400, json_str=True)


def _schema():
    signature = model.metadata.signature if model is not None else None
    return signature.inputs if signature is not None else None


def _column_names():
    schema = _schema()
    if schema is None or schema.is_tensor_spec() or not schema.has_input_names():
        return None
    return schema.input_names()


def _parse(body):
    if not isinstance(body, dict):
        raise BadRequest("expected a JSON object with one of the keys " + ", ".join(INPUT_KEYS))
    given = [key for key in INPUT_KEYS if key in body]
    if len(given) != 1:
        found = ", ".join(given) if given else "none (the keys are " + ", ".join(sorted(map(str, body))) + ")"
        raise BadRequest(f"expected exactly one of {', '.join(INPUT_KEYS)}; found {found}")
    params = body.get("params")
    if params is not None and not isinstance(params, dict):
        raise BadRequest(f"params must be a JSON object, found {type(params).__name__}")
    key = given[0]
    value = body[key]
    if key == "dataframe_records":
        if not isinstance(value, list) or not all(isinstance(row, dict) for row in value):
            raise BadRequest("dataframe_records must be a list of objects, one per row")
        return pd.DataFrame.from_records(value), params
    if key == "dataframe_split" or (key == "input_data" and isinstance(value, dict) and "data" in value
                                    and set(value) <= SPLIT_KEYS):
        return _split_frame(key, value), params
    return _tensor_or_frame(key, value), params


def _split_frame(key, value):
    if not isinstance(value, dict) or not isinstance(value.get("data"), list):
        raise BadRequest(f"{key} must be an object with data (and optional columns and index): pandas' split "
                         "orientation")
    try:
        return pd.DataFrame(data=value["data"], columns=value.get("columns"), index=value.get("index"))
    except (ValueError, TypeError) as exc:
        raise BadRequest(f"{key} is not a data frame in split orientation: {exc}") from None


def _tensor_or_frame(key, value):
    schema = _schema()
    tensors = schema is not None and schema.is_tensor_spec()
    columns = _column_names()
    if isinstance(value, dict):
        if tensors:
            return {name: np.asarray(item) for name, item in value.items()}
        try:
            return pd.DataFrame({name: item if isinstance(item, list) else [item] for name, item in value.items()})
        except ValueError as exc:
            raise BadRequest(f"{key}: the named lists cannot form a data frame: {exc}") from None
    if isinstance(value, list):
        if columns and value and all(isinstance(row, list) for row in value):
            widths = {len(row) for row in value}
            if widths != {len(columns)}:
                raise BadRequest(f"{key}: each row must hold {len(columns)} values, one for each of the "
                                 f"signature's columns {', '.join(columns)}; found rows of "
                                 f"{', '.join(map(str, sorted(widths)))}")
            return pd.DataFrame(value, columns=columns)
        if columns and value and all(isinstance(row, dict) for row in value):
            return pd.DataFrame.from_records(value)
        return np.asarray(value)
    raise BadRequest(f"{key} must be a list or an object, found {type(value).__name__}")


def _check_columns(data):
    """Name the columns that do not match the signature (MLflow's own message names only the missing)."""
    columns = _column_names()
    if not columns or not isinstance(data, pd.DataFrame):
        return
    schema = _schema()
    required = [spec.name for spec in schema.inputs if getattr(spec, "required", True)]
    given = [str(name) for name in data.columns]
    missing = [name for name in required if name not in given]
    if missing:
        unknown = [name for name in given if name not in columns]
        message = f"missing column{'s' if len(missing) > 1 else ''} {', '.join(map(repr, missing))}"
        if unknown:
            message += f"; not in the model's signature: {', '.join(map(repr, unknown))}"
        raise BadRequest(f"{message} (the signature's columns: {', '.join(columns)})")


def _as_signature_types(data):
    """JSON numbers as the signature's types, as MLflow's own server reads them: 1 for a double column is 1.0."""
    schema = _schema()
    if schema is None:
        return data
    if isinstance(data, pd.DataFrame) and not schema.is_tensor_spec():
        for spec in schema.inputs:
            kind = getattr(spec, "type", None)
            if spec.name in data.columns and kind in (DataType.double, DataType.float) \
                    and data[spec.name].dtype.kind in "iu":
                data[spec.name] = data[spec.name].astype(kind.to_numpy())
        return data
    if schema.is_tensor_spec():
        types = schema.numpy_types()
        names = schema.input_names() if schema.has_input_names() else []
        if isinstance(data, dict):
            wanted = dict(zip(names, types, strict=False))
            return {name: _tensor(item, wanted.get(name)) for name, item in data.items()}
        return _tensor(data, types[0] if len(types) == 1 else None)
    return data


def _tensor(value, dtype):
    """Whole numbers for a float tensor become floats; anything else is MLflow's to check (its message names it)."""
    value = np.asarray(value)
    if dtype is not None and value.dtype.kind in "iu" and np.dtype(dtype).kind == "f":
        return value.astype(dtype)
    return value


def _answer(predictions):
    if isinstance(predictions, pd.DataFrame):
        return [{str(name): _native(item) for name, item in row.items()}
                for row in predictions.to_dict(orient="records")]
    if isinstance(predictions, pd.Series | np.ndarray):
        return predictions.tolist()
    if isinstance(predictions, dict):
        return {name: _answer(item) for name, item in predictions.items()}
    if isinstance(predictions, list):
        return [_answer(item) for item in predictions]
    return _native(predictions)


def _native(value):
    return value.item() if isinstance(value, np.generic) else value
