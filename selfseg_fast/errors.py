"""The one error type users see: a single line naming the file (if any), the problem and the fix,
and the exit codes every command uses."""

from __future__ import annotations

# Exit codes (documented in the README): distinct so scripts can tell them apart.
EXIT_OK = 0  # everything done
EXIT_SOME_FAILED = 1  # the run finished, but some inputs failed (each named on one line)
EXIT_USAGE = 2  # bad command line or configuration: nothing was run
EXIT_INTERNAL = 3  # a bug or an unexpected failure (traceback with -v)


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


class ResourceError(SelfSegError):
    """A request that would exceed a configured budget (pixels, names per image, memory): refused up front
    with the limit and how to raise it, instead of running out of memory. Services answer it with 413."""
