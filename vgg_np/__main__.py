"""``python -m vgg_np`` behaves like the ``vgg-np`` command."""

import sys

try:
    from vgg_np.cli import main
except KeyboardInterrupt:  # Ctrl-C while the commands load: the same one line as later
    print("vgg-np: interrupted", file=sys.stderr)
    sys.exit(130)  # EXIT_INTERRUPTED, not importable here

if __name__ == "__main__":
    sys.exit(main())
