"""Command-line overrides of the deployment and endpoint YAML, as `az ml online-deployment create` takes them.

    doit debug spec=blue-deployment.yml deployment=green endpoint_name=ep set="request_settings.request_timeout_ms=3000"
    doit debug endpoint_set="auth_mode=key" unset="scale_settings resources.requests"

`deployment=` is the CLI's --name, `endpoint_name=` its --endpoint-name and `set=` one or more of its
`--set key.path=value`, split like a shell command line so that a value with spaces can be quoted.
`endpoint_set=` is `az ml online-endpoint create --set` for the endpoint YAML. `unset=` and
`endpoint_unset=` remove key paths (`a.b`, `a[0]`) from the deployment and the endpoint YAML.
Values are read as YAML scalars (`3` is a number, `true` a boolean), as the CLI reads them. They
replace the file's values before validation, and a problem at an overridden key names the override
instead of a line of the file.

Setting a key inside an `azureml:` reference (`set=model.path=./model` where the file says
`model: azureml:my-model:3`) replaces the reference with a local asset (the model keeps the
reference's name and version), and says so in a note.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from .errors import LocalmlError, Problem
from .yamlsource import KeyPath, YamlDocument, dotted, safe_load

# the command-line variables, in the order their overrides apply: removals first, then set=, then the named
# ones, which win over set= as in the CLI (endpoint_name= renames the endpoint too)
VARIABLES = ("unset", "set", "endpoint_unset", "endpoint_set", "endpoint_name", "deployment")
DEPLOYMENT, ENDPOINT = "deployment", "endpoint"  # which YAML an override changes
_PART = re.compile(r"([^.\[\]]+)((?:\[\d+\])*)")
_EXAMPLES = {"set": 'set="environment_variables.SAMPLE_OUTPUT_SCALE=2"', "endpoint_set": 'endpoint_set="auth_mode=key"',
             "unset": 'unset="scale_settings resources.requests"', "endpoint_unset": 'endpoint_unset="mirror_traffic"'}


def _fix(variable: str) -> str:
    if variable.endswith("unset"):
        return f'write {variable}="key.path other.key", e.g. {_EXAMPLES[variable]}'
    return f'write {variable}="key.path=value", e.g. {_EXAMPLES[variable]}'


@dataclass(frozen=True)
class Override:
    """One key path replaced or removed: `label` is how the user wrote it, e.g. set=code_configuration.code=../x."""

    label: str
    path: KeyPath
    value: Any
    target: str = DEPLOYMENT  # or ENDPOINT: endpoint_set=, endpoint_unset=
    remove: bool = False  # unset=, endpoint_unset=


@dataclass(frozen=True)
class Overrides:
    """The variables as given on the command line: what .localml/current.json remembers."""

    assignments: str = ""  # set=
    endpoint_name: str = ""
    deployment: str = ""
    endpoint_assignments: str = ""  # endpoint_set=
    removals: str = ""  # unset=
    endpoint_removals: str = ""  # endpoint_unset=

    @classmethod
    def from_vars(cls, values: Mapping[str, Any]) -> Overrides:
        def text(name: str) -> str:
            value = values.get(name)
            return value if isinstance(value, str) else ""

        return cls(text("set"), text("endpoint_name"), text("deployment"), text("endpoint_set"), text("unset"),
                   text("endpoint_unset"))

    def as_vars(self) -> dict[str, str]:
        """Only the variables given, by their command-line names."""
        values = {"set": self.assignments, "endpoint_name": self.endpoint_name, "deployment": self.deployment,
                  "endpoint_set": self.endpoint_assignments, "unset": self.removals,
                  "endpoint_unset": self.endpoint_removals}
        return {name: value for name, value in values.items() if value}

    def argv(self) -> list[str]:
        """The same overrides for a child `debug` command."""
        return [f"{name}={value}" for name, value in self.as_vars().items()]

    def parse(self, *, lenient: bool = False) -> list[Override]:
        """In the order they apply. A malformed one raises LocalmlError, or is skipped when lenient
        (at task-load time, where only the names matter and the validate stage reports it)."""
        out: list[Override] = []
        problems: list[Problem] = []
        for variable, text in (("unset", self.removals), ("set", self.assignments),
                               ("endpoint_unset", self.endpoint_removals), ("endpoint_set", self.endpoint_assignments)):
            try:
                out += parse_set(text, variable)
            except LocalmlError as exc:
                if not lenient:
                    problems += exc.problems
                    continue
                out += [o for item in _split_leniently(text) for o in _parse_or_skip(item, variable)]
        if problems:
            raise LocalmlError(problems)
        # names are names: kept as typed, not read as YAML
        if self.endpoint_name:
            out.append(Override(f"endpoint_name={self.endpoint_name}", ("endpoint_name",), self.endpoint_name))
        if self.deployment:
            out.append(Override(f"deployment={self.deployment}", ("name",), self.deployment))
        return out

    def __bool__(self) -> bool:
        return bool(self.as_vars())


def parse_set(text: str, variable: str = "set") -> list[Override]:
    """`key.path=value other.key=value` -> Overrides (for unset=/endpoint_unset=: `key.path other.key`);
    every malformed item is reported at once, each naming the variable and the item."""
    try:
        items = shlex.split(text)
    except ValueError as exc:  # an unclosed quote
        if variable.endswith("unset"):
            shape, fix = "key.path items", _fix(variable)
        else:
            shape = "key.path=value items"
            fix = f"quote a value with spaces as a whole: {variable}=\"key.path='a value' other.key=3\""
        raise LocalmlError.one(f"cannot split into {shape}: {exc}", override=f"{variable}={text}", fix=fix) from None
    out: list[Override] = []
    problems: list[Problem] = []
    for item in items:
        try:
            out.append(_parse_item(item, variable))
        except LocalmlError as exc:
            problems += exc.problems
    if problems:
        raise LocalmlError(problems)
    return out


def _parse_item(item: str, variable: str = "set") -> Override:
    label = f"{variable}={item}"
    target = ENDPOINT if variable.startswith("endpoint_") else DEPLOYMENT
    if variable.endswith("unset"):
        if "=" in item:
            raise LocalmlError.one(f"{variable}= takes key paths only, without '=value'", override=label,
                                   fix=_fix(variable) + "; to change a value, use "
                                   + ("endpoint_set=" if target == ENDPOINT else "set="))
        return Override(label, _key_path(item, label), None, target, remove=True)
    key, equals, raw = item.partition("=")
    if not equals:
        raise LocalmlError.one("no '=' between the key path and the value", override=label, fix=_fix(variable))
    if not key:
        raise LocalmlError.one("the key path before '=' is empty", override=label, fix=_fix(variable))
    return Override(label, _key_path(key, label), yaml_scalar(raw), target)


def _key_path(key: str, label: str) -> KeyPath:
    path: list[str | int] = []
    for part in key.split("."):
        match = _PART.fullmatch(part)
        if match is None:
            what = "an empty key between dots" if not part else f"'{part}' is not a key (or key[index])"
            raise LocalmlError.one(f"{what} in the key path '{key}'", override=label,
                                   fix="write the key path as dotted keys, with [n] for a list item: a.b[0].c")
        path.append(match[1])
        path += [int(index) for index in re.findall(r"\d+", match[2])]
    return tuple(path)


def _split_leniently(text: str) -> list[str]:
    try:
        return shlex.split(text)
    except ValueError:
        return text.split()


def _parse_or_skip(item: str, variable: str = "set") -> list[Override]:
    try:
        return [_parse_item(item, variable)]
    except LocalmlError:
        return []


def yaml_scalar(raw: str) -> Any:
    """The value as YAML reads a scalar: `3` -> 3, `true` -> True, `` -> None; anything else stays the text
    (a mapping, a list or a date would surprise more than it helps, and a date is not JSON)."""
    try:
        value = safe_load(raw)
    except (yaml.YAMLError, LocalmlError, ValueError, TypeError, RecursionError):  # 2001-13-45, !!int x, [[[...
        return raw
    return value if value is None or isinstance(value, str | int | float | bool) else raw


def apply(doc: YamlDocument, overrides: list[Override]) -> list[str]:
    """Replace (or remove) the keys in doc.data, in order, and remember which override set each key path (for
    where()). Returns the notes to show: an `azureml:` reference an override replaced with a local asset."""
    problems: list[Problem] = []
    notes: list[str] = []
    for override in overrides:
        if override.remove:
            why = _remove(doc.data, override.path)
        else:
            why = _assign(doc.data, override.path, override.value, notes, override.label)
        if why:
            problems.append(Problem(why, override=override.label, key=dotted(override.path),
                                    fix="check the key path against the YAML file; to replace a value as a whole, "
                                        "set its own key"))
            continue
        size = len(override.path)
        # a later override of a parent replaces the earlier children with it
        for earlier in [p for p in doc.overrides if p[:size] == override.path]:
            del doc.overrides[earlier]
        doc.overrides[override.path] = override.label
    if problems:
        raise LocalmlError(problems)
    return notes


def _index_problem(node: Any, index: int, here: str, purpose: str = "") -> str | None:
    """Why node[index] cannot be reached, if it cannot (here: the path to node; purpose: e.g. " to remove")."""
    if not isinstance(node, list):
        return f"{here} is {_describe(node)}, not a list: [{index}] cannot index it"
    if index >= len(node):
        return f"{here} has {len(node)} items: there is no [{index}]{purpose}"
    return None


def _remove(data: Any, path: KeyPath) -> str | None:
    """Delete data[path]; else say why not (a key that is not there is a mistake worth naming)."""
    node = data
    for depth, part in enumerate(path):
        last = depth == len(path) - 1
        here = dotted(path[:depth]) or "the top level"
        if isinstance(part, int):
            problem = _index_problem(node, part, here, " to remove")
            if problem:
                return problem
            if last:
                del node[part]
            else:
                node = node[part]
            continue
        if not isinstance(node, dict):
            return f"{here} is {_describe(node)}, not a mapping: it has no key '{part}'"
        key = next((k for k in node if str(k) == part), None)
        if key is None:
            keys = ", ".join(str(k) for k in node) or "none"
            return f"{here} has no key '{part}' to remove (its keys: {keys})"
        if last:
            del node[key]
        else:
            node = node[key]
    return None


def _asset_from_reference(reference: str, key: str) -> dict[str, Any]:
    """What stands in for an `azureml:` reference that an override reaches into: an inline asset, for a model
    with the reference's name and version (so $AZUREML_MODEL_DIR is laid out as in Azure)."""
    if key != "model":
        return {}
    body = reference.removeprefix("azureml:")
    uri = re.search(r"/models/([^/]+)/versions/([^/]+)$", body)
    if uri:
        return {"name": uri[1], "version": uri[2]}
    if body.startswith("/"):
        return {}
    name, colon, version = body.partition(":")
    name = name.partition("@")[0]  # name@latest: the version is the workspace's business
    return {"name": name, **({"version": version} if colon and version else {})} if name else {}


