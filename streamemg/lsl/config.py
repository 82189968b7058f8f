"""Keeping Lab Streaming Layer on this machine.

liblsl reads its configuration once, when the first LSL object is created, from the file named by the
``LSLAPICFG`` environment variable. :func:`configure_machine_scope` writes a configuration that keeps
discovery and data on the loopback interface and points ``LSLAPICFG`` at it. The tests and the simulators
call it before any LSL object exists; a lab that wants LAN discovery simply does not call it (or sets
``LSLAPICFG`` to its own file).

Port range: liblsl gives each outlet a port from ``[BasePort, BasePort + PortRange)`` and, confined to one
machine, finds outlets by asking every port of that range on the loopback address (a unicast datagram to the
shared multicast port reaches only one of the outlets listening on it). With liblsl's default range of 32 an
outlet beyond about the 32nd falls back to a random port and is never found. The range written here holds
:data:`PORT_RANGE` outlets per machine (600 outlets in one process were all seen by a resolver with it; with
the default, 33 of 160).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

#: Ports (= outlets) liblsl may use on this machine under the machine-scope configuration.
PORT_RANGE = 1024

MACHINE_SCOPE_CONFIG = """\
[ports]
IPv6 = disable
PortRange = PORT_RANGE_VALUE

[multicast]
ResolveScope = machine
MachineAddresses = {127.0.0.1}
AddressesOverride = {127.0.0.1}

[lab]
KnownPeers = {}

[log]
level = -3
""".replace("PORT_RANGE_VALUE", str(PORT_RANGE))


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
