"""How a change to a code or model file is seen, and how many files a watched folder may hold.

doit's default checker hashes (MD5) every file_dep whose modification time changed: a 5 GB model costs
tens of seconds after each save or touch, and the first run hashes the whole code folder and model. Here
a file over FILE_CONTENT_LIMIT, and every file of a folder holding more than FOLDER_CONTENT_LIMIT in all,
is tracked by its metadata instead (size, mtime_ns, inode): a touch reloads the server, a hash is never
computed. Every other file is tracked as doit does it (timestamp, then size, then MD5), with the same
saved state, so files move between the two ways without a false "changed".

A folder with more than MAX_FILES files is refused before it is walked to the end (spec validation says
so); watched_files stops there too, so no command walks a whole disk.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from doit.dependency import MD5Checker

from .quantities import describe_bytes

FILE_CONTENT_LIMIT = 256 * 1024**2  # a larger file is tracked by size, mtime and inode
FOLDER_CONTENT_LIMIT = 2 * 1024**3  # a folder holding more: all its files are
MAX_FILES = 50_000  # a code or model folder with more is refused
HASH_BYTES_PER_SECOND = 400 * 1024**2  # MD5 on this kind of machine, for the message only
IGNORED_SUFFIXES = (".pyc", ".pyo", ".swp")

_metadata_folders: set[str] = set()  # folders over FOLDER_CONTENT_LIMIT seen by survey() in this process


@dataclass
class Survey:
    """The files of a code folder or model (a folder or one file), as watched: caches left out."""

    root: str
    files: list[str] = field(default_factory=list)
    total_bytes: int = 0
    large: list[tuple[str, int]] = field(default_factory=list)  # (path, size) of files over FILE_CONTENT_LIMIT
    too_many: bool = False  # more than max_files: the walk stopped there

    @property
    def by_metadata(self) -> bool:
        """Every file of it is tracked by metadata: even without its large files, it is too much to hash."""
        return self.total_bytes - sum(size for _, size in self.large) > FOLDER_CONTENT_LIMIT

    def note(self, key: str) -> str | None:
        """One line for the validate stage when some of its files are tracked by metadata, else None."""
        how = "by size, modification time and inode, not by content"
        if self.by_metadata:
            return (f"{key}: {describe_bytes(self.total_bytes)} in {len(self.files):,} files (over "
                    f"{describe_bytes(FOLDER_CONTENT_LIMIT)}): changes to them are seen {how} (hashing them would "
                    f"take about {_hash_seconds(self.total_bytes)} s); a touch reloads the server too")
        if self.large:
            path, size = max(self.large, key=lambda item: item[1])
            which = (os.path.basename(path) if len(self.large) == 1
                     else f"{len(self.large)} files, the largest {os.path.basename(path)}")
            return (f"{key}: {which} ({describe_bytes(size)}) is over {describe_bytes(FILE_CONTENT_LIMIT)}: changes "
                    f"to it are seen {how} (hashing it would take about {_hash_seconds(size)} s); a touch reloads "
                    "the server too")
        return None


def _hash_seconds(size: int) -> str:
    return f"{max(size / HASH_BYTES_PER_SECOND, 1):.0f}"


def survey(root: str | Path, skipped_dirs: Iterable[str] = (), *, max_files: int | None = None,
           remember: bool = True) -> Survey:
    """Walk root (a folder, or one file) counting as it goes; stop after max_files (default MAX_FILES) files,
    with too_many set.

    remember: a folder over FOLDER_CONTENT_LIMIT is remembered, for the checker, as tracked by metadata."""
    root = str(root)
    found = Survey(root)
    skipped = set(skipped_dirs)
    max_files = MAX_FILES if max_files is None else max_files
    if os.path.isfile(root):
        _add(found, root)
        return found
    for folder, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in skipped)
        for name in sorted(names):
            if name.endswith(IGNORED_SUFFIXES) or name.startswith(".#"):
                continue
            if len(found.files) >= max_files:
                found.too_many = True
                return found
            _add(found, os.path.join(folder, name))
    if remember and found.by_metadata:
        _metadata_folders.add(os.path.abspath(root))
    return found


def _add(found: Survey, path: str) -> None:
    found.files.append(path)
    try:
        size = os.stat(path).st_size  # a broken link: no size (doit reports it missing)
    except OSError:
        return
    found.total_bytes += size
    if size > FILE_CONTENT_LIMIT:
        found.large.append((path, size))


def forget_folders() -> None:
    """Forget the folders survey() found too large to hash (tests)."""
    _metadata_folders.clear()


def tracked_by_metadata(path: str, size: int) -> bool:
    if size > FILE_CONTENT_LIMIT:
        return True
    return any(path.startswith(folder + os.sep) for folder in _metadata_folders)


def metadata(file_stat: os.stat_result) -> str:
    return f"metadata size={file_stat.st_size} mtime_ns={file_stat.st_mtime_ns} inode={file_stat.st_ino}"


class ContentOrMetadataChecker(MD5Checker):
    """doit's MD5 checker, except for files too large to hash (see tracked_by_metadata): their saved state is
    (mtime, size, "metadata size=... mtime_ns=... inode=..."), and any difference in it is a change."""

    def check_modified(self, file_path: str, file_stat: os.stat_result, state: Any) -> bool:
        if tracked_by_metadata(file_path, file_stat.st_size):
            return state[2] != metadata(file_stat)
        return super().check_modified(file_path, file_stat, state)

    def get_state(self, dep: str, current_state: Any) -> Any:
        file_stat = os.stat(dep)
        if tracked_by_metadata(dep, file_stat.st_size):
            state = [file_stat.st_mtime, file_stat.st_size, metadata(file_stat)]
            return None if current_state is not None and list(current_state) == state else state
        return super().get_state(dep, current_state)
