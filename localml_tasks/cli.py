"""`localml`: the same tasks from any folder, with doit embedded.

Its own dep file under .localml/, and no reading of the user's doit config
(pyproject.toml [tool.doit], doit.cfg): those belong to the user's own dodo.py.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import sys
from pathlib import Path

from doit.cmd_base import ModuleTaskLoader
from doit.doit_cmd import DoitMain

from . import tasks
from .console import error
from .errors import _display_path
from .state import make_state_root


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] in OWN_COMMANDS:
        return _own_command(args[0], args[1:])
    cannot = make_state_root("localml")
    if cannot:
        print(cannot, file=sys.stderr)
        return 1
    _set_aside_corrupt_dep_file(Path(tasks.DOIT_CONFIG["dep_file"]))
    loader = ModuleTaskLoader(tasks)
    runner = DoitMain(loader, config_filenames=(), extra_config={"GLOBAL": dict(tasks.DOIT_CONFIG)})
    try:
        return runner.run(args)
    except KeyboardInterrupt:  # between two stages, in doit's own code (within a stage, its guard says it)
        error(tasks.INTERRUPTED)
        return 130


OWN_COMMANDS = ("init", "doctor")  # localml's own, before doit: no dodo.py or state folder needed yet


def _own_command(name: str, rest: list[str]) -> int:
    """`localml init` (a project folder made ready for doit) and `localml doctor` (this machine and folder)."""
    if rest:
        from .errors import LocalmlError, Problem
        from .variables import unknown

        problems = [unknown(*arg.split("=", 1), (), f"localml {name}") if "=" in arg else
                    Problem(f"localml {name} takes no arguments (got {arg})", fix=f"run localml {name} in your "
                            "project folder") for arg in rest]
        error(LocalmlError(problems).render())
        return 1
    if name == "init":
        from . import init

        return init.main()
    from . import doctor

    return doctor.main()



def _set_aside_corrupt_dep_file(path: Path) -> None:
    """doit stops with a traceback on a dep file that is no SQLite database: keep it beside (renamed), and
    start a new one (every stage then checks its inputs once more)."""
    if not path.is_file():
        return
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            db.execute("select count(*) from sqlite_master").fetchone()
    except sqlite3.OperationalError:
        return  # busy (another command writes it) or unreadable: doit itself says what it finds
    except sqlite3.DatabaseError as exc:
        kept = path.with_name(path.name + ".corrupt")
        with contextlib.suppress(OSError):
            os.replace(path, kept)
            print(f"warning: ignored the corrupt state file {_display_path(str(path))} ({exc}): localml rebuilds "
                  f"it (kept as {_display_path(str(kept))})", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
