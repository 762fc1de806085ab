"""doit's console output, reshaped: one line per stage, failures as our own messages."""

from __future__ import annotations

from typing import Any

from doit.exceptions import BaseFail, UnmetDependency
from doit.reporter import ConsoleReporter


class LocalmlReporter(ConsoleReporter):
    desc = "localml: one line per stage"

    def execute_task(self, task: Any) -> None:
        # the stage's action prints its own line, saying what it did and why
        pass

    def skip_uptodate(self, task: Any) -> None:
        if task.actions and not task.name.startswith("_"):
            stage, _, subject = task.name.partition(":")
            self.write(f"{stage:<13} up to date ({subject or 'nothing changed'})\n")

    def add_failure(self, task: Any, fail: BaseFail) -> None:
        # a failed stage already printed its message; the stages after it say nothing more
        if isinstance(fail, UnmetDependency):
            return
        super().add_failure(task, fail)
