"""Command-line overrides of the deployment YAML, as `az ml online-deployment create` takes them.

    doit debug spec=blue-deployment.yml deployment=green endpoint_name=ep set="request_settings.request_timeout_ms=3000"

`deployment=` is the CLI's --name, `endpoint_name=` its --endpoint-name and `set=` one or more of its
`--set key.path=value`, split like a shell command line so that a value with spaces can be quoted.
Values are read as YAML scalars (`3` is a number, `true` a boolean), as the CLI reads them. They
replace the file's values before validation, and a problem at an overridden key names the override
instead of a line of the file.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from .errors import LocalmlError, Problem
from .yamlsource import KeyPath, YamlDocument, dotted

# the command-line variables, in the order their overrides apply: the named ones win over set=, as in the CLI
VARIABLES = ("set", "endpoint_name", "deployment")
_PART = re.compile(r"([^.\[\]]+)((?:\[\d+\])*)")
_SET_FIX = 'write set="key.path=value", e.g. set="environment_variables.SAMPLE_OUTPUT_SCALE=2"'


@dataclass(frozen=True)
class Override:
    """One key path replaced: `label` is how the user wrote it, e.g. set=code_configuration.code=../other."""

    label: str
    path: KeyPath
    value: Any


@dataclass(frozen=True)
class Overrides:
    """The variables as given on the command line: what .localml/current.json remembers."""

    assignments: str = ""  # set=
    endpoint_name: str = ""
    deployment: str = ""

    @classmethod
    def from_vars(cls, values: Mapping[str, Any]) -> Overrides:
        def text(name: str) -> str:
            value = values.get(name)
            return value if isinstance(value, str) else ""

        return cls(text("set"), text("endpoint_name"), text("deployment"))

    def as_vars(self) -> dict[str, str]:
        """Only the variables given, by their command-line names."""
        values = {"set": self.assignments, "endpoint_name": self.endpoint_name, "deployment": self.deployment}
        return {name: value for name, value in values.items() if value}

    def argv(self) -> list[str]:
        """The same overrides for a child `debug` command."""
        return [f"{name}={value}" for name, value in self.as_vars().items()]

    def parse(self, *, lenient: bool = False) -> list[Override]:
        """In the order they apply. A malformed one raises LocalmlError, or is skipped when lenient
        (at task-load time, where only the names matter and the validate stage reports it)."""
        out: list[Override] = []
        try:
            out += parse_set(self.assignments)
        except LocalmlError:
            if not lenient:
                raise
            out += [o for item in _split_leniently(self.assignments) for o in _parse_or_skip(item)]
        # names are names: kept as typed, not read as YAML
        if self.endpoint_name:
            out.append(Override(f"endpoint_name={self.endpoint_name}", ("endpoint_name",), self.endpoint_name))
        if self.deployment:
            out.append(Override(f"deployment={self.deployment}", ("name",), self.deployment))
        return out

    def __bool__(self) -> bool:
        return bool(self.as_vars())


def parse_set(text: str) -> list[Override]:
    """`key.path=value other.key=value` -> Overrides; every malformed item is reported at once."""
    try:
        items = shlex.split(text)
    except ValueError as exc:  # an unclosed quote
        raise LocalmlError.one(f"cannot split into key.path=value items: {exc}", override=f"set={text}",
                               fix="quote a value with spaces as a whole: set=\"key.path='a value' other.key=3\"",
                               ) from None
    out: list[Override] = []
    problems: list[Problem] = []
    for item in items:
        try:
            out.append(_parse_item(item))
        except LocalmlError as exc:
            problems += exc.problems
    if problems:
        raise LocalmlError(problems)
    return out


def _parse_item(item: str) -> Override:
    label = f"set={item}"
    key, equals, raw = item.partition("=")
    if not equals:
        raise LocalmlError.one("no '=' between the key path and the value", override=label, fix=_SET_FIX)
    if not key:
        raise LocalmlError.one("the key path before '=' is empty", override=label, fix=_SET_FIX)
    path: list[str | int] = []
    for part in key.split("."):
        match = _PART.fullmatch(part)
        if match is None:
            what = "an empty key between dots" if not part else f"'{part}' is not a key (or key[index])"
            raise LocalmlError.one(f"{what} in the key path '{key}'", override=label,
                                   fix="write the key path as dotted keys, with [n] for a list item: a.b[0].c")
        path.append(match[1])
        path += [int(index) for index in re.findall(r"\d+", match[2])]
    return Override(label, tuple(path), yaml_scalar(raw))


def _split_leniently(text: str) -> list[str]:
    try:
        return shlex.split(text)
    except ValueError:
        return text.split()


def _parse_or_skip(item: str) -> list[Override]:
    try:
        return [_parse_item(item)]
    except LocalmlError:
        return []


def yaml_scalar(raw: str) -> Any:
    """The value as YAML reads a scalar: `3` -> 3, `true` -> True, `` -> None; anything else stays the text
    (a mapping, a list or a date would surprise more than it helps, and a date is not JSON)."""
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw
    return value if value is None or isinstance(value, str | int | float | bool) else raw


def apply(doc: YamlDocument, overrides: list[Override]) -> None:
    """Replace the keys in doc.data, in order, and remember which override set each key path (for where())."""
    problems: list[Problem] = []
    for override in overrides:
        why = _assign(doc.data, override.path, override.value)
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


def _assign(data: Any, path: KeyPath, value: Any) -> str | None:
    """Set data[path] = value, creating missing mappings on the way; else say why not."""
    node = data
    for depth, part in enumerate(path):
        last = depth == len(path) - 1
        here = dotted(path[:depth]) or "the top level"
        if isinstance(part, int):
            if not isinstance(node, list):
                return f"{here} is {_describe(node)}, not a list: [{part}] cannot index it"
            if part >= len(node):
                return f"{here} has {len(node)} items: there is no [{part}]"
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
