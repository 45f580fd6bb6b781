"""Exception types. Each message says what was wrong and what to do; the CLI prints it
without a traceback and exits non-zero."""

from __future__ import annotations

__all__ = [
    "ClipforgeError",
    "ConfigError",
    "CheckpointError",
    "TokenizerError",
    "DataError",
    "OfflineError",
    "TrainingError",
    "SearchIndexError",
]


class ClipforgeError(Exception):
    """Base class of every error clipforge raises on purpose."""


class ConfigError(ClipforgeError, ValueError):
    """An unknown model name, a bad config file or an unknown override key."""


class CheckpointError(ClipforgeError):
    """A checkpoint that cannot be read, or does not match the architecture."""


class TokenizerError(ClipforgeError, ValueError):
    """Text that cannot be tokenized as asked (too long without truncate=True)."""


class DataError(ClipforgeError):
    """A missing, empty or unreadable data set."""


class OfflineError(ClipforgeError):
    """Pretrained weights are not cached and cannot be downloaded."""


class TrainingError(ClipforgeError):
    """A training run that cannot go on (too many non-finite steps, bad resume state)."""


class SearchIndexError(ClipforgeError):
    """A search index that cannot be opened or updated."""
