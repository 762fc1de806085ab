"""YAML loading that remembers where every key came from, so errors can name a line."""

from __future__ import annotations

import copy
import stat
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


MAX_VALUES = 100_000  # values one file may expand to, an alias's counted each time it is used
MAX_DEPTH = 100  # nesting of values (Azure ML files nest fewer than 10 deep)
MERGE_TAG = "tag:yaml.org,2002:merge"  # `<<: *base`
_MAP_TAG, _SEQ_TAG = "tag:yaml.org,2002:map", "tag:yaml.org,2002:seq"
_KINDS = {"tag:yaml.org,2002:int": "whole number", "tag:yaml.org,2002:float": "number",
          "tag:yaml.org,2002:timestamp": "date", "tag:yaml.org,2002:bool": "true or false",
          "tag:yaml.org,2002:binary": "base64 value", "tag:yaml.org,2002:null": "null"}


# each file parsed once per command, however many stages read it: (path, mtime, size, inode) -> what it gave
_PARSED: dict[tuple[str, int, int, int], tuple[Any, dict[KeyPath, tuple[int, int]]] | LocalmlError] = {}


def load_yaml(path: Path) -> YamlDocument:
    """Parse one YAML file; syntax errors, duplicate keys and hostile shapes (alias bombs, recursive aliases,
    runaway nesting, complex keys, binary files) become Problems with lines, and never take long.

    A file is parsed once per process while it stays as it is (the same path, time, size and inode): each
    caller gets its own copy of the data, to override and check as it likes."""
    key = _identity(path)
    if key is None:
        return _parse(path)  # no such file, or not readable: _read says which
    if key not in _PARSED:
        try:
            parsed = _parse(path)
            _PARSED[key] = (parsed.data, parsed.positions)
        except LocalmlError as exc:
            _PARSED[key] = exc
    result = _PARSED[key]
    if isinstance(result, LocalmlError):
        raise result
    return YamlDocument(path=path, data=copy.deepcopy(result[0]), positions=dict(result[1]))


def _identity(path: Path) -> tuple[str, int, int, int] | None:
    try:
        info = path.stat()
    except OSError:
        return None
    return str(path.resolve()), info.st_mtime_ns, info.st_size, info.st_ino


def _parse(path: Path) -> YamlDocument:
    text = _read(path)
    node = _compose(path, text)
    converter = _Converter(path)
    try:
        if node is not None:
            _Measure(path).check(node)
        data = converter.value(node, ()) if node is not None else None
    except RecursionError:
        raise LocalmlError.one(f"nested too deeply to read (more than {MAX_DEPTH} levels)", file=str(path),
                               fix="flatten it: Azure ML files nest a few levels deep") from None
    if converter.problems:
        raise LocalmlError(converter.problems)
    return YamlDocument(path=path, data=data, positions=converter.positions)


def _read(path: Path) -> str:
    """The file's text (UTF-8, newlines as Python's text mode reads them); one Problem for what is no YAML text."""
    try:
        info = path.stat()
        if stat.S_ISDIR(info.st_mode):
            raise LocalmlError.one("is a folder, not a YAML file", file=str(path),
                                   fix="give the path of the YAML file itself")
        if not stat.S_ISREG(info.st_mode):
            raise LocalmlError.one("is not a regular file (a device, a pipe or a socket)", file=str(path),
                                   fix="give the path of a YAML file")
        raw = path.read_bytes()
    except FileNotFoundError:
        raise LocalmlError.one("file not found", file=str(path), fix="check the path") from None
    except PermissionError:
        raise LocalmlError.one("cannot read: permission denied", file=str(path),
                               fix=f"make it readable: chmod u+r {path}") from None
    except OSError as exc:
        raise LocalmlError.one(f"cannot read: {exc.strerror or exc}", file=str(path),
                               fix="check the file and the disk it is on") from None
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise LocalmlError.one("UTF-16 text, not UTF-8", file=str(path), line=1, column=1,
                               fix="save the file as UTF-8 (YAML files are UTF-8, as Azure ML reads them)")
    if b"\0" in raw:
        line, column = _line_and_column(raw, raw.index(b"\0"))
        raise LocalmlError.one("a binary file, not YAML text (it holds NUL bytes)", file=str(path), line=line,
                               column=column, fix="give the path of the YAML file: is this the right file?")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line, column = _line_and_column(raw, exc.start)
        raise LocalmlError.one(
            f"not UTF-8 text: the byte 0x{raw[exc.start]:02x} cannot be read",
            file=str(path), line=line, column=column,
            fix="save the file as UTF-8 (YAML files are UTF-8, as Azure ML reads them)") from None
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _line_and_column(raw: bytes | str, index: int) -> tuple[int, int]:
    newline = b"\n" if isinstance(raw, bytes) else "\n"
    return raw.count(newline, 0, index) + 1, index - (raw.rfind(newline, 0, index) + 1) + 1


