"""Stage 1 — validate the deployment YAML (and its endpoint YAML) and resolve it to one record.

Everything later reads the resolved record, never the YAML: paths are absolute, numbers in
environment_variables are strings (as Azure coerces them), enum values are in the letter case
Azure normalises them to (`auth_mode: Key` -> key), and every problem found here has the file,
line and key that caused it. Keys Azure accepts that change nothing locally are accepted, each
with one note the validate stage prints (Deployment.notes).
"""

from __future__ import annotations

import ast
import io
import os
import re
import time
import tokenize
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from . import filecheck, mlflow_model, quantities, schema
from . import overrides as overrides_stage
from .config import load_project_config
from .environment import resolve_environment
from .errors import LocalmlError, Problem
from .overrides import DEPLOYMENT, ENDPOINT, Override
from .server import SKIPPED_DIRS
from .yamlsource import YamlDocument, dotted, load_yaml, peek_yaml

ENDPOINT_FILE_NAMES = ("endpoint.yml", "endpoint.yaml")
# never a code folder, a model or a build context (each also as it resolves: /bin -> /usr/bin); the file
# system's root, the home folder and every folder above it are refused too (system_folder)
SYSTEM_FOLDERS = ("/bin", "/boot", "/dev", "/etc", "/home", "/lib", "/lib32", "/lib64", "/libx32", "/media", "/mnt",
                  "/opt", "/proc", "/root", "/run", "/sbin", "/snap", "/srv", "/sys", "/tmp", "/usr", "/usr/bin",
                  "/usr/lib", "/usr/local", "/usr/sbin", "/usr/share", "/var", "/var/lib", "/var/log", "/var/tmp",
                  "/Applications", "/Library", "/System", "/Users", "/Volumes", "/private", "/private/etc",
                  "/private/tmp", "/private/var")


@dataclass
class Probe:
    initial_delay: int = 10
    period: int = 10
    timeout: int = 2
    success_threshold: int = 1
    failure_threshold: int = 30


@dataclass
class Deployment:
    """A deployment resolved from YAML: what every later stage needs, nothing more."""

    spec_path: str
    endpoint_name: str
    deployment_name: str
    endpoint_path: str | None
    code_dir: str
    scoring_script: str  # relative to code_dir, posix separators
    model_path: str | None
    model_name: str
    model_version: str
    conda_file: str | None
    image: str | None
    environment_variables: dict[str, str]
    build_context: str | None = None  # environment.build.path, resolved
    dockerfile_path: str | None = None  # relative to build_context
    readiness_probe: Probe = field(default_factory=Probe)
    liveness_probe: Probe = field(default_factory=Probe)
    request_timeout_ms: int = 5000
    max_concurrent_requests: int = 1  # request_settings.max_concurrent_requests_per_instance
    # custom container (environment.inference_config): the image serves its own routes, as-is
    inference_config: dict[str, Any] | None = None  # {liveness_route|readiness_route|scoring_route: {path, port}}
    model_mount_path: str | None = None
    endpoint_data: dict[str, Any] = field(default_factory=dict)
    deployment_data: dict[str, Any] = field(default_factory=dict)
    # resources.limits of a Kubernetes deployment, as Docker applies them (None: no limit)
    memory_limit: int | None = None  # bytes
    cpu_limit: float | None = None  # cores
    # one line each, shown by the validate stage: keys Azure accepts that have no local effect, and the like
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Deployment:
        """The record the validate stage wrote (deployment.json). Keys it does not know (an older localml's)
        are left out; a record that lacks one, or is no record, is refused with what to run."""
        known = {item.name for item in fields(cls)}
        try:
            data = {key: value for key, value in data.items() if key in known}
            data["readiness_probe"] = Probe(**data.get("readiness_probe", {}))
            data["liveness_probe"] = Probe(**data.get("liveness_probe", {}))
            return cls(**data)
        except (TypeError, AttributeError) as exc:
            raise LocalmlError.one(f"the deployment's validated record (deployment.json) is incomplete: {exc}",
                                   fix="run doit validate (or doit debug) with spec=... again: it writes the "
                                       "record anew") from None


def peek_names(spec_path: Path, overrides: Sequence[Override] = ()) -> tuple[str, str]:
    """Best-effort (endpoint, deployment) names at task-load time, overrides included; never raises."""
    endpoint, name, named_here = _peek_file_names(spec_path)
    for override in overrides:  # in order: the last one wins, as when they are applied
        if override.remove and override.target == DEPLOYMENT and override.path == ("endpoint_name",):
            endpoint, named_here = _endpoint_name_beside(spec_path) or "endpoint", False  # unset=endpoint_name
        if override.remove or not isinstance(override.value, str):
            continue
        if override.target == DEPLOYMENT and override.path == ("name",):
            name = override.value
        elif override.target == DEPLOYMENT and override.path == ("endpoint_name",):
            endpoint, named_here = override.value, True
        elif override.target == ENDPOINT and override.path == ("name",) and not named_here:
            endpoint = override.value  # endpoint_set=name=...: the endpoint's name, when the deployment names none
    return endpoint, name


