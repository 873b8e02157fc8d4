"""The errors tok1d raises for bad input: each names the file, key or value at fault."""


class Tok1dError(Exception):
    """Base class: a user-facing error whose message says what to fix."""


class ConfigError(Tok1dError, ValueError):
    """A study, profile or command-line override is wrong (unknown key, bad type, bad name)."""


class DataError(Tok1dError, FileNotFoundError):
    """A dataset path is missing, empty or holds an unreadable image."""


class StageError(Tok1dError, RuntimeError):
    """A stage failed; the message carries the run directory and its log."""


class WeightsError(Tok1dError, OSError):
    """Pretrained weights are missing (offline, unknown id, bad path) or do not fit the mapping.

    ``reason`` is the message without the how-to-fetch ``hint``.
    """

    def __init__(self, reason: str, hint: str = "") -> None:
        super().__init__(f"{reason}. {hint}" if hint else reason)
        self.reason = reason


class CheckpointError(Tok1dError, OSError):
    """A model folder or checkpoint is missing, unreadable or does not fit the model its config builds."""


class StoreError(Tok1dError, OSError):
    """A run-store record is unreadable, or a write failed (a full disk): the message names the file."""
