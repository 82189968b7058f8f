"""Quantitative MUAP analysis (QEMG) on live streams: detection, templates, clinical measures, reference."""

from .analyser import QemgAnalyser, QemgSettings, QemgSummary, UnitMeasures
from .measures import WaveformMeasures, firing_stats, waveform_measures

__all__ = [
    "QemgAnalyser",
    "QemgSettings",
    "QemgSummary",
    "UnitMeasures",
    "WaveformMeasures",
    "firing_stats",
    "waveform_measures",
]