def name_rule(kind: str) -> tuple[str, str]:
    """(regular expression, the rule in words) of an endpoint's or deployment's name, from our schemas."""
    node = schema._schema(kind)["properties"]["name"]
    words = re.search(r"\d+-\d+ characters[^(.]*", node["description"])
    return node["pattern"], words.group(0).strip() if words else f"matches {node['pattern']}"


def check_names(spec_path: Path, endpoint: str, deployment: str, given: overrides_stage.Overrides) -> None:
    """Refuse, before any path is built of them, names that break Azure's naming rule (they become folders
    under .localml/: `endpoint_name=../x` must not reach anywhere else). One error names where each came from."""
    problems = []
    for kind, value, variable in (("endpoint", endpoint, "endpoint_name"), ("deployment", deployment, "deployment")):
        pattern, rule = name_rule(kind)
        if re.fullmatch(pattern, value):
            continue
        from_command_line = getattr(given, variable) == value
        file, line = (None, None) if from_command_line else _where_named(spec_path, kind)
        problems.append(Problem(
            f"the {kind} name {value!r} is not valid: {rule} (Azure's rule for {kind} names; "
            "localml keeps its state in a folder of that name)",
            override=f"{variable}={value}" if from_command_line else None,
            file=file, line=line,
            fix=f"give a name such as my-{kind}" + ("" if from_command_line else " (or override it: "
                                                      f"{variable}=my-{kind})")))
    if problems:
        raise LocalmlError(problems)


def _where_named(spec_path: Path, kind: str) -> tuple[str, int | None]:
    """(file, line) of the YAML key that gives the name: the deployment's `name:` (or `endpoint_name:`), else
    the endpoint file's `name:`; no line when the name came from the file's name."""
    key = "name" if kind == "deployment" else "endpoint_name"
    candidates = [(spec_path, key)]
    if kind == "endpoint":
        candidates += [(spec_path.parent / name, "name") for name in ENDPOINT_FILE_NAMES]
    for path, wanted in candidates:
        try:
            lines = path.read_text(encoding="utf-8").splitlines() if path.is_file() else []
        except (OSError, UnicodeDecodeError):
            continue
        for number, text in enumerate(lines, start=1):
            if re.match(rf"^{wanted}\s*:", text):
                return str(path), number
    return str(spec_path), None


# what a quick look at a YAML file may raise (LocalmlError, yaml.YAMLError, ValueError for 2001-13-45, the
# AttributeError of `!!timestamp x`...): the look is best-effort, validation reports the file's problems with lines
_UNREADABLE = Exception


def _peek_file_names(spec_path: Path) -> tuple[str, str, bool]:
    """(endpoint, deployment, whether the deployment YAML names its endpoint itself)."""
    fallback = spec_path.stem.removesuffix("-deployment") or "deployment"
    try:
        data = peek_yaml(spec_path)
    except _UNREADABLE:
        return "endpoint", fallback, False
    if not isinstance(data, dict):
        return "endpoint", fallback, False
    name = data.get("name") if isinstance(data.get("name"), str) else fallback
    endpoint = data.get("endpoint_name")
    if isinstance(endpoint, str):
        return endpoint, name, True
    return _endpoint_name_beside(spec_path) or "endpoint", name, False


def _endpoint_name_beside(spec_path: Path) -> str | None:
    for candidate in ENDPOINT_FILE_NAMES:
        path = spec_path.parent / candidate
        if path.exists():
            try:
                data = peek_yaml(path)
            except _UNREADABLE:
                return None
            if isinstance(data, dict) and isinstance(data.get("name"), str):
                return data["name"]
    return None


