"""Sources: one module per transport (sim, file, memory, lsl, mqtt), opened from URIs."""

from .base import SCHEMES, Source, open_source, split_uri

__all__ = ["SCHEMES", "Source", "open_source", "split_uri"]
