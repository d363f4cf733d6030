"""`python -m carkinetics.cli ...`: the same as the `carkinetics` command."""

import sys

from carkinetics.cli import main

sys.exit(main())
