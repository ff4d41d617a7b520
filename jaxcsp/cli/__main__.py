"""``python -m jaxcsp.cli``."""

import sys

from jaxcsp.cli import main

sys.exit(main())
