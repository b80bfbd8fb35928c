"""The reader contract: what every format reader returns, and where the weights came from.

Every reader returns a `WeightSource`: lazy tensors in the canonical (Keras) layout and a
`Provenance` saying which family trained the weights (Keras, torchvision, ...), the
preprocessing and resizing they expect, the input size where known, and the evidence for
it: recorded in the file by vgg_np, implied by a layout only one framework writes, or
nothing. `choose_preprocessing` turns that into a choice with a reason, and refuses to
guess when the evidence is missing.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from vgg_np.formats._common import FileFormatError

__all__ = [
    "PREPROCESS_MODES",
    "RESIZE_MODES",
    "Family",
    "Preprocessing",
    "Provenance",
    "WeightSource",
    "choose_preprocessing",
]

#: Preprocessing modes of `vgg_np.preprocess_input` (Keras's names).
PREPROCESS_MODES = ("caffe", "torch", "tf")
#: Resizing of `vgg_np.load_image`: Keras's ``load_img`` or torchvision's evaluation crop.
RESIZE_MODES = ("keras", "torchvision")


class Family(str, enum.Enum):
    """Who made the weights: it decides the preprocessing they were trained with.

    Examples
    --------
    >>> Family("torchvision"), Family.KERAS.value
    (<Family.TORCHVISION: 'torchvision'>, 'keras')
    """

    KERAS = "keras"
    TORCHVISION = "torchvision"
    TIMM = "timm"
    ONNX_NCHW = "onnx-nchw"
    ONNX_NHWC = "onnx-nhwc"
    THEANO = "theano"
    VGG_NP = "vgg_np"
    UNKNOWN = "unknown"


#: The preprocessing and resizing each family's ImageNet weights were trained with.
#: Keras Applications' VGG16/19 and the Theano-era VGG16 (converted from Caffe) use
#: "caffe" (BGR, mean subtraction) and Keras's plain resize; torchvision and timm use
#: "torch" (mean/std in RGB) after a resize + centre crop. ONNX graphs, vgg_np's own
#: weights and unknown files have no convention: the evidence must come from elsewhere.
CONVENTIONS: dict[Family, tuple[str, str]] = {
    Family.KERAS: ("caffe", "keras"),
    Family.THEANO: ("caffe", "keras"),
    Family.TORCHVISION: ("torch", "torchvision"),
    Family.TIMM: ("torch", "torchvision"),
}

#: Keys under which vgg_np records provenance (safetensors ``__metadata__``, HDF5 root
#: attributes, an npz entry, a .pth state dict's ``_metadata``).
RECORD_KEYS = ("family", "preprocess", "resize", "input_size", "source")
RECORD_PREFIX = "vgg_np."


@dataclass(frozen=True)
class Provenance:
    """Where weights came from and what their inputs must look like.

    Attributes
    ----------
    description : str
        The format and layout that was read, e.g. ``"keras-h5 (Keras Applications layout)"``.
    family : Family
        Who trained (or made) the weights.
    preprocess : {"caffe", "torch", "tf"} or None
        The preprocessing they expect; None when nothing says.
    resize : {"keras", "torchvision"} or None
        The resizing they expect; None when nothing says.
    input_size : tuple of int or None
        ``(H, W)`` the weights were made for, where the file says so.
    evidence : str
        Why `family` and `preprocess` are believed, in words.
    recorded : bool
        True when vgg_np recorded this in the file (rather than it being implied).

    Examples
    --------
    >>> p = Provenance.implied("keras-h5 (Keras Applications layout)", Family.KERAS,
    ...                        "implied by the Keras HDF5 layout")
    >>> p.preprocess, p.resize, p.recorded
    ('caffe', 'keras', False)
    >>> Provenance.from_record(p.record(), "w.safetensors", "where").preprocess
    'caffe'
    """

    description: str
    family: Family
    preprocess: str | None = None
    resize: str | None = None
    input_size: tuple[int, int] | None = None
    evidence: str = ""
    recorded: bool = False
    source: str = ""

    @classmethod
    def implied(
        cls,
        description: str,
        family: Family,
        evidence: str,
        *,
        input_size: tuple[int, int] | None = None,
    ) -> Provenance:
        """Provenance a layout implies: `family`'s conventions (none for some families).

        Examples
        --------
        >>> Provenance.implied("pytorch (torchvision layout)", Family.TORCHVISION, "").resize
        'torchvision'
        """
        preprocess, resize = CONVENTIONS.get(family, (None, None))
        return cls(description, family, preprocess, resize, input_size, evidence)

    def record(self) -> dict[str, str]:
        """Return the strings vgg_np writes into a file: the provenance travels with the weights.

        Examples
        --------
        >>> Provenance("npz (vgg_np)", Family.KERAS, "caffe", "keras", (224, 224)).record()
        ... # doctest: +NORMALIZE_WHITESPACE
        {'vgg_np.family': 'keras', 'vgg_np.preprocess': 'caffe', 'vgg_np.resize': 'keras',
         'vgg_np.input_size': '224x224', 'vgg_np.source': 'npz (vgg_np)'}
        """
        record = {
            "family": self.family.value,
            "preprocess": self.preprocess or "",
            "resize": self.resize or "",
            "input_size": "x".join(map(str, self.input_size)) if self.input_size else "",
            "source": self.source or self.description,
        }
        return {RECORD_PREFIX + k: v for k, v in record.items()}

    @classmethod
    def from_record(
        cls, record: Mapping[str, object], description: str, where: str
    ) -> Provenance | None:
        """Parse what `record` wrote (None if the mapping holds no vgg_np record).

        Raises
        ------
        FileFormatError
            If the record is present but malformed: a damaged record is never ignored.

        Examples
        --------
        >>> Provenance.from_record({"format": "pt"}, "safetensors", "'w.safetensors'") is None
        True
        >>> Provenance.from_record({"vgg_np.family": "torchvision"}, "npz", "'w.npz'").family
        <Family.TORCHVISION: 'torchvision'>
        """
        found = {k: record[RECORD_PREFIX + k] for k in RECORD_KEYS if RECORD_PREFIX + k in record}
        if not found:
            return None
        values = {k: v for k, v in found.items() if isinstance(v, str)}
        if len(values) != len(found) or "family" not in values:
            raise FileFormatError(f"{where}: damaged vgg_np provenance record {dict(record)!r}")
        try:
            family = Family(values["family"])
        except ValueError:
            raise FileFormatError(
                f"{where}: unknown family {values['family']!r} in its provenance record"
            ) from None
        preprocess = _choice(values.get("preprocess", ""), PREPROCESS_MODES, "preprocess", where)
        resize = _choice(values.get("resize", ""), RESIZE_MODES, "resize", where)
        source = values.get("source", "")
        return cls(
            description,
            family,
            preprocess,
            resize,
            _size(values.get("input_size", ""), where),
            f"recorded in the file by vgg_np (from {source or 'an unnamed source'})",
            True,
            source,
        )


def _choice(value: str, allowed: tuple[str, ...], what: str, where: str) -> str | None:
    if value and value not in allowed:
        raise FileFormatError(
            f"{where}: its provenance record gives {what} {value!r}, not one of {allowed}"
        )
    return value or None


def _size(text: str, where: str) -> tuple[int, int] | None:
    if not text:
        return None
    match = re.fullmatch(r"([1-9]\d{0,5})x([1-9]\d{0,5})", text)
    if match is None:
        raise FileFormatError(f"{where}: its provenance record gives input size {text!r}")
    return int(match[1]), int(match[2])


@dataclass
class WeightSource:
    """What every reader returns: lazy canonical tensors and their provenance.

    Attributes
    ----------
    tensors : dict
        Keras layer name -> (kernel, bias) in Keras layout (HWIO convolution kernels,
        ``(in, out)`` dense kernels), as `LazyArray` objects read on ``np.asarray``.
    provenance : Provenance
        Format, family, preprocessing and resizing, input size, and the evidence.
    info : dict
        Format-specific facts (ONNX: ``input_shape``, ``input_layout``,
        ``classifier_activation``, ``tensor_names``, ``note``).
    path : str
        The file read, as the user named it (for messages).
    layout : {"keras", "torchvision", "timm", "theano", "onnx"}
        How the file named and laid out its tensors (the tensors returned are always in
        Keras layout): Keras's layer names, torchvision's state dict, the Theano-era Keras
        layout, or an ONNX graph.

    Examples
    --------
    >>> source = WeightSource({}, Provenance("npz (vgg_np)", Family.VGG_NP))
    >>> source.format, source.info, source.layout
    ('npz (vgg_np)', {}, 'keras')
    """

    tensors: dict
    provenance: Provenance
    info: dict = field(default_factory=dict)
    path: str = ""
    layout: str = "keras"

    @property
    def format(self) -> str:
        """The format and layout read, e.g. ``"safetensors (torchvision layout)"``.

        Examples
        --------
        >>> WeightSource({}, Provenance("safetensors (Keras layout)", Family.UNKNOWN)).format
        'safetensors (Keras layout)'
        """
        return self.provenance.description


@dataclass(frozen=True)
class Preprocessing:
    """The preprocessing and resizing chosen for some weights, and why.

    Examples
    --------
    >>> Preprocessing("caffe", "keras", "keras weights, implied by the Keras HDF5 layout").mode
    'caffe'
    """

    mode: str
    resize: str
    reason: str


def _default_resize(mode: str) -> str:
    return "torchvision" if mode == "torch" else "keras"


def choose_preprocessing(
    provenance: Provenance,
    *,
    preprocess: str | None = None,
    resize: str | None = None,
    where: str = "the weights",
) -> Preprocessing:
    """Choose the preprocessing and resizing for weights, with the reason; never guess.

    Parameters
    ----------
    provenance : Provenance
        What the weights file said (`WeightSource.provenance`, `VGG.weights_provenance`).
    preprocess : {"caffe", "torch", "tf"}, optional
        The user's choice; it overrides the file.
    resize : {"keras", "torchvision"}, optional
        The user's choice; default: what the file says, else what fits the mode.
    where : str
        How to name the weights in the error.

    Returns
    -------
    Preprocessing

    Raises
    ------
    ValueError
        If nothing says which preprocessing the weights expect and `preprocess` is None.

    Examples
    --------
    >>> keras = Provenance.implied("keras-h5", Family.KERAS, "implied by the Keras HDF5 layout")
    >>> choose_preprocessing(keras)
    Preprocessing(mode='caffe', resize='keras',
                  reason='keras weights, implied by the Keras HDF5 layout')
    >>> choose_preprocessing(Provenance("npz (vgg_np)", Family.UNKNOWN, evidence="no record"))
    Traceback (most recent call last):
    ...
    ValueError: the weights: which preprocessing they expect is unknown (no record); ...
    """
    if preprocess is not None:
        said = f"; the file suggests {provenance.preprocess!r}" if provenance.preprocess else ""
        resize = resize or (provenance.resize if preprocess == provenance.preprocess else None)
        return Preprocessing(
            preprocess, resize or _default_resize(preprocess), f"chosen by the user{said}"
        )
    if provenance.preprocess is None:
        raise ValueError(
            f"{where}: which preprocessing they expect is unknown ({provenance.evidence}); "
            "choose one: 'caffe' for Keras-trained weights, 'torch' for torchvision-trained "
            "weights (preprocess= in Python, --preprocess in the command line)"
        )
    return Preprocessing(
        provenance.preprocess,
        resize or provenance.resize or _default_resize(provenance.preprocess),
        f"{provenance.family.value} weights, {provenance.evidence}",
    )
