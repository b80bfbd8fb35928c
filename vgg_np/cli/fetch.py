"""``vgg-np fetch-weights``: the published ImageNet weights, the only use of the network."""

from __future__ import annotations

import argparse
import sys

from vgg_np import hub
from vgg_np.cli._args import _new_command, _positive_float

# -- fetch-weights -------------------------------------------------------------------------


def add_fetch_weights(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Declare ``vgg-np fetch-weights``."""
    parser = _new_command(
        commands,
        "fetch-weights",
        run_fetch_weights,
        summary="download published ImageNet weights (Keras's, torchvision's) into their cache",
        description=(
            "Print the path of a verified copy of the published ImageNet weights of MODEL, "
            "looking in the Keras cache ($KERAS_HOME/models) and torch's "
            "($TORCH_HOME/hub/checkpoints), and downloading the published file into its "
            "cache if there is none (Keras's for vgg16 and vgg19 unless --family "
            "torchvision; torchvision's for the others): at most the published size, "
            "within --deadline seconds, hash checked, renamed into place only when complete. "
            "The only command that uses the network. Other commands take the cached copy "
            "as --weights imagenet (or imagenet:MODEL, imagenet:MODEL:FAMILY)."
        ),
        examples=[
            "vgg-np fetch-weights vgg16 --no-top",
            "vgg-np fetch-weights vgg16_bn",
            "vgg-np fetch-weights vgg19 --family torchvision --force",
        ],
    )
    parser.add_argument("model", metavar="MODEL", choices=hub.NAMES, help=", ".join(hub.NAMES))
    parser.add_argument("--no-top", action="store_true", help="the file without the classifier")
    parser.add_argument("--family", choices=["keras", "torchvision"], help="whose file")
    parser.add_argument(
        "--force", action="store_true", help="download again over a copy that fails its hash"
    )
    parser.add_argument(
        "--deadline",
        type=_positive_float,
        default=hub.DEADLINE,
        metavar="SECONDS",
        help=f"give up a download after this long ({hub.DEADLINE:g})",
    )
    parser.add_argument("--base-url", help="download from this directory URL (a mirror)")


def run_fetch_weights(args: argparse.Namespace) -> int:
    """Find or download the published ImageNet weights; print the path."""
    path = hub.resolve(
        args.model,
        not args.no_top,
        download_missing=True,
        base_url=args.base_url,
        progress=sys.stderr.isatty(),
        family=args.family,
        force=args.force,
        deadline=args.deadline,
    )
    print(path)
    return 0