def _assign(data: Any, path: KeyPath, value: Any, notes: list[str] | None = None, label: str = "") -> str | None:
    """Set data[path] = value, creating missing mappings on the way; else say why not."""
    node = data
    for depth, part in enumerate(path):
        last = depth == len(path) - 1
        here = dotted(path[:depth]) or "the top level"
        if isinstance(part, int):
            problem = _index_problem(node, part, here)
            if problem:
                return problem
            if last:
                node[part] = value
            else:
                node = node[part]
            continue
        if not isinstance(node, dict):
            return f"{here} is {_describe(node)}, not a mapping: it has no key '{part}'"
        key = next((k for k in node if str(k) == part), part)  # the file's own key, even a number
        if last:
            node[key] = value
        elif isinstance(node.get(key), str) and node[key].startswith("azureml:"):
            # set=model.path=./model over `model: azureml:name:3`: a local asset instead of the workspace's
            kind = str(part) if depth == 0 and part in ("model", "environment") else "asset"
            asset = _asset_from_reference(node[key], kind)
            named = ", ".join(f"{name} {item}" for name, item in asset.items())
            kept = f" (keeping its {' and '.join(asset)}: {named})" if asset else ""
            if notes is not None:
                notes.append(f"{label} replaces the workspace {kind} {node[key]} with a local one{kept}")
            node[key] = asset
            node = node[key]
        elif node.get(key) is None:
            if isinstance(path[depth + 1], int):
                return f"{dotted(path[:depth + 1])} is not set: there is no list to index"
            node[key] = {}  # as the CLI does: `set=request_settings.request_timeout_ms=3000` without request_settings
            node = node[key]
        else:
            node = node[key]
    return None


def _describe(value: Any) -> str:
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, int | float):
        return f"the number {value}"
    if isinstance(value, str):
        return f"the string {value!r}"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return "empty"