def _compose(path: Path, text: str) -> yaml.Node | None:
    """The node tree, as yaml.compose makes it (aliases kept as _Alias), or one Problem at the line."""
    loader = None
    try:
        loader = _Composer(text, path)  # the reader checks every character here
        return loader.get_single_node()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        what = exc.problem or exc.context
        if exc.context_mark and mark and mark.index >= len(text.rstrip()):
            # "unexpected end of stream": the line that opened the unclosed thing helps more
            mark, what = exc.context_mark, f"{what} ({exc.context} opened here)"
        hint = "YAML indents with spaces only" if "\t" in text else "check the indentation and quoting here"
        if exc.context == "expected a single document in the stream":
            what, hint = "a second document (after ---)", "keep one document in the file: remove the --- line " \
                "and what follows, or move it to a file of its own"
        raise LocalmlError.one(
            f"not valid YAML: {what}",
            file=str(path),
            line=mark.line + 1 if mark else None,
            column=mark.column + 1 if mark else None,
            fix=hint,
        ) from None
    except yaml.reader.ReaderError as exc:  # a control character: str input has no other reader errors
        line, column = _line_and_column(text, exc.position)
        raise LocalmlError.one(f"not valid YAML: the control character #x{exc.character:04x} is not allowed",
                               file=str(path), line=line, column=column,
                               fix="remove it (or write it as an escape in a double-quoted string: \"\\x..\")",
                               ) from None
    except RecursionError:
        raise LocalmlError.one(f"nested too deeply to read (more than {MAX_DEPTH} levels)", file=str(path),
                               fix="flatten it: Azure ML files nest a few levels deep") from None
    finally:
        if loader is not None:
            loader.dispose()


class _Alias:
    """One use of an alias (*name): the node its anchor (&name) names, and where the alias itself is written."""

    __slots__ = ("anchor", "node", "start_mark")

    def __init__(self, anchor: str, node: yaml.Node, start_mark: yaml.Mark) -> None:
        self.anchor, self.node, self.start_mark = anchor, node, start_mark


class _Composer(yaml.SafeLoader):
    """SafeLoader's composer, keeping where each alias is used (keep_aliases), and refusing nesting deeper than
    MAX_DEPTH with a line (long before Python's recursion limit would stop it with a RecursionError)."""

    keep_aliases = True

    def __init__(self, text: str, path: Path | None) -> None:
        super().__init__(text)
        self.path = path
        self.depth = 0

    def fetch_flow_collection_start(self, token_class: Any) -> None:
        # the scanner looks ahead across open '[' and '{' (in time that grows as their square): stop early
        if self.flow_level >= MAX_DEPTH:
            raise LocalmlError.one(f"nested more than {MAX_DEPTH} levels deep", file=str(self.path or ""),
                                   line=self.line + 1, column=self.column + 1,
                                   fix="flatten it: Azure ML files nest a few levels deep (an unclosed '[' or '{'?)")
        super().fetch_flow_collection_start(token_class)

    def compose_node(self, parent: yaml.Node | None, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent) and self.keep_aliases:
            event = self.peek_event()
            return _Alias(event.anchor, super().compose_node(parent, index), event.start_mark)
        if self.depth >= MAX_DEPTH:
            mark = self.peek_event().start_mark
            raise LocalmlError.one(f"nested more than {MAX_DEPTH} levels deep", file=str(self.path or ""),
                                   line=mark.line + 1, column=mark.column + 1,
                                   fix="flatten it: Azure ML files nest a few levels deep (an unclosed '[' or '{'?)")
        self.depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


class _SafeLoader(_Composer):
    """yaml.safe_load's loader, bounded like load_yaml (nesting), for a quick look that needs no lines."""

    keep_aliases = False


def peek_yaml(path: Path) -> Any:
    """The file as yaml.safe_load reads it (duplicate keys allowed, aliases shared, not expanded), without its
    hazards: nesting is bounded, so this is fast on any input, and only regular files are read. Raises
    LocalmlError, ValueError (a date like 2001-13-45) or yaml.YAMLError.

    A file that load_yaml reads without a problem is not parsed a second time: its data is the same."""
    try:
        return load_yaml(path).data
    except LocalmlError:
        pass  # duplicate keys and the like, which safe_load lets through (validation reports them)
    return safe_load(_read(path), path)


def safe_load(text: str, path: Path | None = None) -> Any:
    """yaml.safe_load with load_yaml's bound on nesting (a LocalmlError beyond it): fast on any input."""
    loader = _SafeLoader(text, path)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


