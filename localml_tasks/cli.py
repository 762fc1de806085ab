"""`localml`: the same tasks from any folder, with doit embedded.

Its own dep file under .localml/, and no reading of the user's doit config
(pyproject.toml [tool.doit], doit.cfg): those belong to the user's own dodo.py.
"""

from __future__ import annotations

import sys

from doit.cmd_base import ModuleTaskLoader
from doit.doit_cmd import DoitMain

from . import tasks
from .state import state_root


def main(argv: list[str] | None = None) -> int:
    state_root().mkdir(exist_ok=True)
    loader = ModuleTaskLoader(tasks)
    runner = DoitMain(loader, config_filenames=(), extra_config={"GLOBAL": dict(tasks.DOIT_CONFIG)})
    return runner.run(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
