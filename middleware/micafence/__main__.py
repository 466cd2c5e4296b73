"""``python -m micafence`` is the ``micafence`` command."""

import sys

from .cli import main

sys.exit(main())
