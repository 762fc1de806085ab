"""Shapes Azure's CLI accepts that localml used to refuse (issue 13): enum values in the letter case the CLI
normalises, Kubernetes endpoints and deployments, image-only environments.

Pure tests first (load_deployment, render_container), then `doit validate` without Docker, then one
Kubernetes deployment run on the real engine.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO, Project

from localml_tasks.container import render_container
from localml_tasks.errors import LocalmlError
from localml_tasks.schema import _schema, camel_to_snake
from localml_tasks.spec import Deployment, load_deployment

DEPLOYMENT = """name: blue
endpoint_name: shapes
model:
  path: model/
code_configuration:
  code: onlinescoring/
  scoring_script: score.py
environment:
  conda_file: environment/conda.yml
  image: mcr.microsoft.com/azureml/openmpi4.1.0-ubuntu22.04:latest
"""
ENDPOINT = "name: shapes\n"


def write(root: Path, deployment: str = "", endpoint: str = "", *, base: str = DEPLOYMENT) -> Path:
    """A copy of the sample with this deployment YAML (base + extra keys) and endpoint YAML (name + extra keys)."""
    if not (root / "specs").exists():
        shutil.copytree(REPO / "specs", root / "specs")
    (root / "specs" / "endpoint.yml").write_text(ENDPOINT + endpoint)
    spec = root / "specs" / "blue-deployment.yml"
    spec.write_text(base + deployment)
    return spec


def at(data: Any, *path: str | int) -> Any:
    for part in path:
        data = data[part]
    return data


# --- enum values: the letter case the CLI normalises ---------------------------------------------------

# (schema, YAML added to that file, key path, the value Azure normalises it to)
NORMALISED = [
    ("endpoint", "auth_mode: Key\n", ("auth_mode",), "key"),
    ("endpoint", "auth_mode: AMLToken\n", ("auth_mode",), "aml_token"),
    ("endpoint", "auth_mode: AADToken\n", ("auth_mode",), "aad_token"),
    ("endpoint", "auth_mode: amlToken\n", ("auth_mode",), "aml_token"),
    ("endpoint", "auth_mode: KEY\n", ("auth_mode",), "key"),
    ("endpoint", "public_network_access: Disabled\n", ("public_network_access",), "disabled"),
    ("endpoint", "identity:\n  type: SystemAssigned\n", ("identity", "type"), "system_assigned"),
    ("endpoint", "identity:\n  type: None\n", ("identity", "type"), "none"),
    ("endpoint", "identity:\n  type: SystemAssigned, UserAssigned\n  user_assigned_identities:\n"
                 "    - resource_id: /subscriptions/s/resourceGroups/g/providers/Microsoft.ManagedIdentity/"
                 "userAssignedIdentities/i\n", ("identity", "type"), "system_assigned,user_assigned"),
    ("deployment", "type: Kubernetes\n", ("type",), "kubernetes"),
    ("deployment", "type: MANAGED\n", ("type",), "managed"),
    ("deployment", "egress_public_network_access: Disabled\n", ("egress_public_network_access",), "disabled"),
    ("deployment", "scale_settings:\n  type: Default\n", ("scale_settings", "type"), "default"),
    ("deployment", "type: kubernetes\nscale_settings:\n  type: TargetUtilization\n  max_instances: 3\n",
     ("scale_settings", "type"), "target_utilization"),
    ("deployment", "data_collector:\n  rolling_rate: Hour\n", ("data_collector", "rolling_rate"), "hour"),
    ("deployment", "data_collector:\n  collections:\n    model_inputs:\n      enabled: 'True'\n",
     ("data_collector", "collections", "model_inputs", "enabled"), "true"),
    ("model", "  type: MLflow_Model\n", ("model", "type"), "mlflow_model"),
    ("environment", "  os_type: Linux\n", ("environment", "os_type"), "linux"),
]


def added(schema: str, body: str) -> tuple[str, str]:
    """(deployment YAML extra, endpoint YAML extra); model and environment keys go inside their mappings."""
    if schema == "endpoint":
        return "", body
    if schema in ("model", "environment"):
        return "", ""
    return body, ""


def spec_for(root: Path, schema: str, body: str) -> Path:
    deployment, endpoint = added(schema, body)
    base = DEPLOYMENT
    if schema == "model":
        base = base.replace("  path: model/\n", "  path: model/\n" + body)
    if schema == "environment":
        base = base + body
    return write(root, deployment, endpoint, base=base)


@pytest.mark.parametrize(("schema", "body", "key", "canonical"), NORMALISED,
                         ids=[f"{c[2][-1]}={c[1].split(':', 1)[1].split()[0]}" for c in NORMALISED])
def test_an_enum_in_a_letter_case_the_cli_normalises_is_valid_and_normalised(tmp_path, schema, body, key, canonical):
    deployment = load_deployment(spec_for(tmp_path, schema, body))
    data = deployment.endpoint_data if schema == "endpoint" else deployment.deployment_data
    assert at(data, *key) == canonical
    assert Deployment.from_json(json.loads(json.dumps(deployment.to_json()))) == deployment  # as later stages read it


def casing_enums(node: Any, name: str = "") -> set[tuple[str, str]]:
    """(property, casing) of every enum in a schema that the CLI normalises; raises on a string enum without one."""
    found: set[tuple[str, str]] = set()
    if isinstance(node, dict):
        if isinstance(node.get("enum"), list) and all(isinstance(v, str) for v in node["enum"]):
            assert "x-localml-casing" in node, f"{name}: every string enum of Azure's CLI is normalised"
            found.add((name, node["x-localml-casing"]))
        for key, child in node.items():
            if key in ("if", "propertyNames"):
                continue  # a condition's enum, or one of key names: no value to normalise
            if key == "properties":
                for prop, sub in child.items():
                    found |= casing_enums(sub, prop)
            else:
                found |= casing_enums(child, name)
    elif isinstance(node, list):
        for child in node:
            found |= casing_enums(child, name)
    return found


def test_every_enum_of_both_schemas_is_normalised_as_the_cli_does_and_tested_here():
    found = casing_enums(_schema("endpoint")) | casing_enums(_schema("deployment"))
    # azure-ai-ml: StringTransformedEnum(casing_transform=camel_to_snake) for these, its default (lower) elsewhere
    assert found == {("auth_mode", "camel_to_snake"), ("type", "camel_to_snake"), ("public_network_access", "lower"),
                     ("egress_public_network_access", "lower"), ("type", "lower"), ("os_type", "lower"),
                     ("rolling_rate", "lower"), ("enabled", "lower")}
    tested = {case[2][-1] for case in NORMALISED}
    assert {name for name, _ in found} <= tested


@pytest.mark.parametrize(("written", "snake"), [
    ("Key", "key"), ("AMLToken", "aml_token"), ("AADToken", "aad_token"), ("aml_token", "aml_token"),
    ("TargetUtilization", "target_utilization"), ("TARGET_UTILIZATION", "target_utilization"),
    ("SystemAssigned,UserAssigned", "system_assigned,user_assigned"),
    ("SystemAssigned, UserAssigned", "system_assigned,user_assigned"),
    ("Target_Utilization", "target__utilization"), ("Aml-Token", "aml-_token"),
])
def test_camel_to_snake_is_the_clis_transform(written, snake):
    assert camel_to_snake(written) == snake


# (schema, YAML, key, the rejected value): spellings the CLI's transform does not turn into an allowed value
REJECTED = [
    ("endpoint", "auth_mode: Aml-Token\n", "auth_mode", "Aml-Token"),
    ("endpoint", "auth_mode: keys\n", "auth_mode", "keys"),
    ("deployment", "scale_settings:\n  type: Target_Utilization\n", "scale_settings.type", "Target_Utilization"),
    ("deployment", "type: Kube\n", "type", "Kube"),
    ("model", "  type: CustomModel\n", "model.type", "CustomModel"),  # lower-cased only: custommodel
    ("deployment", "egress_public_network_access: enable\n", "egress_public_network_access", "enable"),
]


@pytest.mark.parametrize(("schema", "body", "key", "value"), REJECTED, ids=[c[3] for c in REJECTED])
def test_a_value_the_cli_rejects_keeps_the_clear_error(tmp_path, schema, body, key, value):
    spec = spec_for(tmp_path, schema, body)
    with pytest.raises(LocalmlError) as caught:
        load_deployment(spec)
    [problem] = [p for p in caught.value.problems if p.key == key]
    assert problem.message == f"{value!r} is not allowed here"
    assert problem.line and problem.file.endswith("endpoint.yml" if schema == "endpoint" else "blue-deployment.yml")
    assert problem.fix.startswith("use one of: ")
    rendered = problem.render()
    assert f":{problem.line}:" in rendered and f"{key}: '{value}' is not allowed here" in rendered


def test_the_fix_says_which_spellings_the_cli_takes(tmp_path):
    with pytest.raises(LocalmlError) as caught:
        load_deployment(spec_for(tmp_path, "endpoint", "auth_mode: keys\n"))
    assert caught.value.problems[0].fix == (
        "use one of: key, aml_token, aad_token (the CLI also takes them in CamelCase: Key, AmlToken, AadToken)")


# --- Kubernetes endpoints and deployments ---------------------------------------------------------------

KUBERNETES_ENDPOINT = "compute: azureml:k8s-compute\nauth_mode: Key\n"
KUBERNETES_DEPLOYMENT = """type: kubernetes
instance_type: defaultinstancetype
instance_count: 1
request_settings:
  request_timeout_ms: 3000
  max_queue_wait_ms: 3000
