"""``python -m services.cli``: the ``beamwatch`` command."""

import sys

from services.cli.main import main

sys.exit(main())