def load_deployment(spec_path: Path, endpoint_path: Path | None = None,
                    overrides: Sequence[Override] = ()) -> Deployment:
    """Read, apply the command-line overrides, check and resolve. Raises LocalmlError listing every problem found."""
    spec_path = spec_path.resolve()
    doc = load_yaml(spec_path)
    checker = _Checker(doc)
    data = doc.data
    if data is None:
        raise LocalmlError.one("the file is empty", file=str(spec_path),
                               fix="write a CLI v2 deployment: name, model, code_configuration, environment")
    if not isinstance(data, dict):
        raise LocalmlError.one(
            f"expected a mapping of keys (name:, model:, ...), found a {_kind(data)}",
            **doc.where(()), fix="a deployment YAML is a mapping at the top level",
        )
    # the overridden YAML is checked exactly like the file (the checker reads this same dict)
    endpoint_doc = _load_endpoint(spec_path, endpoint_path)
    notes, override_problems = _apply_overrides(doc, endpoint_doc, overrides)
    if override_problems:
        raise LocalmlError(override_problems)
    # enum values in a letter case the CLI normalises (auth_mode: Key) become Azure's own (key), for every stage
    schema.normalise(doc, "deployment")
    if endpoint_doc:
        schema.normalise(endpoint_doc, "endpoint")
    endpoint_data = endpoint_doc.data if endpoint_doc else {}
    schema_problems = schema.check(doc, "deployment")
    endpoint_problems = schema.check(endpoint_doc, "endpoint") if endpoint_doc else []
    # one endpoint_name= override, one message: the deployment's endpoint_name already tells what is wrong
    endpoint_problems = [p for p in endpoint_problems if not (p.override and p.key == "name")]

    name = checker.required_str(("name",))
    endpoint_name = data.get("endpoint_name") or (endpoint_data or {}).get("name")
    if not endpoint_name:
        checker.problem(("endpoint_name",), "no endpoint name",
                        "add endpoint_name: <name> here, or put endpoint.yml beside this file")
    elif endpoint_doc and endpoint_data.get("name") and data.get("endpoint_name") \
            and endpoint_data["name"] != data["endpoint_name"]:
        checker.problem(("endpoint_name",),
                        f"'{data['endpoint_name']}' does not match the endpoint's name "
                        f"'{endpoint_data['name']}' in {endpoint_doc.path.name}",
                        "use the same name in both files")

    # a no-code MLflow deployment (mlflow_model.py): localml writes its scoring script and environment
    no_code = mlflow_model.is_no_code(data)
    code_dir, scoring_script = (None, "") if no_code else checker.code_configuration()
    model_path, model_name, model_version = checker.model(name or "model")
    conda_file, image = (None, None) if no_code else checker.environment()
    mlflow = checker.mlflow_model(model_path) if no_code and model_path else None
    env_vars = checker.environment_variables()
    probe = checker.probe(("readiness_probe",))
    liveness = checker.probe(("liveness_probe",))
    timeout_ms = checker.request_timeout_ms()
    concurrency = checker.max_concurrent_requests()
    memory_limit, cpu_limit = checker.resources()
    checker.traffic(endpoint_doc)
    notes += checker.local_effects(endpoint_doc)
    notes += checker.path_notes  # a code folder or model too large to hash

    # the schema's word on a key wins; the semantic checks add what it cannot know (files, code)
    reported = _keys_named(schema_problems)
    semantic = [p for p in checker.problems if p.file != str(spec_path) or not _under_any(p.key, reported)]
    problems = endpoint_problems + schema_problems + semantic
    if problems:
        raise LocalmlError(problems)
    if mlflow is not None:
        # the project's localml.yml, as the image stages read it (the working directory's)
        generated = mlflow_model.generate(mlflow, str(endpoint_name), str(name),
                                          load_project_config().no_code_base_image)
        code_dir, scoring_script = generated.code_dir, generated.scoring_script
        conda_file, image = generated.conda_file, generated.image
        notes = [*generated.notes, *notes]
    return Deployment(
        spec_path=str(spec_path),
        endpoint_name=str(endpoint_name),
        deployment_name=str(name),
        endpoint_path=str(endpoint_doc.path) if endpoint_doc else None,
        code_dir=str(code_dir) if code_dir else "",
        scoring_script=str(scoring_script),
        model_path=str(model_path) if model_path else None,
        model_name=model_name,
        model_version=model_version,
        conda_file=str(conda_file) if conda_file else None,
        image=image,
        environment_variables=env_vars,
        build_context=checker.build_context,
        dockerfile_path=checker.dockerfile_path,
        readiness_probe=probe,
        liveness_probe=liveness,
        request_timeout_ms=timeout_ms,
        max_concurrent_requests=concurrency,
        inference_config=checker.inference_config,
        model_mount_path=checker.model_mount_path,
        endpoint_data=endpoint_data or {},
        deployment_data=data,
        memory_limit=memory_limit,
        cpu_limit=cpu_limit,
        notes=notes,
    )


def _apply_overrides(doc: YamlDocument, endpoint_doc: YamlDocument | None,
                     overrides: Sequence[Override]) -> tuple[list[str], list[Problem]]:
    """set=/unset= on the deployment YAML, endpoint_set=/endpoint_unset= on the endpoint YAML, then the named
    overrides: (notes to show, every problem of every override)."""
    notes: list[str] = []
    problems: list[Problem] = []
    for target, document in ((DEPLOYMENT, doc), (ENDPOINT, endpoint_doc)):
        chosen = [o for o in overrides if o.target == target]
        if not chosen:
            continue
        if document is None:
            problems += [Problem("there is no endpoint YAML to change", override=o.label,
                                 fix="put endpoint.yml beside the deployment YAML, or name one with endpoint=<file>")
                         for o in chosen]
            continue
        try:
            notes += overrides_stage.apply(document, chosen)
        except LocalmlError as exc:
            problems += exc.problems
    renamed = [o for o in overrides if o.target == DEPLOYMENT and not o.remove and o.path == ("endpoint_name",)
               and isinstance(o.value, str)]
    if endpoint_doc and renamed and not problems:
        # a command-line endpoint name names the endpoint too, as `az ml online-endpoint create --name` would
        overrides_stage.apply(endpoint_doc, [Override(renamed[-1].label, ("name",), renamed[-1].value, ENDPOINT)])
    return notes, problems


