"""What every ``vgg-np`` command shares: its declaration, its argument types, its input checks.

Each argument type checks one value before any work starts (a bad one is exit code 2);
`_check_inputs` checks every input path before the weights load; `_imagenet_weights`
resolves ``--weights imagenet[:MODEL[:FAMILY]]`` to the cached published file.
"""

from __future__ import annotations

import argparse
import functools
import glob
import math
import os
import re
import textwrap
from collections.abc import Callable

from vgg_np import hub
from vgg_np._files import NotARegularFile, check_regular
from vgg_np.config import CONFIGS, MIN_SIZE, layer_table
from vgg_np.engine import cache, measure
from vgg_np.extract import SUFFIXES

EXIT_RUNTIME_ERROR = 1  # a file that cannot be used, a diverging layer, a skipped picture
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a process Ctrl-C stopped
EXIT_CLOSED_PIPE = 141  # 128 + SIGPIPE, as for `yes | head -1`
#: The published Keras VGG16 file, as the examples name it.
KERAS_VGG16 = hub.PUBLISHED["vgg16", True][0].filename


def _new_command(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    run: Callable[[argparse.Namespace], int],
    *,
    summary: str,
    description: str,
    examples: list[str],
    check: Callable[[argparse.Namespace], str | None] | None = None,
) -> argparse.ArgumentParser:
    """Add one command's parser: help, examples, ``--debug``, what runs it.

    `check` sees the parsed arguments before anything runs and returns a usage problem
    (exit code 2) or None: for rules between arguments, which argparse cannot express.
    """
    label = "Example: " if len(examples) == 1 else "Examples: "
    debug = argparse.ArgumentParser(add_help=False)
    # SUPPRESS: given before the command, --debug must not be reset by this default.
    debug.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks on errors"
    )
    parser = commands.add_parser(
        name,
        help=summary,
        description=textwrap.fill(description, 88),
        epilog=label + ("\n" + " " * len(label)).join(examples),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[debug],
    )
    parser.set_defaults(run=run, check=check, usage_error=parser.error)
    return parser


# -- argument types: each checks one value before any work starts (else exit 2) ----------


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def _rate(text: str) -> float:
    value = float(text)
    if not 0 <= value < 1:  # NaN fails too
        raise argparse.ArgumentTypeError(f"must be a rate in [0, 1), got {text}")
    return value


def _image_side(text: str) -> int:
    value = int(text)
    if value < MIN_SIZE:
        raise argparse.ArgumentTypeError(
            f"must be at least {MIN_SIZE} (five 2x2 poolings), got {text}"
        )
    return value


@functools.cache
def _family_layers(include_top: bool) -> tuple[str, ...]:
    """Layer names of every family member (VGG19's order first), with or without the top."""
    pool = 7 if include_top else None  # torchvision's avgpool
    configs = sorted(CONFIGS.values(), key=lambda config: -len(config.conv_names()))
    tables = [layer_table(c, include_top=include_top, adaptive_pool=pool) for c in configs]
    return tuple(dict.fromkeys(layer.name for table in tables for layer in table))


def _base_layer(text: str) -> str:
    if text not in _family_layers(False):
        raise argparse.ArgumentTypeError(
            f"must be a layer of the convolutional base ({', '.join(_family_layers(False))}), "
            f"got {text!r}"
        )
    return text


#: Names in VGG's own scheme (`vgg_np.config.layer_table`).
_VGG_NAME = re.compile(r"block\d+_(conv\d+(_bn)?|pool)|fc\d+|predictions|flatten|avgpool")


def _layer_list(text: str) -> list[str]:
    # A name in VGG's own scheme must be one of the family's (a typo like fc9 fails here);
    # a head of one's own names its layers freely (checked against the model later).
    names = [name.strip() for name in text.split(",") if name.strip()]
    family = _family_layers(True)
    unknown = [
        name
        for name in names
        if _VGG_NAME.fullmatch(name) and name.removesuffix("_bn") not in family
    ]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"must be comma-separated layer names ({', '.join(family)}, or a head's own), "
            f"got {', '.join(unknown) or repr(text)}"
        )
    return names


def _output_file(text: str) -> str:
    directory = os.path.dirname(os.path.abspath(text))
    if not os.path.isdir(directory):
        raise argparse.ArgumentTypeError(f"{text}: the directory {directory} does not exist")
    if os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"{text} is a directory, not a file name")
    return text


