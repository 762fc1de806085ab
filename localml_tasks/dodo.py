"""What a project's dodo.py imports (`localml init` writes it): localml's tasks, its DOIT_CONFIG, and its state
folder, which doit's database lives in (DOIT_CONFIG["dep_file"]) and must exist before doit opens it.

    from localml_tasks.dodo import *  # noqa: F403

doit imports dodo.py in the folder it runs the tasks in, so `.localml/` is made there.
"""

from __future__ import annotations

import sys

from . import tasks
from .state import STATE_DIR_NAME, state_root
from .tasks import *  # noqa: F403 - the task_* functions, for doit
from .tasks import DOIT_CONFIG

try:
    state_root().mkdir(exist_ok=True)
except OSError as exc:
    what = "a file is in its place" if isinstance(exc, FileExistsError) else exc.strerror
    print(f"error: {STATE_DIR_NAME}: cannot make localml's state folder here: {what}\n"
          f"  fix: move {STATE_DIR_NAME} away (localml keeps its state in that folder), or run doit in a folder "
          "where it can write", file=sys.stderr)
    raise SystemExit(1) from None

__all__ = ["DOIT_CONFIG", *sorted(name for name in dir(tasks) if name.startswith("task_"))]
