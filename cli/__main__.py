"""`python -m cli ...`: the `spry` console script without installing it."""

import sys

from .main import main

sys.exit(main())