def _extract_output(text: str) -> str:
    if not text.endswith(SUFFIXES):
        raise argparse.ArgumentTypeError(f"{text}: must end in .npy or .zarr")
    directory = os.path.dirname(os.path.abspath(text))
    if not os.path.isdir(directory):
        raise argparse.ArgumentTypeError(f"{text}: the directory {directory} does not exist")
    return text  # may exist: a rerun resumes it


def _picture_file(text: str) -> str:
    from PIL import Image

    kind = Image.registered_extensions().get(os.path.splitext(text)[1].lower())
    if kind not in Image.SAVE:
        raise argparse.ArgumentTypeError(f"{text}: not a picture file name (.png, .jpg, ...)")
    return _output_file(text)


def _plan(text: str) -> str:
    """``--plan``: default, measure, or a plan file `vgg_np.engine.cache.check` accepts.

    The file is read here, before any work (a FIFO never blocks, `vgg_np._files`): a
    missing, damaged or foreign-version file is a usage error naming it, where
    ``VGG(plan=path)`` would warn and measure again.
    """
    try:
        mode = measure.resolve(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be default, measure or a plan file FILE.json, got {text!r}"
        ) from None
    if mode in measure.MODES:
        return text
    try:
        cache.check(mode)
    except FileNotFoundError:
        raise argparse.ArgumentTypeError(f"{text}: no such plan file") from None
    except (ValueError, OSError) as error:  # its message names the file
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


def _add_plan(parser: argparse.ArgumentParser) -> None:
    """Declare ``--plan``, passed as the model's ``plan=`` by every command that runs the engine."""
    parser.add_argument(
        "--plan",
        type=_plan,
        metavar="{default,measure,FILE.json}",
        help="how the engine runs each convolution: the built-in table (default, unless "
        "$VGG_NP_PLAN says otherwise), measured on this machine and cached in $VGG_NP_CACHE "
        "(measure), or a plan file such a run wrote, pinned (docs/performance.md)",
    )


#: The arguments that name files or folders to read, in any command, and how help names them.
INPUTS = {
    "images": "IMAGE_OR_DIR",
    "image": "IMAGE",
    "weights": "--weights",
    "labels": "--labels",
    "activations": "ACTIVATIONS",
    "input": "--input",
    "source": "SOURCE",
    "reference": "--reference",
}
#: A --weights value that names no file: the published weights (`vgg_np.hub`),
#: ``imagenet[:MODEL[:FAMILY]]``.
_IMAGENET = re.compile(r"imagenet(?::(?P<model>\w+))?(?::(?P<family>keras|torchvision))?")


def _check_inputs(args: argparse.Namespace) -> str | None:
    """Return the first input path that names nothing, before any work (exit code 2).

    Images and folders must exist; a glob may match nothing here (``no images found``
    is then reported, still before the weights load). Single input files must be
    regular files (a FIFO would block the reader forever).
    """
    for name, label in INPUTS.items():
        value = getattr(args, name, None)
        published = name in ("weights", "reference") and _IMAGENET.fullmatch(str(value))
        if value is None or published:
            continue
        for item in value if isinstance(value, list) else [value]:
            if name == "images" and glob.has_magic(item):
                continue
            if not os.path.exists(item):
                said = getattr(args, "images_label", label) if name == "images" else label
                return f"{said} {item}: no such file or directory"
            if name not in ("images", "image"):  # images: folders too, each file checked later
                try:
                    check_regular(item, "file")
                except NotARegularFile as error:
                    return f"{label} {error}"
    return None


def _imagenet_weights(args: argparse.Namespace) -> argparse.Namespace:
    """Return `args` with ``--weights imagenet[:MODEL[:FAMILY]]`` as the cached file's path.

    MODEL defaults to the command's ``--model`` (else vgg16); nothing is downloaded here
    (``fetch-weights`` does that): without a copy the error says where to put one. Other
    arguments come back as they are; `args` itself is never changed (a new namespace).
    """
    match = _IMAGENET.fullmatch(str(getattr(args, "weights", None)))
    if match is None:
        return args
    model = match["model"] or getattr(args, "model", None) or "vgg16"
    if model not in hub.NAMES:
        args.usage_error(
            f"--weights {args.weights}: ImageNet weights are published for "
            f"{', '.join(hub.NAMES)}, not {model}"
        )
    path = hub.resolve(model, True, family=match["family"])
    return argparse.Namespace(**{**vars(args), "weights": str(path)})
