"""The Azure CLI's overrides on `doit debug`: deployment=, endpoint_name=, set="key.path=value ...".

Pure tests first (parsing, typing, errors naming the override), then `doit validate` through the
command line (no Docker), then real containers: another code folder, another model, a second
deployment from the same YAML.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import joblib
import numpy as np
import pytest
from conftest import REPO, Project, remove_containers, sample_copy
from sklearn.linear_model import Ridge

from localml_tasks.actions import watched_files
from localml_tasks.errors import LocalmlError
from localml_tasks.overrides import Override, Overrides, apply, parse_set, yaml_scalar
from localml_tasks.spec import load_deployment, peek_names
from localml_tasks.target import Target
from localml_tasks.yamlsource import load_yaml

REQUEST = REPO / "specs" / "sample-request.json"
ROWS = np.asarray(json.loads(REQUEST.read_text())["data"], dtype=float)


@pytest.fixture
def specs(tmp_path: Path) -> Path:
    shutil.copytree(REPO / "specs", tmp_path / "specs")
    return tmp_path / "specs"


def load(specs: Path, assignments: str = "", **names: str):
    return load_deployment(specs / "blue-deployment.yml", None, Overrides(assignments, **names).parse())


def problems_of(specs: Path, assignments: str = "", **names: str) -> LocalmlError:
    with pytest.raises(LocalmlError) as caught:
        load(specs, assignments, **names)
    return caught.value


# --- parsing and typing ------------------------------------------------------------------------


def test_set_is_split_like_a_shell_line_into_key_paths_and_values():
    parsed = parse_set("environment_variables.GREETING='hello world' code_configuration.code=../other "
                       "a.list[2].b=x")
    assert [(o.label, o.path, o.value) for o in parsed] == [
        ("set=environment_variables.GREETING=hello world", ("environment_variables", "GREETING"), "hello world"),
        ("set=code_configuration.code=../other", ("code_configuration", "code"), "../other"),
        ("set=a.list[2].b=x", ("a", "list", 2, "b"), "x"),
    ]
    assert parse_set("") == [] and parse_set("   ") == []


@pytest.mark.parametrize(("raw", "value"), [
    ("3", 3), ("0.5", 0.5), ("true", True), ("false", False), ("", None), ("null", None),
    ("blue", "blue"), ("'3'", "3"), ("../model2/", "../model2/"), ("a=b", "a=b"),
    ("mcr.microsoft.com/azureml/x:latest", "mcr.microsoft.com/azureml/x:latest"),
    # not scalars: kept as the text typed (a mapping or list would surprise, a date is not JSON)
    ("a: b", "a: b"), ("[1, 2]", "[1, 2]"), ("2024-01-01", "2024-01-01"), ("'unclosed", "'unclosed"),
])
def test_values_are_read_as_yaml_scalars_like_the_cli_does(raw, value):
    parsed = yaml_scalar(raw)
    assert parsed == value and type(parsed) is type(value)


def test_named_overrides_apply_after_set_so_they_win():
    parsed = Overrides("name=red endpoint_name=one", endpoint_name="two", deployment="green").parse()
    assert [o.path for o in parsed] == [("name",), ("endpoint_name",), ("endpoint_name",), ("name",)]
    assert parsed[-1] == Override("deployment=green", ("name",), "green")
    assert Overrides(deployment="3").parse()[0].value == "3"  # a name stays text


def test_overrides_round_trip_through_the_command_line_variables():
    given = Overrides.from_vars({"set": "a=1", "deployment": "green", "endpoint_name": "", "spec": "x.yml"})
    assert given == Overrides("a=1", deployment="green")
    assert given.as_vars() == {"set": "a=1", "deployment": "green"}
    assert given.argv() == ["set=a=1", "deployment=green"]
    assert Overrides.from_vars(given.as_vars()) == given
    assert not Overrides() and given


def test_endpoint_set_and_unset_are_overrides_of_their_own_file():
    parsed = Overrides("a=1", endpoint_assignments="auth_mode=key traffic.blue=100", removals="scale_settings b[0]",
                       endpoint_removals="mirror_traffic").parse()
    assert [(o.label, o.target, o.remove, o.path, o.value) for o in parsed] == [
        ("unset=scale_settings", "deployment", True, ("scale_settings",), None),
        ("unset=b[0]", "deployment", True, ("b", 0), None),
        ("set=a=1", "deployment", False, ("a",), 1),
        ("endpoint_unset=mirror_traffic", "endpoint", True, ("mirror_traffic",), None),
        ("endpoint_set=auth_mode=key", "endpoint", False, ("auth_mode",), "key"),
        ("endpoint_set=traffic.blue=100", "endpoint", False, ("traffic", "blue"), 100),
    ]
    given = Overrides.from_vars({"endpoint_set": "auth_mode=key", "unset": "x", "endpoint_unset": "y", "set": ""})
    assert given.as_vars() == {"endpoint_set": "auth_mode=key", "unset": "x", "endpoint_unset": "y"}
    assert Overrides.from_vars(given.as_vars()) == given
    assert given.argv() == ["endpoint_set=auth_mode=key", "unset=x", "endpoint_unset=y"]


@pytest.mark.parametrize(("names", "label", "fragment", "fix"), [
    ({"endpoint_assignments": "auth_mode"}, "endpoint_set=auth_mode", "no '=' between the key path and the value",
     'write endpoint_set="key.path=value", e.g. endpoint_set="auth_mode=key"'),
    ({"removals": "instance_count=1"}, "unset=instance_count=1", "unset= takes key paths only, without '=value'",
     'write unset="key.path other.key", e.g. unset="scale_settings resources.requests"; to change a value, use set='),
    ({"endpoint_removals": "a..b"}, "endpoint_unset=a..b", "an empty key between dots in the key path 'a..b'",
     "write the key path as dotted keys, with [n] for a list item: a.b[0].c"),
    ({"endpoint_removals": "'x"}, "endpoint_unset='x", "cannot split into key.path items: No closing quotation",
     'write endpoint_unset="key.path other.key", e.g. endpoint_unset="mirror_traffic"'),
])
def test_malformed_endpoint_set_and_unset_name_the_variable_the_item_and_a_fix(names, label, fragment, fix):
    with pytest.raises(LocalmlError) as caught:
        Overrides(**names).parse()
    [problem] = caught.value.problems
    assert (problem.override, problem.fix) == (label, fix) and fragment in problem.message
    assert caught.value.render().startswith(f"error: {label}: ")
    if "'" not in label:  # at task-load time a malformed item is skipped (an unclosed quote: split on spaces)
        assert Overrides(**names).parse(lenient=True) == []


def test_every_variables_malformed_items_are_reported_together():
    with pytest.raises(LocalmlError) as caught:
        Overrides("nokey", endpoint_assignments="alsonokey", removals="a=1").parse()
    assert [p.override for p in caught.value.problems] == ["unset=a=1", "set=nokey", "endpoint_set=alsonokey"]


# --- malformed overrides: one clear error naming the override, never a traceback ------------------


@pytest.mark.parametrize(("assignments", "label", "fragment"), [
    ("code_configuration.code", "set=code_configuration.code", "no '=' between the key path and the value"),
    ("=3", "set==3", "the key path before '=' is empty"),
    ("a..b=1", "set=a..b=1", "an empty key between dots in the key path 'a..b'"),
    ("model.=1", "set=model.=1", "an empty key between dots"),
    ("a[x]=1", "set=a[x]=1", "'a[x]' is not a key (or key[index])"),
    ("name='unclosed", "set=name='unclosed", "cannot split into key.path=value items: No closing quotation"),
])
def test_malformed_set_is_one_error_naming_it_with_a_fix(assignments, label, fragment):
    with pytest.raises(LocalmlError) as caught:
        Overrides(assignments).parse()
    [problem] = caught.value.problems
    assert problem.override == label and fragment in problem.message and problem.fix
    assert caught.value.render().startswith(f"error: {label}: ")


def test_every_malformed_item_is_reported_at_once_and_lenient_parsing_skips_them():
    with pytest.raises(LocalmlError) as caught:
        Overrides("nokey =1 name=green").parse()
    assert [p.override for p in caught.value.problems] == ["set=nokey", "set==1"]
    # at task-load time only the names matter: the good items still count
    assert Overrides("nokey name=green").parse(lenient=True) == [Override("set=name=green", ("name",), "green")]
    assert Overrides("name='green", deployment="x").parse(lenient=True)[-1].value == "x"


@pytest.mark.parametrize(("assignments", "key", "fragment"), [
    ("name.first=x", "name.first", "name is the string 'blue', not a mapping: it has no key 'first'"),
    ("model[0]=x", "model[0]", "model is a mapping, not a list: [0] cannot index it"),
    ("tags[0]=x", "tags[0]", "tags is not set: there is no list to index"),
    ("instance_count.n=2", "instance_count.n", "instance_count is the number 1, not a mapping"),
])
def test_a_path_through_a_non_mapping_names_the_override(specs, assignments, key, fragment):
    error = problems_of(specs, assignments)
    [problem] = error.problems
    assert (problem.override, problem.key) == (f"set={assignments}", key)
    assert fragment in problem.message and problem.fix
    assert "Traceback" not in error.render()


def test_list_items_can_be_replaced_by_index(tmp_path):
    path = tmp_path / "d.yml"
    path.write_text("items:\n  - name: a\n  - name: b\n")
    doc = load_yaml(path)
    apply(doc, parse_set("items[1].name=c"))
    assert doc.data == {"items": [{"name": "a"}, {"name": "c"}]}
    with pytest.raises(LocalmlError, match=r"items has 2 items: there is no \[2\]"):
        apply(doc, parse_set("items[2]=x"))


# --- the overridden YAML is validated like the file --------------------------------------------


def test_a_problem_at_an_overridden_key_names_the_override_not_a_line(specs):
    error = problems_of(specs, "code_configuration.code=../nope")
    [problem] = error.problems
    assert problem.override == "set=code_configuration.code=../nope" and problem.line is None
    assert problem.key == "code_configuration.code"
    assert error.render().startswith(
        "error: set=code_configuration.code=../nope: code_configuration.code: code folder not found: ../nope")
    assert "relative to the folder of blue-deployment.yml" in problem.fix


def test_schema_problems_at_overridden_keys_name_the_override(specs):
    error = problems_of(specs, "request_settings.request_timeout_ms=abc request_setings.max=1 instance_count=0",
                        deployment="Not a name")
    by_override = {p.override: p for p in error.problems}
    assert "expected a whole number, found the string 'abc'" in \
        by_override["set=request_settings.request_timeout_ms=abc"].message
    # a mapping only the override created is the override's too
    assert by_override["set=request_setings.max=1"].message == "unknown key 'request_setings'"
    assert by_override["set=request_setings.max=1"].fix == "did you mean 'request_settings'?"
    assert by_override["set=instance_count=0"].message == "0 is below the minimum 1"
    assert by_override["deployment=Not a name"].message == "'Not a name' is not valid here"
    assert all(p.line is None for p in error.problems)


def test_problems_of_the_file_itself_still_name_its_line(specs):
    spec = specs / "blue-deployment.yml"
    spec.write_text(spec.read_text().replace("instance_count: 1", "instance_count: 0"))
    error = problems_of(specs, "environment_variables.X=1")
    [problem] = error.problems
    line = spec.read_text().splitlines().index("instance_count: 0") + 1
    assert problem.override is None and problem.line == line and problem.message == "0 is below the minimum 1"


def test_a_malformed_override_through_the_cli_is_one_error_without_traceback(specs):
    result = run_validate(specs, f"spec={specs / 'blue-deployment.yml'}", "set=code_configuration.code")
    assert result.returncode != 0
    assert result.stderr.startswith("error: set=code_configuration.code: no '=' between the key path and the value")
    assert "fix: write set=" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


# --- overrides take effect in the resolved deployment -----------------------------------------------


def test_overrides_reach_the_resolved_deployment(specs, tmp_path, monkeypatch):
    shutil.copytree(specs / "onlinescoring", tmp_path / "other-code")
    monkeypatch.chdir(tmp_path)  # relative paths are the YAML folder's, not the working directory's
    deployment = load(specs, "environment_variables.SAMPLE_OUTPUT_SCALE=2 environment_variables.NEW=true "
                             "request_settings.request_timeout_ms=3000 code_configuration.code=../other-code "
                             "model.path=model/sklearn_regression_model.pkl readiness_probe.period=3")
    assert deployment.environment_variables == {"SAMPLE_OUTPUT_SCALE": "2", "NEW": "true"}
    assert deployment.request_timeout_ms == 3000 and deployment.readiness_probe.period == 3
    assert deployment.code_dir == str((tmp_path / "other-code").resolve())
    assert deployment.model_path == str((specs / "model" / "sklearn_regression_model.pkl").resolve())
    # what Azure tools read from the container's labels is the overridden YAML
    assert deployment.deployment_data["request_settings"] == {"request_timeout_ms": 3000}
    assert deployment.deployment_data["code_configuration"]["code"] == "../other-code"


def test_name_overrides_rename_the_deployment_and_the_endpoint(specs):
    deployment = load(specs, deployment="green", endpoint_name="other-ep")
    assert (deployment.endpoint_name, deployment.deployment_name) == ("other-ep", "green")
    assert deployment.endpoint_data["name"] == "other-ep"  # no "does not match endpoint.yml" error
    assert load(specs, "name=red endpoint_name=ep-two").deployment_name == "red"
    error = problems_of(specs, endpoint_name="bad name")
    assert [p.render().splitlines()[0] for p in error.problems] == [
        "error: endpoint_name=bad name: endpoint_name: 'bad name' is not valid here"]


def test_endpoint_set_and_unset_change_the_endpoint_yaml(specs):
    deployment = load(specs, endpoint_assignments="auth_mode=AMLToken traffic.green=0 traffic.blue=100",
                      endpoint_removals="description")
    assert deployment.endpoint_data["auth_mode"] == "aml_token"  # normalised as the file's own value would be
    assert deployment.endpoint_data["traffic"] == {"blue": 100, "green": 0}
    assert "description" not in deployment.endpoint_data
    error = problems_of(specs, endpoint_assignments="auth_mode=password")
    [problem] = error.problems
    assert problem.render().splitlines()[0] == \
        "error: endpoint_set=auth_mode=password: auth_mode: 'password' is not allowed here"
    assert problem.file.endswith("endpoint.yml")


def test_unset_removes_deployment_keys_and_a_missing_key_names_the_unset(specs):
    deployment = load(specs, removals="instance_count environment_variables.SAMPLE_OUTPUT_SCALE")
    assert "instance_count" not in deployment.deployment_data and deployment.environment_variables == {}
    error = problems_of(specs, removals="instance_cont")
    [problem] = error.problems
    assert problem.override == "unset=instance_cont" and "the top level has no key 'instance_cont' to remove" \
        in problem.message and "instance_count" in problem.message and problem.fix
    error = problems_of(specs, removals="name")
    assert error.render().splitlines()[0] == "error: unset=name: missing required key 'name'"
    # removed, then given again: set= applies after unset=
    assert load(specs, "instance_count=2", removals="instance_count").deployment_data["instance_count"] == 2


def test_endpoint_overrides_without_an_endpoint_yaml_are_an_error(specs):
    (specs / "endpoint.yml").unlink()
    error = problems_of(specs, endpoint_assignments="auth_mode=key")
    [problem] = error.problems
    assert problem.override == "endpoint_set=auth_mode=key" and problem.message == "there is no endpoint YAML to change"
    assert "endpoint=<file>" in problem.fix


def test_set_model_path_over_a_workspace_model_makes_it_local_and_says_so(specs):
    spec = specs / "blue-deployment.yml"
    text = spec.read_text()
    start, end = text.index("model:\n"), text.index("code_configuration:")
    spec.write_text(text[:start] + "model: azureml:sample-regression:3\n" + text[end:])
    refused = problems_of(specs)
    assert "set=model.path=<folder>" in refused.problems[0].fix

    deployment = load(specs, "model.path=model/")
    assert deployment.model_path == str((specs / "model").resolve())
    assert (deployment.model_name, deployment.model_version) == ("sample-regression", "3")  # Azure's layout
    assert deployment.deployment_data["model"] == {"name": "sample-regression", "version": "3", "path": "model/"}
    assert deployment.notes == ["set=model.path=model/ replaces the workspace model azureml:sample-regression:3 "
                                "with a local one (keeping its name and version: name sample-regression, version 3)"]


@pytest.mark.parametrize(("reference", "kept"), [
    ("azureml:my-model:7", {"name": "my-model", "version": "7"}),
    ("azureml:my-model@latest", {"name": "my-model"}),
    ("azureml:my-model", {"name": "my-model"}),
    ("azureml://registries/azureml/models/my-model/versions/2", {"name": "my-model", "version": "2"}),
    ("azureml:/subscriptions/s/resourceGroups/g/providers/Microsoft.MachineLearningServices/workspaces/w/models/"
     "m/versions/4", {"name": "m", "version": "4"}),
])
def test_a_replaced_model_reference_keeps_what_it_names(tmp_path, reference, kept):
    path = tmp_path / "d.yml"
    path.write_text(f"model: {reference}\n")
    doc = load_yaml(path)
    [note] = apply(doc, parse_set("model.path=./m"))
    assert doc.data["model"] == {**kept, "path": "./m"} and reference in note


def test_set_over_a_workspace_environment_builds_a_local_one(specs):
    spec = specs / "blue-deployment.yml"
    text = spec.read_text()
    start, end = text.index("environment:\n"), text.index("environment_variables:")
    spec.write_text(text[:start] + "environment: azureml:sklearn-env:3\n" + text[end:])
    deployment = load(specs, "environment.image=mcr.microsoft.com/azureml/openmpi4.1.0-ubuntu22.04:latest "
                             "environment.conda_file=environment/conda.yml")
    assert deployment.conda_file == str((specs / "environment" / "conda.yml").resolve())
    assert deployment.image == "mcr.microsoft.com/azureml/openmpi4.1.0-ubuntu22.04:latest"
    assert deployment.notes[0].startswith("set=environment.image=mcr.microsoft.com/azureml/openmpi4.1.0-ubuntu22.04:"
                                          "latest replaces the workspace environment azureml:sklearn-env:3")


def test_peek_names_honours_the_overrides(specs):
    spec = specs / "blue-deployment.yml"
    assert peek_names(spec) == ("localml-sample", "blue")
    assert peek_names(spec, Overrides(deployment="green").parse()) == ("localml-sample", "green")
    assert peek_names(spec, Overrides("name=red endpoint_name=ep").parse()) == ("ep", "red")
    assert peek_names(spec, Overrides("name=3").parse()) == ("localml-sample", "blue")  # validate says why
    # the endpoint's own name counts only where the deployment names no endpoint
    assert peek_names(spec, Overrides(endpoint_assignments="name=other").parse()) == ("localml-sample", "blue")
    assert peek_names(spec, Overrides(endpoint_assignments="name=other", removals="endpoint_name").parse()) \
        == ("other", "blue")
    spec.write_text(spec.read_text().replace("endpoint_name: localml-sample\n", ""))
    assert peek_names(spec, Overrides(endpoint_assignments="name=other").parse()) == ("other", "blue")
    assert peek_names(spec, Overrides(endpoint_removals="name").parse()) == ("localml-sample", "blue")


def test_watched_files_follow_the_overridden_code_and_model(specs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shutil.copytree(specs / "onlinescoring", specs / "other-code")
    (specs / "other-code" / "helper.py").write_text("X = 1\n")
    target = Target(specs / "blue-deployment.yml", "localml-sample", "blue",
                    overrides=Overrides("code_configuration.code=other-code"))
    files = watched_files(target)
    assert str((specs / "other-code" / "helper.py").resolve()) in files
    assert not any("/onlinescoring/" in f for f in files)
    assert str((specs / "model" / "sklearn_regression_model.pkl").resolve()) in files


# --- through doit: which deployment later commands mean ---------------------------------------------


def run_validate(specs: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "localml_tasks", "validate", *args], cwd=specs.parent,
                          capture_output=True, text=True,
                          env={**os.environ, "NO_COLOR": "1", "DOCKER_HOST": "unix:///nonexistent.sock"})


def test_overrides_are_remembered_only_when_spec_is_not_given(specs):
    spec = f"spec={specs / 'blue-deployment.yml'}"
    first = run_validate(specs, spec, "deployment=green", "endpoint_name=ep-two",
                         "set=environment_variables.A='x y'")
    assert first.returncode == 0, first.stderr
    assert "green on endpoint ep-two: valid" in first.stdout
    current = json.loads((specs.parent / ".localml" / "current.json").read_text())
    assert current["overrides"] == {"set": "environment_variables.A='x y'", "endpoint_name": "ep-two",
                                    "deployment": "green"}
    resolved = json.loads((specs.parent / ".localml/endpoints/ep-two/green/deployment.json").read_text())
    assert resolved["environment_variables"]["A"] == "x y"

    again = run_validate(specs)  # no spec=: the same, overridden, deployment
    assert "green on endpoint ep-two: valid" in again.stdout, again.stderr
    one_changed = run_validate(specs, "deployment=teal")  # replaces the remembered deployment= only
    assert "teal on endpoint ep-two: valid" in one_changed.stdout, one_changed.stderr
    plain = run_validate(specs, spec)  # spec= given without overrides: none
    assert "blue on endpoint localml-sample: valid" in plain.stdout, plain.stderr
    assert json.loads((specs.parent / ".localml" / "current.json").read_text())["overrides"] == {}


def test_endpoint_set_and_unset_are_remembered_and_forgotten_like_set(specs):
    spec = specs / "blue-deployment.yml"
    spec.write_text(spec.read_text().replace("  name: sample-regression\n  version: 1\n  path: model/\n", "")
                    .replace("model:\n", "model: azureml:sample-regression:2\n"))
    resolved_file = specs.parent / ".localml/endpoints/localml-sample/blue/deployment.json"
    first = run_validate(specs, f"spec={spec}", "endpoint_set=auth_mode=AADToken", "endpoint_unset=traffic",
                         "unset=instance_count", "set=model.path=model/")
    assert first.returncode == 0, first.stderr
    assert "validate      note: set=model.path=model/ replaces the workspace model azureml:sample-regression:2 with " \
           "a local one" in first.stdout
    resolved = json.loads(resolved_file.read_text())
    assert resolved["endpoint_data"]["auth_mode"] == "aad_token" and "traffic" not in resolved["endpoint_data"]
    assert "instance_count" not in resolved["deployment_data"]
    assert resolved["model_path"] == str((specs / "model").resolve()) and resolved["model_version"] == "2"
    current = json.loads((specs.parent / ".localml" / "current.json").read_text())
    assert current["overrides"] == {"endpoint_set": "auth_mode=AADToken", "endpoint_unset": "traffic",
                                    "unset": "instance_count", "set": "model.path=model/"}

    again = run_validate(specs, "endpoint_set=auth_mode=key")  # no spec=: remembered; endpoint_set= replaced
    assert again.returncode == 0, again.stderr
    resolved = json.loads(resolved_file.read_text())
    assert resolved["endpoint_data"]["auth_mode"] == "key" and "traffic" not in resolved["endpoint_data"]
    assert resolved["model_version"] == "2"

    plain = run_validate(specs, f"spec={spec}")  # spec= without overrides: all forgotten, the workspace model again
    assert plain.returncode != 0 and "set=model.path=<folder>" in plain.stderr
    assert json.loads((specs.parent / ".localml" / "current.json").read_text())["overrides"] == {
        "endpoint_set": "auth_mode=key", "endpoint_unset": "traffic", "unset": "instance_count",
        "set": "model.path=model/"}  # current.json is written by a valid run only


# --- on a real Docker engine -------------------------------------------------------------------------


def debug(project: Project, *extra: str) -> subprocess.CompletedProcess:
    return project.run("debug", f"spec={project.spec}", *extra)


def invoke(project: Project, *extra: str) -> tuple[str, object]:
    result = project.run("invoke", f"request={REQUEST}", *extra)
    assert result.returncode == 0, result.stdout + result.stderr
    start = min(i for i in (result.stdout.find("["), result.stdout.find("{")) if i >= 0)
    return result.stdout, json.loads(result.stdout[start:])


def sample_predictions() -> list[float]:
    return joblib.load(REPO / "specs" / "model" / "sklearn_regression_model.pkl").predict(ROWS).tolist()


@pytest.mark.docker
def test_code_folder_override_serves_the_other_code_until_spec_is_given_without_it(project, engine):
    other = project.root.parent / "other-code"  # outside the YAML's folder: ../other-code
    shutil.copytree(project.root / "onlinescoring", other)
    (other / "score.py").write_text((other / "score.py").read_text().replace(
        "    return predictions.tolist()", '    return {"code": "other", "predictions": predictions.tolist()}'))

    result = debug(project, "set=code_configuration.code=../other-code")
    assert result.returncode == 0, result.stdout + result.stderr
    _, body = invoke(project)  # no spec=: the remembered, overridden deployment
    assert body["code"] == "other" and body["predictions"] == pytest.approx(sample_predictions())
    container = engine.containers.get(project.container_name())
    env = dict(item.split("=", 1) for item in container.attrs["Config"]["Env"])
    assert env["AML_APP_ROOT"] == "/var/azureml-app/other-code"
    started = container.id, container.attrs["State"]["StartedAt"]

    again = project.run("debug")  # the remembered overrides: nothing to do
    assert again.returncode == 0, again.stdout + again.stderr
    assert "container     up to date" in again.stdout and "image         up to date" in again.stdout
    container = engine.containers.get(project.container_name())
    assert (container.id, container.attrs["State"]["StartedAt"]) == started

    # the overridden code folder is the one watched: an edit there reloads in place
    (other / "score.py").write_text((other / "score.py").read_text().replace('"code": "other"', '"code": "edited"'))
    edited = project.run("debug")
    assert edited.returncode == 0, edited.stdout + edited.stderr
    assert "reloaded in place" in edited.stdout and "score.py changed" in edited.stdout
    _, body = invoke(project)
    assert body["code"] == "edited"
    container = engine.containers.get(project.container_name())
    assert (container.id, container.attrs["State"]["StartedAt"]) == started

    plain = debug(project)  # spec= without overrides means none: back to the file's code folder
    assert plain.returncode == 0, plain.stdout + plain.stderr
    assert "recreated: configuration or image changed" in plain.stdout
    _, body = invoke(project)
    assert body == pytest.approx(sample_predictions())


@pytest.mark.docker
def test_model_path_and_env_var_overrides_take_effect(project, engine):
    # another model, in a folder of the same name elsewhere: the script's $AZUREML_MODEL_DIR/model/ layout holds
    (project.root / "alt" / "model").mkdir(parents=True)
    rng = np.random.RandomState(11)
    inputs = rng.uniform(0, 10, size=(50, 10))
    other = Ridge().fit(inputs, inputs.sum(axis=1) * 3 + 7)
    joblib.dump(other, project.root / "alt" / "model" / "sklearn_regression_model.pkl")

    result = debug(project, "set=model.path=alt/model/ environment_variables.SAMPLE_OUTPUT_SCALE=2")
    assert result.returncode == 0, result.stdout + result.stderr
    _, body = invoke(project)
    assert body == pytest.approx((other.predict(ROWS) * 2).tolist())
    assert body != pytest.approx(sample_predictions())
    mounts = {m["Destination"]: m["Source"] for m in engine.containers.get(project.container_name()).attrs["Mounts"]}
    assert mounts["/var/azureml-app/azureml-models/sample-regression/1/model"] == str(project.root / "alt" / "model")


@pytest.mark.docker
def test_deployment_override_runs_a_second_deployment_from_the_same_yaml(project, engine):
    blue = debug(project)
    assert blue.returncode == 0, blue.stdout + blue.stderr
    green = debug(project, "deployment=green", "set=environment_variables.SAMPLE_OUTPUT_SCALE=10")
    assert green.returncode == 0, green.stdout + green.stderr
    assert "green on endpoint" in green.stdout

    containers = {c.name: c for c in engine.containers.list(filters={"label": f"endpoint={project.endpoint}"})}
    assert set(containers) == {project.container_name("blue"), project.container_name("green")}
    assert containers[project.container_name("green")].labels["deployment"] == "green"
    # the same environment: blue's image (doit runs green's new build task once, on Docker's cache)
    assert containers[project.container_name("green")].image.id == containers[project.container_name("blue")].image.id

    out, body = invoke(project, "deployment=green")
    assert "200 from green" in out and body == pytest.approx((np.asarray(sample_predictions()) * 10).tolist())
    out, body = invoke(project, "deployment=blue")
    assert "200 from blue" in out and body == pytest.approx(sample_predictions())


@pytest.mark.docker
def test_endpoint_name_override_names_the_container(tmp_path, engine):
    project = sample_copy(tmp_path / "project")
    renamed = f"{project.endpoint}-x"
    try:
        result = debug(project, f"endpoint_name={renamed}")
        assert result.returncode == 0, result.stdout + result.stderr
        assert engine.containers.get(f"localml-{renamed}-blue").labels["endpoint"] == renamed
        out, _ = invoke(project)
        assert "200 from blue" in out
    finally:
        remove_containers(renamed)
        remove_containers(project.endpoint)
