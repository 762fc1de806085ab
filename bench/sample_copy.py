"""The benchmarks' private copy of the sample: specs/ and localml.yml under an endpoint name of its own."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def copy_sample(workdir: Path) -> tuple[Path, str]:
    """(the copy's folder, its endpoint name); nothing of it touches the repository's own specs/."""
    root = workdir / "project"
    shutil.copytree(REPO / "specs", root)
    shutil.copy(REPO / "localml.yml", root)
    endpoint = f"bench-{uuid.uuid4().hex[:6]}"
    for name, key in (("endpoint.yml", "name"), ("blue-deployment.yml", "endpoint_name")):
        path = root / name
        path.write_text(path.read_text().replace(f"{key}: localml-sample", f"{key}: {endpoint}"))
    return root, endpoint
