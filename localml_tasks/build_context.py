"""Stages 2 and 3 for `environment.build` (the user's own Docker build context) and for an environment
given only as an image.

The user's Dockerfile is built as it is, with the user's folder as the context (nothing is ever
written into that folder). localml's thin layer goes on top, rendered into the deployment's build
folder: it finds the Python in the user's image that has azureml-inference-server-http, gives it
fixed names (/opt/localml/bin/python, /opt/localml/bin/azmlinfsrv) so the container command works
unchanged, and adds debugpy only when the image lacks it. An image-only environment gets the same
layer on the image as it is. The final tag is a hash of everything
that goes in (the context's files, .dockerignore applied, the FROM images, our layer), so "is the
image up to date" stays "does this tag exist".
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import docker_engine, machine
from .config import ALIASES_ENV, CONFIG_FILE_NAME, ProjectConfig
from .contract import APP_ROOT, BIN_DIR, CONTAINER_PORT, RUNTIME_DIR
from .errors import LocalmlError
from .image import (
    CA_FILE_NAME,
    CONDA_FILE_NAME,
    INSTALL_SCRIPT_NAME,
    ImagePlan,
    host_ca_bundle,
    image_tag,
    load_plan,
    parse_build_failure,
    remove_files,
    resolve_base_image,
    stream_build,
    write_ca_copy,
)
from .state import read_json, write_if_changed, write_json_if_changed

USER_IMAGE_REPOSITORY = "localml/build"  # the user's image, built as-is; ours (localml/env:...) goes on top
LOCALML_OPT = "/opt/localml"
LOCALML_PYTHON = f"{LOCALML_OPT}/bin/python"  # the Python that has the server, whatever the image calls it
SITE_DIR = f"{LOCALML_OPT}/site"  # debugpy, when the user's image has none (debug_server.py looks here)
LAYER_SCRIPT_NAME = "localml-layer.sh"
LAYER_MARKER = "localml-layer:"
# where Pythons live in common images: PATH first (Azure's images put their environment there), then
# conda's and Azure's usual prefixes, then the system's
PYTHON_CANDIDATES = (
    "python", "python3", "/opt/conda/bin/python", "/opt/miniconda/bin/python", "/azureml-envs/*/bin/python",
    "/opt/conda/envs/*/bin/python", "/opt/miniconda/envs/*/bin/python", "/usr/local/bin/python3", "/usr/bin/python3",
)


# --- reading the user's Dockerfile (pure) ------------------------------------------------


@dataclass
class Instruction:
    keyword: str  # upper case: FROM, RUN, ...
    args: str  # continuation lines joined
    line: int  # where it starts, 1-based


def parse_dockerfile(text: str) -> list[Instruction]:
    """The instructions in order, as the classic builder numbers its steps (ARGs before FROM count)."""
    lines = text.splitlines()
    escape = "\\"
    for raw in lines:  # parser directives come first, before any comment or instruction
        directive = re.match(r"^\s*#\s*(\w+)\s*=\s*(\S+)\s*$", raw)
        if not directive:
            break
        if directive[1].lower() == "escape":
            escape = directive[2]
    instructions: list[Instruction] = []
    parts: list[str] | None = None
    start = 0
    for number, raw in enumerate(lines, start=1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue  # blank and comment lines, also inside a continued instruction
        if parts is None:
            parts, start = [], number
        text_part = raw.rstrip()
        if text_part.endswith(escape):
            parts.append(text_part[: -len(escape)].strip())
            continue
        parts.append(text_part.strip())
        instructions.append(_instruction(parts, start))
        parts = None
    if parts:
        instructions.append(_instruction(parts, start))
    return instructions


def _instruction(parts: list[str], line: int) -> Instruction:
    keyword, _, args = " ".join(part for part in parts if part).partition(" ")
    return Instruction(keyword.upper(), args.strip(), line)


def from_images(instructions: list[Instruction]) -> list[tuple[str, int]]:
    """(image name, line) of each FROM that names an image: not `scratch`, not an earlier stage,
    not a name left with a variable that a default ARG does not settle (Docker resolves those)."""
    defaults: dict[str, str] = {}
    stages: set[str] = set()
    found: list[tuple[str, int]] = []
    seen_from = False
    for item in instructions:
        if item.keyword == "ARG" and not seen_from:
            name, _, value = item.args.partition("=")
            defaults[name.strip()] = value.strip().strip("\"'")
        if item.keyword != "FROM":
            continue
        seen_from = True
        words = [word for word in item.args.split() if not word.startswith("--")]
        if not words:
            continue
        image = _expand(words[0], defaults)
        if len(words) >= 3 and words[1].lower() == "as":
            stages.add(words[2].lower())
        if image.lower() in stages or image == "scratch" or "$" in image or not image:
            continue
        if image not in (name for name, _ in found):
            found.append((image, item.line))
    return found


def _expand(word: str, defaults: dict[str, str]) -> str:
    def value(match: re.Match[str]) -> str:
        name = match[1] or match[3]
        if name in defaults:
            return defaults[name]
        return match[2] if match[2] is not None else match[0]  # unknown: left for Docker

    return re.sub(r"\$\{(\w+)(?::-([^}]*))?\}|\$(\w+)", value, word)


# --- localml's layer (pure) ----------------------------------------------------------------


def render_layer_script() -> str:
    """Run in the discarded first stage of our layer, as root, in the user's image."""
    candidates = " ".join(PYTHON_CANDIDATES)
    return (
        "# Generated by localml: its layer on top of your image (a discarded build stage runs it).\n"
        "# Finds the Python that has the Azure ML inference server, names it /opt/localml/bin/python,\n"
        "# and installs debugpy into /opt/localml/site only when that Python cannot import it.\n"
        "set -eu\n"
        'ca="${1:-}"\n'
        'found=""\n'
        f"for candidate in {candidates}; do\n"
        '    path="$(command -v "$candidate" 2>/dev/null)" || continue\n'
        '    if "$path" -c "import azureml_inference_server_http" >/dev/null 2>&1; then\n'
        '        found="$path"\n'
        "        break\n"
        "    fi\n"
        "done\n"
        'if [ -z "$found" ]; then\n'
        f'    echo "{LAYER_MARKER} no-server: tried {candidates}"\n'
        "    exit 3\n"
        "fi\n"
        f'echo "{LAYER_MARKER} python: $found"\n'
        f"mkdir -p {LOCALML_OPT}/bin\n"
        "# a wrapper, not a symlink: a venv's Python finds its pyvenv.cfg only when started by its own path\n"
        f"printf '#!/bin/sh\\nexec \"%s\" \"$@\"\\n' \"$found\" > {LOCALML_OPT}/bin/python\n"
        f"chmod 755 {LOCALML_OPT}/bin/python\n"
        "scripts=\"$(\"$found\" -c 'import sysconfig; print(sysconfig.get_path(\"scripts\"))')\"\n"
        'if [ -x "$scripts/azmlinfsrv" ]; then\n'
        f'    ln -s "$scripts/azmlinfsrv" {LOCALML_OPT}/bin/azmlinfsrv\n'
        "else  # the package runs as a module too\n"
        f"    printf '#!/bin/sh\\nexec {LOCALML_OPT}/bin/python -m azureml_inference_server_http \"$@\"\\n'"
        f" > {LOCALML_OPT}/bin/azmlinfsrv\n"
        f"    chmod 755 {LOCALML_OPT}/bin/azmlinfsrv\n"
        "fi\n"
        'if "$found" -c "import debugpy" >/dev/null 2>&1; then\n'
        f'    echo "{LAYER_MARKER} debugpy: in the image"\n'
        "else\n"
        '    if [ -n "$ca" ]; then export PIP_CERT="$ca"; fi\n'
        '    "$found" -m pip install --no-cache-dir --disable-pip-version-check --progress-bar off \\\n'
        f'        --target {SITE_DIR} debugpy || {{ echo "{LAYER_MARKER} no-debugpy"; exit 4; }}\n'
        f'    echo "{LAYER_MARKER} debugpy: installed into {SITE_DIR}"\n'
        "fi\n"
    )


