"""Make the no-code MLflow sample's model: a scikit-learn regression saved by mlflow with its signature.

    .venv/bin/python scripts/make_mlflow_sample_model.py   # writes specs/mlflow/model/ (MLmodel, conda.yaml, ...)

mlflow writes the model's environment files (conda.yaml, python_env.yaml, requirements.txt) from the packages
of the Python that runs this script: run it with the project's .venv (mlflow-skinny, scikit-learn, pandas).
"""

import shutil
import warnings
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from mlflow.models import infer_signature
from sklearn.linear_model import Ridge

COLUMNS = ["age", "bmi", "bp", "glucose"]
TARGET = Path(__file__).resolve().parent.parent / "specs" / "mlflow" / "model"


def main() -> None:
    rng = np.random.RandomState(20261204)
    inputs = pd.DataFrame(rng.uniform(0, 10, size=(200, len(COLUMNS))), columns=COLUMNS)
    targets = inputs @ np.array([0.5, 2.0, 1.0, 0.25]) + 1.0 + rng.normal(0, 0.1, size=200)
    model = Ridge(alpha=1.0).fit(inputs, targets)
    if TARGET.exists():
        shutil.rmtree(TARGET)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # mlflow's advice to use skops: cloudpickle needs nothing beyond mlflow
        mlflow.sklearn.save_model(model, str(TARGET), serialization_format="cloudpickle",
                                  signature=infer_signature(inputs, model.predict(inputs)),
                                  input_example=inputs.head(2))
    print(f"wrote {TARGET} (coef={np.round(model.coef_, 4).tolist()}, intercept={model.intercept_:.4f})")


if __name__ == "__main__":
    main()
