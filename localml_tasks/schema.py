"""JSON-Schema checks of the endpoint and deployment YAML, as Problems with lines and fixes.

The schemas (shipped in schemas/) describe every key the Azure ML CLI v2 accepts, with Azure's
types, enums and ranges. jsonschema finds the errors; this module words them for people:
unknown keys get a "did you mean", ranges and patterns quote the rule.

Enums the CLI normalises before checking them (azure-ai-ml's StringTransformedEnum: `auth_mode: Key`
is `key`, `AMLToken` is `aml_token`) carry `x-localml-casing` in the schema; `normalise` rewrites
such values in place first, so validation and every later stage see Azure's canonical value.
"""

from __future__ import annotations

import datetime
import difflib
import json
import re
from functools import cache
from importlib import resources
from typing import Any

import jsonschema

from .errors import Problem
from .yamlsource import YamlDocument

_KINDS = {"string": "a string", "integer": "a whole number", "number": "a number", "boolean": "true or false",
          "object": "a mapping", "array": "a list", "null": "nothing"}


CASING = "x-localml-casing"


@cache
def _schema(name: str) -> dict[str, Any]:
    text = resources.files("localml_tasks").joinpath("schemas", f"{name}.schema.json").read_text(encoding="utf-8")
    return json.loads(text)


@cache
def _validator(name: str) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(_schema(name))


# --- enum values as the CLI normalises them -------------------------------------------------------


def camel_to_snake(text: str) -> str:
    """As the CLI turns an enum value to snake_case: AMLToken -> aml_token, Key -> key, TargetUtilization ->
    target_utilization; a comma-separated list part by part (SystemAssigned, UserAssigned)."""
    parts = [part.strip() for part in text.split(",")] if "," in text else [text]
    out = []
    for part in parts:
        part = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", part)  # a capitalised word starts a new word
        part = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", part)  # so does a capital after a small letter or digit
        out.append(part.lower())
    return ",".join(out)


_TRANSFORMS = {"lower": str.lower, "camel_to_snake": camel_to_snake}


def normalise(doc: YamlDocument, schema_name: str) -> None:
    """Rewrite, in place, every enum value the CLI would accept in another letter case to its canonical form
    (the schema's `x-localml-casing` says how). A value that does not normalise to an allowed one is left as
    written, for the schema check to report."""
    root = _schema(schema_name)
    doc.data = _normalised(doc.data, _applying(root, root), root)


def _applying(node: Any, root: dict[str, Any]) -> list[dict[str, Any]]:
    """The schema node and every subschema that also applies to the same value ($ref, allOf/anyOf/oneOf,
    then/else): where a property's rules can be found."""
    if not isinstance(node, dict):
        return []
    found = [node]
    ref = node.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/"):
        target: Any = root
        for part in ref[2:].split("/"):
            target = target.get(part, {}) if isinstance(target, dict) else {}
        found += _applying(target, root)
    for keyword in ("allOf", "anyOf", "oneOf"):
        for sub in node.get(keyword) or []:
            found += _applying(sub, root)
    for keyword in ("then", "else"):
        found += _applying(node.get(keyword), root)
    return found


def _normalised(value: Any, schemas: list[dict[str, Any]], root: dict[str, Any]) -> Any:
    if isinstance(value, str):
        for node in schemas:
            transform = _TRANSFORMS.get(node.get(CASING, ""))
            if transform and isinstance(node.get("enum"), list):
                canonical = transform(value)
                if canonical in node["enum"]:
                    return canonical
        return value
    if isinstance(value, dict):
        for key in list(value):
            children: list[dict[str, Any]] = []
            for node in schemas:
                properties = node.get("properties") or {}
                if str(key) in properties:
                    children += _applying(properties[str(key)], root)
                elif isinstance(node.get("additionalProperties"), dict):
                    children += _applying(node["additionalProperties"], root)
            if children:
                value[key] = _normalised(value[key], children, root)
        return value
    if isinstance(value, list):
        items = [child for node in schemas for child in _applying(node.get("items"), root)]
        if items:
            value[:] = [_normalised(item, items, root) for item in value]
    return value


def check(doc: YamlDocument, schema_name: str) -> list[Problem]:
    """Every schema error of the document, in file order, one Problem each."""
    problems: list[Problem] = []
    for error in _validator(schema_name).iter_errors(doc.data):
        problems.extend(_problems_for(error, doc))
    # "missing 'scoring_script'" beside "unknown key 'scoring_scrpt': did you mean 'scoring_script'?" says
    # the same thing twice: keep the one that points at the typo
    guessed = {(p.key.rsplit(".", 1)[0] if p.key and "." in p.key else "", p.fix.split("'")[1])
               for p in problems if p.fix and p.fix.startswith("did you mean")}
    problems = [p for p in problems if not (
        p.message.startswith("missing required key") and (p.key or "", p.message.split("'")[1]) in guessed)]
    seen: set[tuple] = set()
    unique = []
    for problem in sorted(problems, key=lambda p: (p.line or 0, p.column or 0)):
        # one "expected a ..." per key: if/else branches of a schema repeat the type error
        kind = "type" if problem.message.startswith("expected ") else problem.message
        key = (problem.line, problem.key, kind)
        if key not in seen:
            seen.add(key)
            unique.append(problem)
    return unique


