"""``python -m micafence`` is the ``micafence`` command."""

import sys

from micafence.cli import main

sys.exit(main())
