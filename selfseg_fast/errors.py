"""The one error type users see: a single line naming the file (if any), the problem and the fix."""

from __future__ import annotations


class SelfSegError(Exception):
    """A user-facing failure. `str(err)` is one line; the CLI prints it without a traceback."""

    def __init__(self, message: str, *, path: str | None = None) -> None:
        self.path = path
        text = f"{path}: {message}" if path else message
        super().__init__(" ".join(text.split()))  # always one line


class ImageError(SelfSegError):
    """An input image that cannot be used (unreadable, truncated, not an image, too large)."""


class WeightsError(SelfSegError):
    """Model weights that cannot be found or loaded."""


class NLPDataError(SelfSegError):
    """Missing spaCy model or WordNet data."""
