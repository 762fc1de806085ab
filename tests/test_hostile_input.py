"""Hostile input (issue 15): each bad file gives one `error:` line naming file:line and a fix, exit 1, fast.

Every case runs the real command line (`python -m localml_tasks validate`) in a private copy of the sample,
with no Docker engine reachable, and checks: exit code 1, exactly the expected error line, a fix, no
traceback, the user's files unchanged, nothing left behind, and the time (alias bombs must not take long).
The state files under .localml/ follow: a corrupt one is reported once and rebuilt, never a traceback.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import Project

from localml_tasks import state
from localml_tasks.errors import LocalmlError
from localml_tasks.state import read_json, write_if_changed

TIME_LIMIT_S = 10.0  # Python's start-up and doit's included; an alias bomb used to take 90 s and 1.6 GB
SPEC = "blue-deployment.yml"
SCORE = "onlinescoring/score.py"
CONDA = "environment/conda.yml"
MARKER = "/tmp/localml-hostile-input-was-executed"


def no_docker(project: Project) -> dict[str, str]:
    """Nothing may reach Docker, and the locks stay inside this test (the endpoint name may be a fallback)."""
    return {"DOCKER_HOST": "unix:///nonexistent.sock", "LOCALML_LOCK_DIR": str(project.root.parent / "locks")}


def snapshot(root: Path) -> dict[str, tuple[str, int]]:
    """The user's files (everything but .localml/): content hash and mode of each, folders included."""
    seen = {}
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root)
        if relative.parts[0] == state.STATE_DIR_NAME:
            continue
        digest = "folder" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
        seen[str(relative)] = (digest, stat.S_IMODE(path.stat().st_mode))
    return seen


# --- the inputs ---------------------------------------------------------------------------------------------


def append(relative: str, text: str) -> Callable[[Path], None]:
    def mutate(root: Path) -> None:
        path = root / relative
        path.write_text(path.read_text() + text)
    return mutate


def append_bytes(relative: str, data: bytes) -> Callable[[Path], None]:
    def mutate(root: Path) -> None:
        path = root / relative
        path.write_bytes(path.read_bytes() + data)
    return mutate


def replace(relative: str, old: str, new: str) -> Callable[[Path], None]:
    def mutate(root: Path) -> None:
        path = root / relative
        assert old in path.read_text()
        path.write_text(path.read_text().replace(old, new))
    return mutate


def write(relative: str, content: str | bytes) -> Callable[[Path], None]:
    def mutate(root: Path) -> None:
        path = root / relative
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
    return mutate


def folder(relative: str) -> Callable[[Path], None]:
    def mutate(root: Path) -> None:
        (root / relative).unlink()
        (root / relative).mkdir()
    return mutate


def bomb(indent: str = "  ") -> str:
    """A billion laughs in 9 lines (about 400 bytes): 10**9 strings once its aliases are expanded."""
    lines = [f"{indent}a: &a [{', '.join(['lol'] * 10)}]"]
    for previous, name in zip("abcdefgh", "bcdefghi", strict=True):
        lines.append(f"{indent}{name}: &{name} [{', '.join([f'*{previous}'] * 10)}]")
    return "\n".join(lines) + "\n"


def prepend_to_score(prefix: bytes, suffix: bytes = b"") -> Callable[[Path], None]:
    def mutate(root: Path) -> None:
        path = root / SCORE
        path.write_bytes(prefix + path.read_bytes() + suffix)
    return mutate


@dataclass(frozen=True)
class Case:
    id: str
    mutate: Callable[[Path], None]
    error: str  # the whole error line; {line} is the line of `anchor` in `file`
    fix: str  # a part of the fix line that follows it
    file: str = SPEC
    anchor: str | None = None


ALIAS_BOMB = "the YAML expands its aliases to more than 100,000 values (with *d here): an alias bomb?"
RECURSIVE = "the alias *x is inside the value its anchor &x names: a recursive alias never ends"
TOO_DEEP = "nested more than 100 levels deep"
NOT_UTF8 = "save the file as UTF-8"