resources:
  requests:
    cpu: "0.1"
    memory: "0.1Gi"
  limits:
    cpu: "1500m"
    memory: 1Gi
    nvidia.com/gpu: "1"
scale_settings:
  type: target_utilization
  min_instances: 1
  max_instances: 3
  polling_interval: 10
  target_utilization_percentage: 70
liveness_probe:
  initial_delay: 5
  period: 5
  timeout: 10
  success_threshold: 1
  failure_threshold: 1
tags:
  tag1: deployment-tag1-value
app_insights_enabled: true
"""


def test_a_kubernetes_deployment_validates_with_one_note_per_key_that_does_nothing_here(tmp_path):
    deployment = load_deployment(write(tmp_path, KUBERNETES_DEPLOYMENT, KUBERNETES_ENDPOINT))
    assert deployment.endpoint_data["auth_mode"] == "key"
    assert deployment.memory_limit == 1024**3 and deployment.cpu_limit == 1.5
    notes = deployment.notes
    assert "resources.requests has no local effect (a local container gets what Docker gives it)" in notes
    assert any(n.startswith("resources.limits.nvidia.com/gpu has no local effect") and "gpu=1" in n for n in notes)
    assert any(n.startswith("resources.limits: the container is limited to memory 1Gi and cpu 1500m") for n in notes)
    assert "scale_settings has no local effect (one local container, no scaling)" in notes
    assert any(n.startswith("request_settings.max_queue_wait_ms has no local effect") for n in notes)
    assert any(n.startswith("app_insights_enabled has no local effect") for n in notes)
    assert any(n.startswith("compute has no local effect") and "azureml:k8s-compute" in n for n in notes)
    assert len(notes) == len(set(notes)) == 7  # one line each; instance_type and instance_count 1: none
    assert deployment.request_timeout_ms == 3000 and deployment.liveness_probe.failure_threshold == 1


def test_the_sample_prints_no_notes():
    assert load_deployment(REPO / "specs" / "blue-deployment.yml").notes == []


def test_limits_become_the_containers_docker_limits_and_its_config(tmp_path):
    deployment = load_deployment(write(tmp_path, KUBERNETES_DEPLOYMENT, KUBERNETES_ENDPOINT))
    spec = render_container(deployment, "localml/env:x", "sha256:x", tmp_path / "runtime", tmp_path)
    assert spec.limits == {"mem_limit": 1024**3, "memswap_limit": 1024**3, "nano_cpus": 1_500_000_000}
    plain = load_deployment(write(tmp_path, ""))
    unlimited = render_container(plain, "localml/env:x", "sha256:x", tmp_path / "runtime", tmp_path)
    assert unlimited.limits == {}
    # another limit is another container configuration
    deployment.memory_limit = 512 * 1024**2
    assert render_container(deployment, "localml/env:x", "sha256:x", tmp_path / "runtime", tmp_path).config_hash \
        != spec.config_hash


def test_a_cpu_limit_above_this_machine_is_what_the_machine_has(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    deployment = load_deployment(write(tmp_path, 'type: kubernetes\nresources:\n  limits:\n    cpu: "8"\n'))
    assert "resources.limits.cpu 8 is more than the 2 CPUs here: the container may use all 2" in deployment.notes
    assert deployment.cpu_limit == 2.0  # Docker refuses more CPUs than the machine has


# --- image-only environments ----------------------------------------------------------------------------

IMAGE_ONLY = DEPLOYMENT.replace("  conda_file: environment/conda.yml\n", "")


def test_an_image_only_environment_is_valid(tmp_path):
    deployment = load_deployment(write(tmp_path, base=IMAGE_ONLY))
    assert deployment.image == "mcr.microsoft.com/azureml/openmpi4.1.0-ubuntu22.04:latest"
    assert (deployment.conda_file, deployment.build_context, deployment.dockerfile_path,
            deployment.inference_config) == (None, None, None, None)
    assert deployment.code_dir and deployment.scoring_script == "score.py" and deployment.model_path


# --- through the command line, without Docker -----------------------------------------------------------


def validate(spec: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "localml_tasks", "validate", f"spec={spec}", *args],
                          cwd=spec.parent.parent, capture_output=True, text=True,
                          env={**os.environ, "NO_COLOR": "1", "DOCKER_HOST": "unix:///nonexistent.sock"})


def test_doit_validate_prints_the_notes_and_resolves_the_normalised_values(tmp_path):
    spec = write(tmp_path, KUBERNETES_DEPLOYMENT.replace("type: kubernetes", "type: Kubernetes"), KUBERNETES_ENDPOINT)
    result = validate(spec)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("validate      blue on endpoint shapes: valid")
    assert "validate      note: resources.requests has no local effect (a local container gets what Docker " \
           "gives it)" in lines
    resolved = json.loads((tmp_path / ".localml/endpoints/shapes/blue/deployment.json").read_text())
    assert resolved["endpoint_data"]["auth_mode"] == "key" and resolved["deployment_data"]["type"] == "kubernetes"
    assert (resolved["memory_limit"], resolved["cpu_limit"]) == (1024**3, 1.5)


def test_doit_validate_accepts_an_image_only_environment(tmp_path):
    result = validate(write(tmp_path, base=IMAGE_ONLY))
    assert result.returncode == 0, result.stderr
    resolved = json.loads((tmp_path / ".localml/endpoints/shapes/blue/deployment.json").read_text())
    assert resolved["image"] == "mcr.microsoft.com/azureml/openmpi4.1.0-ubuntu22.04:latest"
    assert resolved["conda_file"] is None and resolved["build_context"] is None
    assert resolved["inference_config"] is None


# --- on the real engine -----------------------------------------------------------------------------------


@pytest.mark.docker
def test_a_kubernetes_endpoint_and_deployment_run_locally_with_their_limits(project: Project, engine):
    (project.root / "endpoint.yml").write_text(f"name: {project.endpoint}\n{KUBERNETES_ENDPOINT}")
    spec = project.spec.read_text().replace("instance_type: Standard_DS3_v2\ninstance_count: 1\n", "")
    project.spec.write_text(spec + KUBERNETES_DEPLOYMENT.replace('    nvidia.com/gpu: "1"\n', ""))

    result = project.run("debug", f"spec={project.spec}")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "note: resources.requests has no local effect (a local container gets what Docker gives it)" \
        in result.stdout
    assert "note: scale_settings has no local effect" in result.stdout
    assert "note: compute has no local effect" in result.stdout
    assert "health        healthy" in result.stdout

    host_config = engine.containers.get(project.container_name()).attrs["HostConfig"]
    assert host_config["Memory"] == 1024**3 and host_config["MemorySwap"] == 1024**3
    assert host_config["NanoCpus"] == 1_500_000_000

    shown = project.run("show")
    assert shown.returncode == 0, shown.stdout + shown.stderr
    described = json.loads(shown.stdout[shown.stdout.index("{"):])
    assert described["auth_mode"] == "key"

    answered = project.run("invoke", f"request={REPO / 'specs' / 'sample-request.json'}")
    assert answered.returncode == 0 and "200 from blue" in answered.stdout, answered.stdout + answered.stderr
