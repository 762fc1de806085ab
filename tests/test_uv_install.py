"""The uv installer: the lock installed from a persistent cache into a committed image. Pure parts first,
then real builds on the engine: a cold build from the base image, one package added (only it downloaded,
installed on the earlier image), and nothing of the install (uv, CA, proxy settings) left in the image."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import signal
import subprocess
import sys

import docker
import pytest
import requests
from conftest import Project

from localml_tasks import uv_install
from localml_tasks.progress import build_progress_text
from localml_tasks.uv_install import Candidate, choose_parent, image_changes, lock_pins, render_install_script

LOCK = """# localml's lock of conda.yml for Python 3.11 on x86_64-manylinux_2_28 (uv pip compile)
flask==3.1.3
    # via azureml-inference-server-http
numpy==2.4.6
six==1.16.0
"""


def test_the_install_script_removes_what_it_was_given_and_never_resolves():
    script = render_install_script("conda.yml")
    assert "trap 'rm -rf \"$dir\"' EXIT" in script  # uv, the lock, the CA and the secrets go before the commit
    assert "pip sync" in script and "pip install" not in script  # exactly the lock: sync, no resolution
    assert "UV_PYTHON_DOWNLOADS=never" in script and f"UV_CACHE_DIR={uv_install.CACHE_MOUNT}" in script
    assert f"exit {uv_install.UV_CANNOT_RUN}" in script


def test_uvs_own_python_is_installed_into_the_image_only_when_asked():
    assert "python install" not in render_install_script("conda.yml")
    script = render_install_script("conda.yml", "3.12.16")
    assert f"UV_PYTHON_INSTALL_DIR={uv_install.MANAGED_PYTHON_DIR} UV_PYTHON_DOWNLOADS=manual" in script
    assert '"$dir/uv" python install --no-bin 3.12.16\npython=3.12.16\n' in script
    assert uv_install.installer_recipe("conda.yml", "3.12.16") != uv_install.installer_recipe("conda.yml")


def test_the_image_configuration_is_set_in_full():
    changes = image_changes("/usr/bin:/bin", {"localml.pins": 'a==1 b=="2"'})
    assert changes[0] == "ENV PATH=/opt/azureml-env/bin:/usr/bin:/bin"
    assert "ENTRYPOINT []" in changes and changes[-2].startswith('CMD ["python", "/var/localml/bin/supervisor.py"')
    assert changes[-1] == 'LABEL localml.pins="a==1 b==\\"2\\""'


def test_lock_pins_are_the_exact_pins_only():
    assert lock_pins(LOCK) == {"flask==3.1.3", "numpy==2.4.6", "six==1.16.0"}


def test_the_parent_is_the_closest_earlier_environment_with_room_for_a_layer():
    pins = {f"p{n}==1" for n in range(20)}
    close = Candidate("sha256:close", pins - {"p0==1"}, layers=1)
    closer_but_deep = Candidate("sha256:deep", set(pins), layers=uv_install.MAX_LAYERS)
    far = Candidate("sha256:far", {f"q{n}==1" for n in range(20)}, layers=1)
    assert choose_parent([far, close, closer_but_deep], pins) is close
    assert choose_parent([far, closer_but_deep], pins) is None  # start over from the base image
    # a parent holding much the lock does not need: its files would stay below as dead weight
    bloated = Candidate("sha256:big", pins | {f"x{n}==1" for n in range(20)}, layers=1)
    assert choose_parent([bloated], pins) is None
    assert choose_parent([], pins) is None


def test_proxy_settings_go_to_the_sourced_file_quoted(monkeypatch):
    monkeypatch.setenv("HTTPS_PROXY", "http://me:s3cret@proxy:3128")
    monkeypatch.setenv("PIP_INDEX_URL", "https://me:token@index.example/simple/")
    text = uv_install.secrets_env({"HTTPS_PROXY": "http://me:s3cret@proxy:3128", "HOME": "/root"})
    assert "export HTTPS_PROXY=http://me:s3cret@proxy:3128\n" in text and "HOME" not in text
    assert "export UV_DEFAULT_INDEX=https://me:token@index.example/simple\n" in text
    assert "'" in uv_install.secrets_env({"HTTP_PROXY": "http://a b"})  # a space is quoted for sh


def test_progress_says_what_a_build_does():
    assert uv_install.progress_text("Downloading scipy (33.7MiB)") == "downloading scipy (33.7MiB)"
    assert uv_install.progress_text("Installed 1 package in 5ms") == "installed 1 package(s)"
    assert uv_install.progress_text(" + six==1.16.0") is None
    assert build_progress_text("Step 2/6 : RUN  python3 -m venv /opt/azureml-env") \
        == "step 2/6: RUN python3 -m venv /opt/azureml-env"
    assert build_progress_text("  Downloading numpy-2.4.6-cp311-cp311-manylinux_2_28_x86_64.whl (16.1 MB)") \
        == "downloading numpy (16.1 MB)"
    assert build_progress_text("localml-layer: python: /usr/bin/python3", ("localml-layer:",)) \
        == "python: /usr/bin/python3"
    assert build_progress_text(" ---> 1234abcd") is None


def _image_of(project: Project, engine) -> str:
    plan = json.loads((project.root / ".localml" / "endpoints" / project.endpoint / "blue" / "build"
                       / "plan.json").read_text())
    return plan["tag"]


@pytest.mark.docker
@pytest.mark.engine_wide
def test_adding_a_package_downloads_and_installs_only_that_package(project: Project, engine):
    conda = project.root / "environment" / "conda.yml"
    secret = "localml-test-secret-7d1e"
    env = {"NO_PROXY": f"{secret}.invalid", "no_proxy": f"{secret}.invalid"}
    # no_cache=1: from the base image, whatever earlier tests built
    first = project.run("debug", f"spec={project.spec}", "no_cache=1", env=env)
    assert first.returncode == 0, first.stdout + first.stderr
    assert re.search(r"image +built localml/env:\w+ \(\w+\) on the base image in [\d.]+ s: \+\d+ packages",
                     first.stdout), first.stdout
    first_tag = _image_of(project, engine)

    for image in engine.images.list(filters={"label": "localml.pins"}):  # built by an earlier run of this test
        if "six==1.16.0" in image.labels["localml.pins"].split() and image.tags:
            engine.images.remove(image.tags[0])
    conda.write_text(conda.read_text().replace("      - numpy==", "      - six==1.16.0\n      - numpy=="))
    second = project.run("debug", f"spec={project.spec}", env=env)
    assert second.returncode == 0, second.stdout + second.stderr
    image_lines = [line for line in second.stdout.splitlines() if line.startswith("image ")]
    # only six is downloaded and installed, on the image built before (plain progress lines: not a terminal)
    # (six itself may be in the cache already, from an earlier run on this machine: then nothing is downloaded)
    assert not any(re.search(r"downloaded ([02-9]|\d\d+) package", line) for line in image_lines), image_lines
    assert not any("downloading " in line for line in image_lines), image_lines
    assert any(line.endswith("installed 1 package(s)") for line in image_lines), image_lines
    built = next(line for line in image_lines if " built " in line)
    assert f"on {engine.images.get(first_tag).id[7:19]} (an earlier environment)" in built, built
    assert built.endswith(": +six==1.16.0"), built
    port = engine.containers.get(project.container_name()).labels["localml.scoring-port"]
    assert requests.post(f"http://127.0.0.1:{port}/score", json={"data": [list(range(10))]}, timeout=60).status_code \
        == 200

    tag = _image_of(project, engine)
    config = engine.images.get(tag).attrs["Config"]
    assert config["User"] == "" and config["Entrypoint"] in (None, [])
    assert config["Cmd"] == ["python", "/var/localml/bin/supervisor.py", "/var/localml/runtime"]
    assert {"PATH", "VIRTUAL_ENV", "PYTHONUNBUFFERED"} <= {item.split("=")[0] for item in config["Env"]}
    assert not any(item.startswith(("SSL_CERT_FILE", "UV_", "NO_PROXY", "no_proxy")) for item in config["Env"])
    assert "six==1.16.0" in config["Labels"]["localml.pins"]
    # the install folder (uv, lock, CA, proxy settings) is in no layer, and the secret in no file of the image
    found = subprocess.run(
        ["docker", "run", "--rm", tag, "sh", "-c",
         f"ls /tmp/localml-install 2>&1; grep -rl {secret} /opt /tmp /etc /root 2>/dev/null | head -3; "
         "python -c 'import six; print(six.__version__)'"],
        capture_output=True, text=True, timeout=120)
    assert "No such file or directory" in found.stdout and secret not in found.stdout, found.stdout
    assert found.stdout.strip().endswith("1.16.0"), found.stdout
    history = subprocess.run(["docker", "history", "--no-trunc", tag], capture_output=True, text=True).stdout
    assert secret not in history and "ca.crt" not in history
    assert not engine.containers.list(all=True, filters={"name": "localml-install-"})  # no install container left


def test_disk_report_counts_our_images_only():
    from localml_tasks.disk import DiskUsage, our_images, report

    df = {"Images": [
        {"RepoTags": ["localml/env:a"], "Size": 500_000_000, "SharedSize": 200_000_000, "Containers": 1},
        {"RepoTags": ["localml/env:b", "mine:1"], "Size": 400_000_000, "SharedSize": 350_000_000, "Containers": 0},
        {"RepoTags": ["python:3.11"], "Size": 900_000_000, "SharedSize": 0, "Containers": 3},
    ]}
    images = our_images(df)
    assert [image.tags for image in images] == [["localml/env:a"], ["localml/env:b"]]  # never another repository
    lines = report(DiskUsage(images, 270_000_000, 1_000, {"locks": 1_000}), ".localml")
    assert lines[0].startswith("images: 2 of localml's") and "1 used by a container" in lines[0]
    assert "at least 350.0 MB" in lines[0]
    assert lines[1].startswith("download cache: 270.0 MB")
    assert lines[-1].startswith("doit prune removes the 1 image(s) no container uses (at least 50.0 MB)")


@pytest.mark.docker
@pytest.mark.engine_wide
def test_prune_removes_only_unused_images_of_localml(project: Project, engine):
    started = project.run("debug", f"spec={project.spec}", "vscode=0")
    assert started.returncode == 0, started.stdout + started.stderr
    in_use = _image_of(project, engine)
    base = engine.images.get("localml/debian-python:3.11-bookworm")
    base.tag("localml/env", "prune-test")  # one of ours by name, used by no container
    try:
        listing = project.run("endpoints")
        assert listing.returncode == 0, listing.stdout + listing.stderr
        assert re.search(r"^disk +images: \d+ of localml's", listing.stdout, re.M), listing.stdout
        assert re.search(r"^disk +doit prune removes the \d+ image", listing.stdout, re.M), listing.stdout
        pruned = project.run("prune")
        assert pruned.returncode == 0, pruned.stdout + pruned.stderr
        assert "removed image localml/env:prune-test" in pruned.stdout
        assert engine.images.get(in_use)  # the running deployment's image stays
        assert "localml/debian-python:3.11-bookworm" in engine.images.get(base.id).tags  # not ours: untouched
    finally:
        with contextlib.suppress(docker.errors.ImageNotFound):
            engine.images.remove("localml/env:prune-test")


def test_a_failed_install_is_uvs_own_words_at_the_packages_line(tmp_path):
    conda = tmp_path / "conda.yml"
    conda.write_text("dependencies:\n  - python=3.11\n  - pip:\n      - azureml-inference-server-http\n"
                     "      - pyyaml==5.4.1\n")
    lines = ["Resolved 3 packages in 5ms", "  × Failed to build `pyyaml==5.4.1`",
             "  ├─▶ The build backend returned an error",
             "  ╰─▶ Call to `setuptools.build_meta:__legacy__.build_wheel` failed (exit status: 1)"]
    rendered = uv_install.install_failure(lines, 1, str(conda)).render()
    assert f"{conda}:5: dependencies: uv could not install pyyaml: × Failed to build `pyyaml==5.4.1`" in rendered
    assert "The build backend returned an error" in rendered and "fix: " in rendered
    bare = uv_install.install_failure(["something odd"], 2, str(conda)).render()
    assert "uv exited with 2" in bare and "something odd" in bare


@pytest.mark.docker
@pytest.mark.engine_wide
def test_ctrl_c_mid_install_leaves_no_container_or_image_and_the_next_debug_builds(project: Project, engine):
    dangling_before = {image.id for image in engine.images.list(filters={"dangling": True})}
    process = subprocess.Popen(
        [sys.executable, "-m", "localml_tasks", "debug", f"spec={project.spec}", "no_cache=1", "vscode=0"],
        cwd=project.root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "NO_COLOR": "1", "COLUMNS": "200"})
    seen = []
    assert process.stdout is not None
    for line in process.stdout:  # plain progress lines: the install container is running at "checked"
        seen.append(line)
        if line.startswith("image ") and "checked " in line:
            break
    else:
        raise AssertionError("the install never started:\n" + "".join(seen))
    installing = [c.name for c in engine.containers.list(all=True) if c.name.startswith("localml-install-")]
    assert installing, "no install container while installing"
    process.send_signal(signal.SIGINT)
    rest = process.communicate(timeout=60)[0]
    assert process.returncode != 0
    assert "Traceback" not in rest, rest
    left = [name for name in installing if any(c.name == name for c in engine.containers.list(all=True))]
    assert not left, f"install containers left after Ctrl-C: {left}"
    assert {image.id for image in engine.images.list(filters={"dangling": True})} <= dangling_before
    again = project.run("debug", f"spec={project.spec}", "vscode=0")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "health        healthy" in again.stdout


def test_a_host_of_another_kind_gets_uvs_linux_wheel_for_the_image(tmp_path, monkeypatch):
    """macOS or another architecture cannot hand the image its own uv: the same version's wheel for the
    image's platform is installed once under .localml/cache/ and runs in a Linux image."""
    monkeypatch.chdir(tmp_path)
    image_platform = uv_install.lock_platform()  # this machine's: the wheel must run here to be checked
    monkeypatch.setattr(platform, "machine", lambda: "riscv64")  # the host: another architecture
    binary = uv_install.image_uv_binary(image_platform)
    assert binary.is_relative_to(tmp_path / ".localml" / "cache") and binary.name == "uv"
    host_version = subprocess.run([uv_install.uv_binary(), "--version"], capture_output=True, text=True).stdout
    assert subprocess.run([str(binary), "--version"], capture_output=True, text=True).stdout == host_version
    assert uv_install.image_uv_binary(image_platform) == binary  # installed once, then reused
