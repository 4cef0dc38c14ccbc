"""``python -m cxrseg.cli``: the ``cxrseg`` command."""

import sys

from . import main

sys.exit(main())
