"""Scoring script for the sample deployment: a ridge regression over 10 numeric features."""

import json
import logging
import os

import joblib
import numpy as np

MODEL_FILE = "sklearn_regression_model.pkl"
FEATURES = 10

model = None
scale = 1.0


def init():
    """Called once when the server starts: load the model from AZUREML_MODEL_DIR."""
    global model, scale
    # Azure mounts the model folder under AZUREML_MODEL_DIR, keeping its own folder name
    model_path = os.path.join(os.environ["AZUREML_MODEL_DIR"], "model", MODEL_FILE)
    model = joblib.load(model_path)
    scale = float(os.environ.get("SAMPLE_OUTPUT_SCALE", "1"))
    logging.info("loaded %s", model_path)


def run(raw_data):
    """Called per request with the body as text: {"data": [[10 numbers], ...]} -> list of predictions."""
    rows = json.loads(raw_data).get("data")
    data = np.asarray(rows, dtype=float)
    if data.ndim != 2 or data.shape[1] != FEATURES:
        raise ValueError(f"expected 'data' as a list of rows of {FEATURES} numbers, got shape {data.shape}")
    predictions = model.predict(data) * scale
    return predictions.tolist()