def _keys_named(problems: list[Problem]) -> set[str]:
    """Key paths a schema problem is about: its own, a missing key's, a "did you mean" key's."""
    keys: set[str] = set()
    for problem in problems:
        parent = problem.key or ""
        if problem.key:
            keys.add(problem.key)
        named = None
        if problem.message.startswith("missing required key '"):
            named = problem.message.split("'")[1]
        elif problem.fix and problem.fix.startswith("did you mean '"):
            parent = parent.rsplit(".", 1)[0] if "." in parent else ""
            named = problem.fix.split("'")[1]
        if named:
            keys.add(f"{parent}.{named}" if parent else named)
    return keys


def _under_any(key: str | None, reported: set[str]) -> bool:
    if not key:
        return False
    return any(key == r or key.startswith(r + ".") or key.startswith(r + "[") or r.startswith(key + ".")
               for r in reported)


def _load_endpoint(spec_path: Path, endpoint_path: Path | None) -> YamlDocument | None:
    if endpoint_path is None:
        found = [spec_path.parent / n for n in ENDPOINT_FILE_NAMES if (spec_path.parent / n).exists()]
        if not found:
            return None
        endpoint_path = found[0]
    doc = load_yaml(endpoint_path.resolve())
    if doc.data is None:
        doc.data = {}
    if not isinstance(doc.data, dict):
        raise LocalmlError.one(f"expected a mapping, found a {_kind(doc.data)}", **doc.where(()),
                               fix="an endpoint YAML is a mapping: name:, auth_mode:, ...")
    return doc


DOCKER_MIN_MEMORY = 6 * 1024 * 1024  # Docker refuses a smaller memory limit
DOCKER_MIN_CPU = 0.01  # the smallest CPU share Docker applies (--cpus)


MODEL_FIX = "point model.path at your model file or the folder holding it, e.g. path: ./model"


def system_folder(path: Path) -> str | None:
    """Why a resolved path must not be a code folder, model or build context (None: it may be one)."""
    if path == Path(path.anchor):
        return "the root of the file system"
    try:
        home = Path.home().resolve()
    except (RuntimeError, KeyError, OSError):  # no home folder known
        home = None
    if home is not None and path == home:
        return f"your home folder ({home})"
    if any(path in (Path(folder), Path(folder).resolve()) for folder in SYSTEM_FOLDERS) \
            or re.fullmatch(r"/mnt/[a-z]", path.as_posix()):  # WSL: a whole Windows drive
        return "a system folder"
    if home is not None and home.is_relative_to(path):
        return f"a folder above your home folder ({home})"
    return None


def read_python_source(script: Path) -> str:
    """A Python file's text, decoded as Python decodes it (PEP 263: a `# -*- coding: latin-1 -*-` line, a
    UTF-8 BOM, else UTF-8). Raises LocalmlError at the line that cannot be read."""
    encoding_fix = "save it as UTF-8, or name its encoding on its first line: # -*- coding: latin-1 -*-"
    try:
        data = script.read_bytes()
    except OSError as exc:
        raise LocalmlError.one(f"cannot read the scoring script: {exc.strerror or exc}", file=str(script),
                               fix="check the file and its permissions") from None
    if b"\0" in data:
        raise LocalmlError.one("the scoring script holds NUL bytes: a binary file, not Python source",
                               file=str(script), line=data.count(b"\n", 0, data.index(b"\0")) + 1,
                               fix="scoring_script names the Python file that defines init() and run()")
    try:
        encoding, _ = tokenize.detect_encoding(io.BytesIO(data).readline)
    except SyntaxError as exc:
        if not str(exc.msg).startswith("invalid or missing encoding"):  # an encoding Python does not know
            head = data.split(b"\n", 2)[:2]
            line = next((number for number, text in enumerate(head, 1) if b"coding" in text), 1)
            raise LocalmlError.one(f"the scoring script cannot be read: {exc.msg}", file=str(script), line=line,
                                   fix=encoding_fix) from None
        encoding = "utf-8"  # a first line that is not UTF-8, and no encoding named: the decoding says where
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        name = "UTF-8" if encoding in ("utf-8", "utf-8-sig") else encoding
        raise LocalmlError.one(
            f"the scoring script is not {name} text: the byte 0x{data[exc.start]:02x} cannot be read",
            file=str(script), line=line, column=column, fix=encoding_fix) from None


def _kind(value: Any) -> str:
    return {list: "list", str: "string", int: "number", float: "number", bool: "boolean"}.get(
        type(value), type(value).__name__
    )


