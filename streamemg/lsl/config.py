"""Keeping Lab Streaming Layer on this machine.

liblsl reads its configuration once, when the first LSL object is created, from the file named by the
``LSLAPICFG`` environment variable. :func:`configure_machine_scope` writes a configuration that keeps
discovery and data on the loopback interface and points ``LSLAPICFG`` at it. The tests and the simulators
call it before any LSL object exists; a lab that wants LAN discovery simply does not call it (or sets
``LSLAPICFG`` to its own file).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

MACHINE_SCOPE_CONFIG = """\
[ports]
IPv6 = disable

[multicast]
ResolveScope = machine
MachineAddresses = {127.0.0.1}
AddressesOverride = {127.0.0.1}

[lab]
KnownPeers = {}

[log]
level = -3
"""


def configure_machine_scope(force: bool = False) -> Path:
    """Point liblsl at a loopback-only configuration (unless LSLAPICFG is already set and not ``force``).

    Must run before the first LSL object is created in this process (liblsl reads the file once).
    Returns the path of the configuration in effect.
    """
    current = os.environ.get("LSLAPICFG")
    if current and not force and Path(current).exists():
        return Path(current)
    fd, name = tempfile.mkstemp(prefix="streamemg-lsl-", suffix=".cfg")
    with os.fdopen(fd, "w") as fh:
        fh.write(MACHINE_SCOPE_CONFIG)
    os.environ["LSLAPICFG"] = name
    return Path(name)
