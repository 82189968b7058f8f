"""``python -m streamemg`` is the ``streamemg`` command."""

import sys

from .cli.main import main

sys.exit(main())
