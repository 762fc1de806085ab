"""Machine-wide state, shared by every project folder: the folder of localml's locks and port reservations.

LOCALML_LOCK_DIR, else $XDG_CACHE_HOME/localml/locks, else ~/.cache/localml/locks. Per machine, not per
project: container names and host ports are one per Docker engine and one per machine.
"""

from __future__ import annotations

import os
from pathlib import Path

LOCK_DIR_VARIABLE = "LOCALML_LOCK_DIR"


def lock_dir() -> Path:
    given = os.environ.get(LOCK_DIR_VARIABLE)
    if given:
        return Path(given)
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "localml" / "locks"
