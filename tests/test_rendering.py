"""Pure rendering: Dockerfile, image tag, container spec, failure extraction (no Docker)."""

import json
from pathlib import Path

from localml_tasks.container import render_container
from localml_tasks.environment import ResolvedEnvironment
from localml_tasks.health import extract_cause, failure_error
from localml_tasks.image import check_python, image_tag, parse_build_failure, render_dockerfile
from localml_tasks.spec import load_deployment

REPO = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"
BASE = "localml/debian-python:3.11-bookworm"


def env(**overrides) -> ResolvedEnvironment:
    values = dict(conda_file=str(REPO / "specs/environment/conda.yml"), python_version="3.11",
                  requirements=["azureml-inference-server-http==1.5.1", "numpy==2.4.6", "debugpy"],
                  base_image="localml/debian-python:3.11-bookworm", declared_image="mcr.microsoft.com/x:latest")
    values.update(overrides)
    return ResolvedEnvironment(**values)


def test_the_pip_dockerfile_installs_the_environment_first_and_copies_no_code_or_model():
    text = render_dockerfile(BASE, "conda.yml", with_ca=True)
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert lines[0] == "FROM localml/debian-python:3.11-bookworm AS environment"
    # the venv + pip install is the first thing built on the base image
    assert lines[1].startswith("COPY requirements.txt")
    assert any("-m pip install" in line for line in lines)
    final_stage = text.split("\nFROM localml/debian-python:3.11-bookworm\n", 1)[1]
    assert final_stage.startswith("COPY --from=environment /opt/azureml-env /opt/azureml-env")
    # code and model are bind-mounted, never copied; the CA only reaches the discarded stage
    copies = [line for line in lines if line.startswith(("COPY", "ADD"))]
    assert copies == [
        "COPY requirements.txt /tmp/localml/requirements.txt",
        "COPY localml-ca.crt /tmp/localml/ca.crt",
        "COPY --from=environment /opt/azureml-env /opt/azureml-env",
    ]
    assert "ca.crt" not in final_stage and "PIP_CERT" not in final_stage


def test_dockerfile_without_a_host_ca_bundle_has_no_ca_step():
    text = render_dockerfile(BASE, "conda.yml", with_ca=False)
    assert "ca.crt" not in text and "PIP_CERT" not in text


def test_image_tag_is_a_content_hash_of_what_goes_in():
    dockerfile = render_dockerfile(BASE, "conda.yml", with_ca=True)
    tag = image_tag(dockerfile, "a\n", "sha256:1")
    assert tag.startswith("localml/env:") and len(tag.split(":")[1]) == 16
    assert tag == image_tag(dockerfile, "a\n", "sha256:1")
    assert tag != image_tag(dockerfile, "a\nb\n", "sha256:1")  # a new requirement
    assert tag != image_tag(dockerfile, "a\n", "sha256:2")  # a new base image


def test_python_pin_mismatch_names_both_versions_and_can_be_allowed():
    try:
        check_python(env(python_version="3.9"), "3.11.2", allowed_by=None)
    except Exception as exc:
        text = exc.render()
    else:
        raise AssertionError("a mismatch must raise")
    assert "python=3.9" in text and "Python 3.11.2" in text and "allow_python_mismatch=1" in text
    assert "conda.yml:5" in text
    warning = check_python(env(python_version="3.9"), "3.11.2", allowed_by="allow_python_mismatch: true in localml.yml")
    assert warning and "3.9" in warning and warning.endswith("(allowed by allow_python_mismatch: true in localml.yml)")
    assert check_python(env(python_version="3.11"), "3.11.2", allowed_by=None) is None
    assert check_python(env(python_version=None), "3.11.2", allowed_by=None) is None


def test_pip_failure_boils_down_to_the_requirement_and_pip_error_line():
    log = [
        "Step 4/9 : RUN python3 -m venv /opt/azureml-env",
        "Collecting numpy==2.4.6",
        "ERROR: Could not find a version that satisfies the requirement numpy==99 (from versions: 1.0)",
        "ERROR: No matching distribution found for numpy==99",
    ]
    error = parse_build_failure(log, "returned a non-zero code: 1", str(REPO / "specs/environment/conda.yml"))
    problem = error.problems[0]
    assert "pip could not install 'numpy==99'" in problem.message
    assert "ERROR: No matching distribution found for numpy==99" in problem.message
    assert problem.line == 11  # numpy's line in the sample conda file


