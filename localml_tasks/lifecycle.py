"""Show, logs, delete and list: what users expect around a running local endpoint.

All of it is read from the containers' labels, so it works for any local endpoint on the
machine, not only those started from this folder.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from . import docker_engine
from .container import (
    LABEL_CONFIG_HASH,
    LABEL_DEBUG_PORT,
    LABEL_DEPLOYMENT,
    LABEL_DEPLOYMENT_DATA,
    LABEL_ENDPOINT,
    LABEL_ENDPOINT_DATA,
    LABEL_LOCAL_ENDPOINT,
    LABEL_SCORING_PORT,
    LABEL_SPEC,
    LOOPBACK,
)

if TYPE_CHECKING:
    from docker.models.containers import Container


def provisioning_state(container: Container) -> str:
    return {"running": "Succeeded", "created": "Creating", "restarting": "Updating"}.get(container.status, "Failed")




def describe_deployment(container: Container) -> dict[str, Any]:
    labels = container.labels
    port = int(labels.get(LABEL_SCORING_PORT, "0"))
    data = _json_label(labels.get(LABEL_DEPLOYMENT_DATA))
    return {
        "name": labels.get(LABEL_DEPLOYMENT),
        "endpoint_name": labels.get(LABEL_ENDPOINT),
        "type": "local",
        "location": "local",
        "provisioning_state": provisioning_state(container),
        "scoring_uri": f"http://{LOOPBACK}:{port}/score",
        "swagger_uri": f"http://{LOOPBACK}:{port}/swagger.json",
        "liveness_uri": f"http://{LOOPBACK}:{port}/",
        "ports": {"scoring": port, "debug": int(labels.get(LABEL_DEBUG_PORT, "0"))},
        "container": {"name": container.name, "id": container.short_id, "status": container.status,
                      "image": (container.image.tags or [container.image.short_id])[0] if container.image else None,
                      "config_hash": labels.get(LABEL_CONFIG_HASH)},
        "spec": labels.get(LABEL_SPEC),
        "instance_type": data.get("instance_type"),
        "instance_count": data.get("instance_count"),
        "environment_variables": data.get("environment_variables", {}),
    }


def describe_endpoint(endpoint: str) -> dict[str, Any] | None:
    containers = docker_engine.list_containers([LABEL_LOCAL_ENDPOINT, f"{LABEL_ENDPOINT}={endpoint}"])
    if not containers:
        return None
    deployments = sorted((describe_deployment(c) for c in containers), key=lambda d: d["name"] or "")
    endpoint_data = _json_label(containers[0].labels.get(LABEL_ENDPOINT_DATA))
    states = {d["provisioning_state"] for d in deployments}
    first = deployments[0]
    return {
        "name": endpoint,
        "location": "local",
        "kind": "local",
        "auth_mode": endpoint_data.get("auth_mode", "key"),
        "description": endpoint_data.get("description"),
        "tags": endpoint_data.get("tags", {}),
        "traffic": endpoint_data.get("traffic") or {d["name"]: 100 if i == 0 else 0 for i, d in enumerate(deployments)},
        "provisioning_state": _endpoint_state(states),
        "scoring_uri": first["scoring_uri"],
        "swagger_uri": first["swagger_uri"],
        "deployments": deployments,
    }


def _endpoint_state(deployment_states: set[str]) -> str:
    if deployment_states == {"Succeeded"}:
        return "Succeeded"
    return "Failed" if "Failed" in deployment_states else "Updating"


def list_local_endpoints() -> list[dict[str, Any]]:
    rows = []
    for container in docker_engine.list_containers([LABEL_LOCAL_ENDPOINT]):
        rows.append(describe_deployment(container))
    return sorted(rows, key=lambda r: (r["endpoint_name"] or "", r["name"] or ""))


def _json_label(text: str | None) -> dict[str, Any]:
    try:
        value = json.loads(text or "{}")
    except json.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}
