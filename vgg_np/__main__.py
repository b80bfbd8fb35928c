"""``python -m vgg_np`` behaves like the ``vgg-np`` command."""

import sys

from vgg_np.cli import main

if __name__ == "__main__":
    sys.exit(main())
