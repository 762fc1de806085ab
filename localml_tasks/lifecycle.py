"""Show, logs, delete and list: what users expect around a running local endpoint.

All of it is read from the containers' labels, so it works for any local endpoint on the
machine, not only those started from this folder.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import requests

from . import docker_engine
from .container import (
    LABEL_CONFIG_HASH,
    LABEL_CUSTOM,
    LABEL_DEBUG_PORT,
    LABEL_DEPLOYMENT,
    LABEL_DEPLOYMENT_DATA,
    LABEL_ENDPOINT,
    LABEL_LOCAL_ENDPOINT,
    LABEL_ROUTES,
    LABEL_SCORING_PORT,
    LABEL_SPEC,
    LOOPBACK,
    inference_server_routes,
)

if TYPE_CHECKING:
    from docker.models.containers import Container


def provisioning_state(container: Container) -> str:
    return {"running": "Succeeded", "created": "Creating", "restarting": "Updating"}.get(container.status, "Failed")




def _uri(route: dict[str, Any]) -> str:
    return f"http://{LOOPBACK}:{route['port']}{route['path']}"


def describe_deployment(container: Container) -> dict[str, Any]:
    labels = container.labels
    port = int(labels.get(LABEL_SCORING_PORT, "0"))
    data = _json_label(labels.get(LABEL_DEPLOYMENT_DATA))
    routes = _json_label(labels.get(LABEL_ROUTES)) or inference_server_routes(port)
    custom = labels.get(LABEL_CUSTOM) == "1"
    return {
        "name": labels.get(LABEL_DEPLOYMENT),
        "endpoint_name": labels.get(LABEL_ENDPOINT),
        "type": "local",
        "location": "local",
        "runtime": "custom container" if custom else "container",
        "provisioning_state": provisioning_state(container),
        "scoring_uri": _uri(routes["scoring"]),
        "readiness_uri": _uri(routes["readiness"]),
        "liveness_uri": _uri(routes["liveness"]),
        "routes": routes,
        "ports": {"scoring": port, "debug": int(labels.get(LABEL_DEBUG_PORT) or 0)},
        "container": {"name": container.name, "id": container.short_id, "status": container.status,
                      "image": (container.image.tags or [container.image.short_id])[0] if container.image else None,
                      "config_hash": labels.get(LABEL_CONFIG_HASH)},
        "spec": labels.get(LABEL_SPEC),
        "instance_type": data.get("instance_type"),
        "instance_count": data.get("instance_count"),
        "environment_variables": data.get("environment_variables", {}),
    }


def deployments_of(endpoint: str) -> list[dict[str, Any]]:
    """The endpoint's deployments that run in containers, described from their labels."""
    containers = docker_engine.list_containers([LABEL_LOCAL_ENDPOINT, f"{LABEL_ENDPOINT}={endpoint}"])
    return sorted((describe_deployment(c) for c in containers), key=lambda d: d["name"] or "")


def render_endpoint(endpoint: str, endpoint_data: dict[str, Any], deployments: list[dict[str, Any]],
                    base_uri: str | None) -> dict[str, Any]:
    """Azure-style JSON for the endpoint (pure). base_uri: the endpoint's router, if it runs."""
    states = {d["provisioning_state"] for d in deployments}
    traffic = endpoint_data.get("traffic") or (
        {deployments[0]["name"]: 100} if len(deployments) == 1 else {d["name"]: 0 for d in deployments})
    mirror = endpoint_data.get("mirror_traffic") or {}
    for described in deployments:
        described["traffic"] = traffic.get(described["name"], 0)
        described["mirror_traffic"] = mirror.get(described["name"], 0)
    return {
        "name": endpoint,
        "location": "local",
        "kind": "local",
        "auth_mode": endpoint_data.get("auth_mode", "key"),
        "description": endpoint_data.get("description"),
        "tags": endpoint_data.get("tags", {}),
        "traffic": traffic,
        "mirror_traffic": mirror,
        "provisioning_state": _endpoint_state(states) if deployments else "Failed",
        "scoring_uri": f"{base_uri}/score" if base_uri else None,
        # routed like /score (by traffic, or by the azureml-model-deployment header)
        "swagger_uri": f"{base_uri}/swagger.json" if base_uri else None,
        "openapi_uri": f"{base_uri}/swagger.json?version=3" if base_uri else None,
        "deployments": deployments,
    }


def offered_swagger(described: dict[str, Any]) -> dict[str, Any]:
    """swagger_uri / openapi_uri as the deployment's server offers them (None where it answers no)."""
    base = f"http://{LOOPBACK}:{described['routes']['scoring']['port']}/swagger.json"
    offered: dict[str, Any] = {}
    for key, uri in (("swagger_uri", base), ("openapi_uri", base + "?version=3")):
        try:
            offered[key] = uri if requests.get(uri, timeout=2).status_code == 200 else None
        except requests.RequestException:
            offered[key] = None
    return offered


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
