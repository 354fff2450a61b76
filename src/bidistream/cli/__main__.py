"""``python -m bidistream.cli``: how the process runtime starts an instance."""

import sys

from bidistream.cli import main

sys.exit(main())
