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


def raised_by(exc: BaseException, packages: tuple[str, ...]) -> bool:
    """Whether ``exc`` was raised inside a call into one of ``packages``.

    The frame just below the innermost frame of rulefinder in the traceback must belong to
    one of ``packages`` (the library may raise from deeper, e.g. from the standard library it
    calls). Used to tell a damaged file from a bug: when a library that parses the file (h5py,
    zarr, ...) raises, the file is bad; when our own code raises the same type, it is a bug
    and must surface.
    """
    modules = []
    tb = exc.__traceback__
    while tb is not None:
        modules.append(tb.tb_frame.f_globals.get("__name__", "") or "")
        tb = tb.tb_next
    ours = [i for i, m in enumerate(modules) if m == "rulefinder" or m.startswith("rulefinder.")]
    below = ours[-1] + 1 if ours else 0
    if below >= len(modules):
        return False
    module = modules[below]
    return any(module == p or module.startswith(p + ".") for p in packages)


def short(exc: BaseException, limit: int = 240) -> str:
    """``Type: message`` on one line, cut to ``limit`` characters (library messages can hold
    whole metadata documents)."""
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


class library_errors:  # noqa: N801 - used like a function: ``with library_errors(...):``
    """Turn ``errors`` raised inside ``packages`` into a :class:`RecordingError` saying ``what``.

    Anything else (another type, or the same type raised by our own code) propagates. One
    instance may guard several blocks.
    """

    def __init__(
        self,
        source: str,
        what: str,
        errors: tuple[type[BaseException], ...],
        packages: tuple[str, ...],
        field: str | None = None,
        hide: str | None = None,
    ):
        self.source, self.what, self.errors, self.packages, self.field = source, what, errors, packages, field
        self.hide = hide  # a private path (an unpacking folder) shown as the source instead

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, exc, tb) -> bool:
        if exc is None or isinstance(exc, RecordingError) or not isinstance(exc, self.errors):
            return False
        if not raised_by(exc, self.packages):
            return False
        detail = short(exc)
        if self.hide:
            detail = detail.replace(self.hide, self.source)
        raise RecordingError(self.source, self.field, f"{self.what}: {detail}") from exc