def render_layer_dockerfile(user_image: str, user_dockerfile: str | None, *, with_ca: bool) -> str:
    """Our layer on the user's image: only /opt/localml and PATH change in the final image.
    user_dockerfile: what the image was built from; None: the deployment names the image itself."""
    ca_copy = f"COPY {CA_FILE_NAME} /tmp/localml/ca.crt\n" if with_ca else ""
    ca_arg = " /tmp/localml/ca.crt" if with_ca else ""
    origin = (f"the image built as-is from {user_dockerfile}: edit that, not this" if user_dockerfile
              else f"the deployment's image {user_image}, as it is")
    return (
        f"# Generated by localml on top of {origin}.\n"
        "# Stage 1 runs localml's layer script in your image (with the host's CA bundle, should debugpy\n"
        f"# need installing); only {LOCALML_OPT} is copied into the final image.\n"
        f"FROM {user_image} AS localml\n"
        "USER root\n"
        f"COPY {LAYER_SCRIPT_NAME} /tmp/localml/layer.sh\n"
        f"{ca_copy}"
        f"RUN sh /tmp/localml/layer.sh{ca_arg}\n"
        "\n"
        f"FROM {user_image}\n"
        f"COPY --from=localml {LOCALML_OPT} {LOCALML_OPT}\n"
        f"ENV PATH={LOCALML_OPT}/bin:$PATH PYTHONUNBUFFERED=1\n"
        f"WORKDIR {APP_ROOT}\n"
        f"EXPOSE {CONTAINER_PORT}\n"
        "# localml's supervisor runs the server (no ENTRYPOINT of the image in front of it)\n"
        "ENTRYPOINT []\n"
        f'CMD ["python", "{BIN_DIR}/supervisor.py", "{RUNTIME_DIR}"]\n'
    )


