"""`python -m apbd.web` runs apbd-web."""

import sys

from apbd.web.main import main

sys.exit(main())
