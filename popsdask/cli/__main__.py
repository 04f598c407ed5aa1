"""``python -m popsdask.cli``: the ``popsdask`` command."""

import sys

from . import main

sys.exit(main())
