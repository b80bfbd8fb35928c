"""``python -m vgg_np`` behaves like the ``vgg-np`` command."""

import sys

from vgg_np._interrupts import caused_by_interrupt

try:
    from vgg_np.cli import main
except (KeyboardInterrupt, Exception) as error:  # Ctrl-C while the commands load: one line
    if not caused_by_interrupt(error):
        raise
    print("vgg-np: interrupted", file=sys.stderr)
    sys.exit(130)  # EXIT_INTERRUPTED, from the module that did not load

if __name__ == "__main__":
    sys.exit(main())
