"""User-facing errors.

Every mistake a user can make surfaces as a `KCompileError` (or a subclass) carrying a message the
user can act on and, where there is one, the source location it came from. The CLI prints
`str(error)` and exits non-zero; it never shows a traceback.
"""

from __future__ import annotations

import linecache
from dataclasses import dataclass


@dataclass(frozen=True)
class SourceLoc:
    """A position in a user's source: a `.k` file, a Python file, a `.keras` archive member."""

    file: str
    line: int
    col: int = 0

    def __str__(self) -> str:
        if self.line <= 0:  # a whole file (a .keras archive has no lines)
            return self.file
        return f"{self.file}:{self.line}:{self.col}" if self.col else f"{self.file}:{self.line}"

    def excerpt(self) -> str:
        """The source line and a caret under the column, or '' when the file cannot be read."""
        if self.line <= 0:
            return ""
        text = linecache.getline(self.file, self.line).rstrip("\n")
        if not text:
            return ""
        if self.col <= 0:
            return f"    {text}"
        return f"    {text}\n    {' ' * (self.col - 1)}^"


class KCompileError(Exception):
    """Base of every error kcompile reports to a user."""

    def __init__(self, message: str, loc: SourceLoc | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.loc = loc

    def __str__(self) -> str:
        if self.loc is None:
            return self.message
        excerpt = self.loc.excerpt()
        head = f"{self.loc}: {self.message}"
        return f"{head}\n{excerpt}" if excerpt else head


class ShapeError(KCompileError):
    """Tensor shapes or dtypes that an op or a layer cannot accept."""


class GraphError(KCompileError):
    """An IR graph that breaks an invariant (found by the verifier)."""


class ModelError(KCompileError):
    """A model definition that cannot be built (bad arguments, unknown layer, bad wiring)."""


class LoweringError(KCompileError):
    """A graph that a back end cannot express."""


class RuntimeFailure(KCompileError):
    """Running a compiled model failed (bad feed, missing input, engine error)."""