CATALOGUE = [
    # aliases and nesting: refused at once, at the alias or the bracket that goes over
    Case("alias-bomb", append(SPEC, "tags:\n" + bomb()), f"error: {SPEC}:{{line}}:46: tags.e[9]: {ALIAS_BOMB}",
         "write the values out", anchor="  e: &e"),
    Case("alias-bomb-in-the-endpoint", append("endpoint.yml", "tags:\n" + bomb()),
         f"error: endpoint.yml:{{line}}:46: tags.e[9]: {ALIAS_BOMB}", "without aliases of aliases",
         file="endpoint.yml", anchor="  e: &e"),
    Case("alias-bomb-in-the-conda-file", append(CONDA, "variables:\n" + bomb()),
         f"error: {CONDA}:{{line}}:46: variables.e[9]: {ALIAS_BOMB}", "write the values out", file=CONDA,
         anchor="  e: &e"),
    Case("recursive-alias", append(SPEC, "tags: &x {a: *x}\n"), f"error: {SPEC}:{{line}}:14: tags.a: {RECURSIVE}",
         "remove the self-reference *x", anchor="tags: &x"),
    Case("recursive-alias-in-a-list", append(SPEC, "tags:\n  a: &x [1, [2, *x]]\n"),
         f"error: {SPEC}:{{line}}:17: tags.a[1][1]: {RECURSIVE}", "remove the self-reference *x", anchor="a: &x"),
    Case("5000-nested-brackets", append(SPEC, "tags: " + "[" * 5000 + "]" * 5000 + "\n"),
         f"error: {SPEC}:{{line}}:107: {TOO_DEEP}", "flatten it", anchor="tags: [[["),
    Case("an-unclosed-flood-of-brackets", append(SPEC, "tags: " + "{a: " * 50_000 + "\n"),
         f"error: {SPEC}:{{line}}:400: {TOO_DEEP}", "an unclosed '[' or '{'?", anchor="tags: {a: {a:"),
    Case("200-nested-mappings", append(SPEC, "tags:\n" + "".join(" " * i + f"k{i}:\n" for i in range(1, 200))),
         f"error: {SPEC}:{{line}}:100: {TOO_DEEP}", "flatten it", anchor=" " * 99 + "k99:"),
    Case("nesting-through-aliases",
         append(SPEC, "tags:\n  a: &a " + "[" * 60 + "]" * 60 + "\n  b: &b " + "[" * 30 + "*a" + "]" * 30
                + "\n  c: " + "[" * 30 + "*b" + "]" * 30 + "\n"),
         f"error: {SPEC}:{{line}}:36: tags.c{'[0]' * 30}: the alias *b nests values more than 100 levels deep",
         "flatten it", anchor="  c: [[["),
    # keys
    Case("complex-key", append(SPEC, "tags:\n  ? [a, b]\n  : 1\n"),
         f"error: {SPEC}:{{line}}:5: tags: a key must be a plain value such as a name, found a list",
         "write the key as a name", anchor="? [a, b]"),
    Case("mapping-as-key", append(SPEC, "? {a: 1}\n: x\n"),
         f"error: {SPEC}:{{line}}:3: a key must be a plain value such as a name, found a mapping",
         "write the key as a name", anchor="? {a: 1}"),
    Case("number-as-key", replace(SPEC, "  SAMPLE_OUTPUT_SCALE: 1", "  SAMPLE_OUTPUT_SCALE: 1\n  42: x"),
         f"error: {SPEC}:{{line}}:3: environment_variables: the key 42 is not text: YAML reads it as the number 42",
         'quote it to make it text: "42"', anchor="  42: x"),
    Case("yes-as-key", append(SPEC, "tags:\n  on: x\n"),
         f"error: {SPEC}:{{line}}:3: tags: the key on is not text: YAML reads it as true (YAML 1.1: yes/no/on/off)",
         'quote it to make it text: "on"', anchor="  on: x"),
    Case("null-as-key", append("endpoint.yml", "traffic2:\n  ~: 1\n"),
         "error: endpoint.yml:{line}:3: traffic2: the key ~ is not text: YAML reads it as null",
         'quote it to make it text: "~"', file="endpoint.yml", anchor="  ~: 1"),
    # values YAML cannot construct safely
    Case("python-object-tag", append(SPEC, f"tags:\n  a: !!python/object/apply:os.system ['touch {MARKER}']\n"),
         f"error: {SPEC}:{{line}}:6: tags.a: unknown YAML tag !!python/object/apply:os.system",
         "remove the tag", anchor="!!python"),
    Case("impossible-date", append(SPEC, "tags:\n  released: 2024-13-45\n"),
         f"error: {SPEC}:{{line}}:13: tags.released: cannot read '2024-13-45' as a date: month must be in 1..12",
         'quote it to keep it as text: "2024-13-45"', anchor="released:"),
    Case("date-where-text-is-wanted", append(SPEC, "tags: {released: 2024-01-31}\n"),
         f"error: {SPEC}:{{line}}:8: tags.released: expected a string, found the date 2024-01-31 (quote it to keep "
         "it as text)", "give a string here", anchor="released: 2024"),
    Case("merge-of-a-scalar", append(SPEC, "tags:\n  <<: 3\n"),
         f"error: {SPEC}:{{line}}:7: tags: `<<` merges mappings into this one, found something else",
         "give `<<:` an alias of a mapping", anchor="<<: 3"),
    Case("second-document", append(SPEC, "---\nname: green\n"),
         f"error: {SPEC}:{{line}}:1: not valid YAML: a second document (after ---)", "keep one document",
         anchor="---"),
    Case("control-character", append(SPEC, "description: bell\x07here\n"),
         f"error: {SPEC}:{{line}}:18: not valid YAML: the control character #x0007 is not allowed",
         "remove it", anchor="description: bell"),
    # files that are no YAML text
    Case("binary-file", write(SPEC, b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"),
         f"error: {SPEC}:3:1: a binary file, not YAML text (it holds NUL bytes)", "is this the right file?"),
    Case("latin-1-yaml", append_bytes(SPEC, "description: caf\xe9\n".encode("latin-1")),
         f"error: {SPEC}:{{line}}:17: not UTF-8 text: the byte 0xe9 cannot be read", NOT_UTF8,
         anchor="description: caf"),
    Case("utf-16-yaml", lambda root: (root / SPEC).write_bytes((root / SPEC).read_text().encode("utf-16")),
         f"error: {SPEC}:1:1: UTF-16 text, not UTF-8", NOT_UTF8),
    Case("spec-is-a-folder", folder(SPEC), f"error: {SPEC}: is a folder, not a YAML file",
         "give the path of the YAML file itself"),
    Case("endpoint-is-a-folder", folder("endpoint.yml"), "error: endpoint.yml: is a folder, not a YAML file",
         "give the path of the YAML file itself", file="endpoint.yml"),
    Case("empty-file", write(SPEC, ""), f"error: {SPEC}: the file is empty", "write a CLI v2 deployment"),
    Case("only-a-scalar", write(SPEC, "just some words\n"),
         f"error: {SPEC}:1:1: expected a mapping of keys (name:, model:, ...), found a string",
         "a deployment YAML is a mapping at the top level"),
    # the scoring script, read as Python reads it
    Case("score-latin-1-without-coding-line", prepend_to_score(b"", "\nNAME = 'caf\xe9'\n".encode("latin-1")),
         f"error: {SCORE}:{{line}}:12: the scoring script is not UTF-8 text: the byte 0xe9 cannot be read",
         "# -*- coding: latin-1 -*-", file=SCORE, anchor="NAME = 'caf"),
    Case("score-unknown-coding", prepend_to_score(b"# -*- coding: klingon -*-\n"),
         f"error: {SCORE}:1: the scoring script cannot be read: unknown encoding: klingon", "save it as UTF-8",
         file=SCORE),
    Case("score-is-binary", write(SCORE, b"\x7fELF\x02\x01\x01\x00\x00\x00"),
         f"error: {SCORE}:1: the scoring script holds NUL bytes: a binary file, not Python source",
         "scoring_script names the Python file", file=SCORE),
]


def error_line(case: Case, root: Path) -> str:
    if case.anchor is None:
        return case.error
    lines = (root / case.file).read_bytes().decode("utf-8", "replace").splitlines()
    line = next(number for number, text in enumerate(lines, 1) if case.anchor in text)
    return case.error.replace("{line}", str(line))


def test_the_catalogue_has_at_least_fifteen_cases():
    assert len(CATALOGUE) >= 15


@pytest.mark.parametrize("case", CATALOGUE, ids=[case.id for case in CATALOGUE])
def test_hostile_input_gives_one_error_line_with_a_fix_and_changes_nothing(project: Project, case: Case):
    case.mutate(project.root)
    before = snapshot(project.root)
    started = time.monotonic()
    result = project.run("validate", f"spec={SPEC}", env=no_docker(project), timeout=60)
    took = time.monotonic() - started
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output
    assert result.returncode == 1, output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [error_line(case, project.root)], output
    following = result.stderr.splitlines()[result.stderr.splitlines().index(errors[0]) + 1]
    assert following.startswith("  fix: ") and case.fix in following, output
    assert took < TIME_LIMIT_S, f"{case.id} took {took:.1f} s"
    assert snapshot(project.root) == before  # the user's files, as they were
    assert not list(project.root.rglob("*.tmp")), "a temporary file was left behind"
    assert not Path(MARKER).exists(), "a YAML tag ran a command"


# --- hostile, but valid: read as Python and safe_load read them ---------------------------------------------


def test_a_latin_1_scoring_script_that_says_so_is_valid(project: Project):
    prepend_to_score(b"# -*- coding: latin-1 -*-\n", "\nNAME = 'caf\xe9'\n".encode("latin-1"))(project.root)
    result = project.run("validate", f"spec={SPEC}", env=no_docker(project), timeout=60)
    assert result.returncode == 0, result.stderr
    assert "valid" in result.stdout and "Traceback" not in result.stderr


def test_merge_keys_are_read_as_safe_load_reads_them(project: Project):
    replace(SPEC, "environment_variables:\n  SAMPLE_OUTPUT_SCALE: 1",
            "base: &base {SAMPLE_OUTPUT_SCALE: '3', OTHER: x}\nenvironment_variables:\n  <<: *base\n"
            "  SAMPLE_OUTPUT_SCALE: 1")(project.root)
    result = project.run("validate", f"spec={SPEC}", env=no_docker(project), timeout=60)
    assert "unknown key 'base'" in result.stderr, result.stderr  # the anchor's own key is still checked
    replace(SPEC, "base: &base", "tags: &base")(project.root)
    result = project.run("validate", f"spec={SPEC}", env=no_docker(project), timeout=60)
    assert result.returncode == 0, result.stderr
    resolved = read_json(project.root / ".localml" / "endpoints" / project.endpoint / "blue" / "deployment.json")
    assert resolved["environment_variables"] == {"SAMPLE_OUTPUT_SCALE": "1", "OTHER": "x"}


# --- state files under .localml/ -------------------------------------------------------------------------


def state_path(project: Project, name: str) -> Path:
    if name in ("current.json", "doit.db", "doit.db.corrupt"):
        return project.root / ".localml" / name
    return project.root / ".localml" / "endpoints" / project.endpoint / "blue" / name


CORRUPT_STATE = [
    ("current.json", "[1, 2]", "expected a JSON object, found a list"),
    ("current.json", "{not json", "not JSON: Expecting property name enclosed in double quotes (line 1)"),
    ("current.json", '{"spec": 5}', "'spec' should be a string, found a whole number"),
    ("current.json", '{"spec": "blue-deployment.yml", "overrides": ["x"]}',
     "'overrides' should be a JSON object or null, found a list"),
    ("settings.json", '"docker"', "expected a JSON object, found a string"),
    ("settings.json", '{"runtime": 3}', "'runtime' should be a string, found a whole number"),
    ("process.json", "[]", "expected a JSON object, found a list"),
    ("process.json", json.dumps({"supervisor_pid": "1", "scoring_port": 1, "debug_port": 2, "venv": "v",
                                 "config_hash": "h", "log_file": "l"}),
     "'supervisor_pid' should be a whole number, found a string"),
]


@pytest.mark.parametrize(("name", "content", "why"), CORRUPT_STATE,
                         ids=[f"{name}:{content[:12]}" for name, content, _ in CORRUPT_STATE])
def test_a_corrupt_state_file_is_reported_once_and_rebuilt(project: Project, name: str, content: str, why: str):
    assert project.run("validate", f"spec={SPEC}", env=no_docker(project), timeout=60).returncode == 0
    path = state_path(project, name)
    path.write_text(content)
    before = snapshot(project.root)
    # without spec=, current.json names the deployment; show and logs read process.json and settings.json
    warned = 0
    for command in (("validate",), ("validate", f"spec={SPEC}"), ("show",), ("logs",)):
        result = project.run(*command, env=no_docker(project), timeout=60)
        output = result.stdout + result.stderr
        assert "Traceback" not in output, output
        assert result.returncode in (0, 1), output
        warnings = [line for line in result.stderr.splitlines() if line.startswith("warning: ignored")]
        if warnings:  # once per command, naming the file and what is wrong with it
            relative = path.relative_to(project.root)
            assert warnings == [f"warning: ignored the corrupt state file {relative} ({why}): localml rebuilds it"]
            warned += 1
    assert warned, "no command read the corrupt file"
    assert snapshot(project.root) == before
    result = project.run("validate", f"spec={SPEC}", env=no_docker(project), timeout=60)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    if name == "current.json":  # validate writes it anew
        assert read_json(path)["spec"] == str(project.spec.resolve())


def test_a_corrupt_doit_database_is_kept_aside_and_started_anew(project: Project):
    assert project.run("validate", f"spec={SPEC}", env=no_docker(project), timeout=60).returncode == 0
    state_path(project, "doit.db").write_bytes(b"this is not SQLite")
    result = project.run("validate", f"spec={SPEC}", env=no_docker(project), timeout=60)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    assert ("warning: ignored the corrupt state file .localml/doit.db (file is not a database): localml rebuilds it "
            "(kept as .localml/doit.db.corrupt)") in result.stderr
    assert state_path(project, "doit.db.corrupt").read_bytes() == b"this is not SQLite"


def test_a_file_where_the_state_folder_goes_is_one_error(project: Project):
    (project.root / ".localml").write_text("mine")
    result = project.run("validate", f"spec={SPEC}", env=no_docker(project), timeout=60)
    assert result.returncode == 1 and "Traceback" not in result.stderr + result.stdout
    assert result.stderr.splitlines()[0] == \
        "error: .localml: cannot make localml's state folder here: a file is in its place"
    assert result.stderr.splitlines()[1].startswith("  fix: move .localml away")
    assert (project.root / ".localml").read_text() == "mine"


@pytest.mark.parametrize(("content", "why"), [
    (b"[1, 2]", "expected a JSON object, found a list"),
    (b'{"pid": "abc", "port": 5100}', "'pid' should be a whole number, found a string"),
    (b'{"pid": true, "port": 5100}', "'pid' should be a whole number, found true or false"),
    (b'{"pid": 4242}', "'port' is missing"),
    (b"{", "not JSON: Expecting property name enclosed in double quotes (line 1)"),
    (b"\xff\xfe{}", "cannot read it: 'utf-8' codec can't decode byte 0xff in position 0: invalid start byte"),
    (b"[" * 100_000, "not JSON: maximum recursion depth exceeded while decoding a JSON array from a unicode string"),
])
def test_read_json_treats_a_corrupt_file_as_absent_and_says_so_once(tmp_path, capsys, content, why):
    path = tmp_path / "router.json"
    path.write_bytes(content)
    assert read_json(path) is None
    assert read_json(path) is None
    assert capsys.readouterr().err.splitlines() == [
        f"warning: ignored the corrupt state file {path} ({why}): localml rebuilds it"]


def test_read_json_reads_routes_and_any_json_when_asked(tmp_path, capsys):
    routes = tmp_path / "routes.json"
    routes.write_text(json.dumps({"endpoint": "e", "traffic": {"blue": 100}, "deployments": {}}))
    assert read_json(routes)["traffic"] == {"blue": 100}
    routes.write_text('{"traffic": [100]}')
    assert read_json(routes) is None
    listing = tmp_path / "listing.json"
    listing.write_text("[1, 2]")
    assert read_json(listing, expect=list) == [1, 2] and read_json(listing, expect=None) == [1, 2]
    assert read_json(tmp_path / "absent.json") is None
    assert capsys.readouterr().err.count("warning:") == 1  # routes.json's traffic; an absent file is no news


def test_a_cache_with_an_entry_of_the_wrong_type_is_treated_as_absent(tmp_path, capsys):
    cache = tmp_path / "base-python.json"
    cache.write_text('{"sha256:aa": "3.11.2", "sha256:bb": ["3.12"]}')
    assert read_json(cache) is None
    assert "'sha256:bb' should be a string, found a list" in capsys.readouterr().err
    cache.write_text('{"sha256:aa": "3.11.2"}')
    assert read_json(cache) == {"sha256:aa": "3.11.2"}


def test_a_write_is_atomic_and_leaves_no_temporary_file(tmp_path):
    path = tmp_path / "deep" / "state.json"
    assert write_if_changed(path, "one\n") is True
    assert write_if_changed(path, "one\n") is False
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask  # as open() would have made it
    path.write_bytes(b"\xff not UTF-8")
    assert write_if_changed(path, "two\n") is True and path.read_text() == "two\n"
    assert sorted(p.name for p in path.parent.iterdir()) == ["state.json"]


def test_a_full_disk_keeps_the_old_file_removes_the_temporary_one_and_says_so(tmp_path, monkeypatch):
    path = tmp_path / "current.json"
    path.write_text("old\n")

    def full_disk(descriptor, *args, **kwargs):
        handle = open(descriptor, *args, **kwargs)  # noqa: SIM115 - the real file, whose write fails

        class Full:
            def __enter__(self):
                return self

            def __exit__(self, *exc_info):
                handle.close()

            def write(self, text):
                handle.write(text[:3])
                raise OSError(errno.ENOSPC, "No space left on device")
        return Full()

    monkeypatch.setattr(state.os, "fdopen", full_disk)
    with pytest.raises(LocalmlError) as caught:
        write_if_changed(path, "new and longer\n")
    [problem] = caught.value.problems
    assert problem.file == str(path)
    assert problem.message == "cannot write: the disk is full (No space left on device)"
    assert "free some space on the disk holding" in problem.fix and "docker system prune" in problem.fix
    assert path.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["current.json"]


def test_a_read_only_state_folder_is_one_error_naming_the_file(tmp_path, monkeypatch):
    path = tmp_path / "settings.json"

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(state.os, "open", read_only)
    with pytest.raises(LocalmlError) as caught:
        write_if_changed(path, "{}\n")
    assert caught.value.render() == (
        f"error: {path}: cannot write: Read-only file system\n"
        "  fix: run localml from a folder on a writable disk (it keeps its state in .localml/ there)")
    assert list(tmp_path.iterdir()) == []


def test_ctrl_c_outside_any_stage_is_one_line_under_plain_doit_too():
    """Ctrl-C between two stages lands in doit's own code: with localml's tasks loaded (the user's `doit`, not
    only `localml`) it is one line, not a traceback."""
    result = subprocess.run([sys.executable, "-c", "import localml_tasks.tasks\nraise KeyboardInterrupt"],
                            capture_output=True, text=True, timeout=60, env={**os.environ, "NO_COLOR": "1"})
    assert result.returncode != 0
    assert result.stderr.strip() == "interrupted (Ctrl-C); run the command again to go on", result.stderr
