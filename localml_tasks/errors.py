"""The one error type users see: where the problem is, what is wrong, how to fix it."""

from __future__ import annotations

import os
from dataclasses import dataclass, field


@dataclass
class Problem:
    """One thing wrong with the user's input or machine."""

    message: str
    file: str | None = None
    line: int | None = None  # 1-based
    column: int | None = None  # 1-based
    key: str | None = None  # dotted key path, e.g. environment.conda_file
    fix: str | None = None
    # a command-line override (set=key.path=value, deployment=green) when the value came from it, not the file
    override: str | None = None

    def render(self) -> str:
        where = ""
        if self.override:
            where = f"{self.override}: "
        elif self.file:
            where = _display_path(self.file)
            if self.line:
                where += f":{self.line}"
                if self.column:
                    where += f":{self.column}"
            where += ": "
        key = f"{self.key}: " if self.key else ""
        text = f"error: {where}{key}{self.message}"
        if self.fix:
            text += f"\n  fix: {self.fix}"
        return text


@dataclass
class LocalmlError(Exception):
    """Raised by any stage; rendered without a traceback by the task wrapper."""

    problems: list[Problem] = field(default_factory=list)

    @classmethod
    def one(cls, message: str, **where: object) -> LocalmlError:
        return cls([Problem(message, **where)])  # type: ignore[arg-type]

    def render(self) -> str:
        return "\n".join(p.render() for p in self.problems)

    def __str__(self) -> str:
        return self.render()


def _display_path(path: str) -> str:
    """Relative to the working directory when inside it: shorter and clickable."""
    try:
        rel = os.path.relpath(path)
    except ValueError:
        return path
    return path if rel.startswith("..") else rel
