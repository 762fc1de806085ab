"""What a project's dodo.py imports (`localml init` writes it): localml's tasks, its DOIT_CONFIG, and its state
folder, which doit's database lives in (DOIT_CONFIG["dep_file"]) and must exist before doit opens it.

    from localml_tasks.dodo import *  # noqa: F403

doit imports dodo.py in the folder it runs the tasks in, so `.localml/` is made there.
"""

from __future__ import annotations

import sys

from . import tasks
from .state import make_state_root
from .tasks import *  # noqa: F403 - the task_* functions, for doit
from .tasks import DOIT_CONFIG

_cannot = make_state_root("doit")
if _cannot:
    print(_cannot, file=sys.stderr)
    raise SystemExit(1)

__all__ = ["DOIT_CONFIG", *sorted(name for name in dir(tasks) if name.startswith("task_"))]
