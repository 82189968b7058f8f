"""streamemg: real-time needle-EMG classification of many live streams, batched on one device."""

from .types import CLASS_NAMES, Chunk, Estimate, StatusEvent, StreamInfo, StreamStatus, Window

__version__ = "0.1.0"

__all__ = [
    "CLASS_NAMES",
    "Chunk",
    "Estimate",
    "StatusEvent",
    "StreamInfo",
    "StreamStatus",
    "Window",
    "__version__",
]
