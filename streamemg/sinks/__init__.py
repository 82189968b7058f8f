"""Sinks: outputs for estimates (JSON lines, stdout, LSL outlets, MQTT, recorder)."""

from .base import SCHEMES, Sink, SinkRunner, SinkSettings, open_sink

__all__ = ["SCHEMES", "Sink", "SinkRunner", "SinkSettings", "open_sink"]
