"""What localml holds on disk, and pruning what nothing uses (`doit endpoints`, `doit prune`).

localml's images are the environment images (localml/env) and, for environment.build, the images built
from the user's Dockerfile (localml/build); both are caches of what a conda file or build context gives,
rebuilt on demand. The uv download cache is one Docker volume for every project on the engine. The
state folder (.localml/) holds this folder's locks, process-mode venvs and deployment state.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import docker_engine
from .build_context import USER_IMAGE_REPOSITORY
from .image import IMAGE_REPOSITORY
from .uv_install import cache_volume

OUR_REPOSITORIES = (IMAGE_REPOSITORY, USER_IMAGE_REPOSITORY)


@dataclass
class OurImage:
    tags: list[str]
    size: int  # with the layers it shares
    own: int  # in no other image
    containers: int  # using it, running or not


@dataclass
class DiskUsage:
    images: list[OurImage]
    cache_bytes: int | None  # None: no cache volume yet
    state_bytes: int
    state_parts: dict[str, int]  # bytes under .localml/<part>


def our_images(df: dict[str, Any]) -> list[OurImage]:
    """localml's images in the engine's df data, by repository (pure)."""
    found = []
    for item in df.get("Images") or []:
        tags = [tag for tag in item.get("RepoTags") or [] if tag.split(":")[0] in OUR_REPOSITORIES]
        if tags:
            size = int(item.get("Size") or 0)
            shared = max(int(item.get("SharedSize") or 0), 0)  # -1: not computed
            found.append(OurImage(tags, size, size - shared, max(int(item.get("Containers") or 0), 0)))
    return found


def cache_size(df: dict[str, Any]) -> int | None:
    for volume in df.get("Volumes") or []:
        if volume.get("Name") == cache_volume():
            return int((volume.get("UsageData") or {}).get("Size") or 0)
    return None


def folder_size(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                continue  # removed while we counted
    return total


def measure(state_root: Path) -> DiskUsage:
    df = docker_engine.disk_usage() if docker_engine.engine_available() else {}
    parts = {child.name: folder_size(child) for child in sorted(state_root.iterdir()) if child.is_dir()} \
        if state_root.is_dir() else {}
    state = folder_size(state_root) if state_root.is_dir() else 0
    return DiskUsage(our_images(df), cache_size(df), state, parts)


def size_text(size: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} B"


def report(usage: DiskUsage, state_name: str) -> list[str]:
    """The lines `doit endpoints` prints about disk (pure)."""
    unused = [image for image in usage.images if image.containers == 0]
    lines = []
    if usage.images:
        total = sum(image.own for image in usage.images)
        lines.append(f"images: {len(usage.images)} of localml's ({', '.join(OUR_REPOSITORIES)}), "
                     f"{len(usage.images) - len(unused)} used by a container; at least {size_text(total)} "
                     "not shared with other images")
    else:
        lines.append("images: none of localml's")
    if usage.cache_bytes is not None:
        lines.append(f"download cache: {size_text(usage.cache_bytes)} (Docker volume {cache_volume()}, "
                     "shared by every project's builds)")
    parts = ", ".join(f"{name} {size_text(size)}" for name, size in usage.state_parts.items() if size)
    lines.append(f"state: {size_text(usage.state_bytes)} in {state_name}/ of this folder" + (f" ({parts})" if parts
                                                                                             else ""))
    if unused:
        lines.append(f"doit prune removes the {len(unused)} image(s) no container uses "
                     f"(at least {size_text(sum(image.own for image in unused))}); prune cache=1 empties the "
                     "download cache too")
    return lines


def prune(with_cache: bool) -> list[str]:
    """Remove localml's images on this engine that no container uses, running or stopped, whichever folder
    built them (they are rebuilt on demand, from the cache), and the download cache with with_cache; what
    was done, as lines."""
    done = []
    for found in our_images(docker_engine.disk_usage()):
        if found.containers:
            continue
        for tag in found.tags:
            if docker_engine.remove_image(tag):
                done.append(f"removed image {tag} ({size_text(found.own)} of its own)")
    if with_cache and docker_engine.remove_volume(cache_volume()):
        done.append(f"removed the download cache (Docker volume {cache_volume()})")
    return done or ["nothing to remove: every image of localml's is used by a container"]
