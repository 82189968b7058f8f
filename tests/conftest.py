"""Shared test configuration.

liblsl must be confined to this machine before any LSL object exists, so the configuration is
installed here, at import time of the test session, before any test module imports pylsl.
"""

from __future__ import annotations

from streamemg.lsl.config import configure_machine_scope

configure_machine_scope(force=True)
