"""The ``vgg-np`` command line: the only package that prints for users or exits.

Commands (each has ``--help`` with an example; all but ``fetch-weights`` work offline):

- ``demo``: print VGG16's table, run it on the bundled picture, check it against Keras
- ``predict``: classify images with a weights file
- ``extract``: one layer's features of many images to a .npy or .zarr, resumably
- ``summary``: the per-layer table of any family member
- ``show``: a layer's feature maps (or the first layer's filters) as a PNG grid
- ``train``: fine-tune VGG16 on a folder of one's own pictures (``--demo``: the top of a
  reduced-width VGG16 on generated pictures)
- ``compare``: another implementation's activations against vgg_np, layer by layer
- ``convert``: weights from one file format to another
- ``vectors``: conformance test cases for other implementations, from the float64 oracle
- ``fetch-weights``: download the published ImageNet weights (the only use of the network)

Conventions shared by every command: exit code 0 on success; 1 on a runtime error (a file
that cannot be used, a diverging layer, a skipped picture in ``predict`` and ``extract``
alike), told in one line on stderr that names the user's file; 2 on a usage error, and
every argument, every input path included, is checked before any work starts (before the
weights load); progress goes to stderr, never stdout; 130 on Ctrl-C, with one line and
no output file left half-written; 141 when stdout is closed early (``vgg-np predict ...
--json | head -1``), quietly. ``--debug``, before or after the command, shows the
traceback instead of the one line.

A command is two small functions: ``add_<name>(commands)`` declares its arguments, help
and example through `_new_command`, and ``run_<name>(args)`` does the work. Listing
``add_<name>`` in `COMMANDS` registers it. The commands live in one module per group:
`vgg_np.cli.predict` (predict, extract), `vgg_np.cli.explore` (demo, summary, show),
`vgg_np.cli.compare` (compare, convert, vectors), `vgg_np.cli.fetch` (fetch-weights),
`vgg_np.cli.train` (train); what they share (argument types, input checks, exit codes,
`_new_command`) is in `vgg_np.cli._args`. This module builds the parser and is the only
place that exits or turns an error into its one line.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Callable

from vgg_np import __version__, _interrupts, distributed
from vgg_np.cli._args import (
    EXIT_CLOSED_PIPE,
    EXIT_INTERRUPTED,
    EXIT_RUNTIME_ERROR,
    INPUTS,
    KERAS_VGG16,
    _check_inputs,
    _imagenet_weights,
)
from vgg_np.cli.compare import (
    add_compare,
    add_convert,
    add_vectors,
    run_compare,
    run_convert,
    run_vectors,
)
from vgg_np.cli.explore import (
    DEMO_HINT,
    add_demo,
    add_show,
    add_summary,
    run_demo,
    run_show,
    run_summary,
)
from vgg_np.cli.fetch import add_fetch_weights, run_fetch_weights
from vgg_np.cli.predict import add_extract, add_predict, run_extract, run_predict
from vgg_np.cli.train import add_train, run_train

__all__ = [
    "COMMANDS",
    "DEMO_HINT",
    "EXIT_CLOSED_PIPE",
    "EXIT_INTERRUPTED",
    "EXIT_RUNTIME_ERROR",
    "INPUTS",
    "KERAS_VGG16",
    "add_compare",
    "add_convert",
    "add_demo",
    "add_extract",
    "add_fetch_weights",
    "add_predict",
    "add_show",
    "add_summary",
    "add_train",
    "add_vectors",
    "build_parser",
    "main",
    "run_compare",
    "run_convert",
    "run_demo",
    "run_extract",
    "run_fetch_weights",
    "run_predict",
    "run_show",
    "run_summary",
    "run_train",
    "run_vectors",
]


def _describe(error: BaseException) -> str:
    """One line naming the problem; every message starts with the file it is about."""
    if isinstance(error, FileNotFoundError) and error.filename:
        return f"{error.filename}: no such file"
    if isinstance(error, OSError) and error.filename:
        return f"{error.filename}: {error.strerror}"
    return str(error)


# -- the program ---------------------------------------------------------------------------

#: The commands, in the order ``vgg-np --help`` lists them.
COMMANDS: tuple[Callable, ...] = (
    add_demo,
    add_predict,
    add_extract,
    add_summary,
    add_show,
    add_train,
    add_compare,
    add_convert,
    add_vectors,
    add_fetch_weights,
)


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of ``vgg-np``, one subparser per entry of `COMMANDS`."""
    parser = argparse.ArgumentParser(
        prog="vgg-np",
        description="VGG16 in plain NumPy: learn it, verify against it, run it.",
        epilog="Example: vgg-np demo",
    )
    parser.add_argument("--version", action="version", version=f"vgg_np {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in COMMANDS:
        add(commands)
    return parser


def _silence_stdout() -> None:
    """Point stdout at the null device, so the final flush into a closed pipe is quiet."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # no real stdout (captured, replaced): nothing to do
        pass


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``vgg-np`` and ``python -m vgg_np``; returns the exit code.

    Exit codes: 0 success, 1 runtime error (a file that cannot be used, a layer that
    diverges, a picture skipped), 2 usage error (bad arguments or input paths that name
    nothing, found before any work),
    130 interrupted (Ctrl-C), 141 stdout closed early.

    Examples
    --------
    >>> main(["summary", "--model", "vgg11", "--no-top", "--input-shape", "32", "32"])
    vgg11: input 32x32x3, include_top=False
    ...
    parameters: 9,220,480 = 9,217,728 weights + 2,752 biases
    ...
    0
    """
    debug: list[bool] = []  # --debug, once the arguments are parsed
    with _interrupts.redelivered():  # a Ctrl-C that lands in a finalizer, too
        try:
            return _main(argv, debug)
        except KeyboardInterrupt as error:  # while parsing and checking, or on the way out
            if any(debug):
                raise
            print(f"vgg-np: interrupted{': ' if str(error) else ''}{error}", file=sys.stderr)
            return EXIT_INTERRUPTED


def _main(argv: list[str] | None, debug: list[bool]) -> int:
    """Parse, check and run the command (`main`); one line for a runtime error or a Ctrl-C."""
    args = build_parser().parse_args(argv)
    debug.append(args.debug)
    # A file name that is not UTF-8 reaches Python as surrogate escapes: print its own bytes
    # back (as ls does) rather than stop half way with a codec error.
    reconfigure = getattr(sys.stdout, "reconfigure", None)  # a text stream, not a replacement
    if reconfigure is not None:
        with contextlib.suppress(ValueError):
            reconfigure(errors="surrogateescape")
    problem = (args.check(args) if args.check else None) or _check_inputs(args)
    if problem:
        args.usage_error(problem)  # exits with code 2
    try:
        code: int = args.run(_imagenet_weights(args))
        sys.stdout.flush()  # a closed pipe shows here rather than at exit
        return code
    except KeyboardInterrupt as error:
        if args.debug:
            raise
        print(f"vgg-np: interrupted{': ' if str(error) else ''}{error}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        _silence_stdout()
        return EXIT_CLOSED_PIPE
    except (ValueError, TypeError, OSError, ImportError, distributed.ClusterError) as error:
        if args.debug:
            raise
        if _interrupts.caused_by_interrupt(error):  # a Ctrl-C, not a damaged file
            raise KeyboardInterrupt from error
        print(f"vgg-np: error: {_describe(error)}", file=sys.stderr)
        return EXIT_RUNTIME_ERROR
