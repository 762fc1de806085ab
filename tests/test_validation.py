"""Spec validation: a catalogue of bad specs, each with the file, line and message it must get.

All of it runs before any Docker call; the last tests go through `doit validate` end to end.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from localml_tasks.errors import LocalmlError
from localml_tasks.spec import load_deployment

BAD = Path(__file__).resolve().parent / "bad_specs"
REPO = Path(__file__).resolve().parent.parent


def line_of(relative: str, anchor: str, occurrence: int = 1) -> int:
    lines = (BAD / relative).read_text().splitlines()
    hits = [number for number, text in enumerate(lines, 1) if anchor in text]
    return hits[occurrence - 1]


# (deployment YAML, file the error must name, anchor text whose line it must name (None: no line), fragment)
CATALOGUE = [
    ("wrong_type_instance_count.yml", None, "instance_count:", "expected a whole number, found the string 'two'"),
    ("instance_count_zero.yml", None, "instance_count:", "0 is below the minimum 1"),
    ("timeout_too_long.yml", None, "request_timeout_ms", "200000 is above the maximum 180000"),
    ("timeout_not_a_number.yml", None, "request_timeout_ms", "expected a whole number, found the string '5s'"),
    ("bad_enum_egress.yml", None, "egress_public_network_access", "'sometimes' is not allowed here"),
    ("bad_enum_model_type.yml", None, "type: pickle_model", "'pickle_model' is not allowed here"),
    ("misspelled_top_level.yml", None, "enviroment:", "unknown key 'enviroment'"),
    ("misspelled_nested.yml", None, "scoring_scrpt", "unknown key 'scoring_scrpt'"),
    ("misspelled_probe.yml", None, "perod", "unknown key 'perod'"),
    ("misspelled_build.yml", None, "dockerfile:", "unknown key 'dockerfile'"),
    ("missing_name.yml", None, "endpoint_name", "missing required key 'name'"),
    ("missing_code_configuration.yml", None, "name: blue", "missing required key 'code_configuration'"),
    ("missing_scoring_script_key.yml", None, "code_configuration:", "missing required key 'scoring_script'"),
    ("missing_code_dir.yml", None, "code:", "code folder not found: ../../specs/nowhere/"),
    ("missing_model_path.yml", None, "path:", "model path not found: ../../specs/models/"),
    ("missing_conda_file.yml", None, "conda_file:", "conda file not found"),
    ("missing_scoring_script_file.yml", None, "scoring_script:", "scoring script not found"),
    ("score_syntax_error.yml", "files/syntax_error/score.py", "def run(raw_data)",
     "syntax error in the scoring script"),
    ("score_without_run.yml", "files/no_run/score.py", "def init", "defines no run() function"),
    ("conda_without_server.yml", "files/conda-no-server.yml", "dependencies:",
     "does not install the Azure ML inference server"),
    ("conda_not_yaml.yml", "files/conda-broken.yml", "- joblib", "not valid YAML"),
    ("azureml_model.yml", None, "model:", "'azureml:sample-regression:1' is a workspace asset, not available locally"),
    ("azureml_environment.yml", None, "environment:", "is a workspace environment, not available locally"),
    ("empty.yml", None, None, "the file is empty"),
    ("list_instead_of_mapping.yml", None, "- name: blue", "expected a mapping of keys"),
    ("tabs.yml", None, "\tscoring_script", "found character '\\t' that cannot start any token"),
    ("duplicate_keys.yml", None, "instance_count: 2", "duplicate key 'instance_count' (first given on line 12)"),
    ("bad_name.yml", None, "name: 1blue", "'1blue' is not valid here"),
    ("env_vars_list.yml", None, "environment_variables:", "expected a mapping, found a list"),
    ("env_var_nested.yml", None, "NESTED:", "expected a string or a number or true or false, found a mapping"),
    ("probe_timeout_zero.yml", None, "timeout: 0", "0 is below the minimum 1"),
    ("model_a_number.yml", None, "model: 42", "expected a string or a mapping, found the number 42"),
    ("scoring_script_a_number.yml", None, "scoring_script: 3", "expected a string, found the number 3"),
    ("unclosed_quote.yml", None, "image:", "while scanning a quoted scalar opened here"),
    ("build_without_dockerfile.yml", None, "dockerfile_path", "no Dockerfile at"),
    ("conda_and_build.yml", None, "image:", "'image' cannot be combined with the other keys"),
    ("mismatch/blue-deployment.yml", None, "endpoint_name",
     "'bad-specs' does not match the endpoint's name 'other-endpoint' in endpoint.yml"),
    ("bad_endpoint/blue-deployment.yml", "bad_endpoint/endpoint.yml", "auth_mode",
     "'password' is not allowed here"),
    ("traffic_sum/blue-deployment.yml", "traffic_sum/endpoint.yml", "traffic:",
     "the traffic percentages add up to 80, not 100"),
    ("mirror_and_live/blue-deployment.yml", "mirror_and_live/endpoint.yml", "green: 20",
     "green gets both live traffic (10 %) and mirrored traffic"),
    # Kubernetes shapes Azure refuses (or Docker cannot apply), and an enum spelling the CLI does not normalise
    ("k8s_compute_without_prefix/blue-deployment.yml", "k8s_compute_without_prefix/endpoint.yml", "compute:",
     "'k8s-compute' is not valid here"),
    ("bad_quantity.yml", None, "memory: 1 GB", "'1 GB' is not a Kubernetes quantity"),
    ("cpu_not_quoted.yml", None, "cpu: 0.5", "expected a string, found the number 0.5"),
    ("limits_below_docker_minimum.yml", None, "memory: 4Mi", "4Mi (4 MiB) is below the 6 MiB Docker gives"),
    ("limits_below_docker_minimum.yml", None, 'cpu: "1m"', "1m is below the 0.01 CPU Docker can limit"),
    ("bad_enum_scale_type.yml", None, "type: Target_Utilization", "'Target_Utilization' is not allowed here"),
]


@pytest.mark.parametrize(("spec", "reported_file", "anchor", "fragment"), CATALOGUE,
                         ids=[case[0] for case in CATALOGUE])
def test_bad_spec_names_file_line_and_problem(spec, reported_file, anchor, fragment):
    with pytest.raises(LocalmlError) as caught:
        load_deployment(BAD / spec)
    reported_file = reported_file or spec
    matching = [p for p in caught.value.problems if fragment in p.message]
    assert matching, caught.value.render()
    problem = matching[0]
    assert Path(problem.file).resolve() == (BAD / reported_file).resolve()
    expected_line = line_of(reported_file, anchor) if anchor else None
    assert problem.line == expected_line, caught.value.render()
    assert problem.fix, problem  # every message says how to fix it


def test_catalogue_is_at_least_thirty_cases():
    assert len(CATALOGUE) >= 30


def test_every_error_of_a_file_is_reported_at_once():
    with pytest.raises(LocalmlError) as caught:
        load_deployment(BAD / "several_errors.yml")
    messages = [(p.line, p.message) for p in caught.value.problems]
    assert (line_of("several_errors.yml", "instance_count"), "-1 is below the minimum 1") in messages
    assert (line_of("several_errors.yml", "instance_tpe"), "unknown key 'instance_tpe'") in messages
    by_key = {p.key: p for p in caught.value.problems}
    assert by_key["instance_tpe"].fix == "did you mean 'instance_type'?"


def test_endpoint_file_errors_are_all_reported_with_their_own_file():
    with pytest.raises(LocalmlError) as caught:
        load_deployment(BAD / "bad_endpoint" / "blue-deployment.yml")
    endpoint = str((BAD / "bad_endpoint" / "endpoint.yml").resolve())
    assert {(p.file, p.key) for p in caught.value.problems} >= {(endpoint, "auth_mode"), (endpoint, "traffic.blue")}


@pytest.mark.parametrize(("spec", "fix"), [
    ("azureml_model.yml", "set=model.path=<folder>"),
    ("azureml_environment.yml", 'set="environment.image=<base image> environment.conda_file=<conda.yml>"'),
])
def test_a_workspace_reference_says_localml_cannot_fetch_it_and_names_the_local_alternative(spec, fix):
    with pytest.raises(LocalmlError) as caught:
        load_deployment(BAD / spec)
    [problem] = caught.value.problems  # that one problem, never also "missing required key"
    assert "not available locally" in problem.message and fix in problem.fix, caught.value.render()
    assert "missing" not in caught.value.render()


def test_misspelled_key_is_reported_once_not_also_as_missing():
    with pytest.raises(LocalmlError) as caught:
        load_deployment(BAD / "misspelled_nested.yml")
    assert len(caught.value.problems) == 1, caught.value.render()


# --- valid shapes real users write -----------------------------------------------------------


def valid(tmp_path: Path, body: str) -> Path:
    shutil.copytree(REPO / "specs", tmp_path / "specs")
    path = tmp_path / "specs" / "deployment.yml"
    path.write_text(body)
    return path


COMMON = """name: blue
endpoint_name: localml-sample
code_configuration:
  code: {code}
  scoring_script: score.py