class _Measure:
    """Before anything is built: how many values the tree expands to and how deep it nests, each node counted
    once (an alias adds what its anchor's node counted), so an alias bomb, a recursive alias or nesting through
    aliases is refused at the alias that goes over, in a few milliseconds."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.done: dict[int, tuple[int, int]] = {}  # id(node) -> (values, levels below it)
        self.open: set[int] = set()  # collections being measured: an alias to one of them never ends

    def check(self, node: yaml.Node) -> None:
        if not isinstance(node, yaml.ScalarNode):
            self.measure(node, (), 1)

    def measure(self, node: yaml.Node, here: KeyPath, level: int) -> tuple[int, int]:
        """(values, levels below it) of a collection node. Anchors come before their aliases in the file, so an
        alias names a node measured already, or one still open (recursive): this recursion is as deep as the
        file's own nesting, which the composer kept within MAX_DEPTH."""
        if id(node) in self.done:
            return self.done[id(node)]
        self.open.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            children = [((*here, index), item) for index, item in enumerate(node.value)]
        else:
            children = []
            for key_node, value_node in node.value:
                name = key_node.value if isinstance(key_node, yaml.ScalarNode) else "?"
                children += [(here, key_node), ((*here, str(name)), value_node)]
        values, levels = 1, 0
        for where, child in children:
            target = child.node if isinstance(child, _Alias) else child
            if isinstance(child, _Alias) and id(target) in self.open:
                raise LocalmlError.one(
                    f"the alias *{child.anchor} is inside the value its anchor &{child.anchor} names: "
                    "a recursive alias never ends", **self.where(child, where),
                    fix=f"remove the self-reference *{child.anchor} (or point it at another anchor)")
            size, below = (1, 0) if isinstance(target, yaml.ScalarNode) else self.measure(target, where, level + 1)
            values, levels = values + size, max(levels, below + 1)
            if isinstance(child, _Alias) and level + levels > MAX_DEPTH:
                raise LocalmlError.one(f"the alias *{child.anchor} nests values more than {MAX_DEPTH} levels deep",
                                       **self.where(child, where),
                                       fix="flatten it: Azure ML files nest a few levels deep")
            if values > MAX_VALUES:
                through = f" (with *{child.anchor} here)" if isinstance(child, _Alias) else ""
                raise LocalmlError.one(
                    f"the YAML expands its aliases to more than {MAX_VALUES:,} values{through}: an alias bomb?",
                    **self.where(child, where),
                    fix="write the values out, without aliases of aliases; localml reads no file that large")
            if level + levels > MAX_DEPTH:
                raise LocalmlError.one(f"the aliases nest values more than {MAX_DEPTH} levels deep",
                                       **self.where(child, where),
                                       fix="flatten it: Azure ML files nest a few levels deep")
        self.open.discard(id(node))
        self.done[id(node)] = (values, levels)
        return values, levels

    def where(self, node: yaml.Node | _Alias, here: KeyPath) -> dict[str, Any]:
        mark = node.start_mark
        return {"file": str(self.path), "line": mark.line + 1, "column": mark.column + 1, "key": dotted(here) or None}


