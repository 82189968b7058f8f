"""The one error tree of streamemg.

Every error a user can meet is a :class:`StreamEMGError`. Third-party exceptions (pylsl, aiomqtt,
torch, file I/O) are converted where they enter streamemg (``raise ... from exc``) into one of
these, with a message that says what went wrong and what to do about it.

::

    StreamEMGError
    ├── ConfigError            bad setting, CLI flag or config file field (also a ValueError)
    ├── SourceError            a source could not be opened or read
    │   ├── SourceURIError     unknown or malformed source URI
    │   ├── StreamRateError    a stream is slower than the model's rate (no silent upsampling)
    │   ├── LSLUnavailableError  liblsl could not be loaded
    │   └── BrokerError        an MQTT broker could not be reached / went away
    ├── ProtocolError          a malformed MQTT data/meta message (counted, never fatal to other devices)
    ├── DataFormatError        a recording file is unreadable or inconsistent
    ├── ModelError             a model bundle is missing, unreadable or incompatible
    ├── InferenceError         the inference device failed (e.g. out of memory)
    └── SinkError              an output could not be written (disk full, publish failed)
"""

from __future__ import annotations


class StreamEMGError(Exception):
    """Base class of every error raised by streamemg."""


class ConfigError(StreamEMGError, ValueError):
    """A setting, CLI flag or config-file field has an invalid value."""


class SourceError(StreamEMGError):
    """A source could not be opened or read."""


class SourceURIError(SourceError, ValueError):
    """A source URI is unknown or malformed."""


class StreamRateError(SourceError):
    """A stream's rate is below the model's rate; streamemg does not upsample silently."""


class LSLUnavailableError(SourceError):
    """liblsl (the library behind pylsl) could not be loaded."""


class BrokerError(SourceError):
    """An MQTT broker could not be reached or the connection was lost."""


class ProtocolError(StreamEMGError, ValueError):
    """A message does not follow the streamemg MQTT wire protocol."""


class DataFormatError(StreamEMGError):
    """A recording file is unreadable, truncated or inconsistent with its header."""


class ModelError(StreamEMGError):
    """A model bundle is missing, unreadable or incompatible with this version."""


class InferenceError(StreamEMGError):
    """Running the model on the inference device failed."""


class SinkError(StreamEMGError):
    """An output (file, broker, outlet) could not be written."""
