"""Make the sample's model: a ridge regression on fixed synthetic data (deterministic).

    python scripts/make_sample_model.py   # writes specs/model/sklearn_regression_model.pkl
"""

from pathlib import Path

import joblib
import numpy as np
from sklearn.linear_model import Ridge

FEATURES = 10
TARGET = Path(__file__).resolve().parent.parent / "specs" / "model" / "sklearn_regression_model.pkl"


def main() -> None:
    rng = np.random.RandomState(20261125)
    inputs = rng.uniform(0, 10, size=(200, FEATURES))
    weights = np.arange(1, FEATURES + 1) / 10.0
    targets = inputs @ weights + 3.0 + rng.normal(0, 0.1, size=200)
    model = Ridge(alpha=1.0).fit(inputs, targets)
    TARGET.parent.mkdir(parents=True, exist_ok=True)
    joblib.dump(model, TARGET)
    print(f"wrote {TARGET} (coef[0]={model.coef_[0]:.4f}, intercept={model.intercept_:.4f})")


if __name__ == "__main__":
    main()
