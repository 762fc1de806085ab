"""What a command prints: one line per thing done, `stage  text`, and errors on standard error.

User text (paths, an init() error, an override) goes into these lines, so it is never read as rich markup:
`[/]` in a message must print as written, not end a style or raise.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.markup import escape

# emoji=False: `:x:` in a name or message stays as written (rich would print an emoji)
out = Console(highlight=False, soft_wrap=True, emoji=False)
errors = Console(stderr=True, highlight=False, soft_wrap=True, emoji=False)


def line(stage: str, text: str) -> None:
    out.print(f"[bold]{stage:<13}[/] {escape(text)}")


def says(stage: str) -> Callable[[str], None]:
    return lambda text: line(stage, text)


def error(text: str) -> None:
    errors.print(f"[red]{escape(text)}[/]")


def display(path: Path) -> str:
    """Relative to the working directory when inside it: shorter, and clickable in a terminal."""
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)