"""
ENVIRONMENT = """environment:
  conda_file: environment/conda.yml
  image: mcr.microsoft.com/azureml/openmpi4.1.0-ubuntu22.04:latest
"""


@pytest.mark.parametrize("model", ["model: model/", "model: model", "model:\n  name: m\n  version: 3\n  path: model/",
                                   "model:\n  path: model/sklearn_regression_model.pkl\n  type: custom_model"])
@pytest.mark.parametrize("code", ["onlinescoring/", "onlinescoring", "./onlinescoring"])
def test_model_and_code_shapes_are_accepted(tmp_path, model, code):
    deployment = load_deployment(valid(tmp_path, COMMON.format(code=code) + model + "\n" + ENVIRONMENT))
    assert deployment.code_dir == str((tmp_path / "specs" / "onlinescoring").resolve())
    assert Path(deployment.model_path).exists()


def test_environment_variables_are_coerced_to_strings_like_azure(tmp_path):
    body = COMMON.format(code="onlinescoring/") + "model: model/\n" + ENVIRONMENT + (
        "environment_variables:\n  WORKERS: 4\n  RATIO: 0.5\n  DEBUG: true\n  NAME: x\n")
    deployment = load_deployment(valid(tmp_path, body))
    assert deployment.environment_variables == {"WORKERS": "4", "RATIO": "0.5", "DEBUG": "true", "NAME": "x"}


def test_build_context_with_dockerfile_path_is_valid(tmp_path):
    body = COMMON.format(code="onlinescoring/") + "model: model/\n" + (
        "environment:\n  build:\n    path: context/\n    dockerfile_path: docker/Dockerfile.serve\n")
    path = valid(tmp_path, body)
    (tmp_path / "specs" / "context" / "docker").mkdir(parents=True)
    (tmp_path / "specs" / "context" / "docker" / "Dockerfile.serve").write_text("FROM scratch\n")
    deployment = load_deployment(path)
    assert deployment.build_context == str((tmp_path / "specs" / "context").resolve())
    assert deployment.dockerfile_path == "docker/Dockerfile.serve"


def test_kubernetes_fields_and_probes_are_accepted(tmp_path):
    body = COMMON.format(code="onlinescoring/") + "model: model/\n" + ENVIRONMENT + """type: kubernetes
