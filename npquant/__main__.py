"""``python -m npquant``: the same as the ``npquant`` command."""

import sys

from .app.cli import main

if __name__ == "__main__":
    sys.exit(main())
