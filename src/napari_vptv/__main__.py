"""``python -m napari_vptv``: the ``vptv`` command line (see :mod:`napari_vptv.cli`)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