instance_type: defaultinstancetype
resources:
  requests:
    cpu: "0.5"
    memory: 1Gi
request_settings:
  request_timeout_ms: 250000
  max_concurrent_requests_per_instance: 2
readiness_probe:
  initial_delay: 3
  period: 2
  failure_threshold: 5
scale_settings:
  type: target_utilization
  min_instances: 1
  max_instances: 3
"""
    deployment = load_deployment(valid(tmp_path, body))
    assert deployment.readiness_probe.failure_threshold == 5
    assert deployment.request_timeout_ms == 250000


CUSTOM = """name: custom
endpoint_name: localml-sample
model:
  name: tiny
  version: 2
  path: model/
model_mount_path: {mount}
environment:
  image: docker.io/tensorflow/serving:latest
  inference_config:
    liveness_route: {{path: /v1/models/m, port: 8501}}
    readiness_route: {{path: v1/models/m, port: 8501}}
    scoring_route: {{path: /v1/models/m:predict, port: 8501}}
"""


def test_a_custom_container_needs_no_code_configuration_and_keeps_its_routes(tmp_path):
    deployment = load_deployment(valid(tmp_path, CUSTOM.format(mount="/var/tfserving-model-mount")))
    assert deployment.code_dir == "" and deployment.conda_file is None
    assert deployment.inference_config == {
        "liveness_route": {"path": "/v1/models/m", "port": 8501},
        "readiness_route": {"path": "/v1/models/m", "port": 8501},  # a leading / is added, as a URL path
        "scoring_route": {"path": "/v1/models/m:predict", "port": 8501},
    }
    assert deployment.model_mount_path == "/var/tfserving-model-mount"


def test_a_relative_model_mount_path_is_an_error_with_its_line(tmp_path):
    path = valid(tmp_path, CUSTOM.format(mount="models/here"))
    with pytest.raises(LocalmlError) as caught:
        load_deployment(path)
    [problem] = caught.value.problems
    assert problem.key == "model_mount_path" and problem.line == 7
    assert "expected an absolute path in the container" in problem.message


def test_the_sample_is_valid():
    deployment = load_deployment(REPO / "specs" / "blue-deployment.yml")
    assert (deployment.endpoint_name, deployment.deployment_name) == ("localml-sample", "blue")


# --- through the command line -----------------------------------------------------------------


def run_validate(spec: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "localml_tasks", "validate", f"spec={spec}"], cwd=spec.parent,
                          capture_output=True, text=True,
                          env={**os.environ, "NO_COLOR": "1", "DOCKER_HOST": "unix:///nonexistent.sock"})


@pytest.mark.parametrize("spec", ["several_errors.yml", "tabs.yml", "empty.yml", "score_syntax_error.yml"])
def test_doit_validate_exits_non_zero_with_messages_and_no_traceback(spec, tmp_path):
    copy = tmp_path / "bad_specs"
    shutil.copytree(BAD, copy)
    shutil.copytree(REPO / "specs", tmp_path / "specs")
    result = run_validate(copy / spec)
    assert result.returncode != 0
    assert result.stderr.startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert "Docker" not in result.stderr  # nothing reached Docker


def test_doit_validate_passes_on_the_sample_without_docker(tmp_path):
    shutil.copytree(REPO / "specs", tmp_path / "specs")
    result = run_validate(tmp_path / "specs" / "blue-deployment.yml")
    assert result.returncode == 0, result.stderr
    assert "blue on endpoint localml-sample: valid" in result.stdout