# --- environment stage ---------------------------------------------------------------------


def context_digest(context: Path, dockerfile_path: str, cache_file: Path) -> tuple[str, int]:
    """(hash, file count) of what Docker gets as the build context, .dockerignore applied.

    Each file's content hash is kept with its size and mtime, so an unchanged context is not read again."""
    previous: dict[str, list[str]] = read_json(cache_file) or {}
    current: dict[str, list[str]] = {}
    digest = hashlib.sha256()
    count = 0
    for relative in docker_engine.context_files(str(context), dockerfile_path):
        path = context / relative
        try:
            info = path.lstat()
        except FileNotFoundError:
            continue  # removed while we looked
        if stat.S_ISLNK(info.st_mode):
            entry = f"link {os.readlink(path)}"
        elif stat.S_ISDIR(info.st_mode):
            entry = f"dir {info.st_mode & 0o7777:o}"
        elif stat.S_ISREG(info.st_mode):
            key = f"{info.st_size}:{info.st_mtime_ns}"
            cached = previous.get(relative)
            content = cached[1] if cached and cached[0] == key else _file_hash(path)
            current[relative] = [key, content]
            entry = f"file {info.st_mode & 0o7777:o} {content}"  # COPY keeps the mode too
            count += 1
        else:
            continue  # sockets, fifos: Docker skips them
        digest.update(f"{relative}\0{entry}\0".encode())
    write_json_if_changed(cache_file, current)
    return digest.hexdigest(), count


