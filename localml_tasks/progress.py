"""Progress of long work (image builds): one live line on a terminal, plain lines otherwise (CI, pipes)."""

from __future__ import annotations

import re
from types import TracebackType

from rich.console import Console
from rich.status import Status


class Progress:
    """Call it with what is happening now. On a terminal the line is replaced in place and disappears at
    the end (the stage prints its own result line); elsewhere each new text is printed once."""

    def __init__(self, console: Console, stage: str) -> None:
        self.console = console
        self.stage = stage
        self.status: Status | None = None
        self.last = ""

    def __enter__(self) -> Progress:
        if self.console.is_terminal:
            self.status = self.console.status(f"{self.stage:<13} …")
            self.status.start()
        return self

    def __call__(self, text: str) -> None:
        if text == self.last:
            return
        self.last = text
        if self.status is not None:
            self.status.update(f"[bold]{self.stage:<13}[/] {text}")
        else:
            self.console.print(f"[bold]{self.stage:<13}[/] {text}", markup=True)

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        if self.status is not None:
            self.status.stop()


_STEP = re.compile(r"^Step (\d+/\d+) : (.*)$")
_PIP_DOWNLOAD = re.compile(r"^\s*Downloading (?:\S+/)?([A-Za-z0-9_.]+?)-\d\S*\s+\(([^)]+)\)")


def build_progress_text(line: str, markers: tuple[str, ...] = ()) -> str | None:
    """A classic build's output line as progress: the Dockerfile step, pip's downloads with their sizes,
    lines starting with one of markers; None: not worth showing."""
    step = _STEP.match(line)
    if step:
        instruction = " ".join(step[2].split())
        return f"step {step[1]}: {instruction[:90]}{'…' if len(instruction) > 90 else ''}"
    download = _PIP_DOWNLOAD.match(line)
    if download:
        return f"downloading {download[1]} ({download[2]})"
    if line.startswith("Installing collected packages"):
        return "installing the downloaded packages"
    for marker in markers:
        if line.startswith(marker):
            return line[len(marker):].strip()
    return None
