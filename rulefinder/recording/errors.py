"""Errors and warnings raised while reading or validating recordings."""

from __future__ import annotations


class RecordingError(ValueError):
    """A recording that breaks the contract of docs/recording-format (RECORDING_FORMAT.md).

    The message always names the file (``source``), the key or field, what was expected and
    what was found, e.g. ``a.npz: responses has shape (21, 64): expected 3 dimensions
    (session, stimulus, unit)``.
    """

    def __init__(self, source: str, field: str | None, message: str):
        self.source = str(source)
        self.field = field
        self.reason = message
        where = f"{self.source}: " if self.source else ""
        super().__init__(f"{where}{message}")


class RecordingWarning(UserWarning):
    """Something legal but worth telling the user (ignored keys, dropped stimuli, ...)."""
