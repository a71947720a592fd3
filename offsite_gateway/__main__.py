"""`python -m offsite_gateway` is `offsite-gateway`."""

import sys

from .cli import main

sys.exit(main())