def _problems_for(error: jsonschema.ValidationError, doc: YamlDocument) -> list[Problem]:
    path = tuple(error.absolute_path)
    value = error.instance
    schema = error.schema if isinstance(error.schema, dict) else {}
    rule = error.validator
    if rule == "additionalProperties":
        known = sorted(schema.get("properties", {}))
        extras = [key for key in value if key not in schema.get("properties", {})] if isinstance(value, dict) else []
        out = []
        for key in extras:
            guess = difflib.get_close_matches(str(key), known, n=1, cutoff=0.6)
            fix = f"did you mean '{guess[0]}'?" if guess else f"the keys allowed here: {', '.join(known)}"
            out.append(Problem(f"unknown key '{key}'", fix=fix, **doc.where((*path, str(key)))))
        return out
    if rule == "required":
        missing = error.message.split("'")[1] if "'" in error.message else str(error.validator_value)
        described = schema.get("properties", {}).get(missing, {}).get("description", "")
        hint = f" ({described})" if described else ""
        where = doc.where(path)
        removed_by = doc.override_for((*path, missing))  # unset=... took it away: name that, not a line
        if removed_by:
            where = {**where, "line": None, "column": None, "override": removed_by}
        return [Problem(f"missing required key '{missing}'", fix=f"add {missing}: …{hint}", **where)]
    if rule == "type":
        wanted = error.validator_value if isinstance(error.validator_value, list) else [error.validator_value]
        expected = " or ".join(_KINDS.get(w, w) for w in wanted)
        return [Problem(f"expected {expected}, found {_describe(value)}",
                        fix=_first_sentence(schema.get("description")) or f"give {expected} here", **doc.where(path))]
    if rule == "enum":
        allowed = ", ".join(str(v) for v in error.validator_value)
        fix = f"use one of: {allowed}"
        casing = schema.get(CASING)
        if casing == "lower":
            fix += " (in any letter case, as the CLI takes them)"
        elif casing == "camel_to_snake":
            examples = ", ".join(_camel(str(v)) for v in error.validator_value)
            fix += f" (the CLI also takes them in CamelCase: {examples})"
        return [Problem(f"{value!r} is not allowed here", fix=fix, **doc.where(path))]
    if rule == "const":
        return [Problem(f"{value!r} is not allowed here", fix=f"use {error.validator_value!r}", **doc.where(path))]
    if rule in ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum"):
        word = {"minimum": "below the minimum", "exclusiveMinimum": "not above", "maximum": "above the maximum",
                "exclusiveMaximum": "not below"}[rule]
        bound = "at least" if "inimum" in rule else "at most"
        rule_text = f"use a value {bound} {error.validator_value}"
        described = _first_sentence(schema.get("description"))
        return [Problem(f"{value} is {word} {error.validator_value}",
                        fix=f"{rule_text} ({described.rstrip('.')})" if described else rule_text, **doc.where(path))]
    if rule in ("pattern", "minLength", "maxLength", "format"):
        fix = _first_sentence(schema.get("description"), whole=True) or f"it must match {error.validator_value}"
        return [Problem(f"{value!r} is not valid here", fix=fix, **doc.where(path))]
    if rule in ("minProperties", "maxProperties", "minItems", "maxItems"):
        return [Problem(error.message, fix=_first_sentence(schema.get("description")) or "see Azure's YAML reference",
                        **doc.where(path))]
    if rule == "not":
        return [Problem(f"'{path[-1] if path else 'this'}' cannot be combined with the other keys given here",
                        fix="remove it or the key it excludes (an environment has image or build, not both)",
                        **doc.where(path))]
    if rule in ("oneOf", "anyOf") and error.context:
        best = jsonschema.exceptions.best_match(error.context)
        return _problems_for(best, doc)
    return [Problem(error.message, fix=_first_sentence(schema.get("description")) or "see Azure's YAML reference",
                    **doc.where(path))]


def _camel(snake: str) -> str:
    """aml_token -> AmlToken: a CamelCase spelling the CLI turns back into the snake_case value."""
    return ",".join("".join(word.capitalize() for word in part.split("_")) for part in snake.split(","))


def _describe(value: Any) -> str:
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if value is None:
        return "nothing (an empty value)"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, int | float):
        return f"the number {value}"
    if isinstance(value, datetime.date):  # YAML reads 2024-01-31 as a date: quoted, it stays text
        return f"the date {value.isoformat()} (quote it to keep it as text)"
    return f"the string {value!r}"


def _first_sentence(text: str | None, whole: bool = False) -> str | None:
    if not text:
        return None
    if whole:
        return text
    head = re.split(r"(?<!e\.g)(?<!i\.e)\.\s", text, maxsplit=1)[0].rstrip(".")
    return head + "."
