"""Device emulators for streamemg: synthetic needle EMG with class-specific motor-unit physiology and pacing.

Transport emulators (``simulators.lsl_amp``, ``simulators.mqtt_device``) are separate modules imported only
when used, so importing this package needs neither liblsl nor an MQTT client.
"""

from .pacing import Pacer
from .synth import CLASS_LABELS, MIXED, SIM_CLASSES, EMGSimulator, normalize_class, pick_class

__all__ = ["CLASS_LABELS", "MIXED", "SIM_CLASSES", "EMGSimulator", "Pacer", "normalize_class", "pick_class"]
