"""``python -m streamemg`` is the ``streamemg`` command."""

from .cli.main import entry

entry()