def _file_hash(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def resolve_from_images(dockerfile: Path, config: ProjectConfig) -> list[dict[str, Any]]:
    """Each FROM image with the local image it stands for (image_aliases apply) and that image's id."""
    resolved: list[dict[str, Any]] = []
    for name, line in from_images(parse_dockerfile(dockerfile.read_text(encoding="utf-8"))):
        local = config.resolve_image(name)
        if local != name:
            if "@" in name:
                raise LocalmlError.one(
                    f"FROM {name} names a digest: a local image cannot stand in for it", file=str(dockerfile),
                    line=line, fix="name the image by tag in the Dockerfile, or remove its image alias")
            found = docker_engine.image_id(local)
            if found is None:
                raise LocalmlError.one(
                    f"{local}, the local image standing in for FROM {name} (image_aliases), is not on this machine",
                    file=str(dockerfile), line=line,
                    fix=f"build or load {local}, or change the alias in {CONFIG_FILE_NAME} / {ALIASES_ENV}")
        else:
            found = docker_engine.image_id(name) or docker_engine.pull(name)
            if found is None:
                raise LocalmlError.one(
                    f"base image {name} is not on this machine and cannot be pulled", file=str(dockerfile), line=line,
                    fix=(f"load it (docker load / docker pull where a registry is reachable), or map {name} to a "
                         f"local image in {CONFIG_FILE_NAME} (image_aliases:) or {ALIASES_ENV}; "
                         "see README: Image aliases"))
        resolved.append({"name": name, "local": local, "id": found, "line": line})
    return resolved


def prepare(context: Path, dockerfile_path: str, build_dir: Path, config: ProjectConfig) -> tuple[ImagePlan, int]:
    """Write our layer (Dockerfile, script, CA copy) and plan.json under build_dir; (plan, files in context)."""
    dockerfile = (context / dockerfile_path).resolve()
    images = resolve_from_images(dockerfile, config)
    context_hash, files = context_digest(context, dockerfile_path, build_dir / "context-files.json")
    user_inputs = "\0".join([dockerfile_path, dockerfile.read_text(encoding="utf-8"), context_hash,
                             *(f"{item['name']}={item['id']}" for item in images)])
    user_tag = f"{USER_IMAGE_REPOSITORY}:{hashlib.sha256(user_inputs.encode()).hexdigest()[:16]}"
    layer, script = write_layer(build_dir, user_tag, dockerfile_path)
    final = images[-1] if images else {"name": "", "local": "", "id": ""}
    plan = ImagePlan(
        tag=image_tag(layer, script, user_tag), base_image=final["local"], declared_image=final["name"],
        base_image_id=final["id"], base_python="", python_version=None, conda_file="", kind="context",
        build_context=str(context), dockerfile=str(dockerfile), dockerfile_path=dockerfile_path, user_tag=user_tag,
        context_hash=context_hash, from_images=images,
    )
    write_json_if_changed(build_dir / "plan.json", plan.to_json())
    return plan, files


def write_layer(build_dir: Path, user_image: str, user_dockerfile: str | None) -> tuple[str, str]:
    """Our layer's Dockerfile, script and CA copy in build_dir (only what changed is rewritten); (Dockerfile,
    script), which the image tag hashes."""
    ca = host_ca_bundle()
    layer = render_layer_dockerfile(user_image, user_dockerfile, with_ca=ca is not None)
    script = render_layer_script()
    build_dir.mkdir(parents=True, exist_ok=True)
    write_if_changed(build_dir / "Dockerfile", layer)
    write_if_changed(build_dir / LAYER_SCRIPT_NAME, script)
    remove_files(build_dir, "requirements.txt", CONDA_FILE_NAME, INSTALL_SCRIPT_NAME)
    write_ca_copy(build_dir, ca)
    return layer, script


def prepare_image_only(declared_image: str, build_dir: Path, config: ProjectConfig) -> ImagePlan:
    """An environment given only as an image (it holds the inference server, as Azure requires): the image
    runs as it is, with our layer on top; the layer's build is where a missing server is found out."""
    local = config.resolve_image(declared_image)
    image = resolve_base_image(declared_image, local)
    layer, script = write_layer(build_dir, local, None)
    plan = ImagePlan(tag=image_tag(layer, script, image), base_image=local, declared_image=declared_image,
                     base_image_id=image, base_python="", python_version=None, conda_file="", kind="image")
    write_json_if_changed(build_dir / "plan.json", plan.to_json())
    return plan


# --- image stage -----------------------------------------------------------------------------


def build(build_dir: Path, *, say: Callable[[str], None] = print, progress: Callable[[str], None] | None = None,
          no_cache: bool = False) -> tuple[str, float]:
    """Build the user's image as-is, then our layer on it; returns (image id, seconds)."""
    plan = load_plan(build_dir)
    if plan is None or plan.kind not in ("context", "image"):
        raise LocalmlError.one("no build plan for the image; run the environment stage first (doit debug does)")
    started = time.monotonic()
    if plan.kind == "image":  # the deployment's image as it is: only our layer is built
        return _build_layer(build_dir, plan, progress, no_cache, subject=f"the image {plan.declared_image}",
                            file=None), time.monotonic() - started
    assert plan.build_context and plan.dockerfile and plan.dockerfile_path and plan.user_tag
    dockerfile, context = Path(plan.dockerfile), plan.build_context
    with contextlib.ExitStack() as names_held:
        lent: list[tuple[str, str | None]] = []  # (FROM name, the image it named before the build)
        # the classic builder looks a FROM name up locally: each alias target is lent that name for the build,
        # and no other build on this machine lends the same name meanwhile (taken in order: no two builds wait
        # for each other)
        for name in sorted({item["name"] for item in plan.from_images if item["local"] != item["name"]}):
            names_held.enter_context(machine.image_lock(name, f"the image name {name}", say, lent=True))
        for item in plan.from_images:
            if item["local"] != item["name"]:
                before = docker_engine.image_id(item["name"])
                if before != item["id"]:
                    docker_engine.tag_image(item["id"], item["name"])
                    lent.append((item["name"], before))
                say(f"FROM {item['name']} in {Path(plan.dockerfile).name}: the local {item['local']} "
                    "stands in under that name for the build (image_aliases)")
        try:
            stream_build(context, plan.user_tag,
                         lambda lines, error: user_build_failure(lines, error, dockerfile, context),
                         progress=progress, no_cache=no_cache, dockerfile=plan.dockerfile_path)
        finally:
            for name, before in lent:  # the name goes back to what it named, or away: no alias tag stays behind
                if before:
                    docker_engine.tag_image(before, name)
                else:
                    docker_engine.remove_image(name)

    image_id = _build_layer(build_dir, plan, progress, no_cache, subject="the image built from this Dockerfile",
                            file=str(dockerfile))
    return image_id, time.monotonic() - started


def _build_layer(build_dir: Path, plan: ImagePlan, progress: Callable[[str], None] | None, no_cache: bool, *,
                 subject: str, file: str | None) -> str:
    def failure(lines: list[str], error: str) -> LocalmlError:
        return layer_failure(lines, error, file, subject=subject)

    lines = stream_build(str(build_dir), plan.tag, failure, progress=progress, markers=(LAYER_MARKER,),
                         no_cache=no_cache)
    image_id = docker_engine.image_id(plan.tag)
    if image_id is None:
        raise failure(lines, "the build produced no image")
    return image_id


_STEP = re.compile(r"^Step (\d+)/(\d+) : (.*)$")
_BUILDER_NOISE = re.compile(r"^( ---> |Removing intermediate container |Successfully )")


def user_build_failure(lines: list[str], error: str, dockerfile: Path, context: str) -> LocalmlError:
    """The user's Dockerfile failed: its line, the step, Docker's error and the step's last output."""
    try:
        instructions = parse_dockerfile(dockerfile.read_text(encoding="utf-8"))
    except OSError:
        instructions = []
    line = None
    step_text = ""
    output: list[str] = []
    for text in lines:
        step = _STEP.match(text)
        if step:
            number, step_text, output = int(step[1]), step[3], []
            line = instructions[number - 1].line if 0 < number <= len(instructions) else None
        elif text.strip() and not _BUILDER_NOISE.match(text):
            output.append(text.rstrip())
    parse_error = re.search(r"parse error line (\d+)", error)
    if parse_error:
        line, step_text = int(parse_error[1]), ""
    at = f" at {step_text}" if step_text else ""
    shown = "".join(f"\n    {text}" for text in output[-5:])
    return LocalmlError.one(
        f"your Dockerfile failed{at}: {error}{shown}", file=str(dockerfile), line=line, key="environment.build",
        fix=f"fix the Dockerfile or its files; localml builds it unchanged, with {context} as the build context")


def layer_failure(lines: list[str], error: str, dockerfile: str | None, *,
                  subject: str = "the image built from this Dockerfile") -> LocalmlError:
    """localml's layer failed: almost always the user's image lacks the inference server.
    dockerfile: what the image is built from (None: the deployment names the image itself)."""
    marks = [text.split(LAYER_MARKER, 1)[1].strip() for text in lines if text.startswith(LAYER_MARKER)]
    key = "environment.build" if dockerfile else "environment.image"
    if any(mark.startswith("no-server") for mark in marks):
        fix = ("the Dockerfile must install azureml-inference-server-http (e.g. RUN pip install "
               "azureml-inference-server-http); Azure requires it in the image too") if dockerfile else (
               "use an image that has azureml-inference-server-http (Azure requires it too), or give "
               "environment.conda_file (with azureml-inference-server-http) beside the image")
        return LocalmlError.one(
            f"no Python in {subject} can import azureml_inference_server_http (tried {', '.join(PYTHON_CANDIDATES)})",
            file=dockerfile, key=key, fix=fix)
    if any(mark.startswith("no-debugpy") for mark in marks):
        pip_errors = [text.strip() for text in lines if text.strip().startswith("ERROR:")]
        detail = f": {pip_errors[-1]}" if pip_errors else ""
        return LocalmlError.one(
            f"{subject} has no debugpy, and its Python's pip could not add it{detail}",
            file=dockerfile, key=key,
            fix="install debugpy in the Dockerfile (e.g. RUN pip install debugpy), next to the inference server"
            if dockerfile else "use an image with debugpy, or check the connection to the package index")
    return parse_build_failure(lines, error, dockerfile or "")