class _Checker:
    """Collects problems instead of stopping at the first one."""

    def __init__(self, doc: YamlDocument) -> None:
        self.doc = doc
        self.data: dict[str, Any] = doc.data if isinstance(doc.data, dict) else {}
        self.base = doc.path.parent
        self.problems: list[Problem] = []
        self.build_context: str | None = None
        self.dockerfile_path: str | None = None
        self.inference_config: dict[str, Any] | None = None
        self.model_mount_path: str | None = None
        self.limit_notes: list[str] = []  # what resources.limits does here (resources() finds it)
        self.path_notes: list[str] = []  # code or model files tracked by metadata (watched_folder())

    def problem(self, key: tuple, message: str, fix: str | None = None) -> None:
        if message == "missing":
            message = f"missing required key '{key[-1]}'"
        self.problems.append(Problem(message, fix=fix, **self.doc.where(key)))

    def get(self, key: tuple) -> Any:
        value: Any = self.data
        for part in key:
            if not isinstance(value, dict):
                return None
            value = value.get(part)
        return value

    def required_str(self, key: tuple) -> str | None:
        value = self.get(key)
        if value is None:
            self.problem(key, "missing", f"add {key[-1]}: <value>")
            return None
        if not isinstance(value, str):
            self.problem(key, f"expected a string, found a {_kind(value)}")
            return None
        return value

    def mapping(self, key: tuple) -> dict[str, Any] | None:
        value = self.get(key)
        if value is None:
            return None
        if not isinstance(value, dict):
            self.problem(key, f"expected a mapping, found a {_kind(value)}")
            return None
        return value

    def local_path(self, key: tuple, what: str, *, directory: bool | None = None) -> Path | None:
        value = self.get(key)
        if value is None:
            return None
        if not isinstance(value, str):
            self.problem(key, f"expected a path string, found a {_kind(value)}")
            return None
        if value.startswith("azureml:"):
            where = f"set={dotted(key)}=<local path>"
            self.problem(key, f"'{value}' is a workspace asset, not available locally",
                         f"localml cannot download workspace assets: give a local path for the {what}, "
                         f"in the file or on the command line: {where}")
            return None
        path = (self.base / value).resolve()
        if not path.exists():
            self.problem(key, f"{what} not found: {value} (looked for {path})",
                         f"paths in overrides are relative to the folder of {self.doc.path.name}, as in the file"
                         if self.doc.override_for(key) else "paths are relative to the folder of this YAML file")
            return None
        if directory is True and not path.is_dir():
            self.problem(key, f"{what} must be a folder: {value}")
            return None
        if directory is False and not path.is_file():
            self.problem(key, f"{what} must be a file: {value}")
            return None
        return path

    def watched_folder(self, key: tuple, path: Path | None, what: str, fix: str) -> Path | None:
        """A code folder or model (checked by local_path) that localml may mount and watch: not a system folder,
        at most filecheck.MAX_FILES files; a note when some of its files are too large to hash."""
        if path is None:
            return None
        why = system_folder(path)
        if why:
            mounted = "read-write" if what == "code folder" else "read-only"
            self.problem(key, f"{what} {self._named(key, path)} is {why}: localml would mount it {mounted} into the "
                              "container and watch every file under it", fix)
            return None
        started = time.perf_counter()
        found = filecheck.survey(path, SKIPPED_DIRS)
        if found.too_many:
            self.problem(key, f"{what} {self._named(key, path)} holds more than {filecheck.MAX_FILES:,} files "
                              f"(counting stopped after {time.perf_counter() - started:.1f} s): localml watches "
                              "every one of them for changes", fix)
            return None
        note = found.note(dotted(key))
        if note:
            self.path_notes.append(note)
        return path

    def _named(self, key: tuple, path: Path) -> str:
        """The path as written, and where it leads when that is not the same (a symlink, ..)."""
        given = str(self.get(key))
        return f"{given!r}" if Path(os.path.normpath(self.base / given)) == path else f"{given!r} (resolved: {path})"

    def code_configuration(self) -> tuple[Path | None, str]:
        key = ("code_configuration",)
        if self.get(key) is None:
            if isinstance(self.get(("environment", "inference_config")), dict):
                return None, ""  # a custom container serves itself: no scoring script needed
            self.problem(key, "missing", "add code_configuration: {code: <folder>, scoring_script: score.py}")
            return None, ""
        if self.mapping(key) is None:
            return None, ""
        code = self.watched_folder((*key, "code"), self.local_path((*key, "code"), "code folder", directory=True),
                                   "code folder", "point code at the folder holding your scoring script "
                                   "(and the modules it imports), e.g. code: ./onlinescoring")
        if self.get((*key, "code")) is None:
            self.problem((*key, "code"), "missing", "add code: <folder holding the scoring script>")
        script = self.get((*key, "scoring_script"))
        if script is None:
            self.problem((*key, "scoring_script"), "missing", "add scoring_script: score.py")
            return code, ""
        if not isinstance(script, str):
            self.problem((*key, "scoring_script"), f"expected a string, found a {_kind(script)}")
            return code, ""
        if code is None:
            return None, script
        script_path = (code / script).resolve()
        if not script_path.is_file():
            self.problem((*key, "scoring_script"), f"scoring script not found: {script_path}",
                         "scoring_script is relative to the code folder")
            return code, script
        if not script_path.is_relative_to(code):
            self.problem((*key, "scoring_script"), "the scoring script must be inside the code folder")
            return code, script
        self._check_script(script_path)
        return code, script_path.relative_to(code).as_posix()

    def _check_script(self, script: Path) -> None:
        try:
            tree = ast.parse(read_python_source(script), filename=str(script))
        except LocalmlError as exc:
            self.problems += exc.problems
            return
        except SyntaxError as exc:
            self.problems.append(Problem(f"syntax error in the scoring script: {exc.msg}",
                                         file=str(script), line=exc.lineno, column=exc.offset,
                                         fix="fix the syntax; nothing was built"))
            return
        except (RecursionError, MemoryError):
            self.problems.append(Problem("the scoring script nests too deeply for Python to read", file=str(script),
                                         fix="split the deeply nested expression; Python could not import it either"))
            return
        defined = {n.name for n in tree.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)}
        for required in ("init", "run"):
            if required not in defined:
                self.problems.append(Problem(f"the scoring script defines no {required}() function",
                                             file=str(script), line=1,
                                             fix=f"add a top-level def {required}(...): the server calls it"))

    def model(self, deployment_name: str) -> tuple[Path | None, str, str]:
        key = ("model",)
        value = self.get(key)
        if value is None:
            return None, "model", "1"
        if isinstance(value, str):
            if value.startswith("azureml:"):
                self.problem(key, f"'{value}' is a workspace asset, not available locally",
                             "localml cannot download workspace models: point at a local copy of the model, in the "
                             "file (model: {path: <folder>}) or on the command line: set=model.path=<folder> "
                             "(which keeps the reference's name and version)")
                return None, "model", "1"
            path = self.watched_folder(key, self.local_path(key, "model path"), "model path", MODEL_FIX)
            return path, (path.name if path else "model"), "1"
        if not isinstance(value, dict):
            self.problem(key, f"expected a path or a mapping, found a {_kind(value)}")
            return None, "model", "1"
        path = self.watched_folder((*key, "path"), self.local_path((*key, "path"), "model path"), "model path",
                                   MODEL_FIX)
        if value.get("path") is None:
            self.problem((*key, "path"), "missing", "add path: <local model file or folder>")
        name = str(value.get("name") or (path.name if path else "model"))
        return path, name, str(value.get("version") or "1")

    def mlflow_model(self, path: Path) -> mlflow_model.MlflowModel | None:
        """The MLflow model of a no-code deployment, checked (problems at MLmodel's lines), and its environment."""
        found, problems = mlflow_model.read_model(path, self.doc.where(("model", "path")))
        self.problems += problems
        if found is not None:
            try:  # the environment it gives is checked like a conda file (its own file's problems have lines)
                mlflow_model.environment(found, [])
            except LocalmlError as exc:
                self.problems += exc.problems
        return found

    def environment(self) -> tuple[Path | None, str | None]:
        key = ("environment",)
        value = self.get(key)
        if value is None:
            self.problem(key, "missing", "add environment: {image: <base image>, conda_file: <conda.yml>}")
            return None, None
        if isinstance(value, str):
            if value.startswith("azureml:"):
                self.problem(key, f"'{value}' is a workspace environment, not available locally",
                             "localml cannot fetch workspace environments: give a local conda file and base image, "
                             "in the file (environment: {image: <base image>, conda_file: <conda.yml>}) or on the "
                             'command line: set="environment.image=<base image> environment.conda_file=<conda.yml>"')
            else:
                self.problem(key, "expected a mapping with image and conda_file")
            return None, None
        if not isinstance(value, dict):
            self.problem(key, f"expected a mapping, found a {_kind(value)}")
            return None, None
        if isinstance(value.get("build"), dict):
            self._build_context(value["build"])
            return None, value.get("image") if isinstance(value.get("image"), str) else None
        image = value.get("image")
        if isinstance(value.get("inference_config"), dict):
            # a custom container runs as-is: its image brings the server, a conda file is optional
            self._inference_config(value["inference_config"])
            if value.get("conda_file") is not None:
                self.problem((*key, "conda_file"), "a custom container (inference_config) runs its image as-is; "
                             "localml does not build a conda file into it",
                             "remove conda_file, or remove inference_config to use Azure's inference server")
            return None, image if isinstance(image, str) else None
        if image is None:
            self.problem((*key, "image"), "missing", "add image: <base image with Python>, or build: {path: ...}")
        elif not isinstance(image, str):
            self.problem((*key, "image"), f"expected a string, found a {_kind(image)}")
            image = None
        # without conda_file, the image is the whole environment (Azure's too): it must hold the inference server
        conda = self.local_path((*key, "conda_file"), "conda file", directory=False)
        if conda is not None:
            try:
                # conda-only packages are the environment stage's call: it knows whether the base has conda
                resolve_environment(conda, str(image), str(image), conda_builds=True)
            except LocalmlError as exc:
                self.problems.extend(exc.problems)
        return conda, image

    def _build_context(self, build: dict[str, Any]) -> None:
        key = ("environment", "build")
        context = self.local_path((*key, "path"), "build context folder", directory=True)
        if context is not None and (why := system_folder(context)):
            self.problem((*key, "path"), f"build context folder {self._named((*key, 'path'), context)} is {why}: "
                                         "docker build would send every file under it",
                         "point build.path at the folder holding your Dockerfile and the files it copies")
            context = None
        dockerfile = build.get("dockerfile_path", "Dockerfile")
        if context is not None and isinstance(dockerfile, str):
            self.build_context, self.dockerfile_path = str(context), dockerfile
        if context is not None and isinstance(dockerfile, str) and not (context / dockerfile).is_file():
            self.problem((*key, "dockerfile_path") if "dockerfile_path" in build else (*key, "path"),
                         f"no Dockerfile at {context / dockerfile}",
                         "dockerfile_path is relative to the build context folder (default: Dockerfile)")

    def _inference_config(self, config: dict[str, Any]) -> None:
        routes: dict[str, Any] = {}
        for route in ("liveness_route", "readiness_route", "scoring_route"):
            item = config.get(route)
            if isinstance(item, dict) and isinstance(item.get("path"), str) and isinstance(item.get("port"), int):
                path = item["path"] if item["path"].startswith("/") else "/" + item["path"]
                routes[route] = {"path": path, "port": item["port"]}
        if len(routes) == 3:  # else the schema has said what is missing
            self.inference_config = routes
        mount = self.get(("model_mount_path",))
        if isinstance(mount, str):
            if not mount.startswith("/"):
                self.problem(("model_mount_path",), f"expected an absolute path in the container, found {mount!r}",
                             "write it as /var/azureml-app/model or similar")
            else:
                self.model_mount_path = mount.rstrip("/") or "/"

    def resources(self) -> tuple[int | None, float | None]:
        """resources of a Kubernetes deployment: every quantity checked; limits.memory and limits.cpu as Docker
        applies them (bytes, cores). Requests and GPU counts have no local effect (see local_effects)."""
        memory: int | None = None
        cpu: float | None = None
        for kind in ("requests", "limits"):
            values = self.get(("resources", kind))
            if not isinstance(values, dict):
                continue
            for name in ("memory", "cpu"):
                key = ("resources", kind, name)
                raw = values.get(name)
                if not isinstance(raw, str):
                    continue  # missing, or not a string: the schema says so
                try:
                    amount = quantities.memory_bytes(raw) if name == "memory" else quantities.cpu_cores(raw)
                except ValueError:
                    examples = quantities.MEMORY_EXAMPLES if name == "memory" else quantities.CPU_EXAMPLES
                    self.problem(key, f"{raw!r} is not a Kubernetes quantity", f"write it like {examples}")
                    continue
                if kind != "limits":
                    continue
                if name == "memory":
                    if amount < DOCKER_MIN_MEMORY:
                        self.problem(key, f"{raw} ({quantities.describe_bytes(int(amount))}) is below the "
                                          f"{quantities.describe_bytes(DOCKER_MIN_MEMORY)} Docker gives a container "
                                          "at least", "use at least 6Mi, or leave the limit out")
                    else:
                        memory = int(amount)
                elif amount < DOCKER_MIN_CPU:
                    self.problem(key, f"{raw} is below the {DOCKER_MIN_CPU} CPU Docker can limit a container to",
                                 "use at least 10m, or leave the limit out")
                else:
                    host = os.cpu_count() or 1
                    cpu = min(float(amount), float(host))  # Docker refuses more CPUs than the machine has
                    if amount > host:
                        self.limit_notes.append(f"resources.limits.cpu {raw} is more than the {host} CPUs here: "
                                                f"the container may use all {host}")
        limits = self.get(("resources", "limits"))
        if isinstance(limits, dict):
            applied = [f"{name} {limits[name]}" for name in ("memory", "cpu") if isinstance(limits.get(name), str)]
            if applied:
                self.limit_notes.insert(0, f"resources.limits: the container is limited to {' and '.join(applied)} "
                                           "(Docker's --memory, --cpus; not in runtime=process)")
            for gpu in ("nvidia.com/gpu", "gpu"):
                if limits.get(gpu) is not None:
                    self.limit_notes.append(f"resources.limits.{gpu} has no local effect (localml does not count "
                                            "GPUs: gpu=1 gives the container every GPU of this machine)")
        return memory, cpu

    def local_effects(self, endpoint_doc: YamlDocument | None) -> list[str]:
        """One note per key Azure accepts that changes nothing here, and what resources.limits does here (after
        resources()). Silent: metadata, read-only keys, instance_type and instance_count 1 (one local container is the
        instance), auth_mode (the local endpoint listens on 127.0.0.1 and asks no key or token)."""
        notes: list[str] = []

        def given(*key: str | int) -> Any:
            return self.get(key) or None  # an empty mapping or false asks for nothing

        if given("resources", "requests"):
            notes.append("resources.requests has no local effect (a local container gets what Docker gives it)")
        notes += self.limit_notes  # after resources(): what the limits do here
        if given("scale_settings"):
            notes.append("scale_settings has no local effect (one local container, no scaling)")
        count = self.get(("instance_count",))
        if isinstance(count, int) and not isinstance(count, bool) and count > 1:
            notes.append(f"instance_count {count} has no local effect (one local container)")
        if self.get(("request_settings", "max_queue_wait_ms")) is not None:
            notes.append("request_settings.max_queue_wait_ms has no local effect (no request queue in front of the "
                         "local server)")
        if given("app_insights_enabled"):
            notes.append("app_insights_enabled has no local effect (nothing goes to Application Insights; "
                         "doit logs shows the server's log)")
        if given("data_collector"):
            notes.append("data_collector has no local effect (nothing is collected or uploaded)")
        if self.get(("egress_public_network_access",)) == "disabled":
            notes.append("egress_public_network_access: disabled has no local effect (the container uses this "
                         "machine's network)")
        if given("private_network_connection"):
            notes.append("private_network_connection has no local effect (the container uses this machine's network)")
        if given("with_package"):
            notes.append("with_package has no local effect (the model is mounted as it is, not packaged)")
        if isinstance(self.get(("environment",)), dict):
            if self.get(("environment", "os_type")) == "windows":
                notes.append("environment.os_type: windows has no local effect (localml runs Linux containers)")
            if given("environment", "datastore"):
                notes.append("environment.datastore has no local effect (nothing is uploaded)")
        endpoint = endpoint_doc.data if endpoint_doc is not None and isinstance(endpoint_doc.data, dict) else {}
        if isinstance(endpoint.get("compute"), str):
            notes.append(f"compute has no local effect (the deployments run on this machine, not on "
                         f"{endpoint['compute']})")
        if endpoint.get("identity"):
            notes.append("identity has no local effect (no managed identity here: the container gets no Azure "
                         "credentials)")
        return notes

    def traffic(self, endpoint_doc: YamlDocument | None) -> None:
        """Azure's rules the schema cannot state: live traffic sums to 0 or 100; a mirror gets no live traffic."""
        if endpoint_doc is None or not isinstance(endpoint_doc.data, dict):
            return
        traffic = endpoint_doc.data.get("traffic")
        mirror = endpoint_doc.data.get("mirror_traffic")
        if isinstance(traffic, dict) and all(isinstance(v, int) for v in traffic.values()):
            total = sum(traffic.values())
            if total not in (0, 100):
                self.problems.append(Problem(
                    f"the traffic percentages add up to {total}, not 100", **endpoint_doc.where(("traffic",)),
                    fix="make them add up to 100 (or all 0)"))
            if isinstance(mirror, dict):
                for name in mirror:
                    if traffic.get(name):
                        self.problems.append(Problem(
                            f"{name} gets both live traffic ({traffic[name]} %) and mirrored traffic",
                            **endpoint_doc.where(("mirror_traffic", name)),
                            fix=f"set traffic.{name} to 0, or mirror to another deployment"))

    def environment_variables(self) -> dict[str, str]:
        key = ("environment_variables",)
        value = self.mapping(key)
        out: dict[str, str] = {}
        for name, item in (value or {}).items():
            if isinstance(item, dict | list):
                self.problem((*key, name), f"expected a string, found a {_kind(item)}")
            elif item is None:
                out[str(name)] = ""
            elif isinstance(item, bool):
                out[str(name)] = "true" if item else "false"
            else:
                out[str(name)] = str(item)  # Azure coerces numbers to strings
        return out

    def probe(self, key: tuple) -> Probe:
        value = self.mapping(key) or {}
        probe = Probe()
        for field_name in ("initial_delay", "period", "timeout", "success_threshold", "failure_threshold"):
            if field_name in value:
                item = value[field_name]
                if not isinstance(item, int) or isinstance(item, bool) or item < 0:
                    self.problem((*key, field_name), f"expected a whole number >= 0, found {item!r}")
                else:
                    setattr(probe, field_name, item)
        return probe

    def max_concurrent_requests(self) -> int:
        value = self.get(("request_settings", "max_concurrent_requests_per_instance"))
        return value if isinstance(value, int) and not isinstance(value, bool) and value >= 1 else 1

    def request_timeout_ms(self) -> int:
        key = ("request_settings", "request_timeout_ms")
        value = self.get(key)
        if value is None:
            return 5000
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            self.problem(key, f"expected a whole number of milliseconds > 0, found {value!r}")
            return 5000
        return value
