"""localml's tasks for this folder: `doit list` shows them; `doit debug spec=specs/blue-deployment.yml`."""

from pathlib import Path

from localml_tasks.tasks import *  # noqa: F403 - doit collects the task_* functions
from localml_tasks.tasks import DOIT_CONFIG  # noqa: F401

(Path(__file__).parent / ".localml").mkdir(exist_ok=True)