class _Converter:
    """The node tree (measured by _Measure: bounded) as plain Python data, and the position of each key path."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.positions: dict[KeyPath, tuple[int, int]] = {}
        self.problems: list[Problem] = []
        self.constructor = yaml.SafeLoader("")  # resolves scalars (int, float, bool, null, dates) as safe_load does
        self.scalars: dict[int, Any] = {}  # id(node) -> its value: a scalar an alias repeats is read once

    def where(self, mark: yaml.Mark, here: KeyPath) -> dict[str, Any]:
        return {"file": str(self.path), "line": mark.line + 1, "column": mark.column + 1, "key": dotted(here) or None}

    def value(self, node: yaml.Node | _Alias, here: KeyPath) -> Any:
        self.positions.setdefault(here, (node.start_mark.line + 1, node.start_mark.column + 1))
        if isinstance(node, _Alias):
            node = node.node
        if isinstance(node, yaml.ScalarNode):
            return self.scalar(node, here)
        if node.tag not in (_MAP_TAG, _SEQ_TAG):  # !!set, !!omap, !!python/object/apply:... or one of your own
            if id(node) not in self.scalars:
                self.scalars[id(node)] = None  # reported once, however often an alias repeats it
                self.problems.append(self.unknown_tag(node, here))
            return None
        if isinstance(node, yaml.MappingNode):
            return self.mapping(node, here)
        return [self.value(item, (*here, index)) for index, item in enumerate(node.value)]

    def unknown_tag(self, node: yaml.Node, here: KeyPath) -> Problem:
        return Problem(f"unknown YAML tag {node.tag.replace('tag:yaml.org,2002:', '!!')}",
                       **self.where(node.start_mark, here),
                       fix="remove the tag: localml reads plain YAML values (strings, numbers, true/false, lists, "
                           "mappings), as Azure ML does")

    def mapping(self, node: yaml.MappingNode, here: KeyPath) -> dict[Any, Any]:
        out: dict[Any, Any] = {}
        merges = []
        for key_node, value_node in node.value:
            key_target = key_node.node if isinstance(key_node, _Alias) else key_node
            line, column = key_node.start_mark.line + 1, key_node.start_mark.column + 1
            if not isinstance(key_target, yaml.ScalarNode):
                found = "list" if isinstance(key_target, yaml.SequenceNode) else "mapping"
                self.problems.append(Problem(
                    f"a key must be a plain value such as a name, found a {found}",
                    **self.where(key_node.start_mark, here),
                    fix="write the key as a name (`name: value`); Azure ML files use no complex keys (`? [a, b]`)"))
                continue
            if key_target.tag == MERGE_TAG:
                merges.append(value_node)
                continue
            key = self.scalar(key_target, here)
            if not isinstance(key, str):
                # Azure ML reads every key as a string (its schemas refuse others), and so does localml
                self.problems.append(Problem(
                    f"the key {key_target.value or '(empty)'} is not text: "
                    f"YAML reads it as {_describe(key, key_target.value)}",
                    **self.where(key_node.start_mark, here),
                    fix=f'quote it to make it text: "{key_target.value}": ...' if key_target.value else
                    "give the key a name: `name: value`"))
                continue
            key_path = (*here, key)
            if key in out:
                first = self.positions.get(key_path, (line, column))[0]
                self.problems.append(
                    Problem(
                        f"duplicate key '{key}' (first given on line {first})",
                        file=str(self.path), line=line, column=column, key=dotted(key_path),
                        fix="keep one of them: YAML would silently use the last",
                    )
                )
                continue
            self.positions[key_path] = (line, column)
            out[key] = self.value(value_node, key_path)
        for value_node in merges:
            self.merge(out, value_node, here)
        return out

    def merge(self, out: dict[Any, Any], value_node: yaml.Node | _Alias, here: KeyPath) -> None:
        """`<<: *base` (or `<<: [*a, *b]`): the keys of the mappings named that this mapping does not give itself,
        the first mapping winning, as safe_load merges them."""
        target = value_node.node if isinstance(value_node, _Alias) else value_node
        sources = target.value if isinstance(target, yaml.SequenceNode) else [value_node]
        for source in sources:
            if not isinstance(source.node if isinstance(source, _Alias) else source, yaml.MappingNode):
                self.problems.append(Problem("`<<` merges mappings into this one, found something else",
                                             **self.where(source.start_mark, here),
                                             fix="give `<<:` an alias of a mapping (`<<: *base`), or a list of them"))
                continue
            outer, self.positions = self.positions, {}
            try:
                merged = self.value(source, here)
            finally:
                inner, self.positions = self.positions, outer
            if not isinstance(merged, dict):  # a tagged mapping: reported as such
                continue
            added = {str(key) for key in merged if key not in out}
            out.update({key: value for key, value in merged.items() if key not in out})
            for key_path, position in inner.items():
                if len(key_path) > len(here) and key_path[len(here)] in added:
                    self.positions.setdefault(key_path, position)

    def scalar(self, node: yaml.ScalarNode, here: KeyPath) -> Any:
        if id(node) in self.scalars:
            return self.scalars[id(node)]
        try:
            value = self.scalars[id(node)] = self.constructor.construct_object(node, deep=True)
            return value
        except (yaml.YAMLError, ValueError, TypeError, AttributeError, OverflowError) as exc:
            if isinstance(exc, yaml.constructor.ConstructorError) and "constructor for the tag" in str(exc.problem):
                self.problems.append(self.unknown_tag(node, here))
            else:
                kind = _KINDS.get(node.tag, node.tag)
                self.problems.append(Problem(f"cannot read {node.value!r} as a {kind}: {exc}",
                                             **self.where(node.start_mark, here),
                                             fix=f"write a valid {kind}, or quote it to keep it as text: "
                                                 f"\"{node.value}\""))
            self.scalars[id(node)] = node.value  # reported once, however often an alias repeats it
            return node.value
        finally:
            self.constructor.constructed_objects.clear()
            self.constructor.recursive_objects.clear()


def _describe(value: Any, text: str) -> str:
    if isinstance(value, bool):
        return str(value).lower() + ("" if text.lower() in ("true", "false") else " (YAML 1.1: yes/no/on/off)")
    if value is None:
        return "null"
    if isinstance(value, int | float):
        return f"the number {value}"
    return {"date": "a date", "datetime": "a date and time", "bytes": "binary data"}.get(
        type(value).__name__, type(value).__name__)