def test_container_spec_follows_azure_layout_and_labels():
    deployment = load_deployment(REPO / "specs/blue-deployment.yml")
    spec = render_container(deployment, "localml/env:abc", "sha256:1", Path("/state/runtime"), Path("/state"))
    assert spec.name == "localml-localml-sample-blue"
    assert spec.environment["AZUREML_MODEL_DIR"] == "/var/azureml-app/azureml-models/sample-regression/1"
    assert spec.environment["AML_APP_ROOT"] == "/var/azureml-app/onlinescoring"
    assert spec.environment["AZUREML_ENTRY_SCRIPT"] == "score.py"
    assert spec.environment["SAMPLE_OUTPUT_SCALE"] == "1"  # numbers become strings, as in Azure
    mounts = {m["target"]: m for m in spec.mounts}
    assert mounts["/var/azureml-app/onlinescoring"]["source"] == str(REPO / "specs/onlinescoring")
    model = mounts["/var/azureml-app/azureml-models/sample-regression/1/model"]
    assert model["source"] == str(REPO / "specs/model") and model["read_only"]
    for label in ("azureml-local-endpoint", "endpoint", "deployment", "endpoint-data", "deployment-data"):
        assert label in spec.labels
    assert json.loads(spec.labels["deployment-data"])["name"] == "blue"
    # same inputs, same hash; another image, another hash
    same = render_container(deployment, "localml/env:abc", "sha256:1", Path("/state/runtime"), Path("/state"))
    other_image = render_container(deployment, "localml/env:abd", "sha256:2", Path("/state/runtime"), Path("/state"))
    assert spec.config_hash == same.config_hash
    assert spec.config_hash != other_image.config_hash


def test_deployment_environment_variables_override_azure_defaults(tmp_path):
    deployment = load_deployment(REPO / "specs/blue-deployment.yml")
    deployment.environment_variables["AML_APP_ROOT"] = "/elsewhere"
    spec = render_container(deployment, "localml/env:abc", "sha256:1", Path("/state/runtime"), Path("/state"))
    assert spec.environment["AML_APP_ROOT"] == "/elsewhere"


def test_init_failure_cause_is_the_users_frame_mapped_to_the_host():
    log = (DATA / "init-failure.log").read_text()
    cause = extract_cause(log, {"/var/azureml-app/onlinescoring": "/home/me/proj/onlinescoring"})
    assert cause is not None
    assert cause.summary.startswith("FileNotFoundError: [Errno 2] No such file or directory")
    assert (cause.user_file, cause.user_line, cause.function) == ("/home/me/proj/onlinescoring/score.py", 22, "init")
    error = failure_error("the server stopped", log, {"/var/azureml-app/onlinescoring": "/p/onlinescoring"}, "fix it")
    text = error.render()
    assert "/p/onlinescoring/score.py:22" in text and "sklearn_regression_model.pkl" in text


BUILD_LOG = """Step 1/4 : FROM localml/debian-python:3.11-bookworm AS environment
 ---> 5c2e0a1b2c3d
Step 2/4 : RUN pip install -r /tmp/requirements.txt
 ---> Running in 0123456789ab
Removing intermediate container 0123456789ab
 ---> aaaaaaaaaaaa
Step 3/4 : FROM localml/debian-python:3.11-bookworm
 ---> 5c2e0a1b2c3d
Step 4/4 : COPY --from=environment /opt/azureml-env /opt/azureml-env
 ---> Using cache
 ---> bbbbbbbbbbbb
Successfully built bbbbbbbbbbbb""".splitlines()


def test_a_builds_discarded_stages_are_its_leftovers_and_the_base_never_is():
    from localml_tasks.image import leftover_stage_images

    assert leftover_stage_images(BUILD_LOG, failed=False) == ["aaaaaaaaaaaa"]
    assert leftover_stage_images(BUILD_LOG, failed=True) == ["aaaaaaaaaaaa", "bbbbbbbbbbbb"]
    assert leftover_stage_images(BUILD_LOG[:3], failed=True) == []  # only FROM ran: the base is not ours
