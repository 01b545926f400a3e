"""rulefinder: identify the learning rule a brain area uses from recordings over learning."""

from rulefinder.recording import (
    RecordingError,
    RecordingWarning,
    load_recording,
    make_recording,
)

__version__ = "0.1.0"

__all__ = [
    "RecordingError",
    "RecordingWarning",
    "load_recording",
    "make_recording",
    "__version__",
]
