"""``python -m streamemg`` is the ``streamemg`` command."""

import logging
import os
import sys

from .cli.main import main

code = main()
# Every source, output and recording is closed by now. Skip the interpreter's teardown of native libraries
# (torch alone takes about a second), so SIGINT/SIGTERM end the process well within 2 s.
logging.shutdown()
for stream in (sys.stdout, sys.stderr):
    try:
        stream.flush()
    except (OSError, ValueError):
        pass
os._exit(code)
