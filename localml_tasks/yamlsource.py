"""YAML loading that remembers where every key came from, so errors can name a line."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import LocalmlError, Problem

KeyPath = tuple[str | int, ...]


@dataclass
class YamlDocument:
    """Plain Python data plus the (line, column) of each key path, both 1-based."""

    path: Path
    data: Any
    positions: dict[KeyPath, tuple[int, int]]
    # key paths replaced from the command line (overrides.apply) -> the override as the user wrote it
    overrides: dict[KeyPath, str] = field(default_factory=dict)

    def override_for(self, key_path: KeyPath) -> str | None:
        """The override that set this key (or a parent of it, or created it on the way to a child)."""
        probe = tuple(key_path)
        for size in range(len(probe), -1, -1):
            if probe[:size] in self.overrides:
                return self.overrides[probe[:size]]
        if probe not in self.positions:  # not in the file: a mapping an override created
            below = [label for path, label in self.overrides.items() if path[:len(probe)] == probe]
            return below[-1] if below else None
        return None

    def where(self, key_path: KeyPath) -> dict[str, Any]:
        """Keyword arguments for Problem: file, line, column, key (and override, for a key set by one)."""
        override = self.override_for(key_path)
        if override:
            return {"file": str(self.path), "line": None, "column": None, "key": dotted(key_path) or None,
                    "override": override}
        probe = tuple(key_path)
        # fall back to the closest parent that has a position
        while probe and probe not in self.positions:
            probe = probe[:-1]
        line, column = self.positions.get(probe, (None, None))
        return {"file": str(self.path), "line": line, "column": column, "key": dotted(key_path) or None}


def dotted(key_path: KeyPath) -> str:
    out = ""
    for part in key_path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def load_yaml(path: Path) -> YamlDocument:
    """Parse one YAML file; syntax errors and duplicate keys become Problems with lines."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise LocalmlError.one("file not found", file=str(path), fix="check the path") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise LocalmlError.one(f"cannot read: {exc}", file=str(path)) from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        what = exc.problem or exc.context
        if exc.context_mark and mark and mark.index >= len(text.rstrip()):
            # "unexpected end of stream": the line that opened the unclosed thing helps more
            mark, what = exc.context_mark, f"{what} ({exc.context} opened here)"
        hint = "YAML indents with spaces only" if "\t" in text else "check the indentation and quoting here"
        raise LocalmlError.one(
            f"not valid YAML: {what}",
            file=str(path),
            line=mark.line + 1 if mark else None,
            column=mark.column + 1 if mark else None,
            fix=hint,
        ) from None
    positions: dict[KeyPath, tuple[int, int]] = {}
    problems: list[Problem] = []
    data = _to_python(node, (), positions, problems, path) if node is not None else None
    if problems:
        raise LocalmlError(problems)
    return YamlDocument(path=path, data=data, positions=positions)


def _to_python(
    node: yaml.Node, here: KeyPath, positions: dict, problems: list[Problem], path: Path
) -> Any:
    positions.setdefault(here, (node.start_mark.line + 1, node.start_mark.column + 1))
    if isinstance(node, yaml.MappingNode):
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = _scalar(key_node)
            key_path = (*here, str(key))
            line, column = key_node.start_mark.line + 1, key_node.start_mark.column + 1
            if key in out:
                first = positions[key_path][0]
                problems.append(
                    Problem(
                        f"duplicate key '{key}' (first given on line {first})",
                        file=str(path), line=line, column=column, key=dotted(key_path),
                        fix="keep one of them: YAML would silently use the last",
                    )
                )
                continue
            positions[key_path] = (line, column)
            out[key] = _to_python(value_node, key_path, positions, problems, path)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [
            _to_python(item, (*here, index), positions, problems, path)
            for index, item in enumerate(node.value)
        ]
    return _scalar(node)


def _scalar(node: yaml.Node) -> Any:
    # a throwaway loader resolves tags (int, float, bool, null, timestamps) like safe_load does
    return yaml.SafeLoader("").construct_object(node, deep=True)
