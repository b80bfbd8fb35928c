"""The `VGG` class, the user API: build a family member, load weights, run it.

The configurations and layer table are in `vgg_np.config`, the per-layer report in
`vgg_np.summary`, and guessing an architecture from a file in `vgg_np.architecture`;
their public names are re-exported here.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import pathlib
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec

import numpy as np
from numpy.typing import ArrayLike, NDArray

from vgg_np import _running, formats, hub
from vgg_np.architecture import infer_architecture
from vgg_np.config import CONFIGS, Layer, VGGConfig, _fmt_shape, layer_table
from vgg_np.engine import ALGORITHMS, Engine, measure
from vgg_np.engine.lowering import Plan, lower
from vgg_np.layers import KINDS
from vgg_np.network import Network, describe
from vgg_np.progress import Progress, show_progress
from vgg_np.summary import Summary

__all__ = [
    "CONFIGS",
    "VGG",
    "VGG11",
    "VGG13",
    "VGG16",
    "VGG19",
    "Layer",
    "Summary",
    "VGGConfig",
    "layer_table",
]


_P = ParamSpec("_P")

#: What ``conv_algorithm`` accepts: the reference forward pass or an engine algorithm.
CONV_ALGORITHMS = ("reference", *ALGORITHMS)


class VGG:
    """A VGG network in NumPy, with the Keras Applications interface.

    Parameters
    ----------
    config : VGGConfig or {"vgg11", "vgg13", "vgg16", "vgg19"}, default "vgg16"
        The widths of the network.
    weights : str, os.PathLike or formats.WeightSource, optional
        A weights file of any supported format (detected from its content); or
        ``"imagenet"``: the published ImageNet weights from the Keras or torch cache
        (`vgg_np.hub.resolve`, hash verified): Keras's VGG16 and VGG19, torchvision's
        vgg11 to vgg19 and, with `batch_norm`, their ``_bn`` variants; or an open
        `formats.WeightSource` (what `from_file` passes); or None for a seeded He-normal
        initialisation.
    include_top : bool, default True
        Include the classifier (``flatten``, ``fc1``, ``fc2``, ``predictions``).
    input_shape : tuple of int, optional
        ``(H, W, C)`` (or ``(C, H, W)`` with ``data_format="channels_first"``). With the
        top it must be static; it defaults to ``(224, 224, 3)``. Without it H and W may
        be None (any size at least 32).
    pooling : {None, "avg", "max"}
        Without the top: global average or max pooling of ``block5_pool``.
    classes : int, default 1000
        Outputs of ``predictions``.
    classifier_activation : {"softmax", None}
        None returns logits.
    dtype : {"float32", "float64", "float16"}, default "float32"
        Compute dtype. "float64" is the oracle mode.
    seed : int, optional
        Seed of the initialisation when `weights` is None.
    data_format : {"channels_last", "channels_first"}
        Layout of the input and of the 4-D outputs; the weights are the same for both.
    allow_nonfinite : bool, default False
        Accept weights containing NaN or inf.
    adaptive_pool : int, optional
        With the top: average-pool the last feature map to ``(n, n)`` before
        ``flatten``, as torchvision's VGG does with ``n = 7``; the classifier then takes
        inputs of any size (at least 32).
    conv_algorithm : {"auto", "gemm", "winograd", "naive", "reference"}, default "auto"
        How convolutions are computed (`vgg_np.engine`): ``"auto"`` picks per layer
        (Winograd where it is faster, direct GEMM for the first layer and whenever the
        dtype is float64); ``"gemm"`` is direct convolution everywhere (its accuracy);
        ``"winograd"`` Winograd on every layer; ``"naive"`` the loop definition
        `vgg_np.ops.conv2d_naive` (minutes per VGG16 image: for small networks).
        ``"reference"`` runs no engine but `vgg_np.layers.forward`, the teaching
        kernels composed layer by layer (im2col convolutions), the definition the
        engine is tested against.
    threads : int, optional
        Threads for the convolutions; default: the CPUs this process may use.
    batch_norm : bool or float, default False
        The variant with batch normalisation after every convolution (torchvision's
        ``vgg16_bn``; layers ``block1_conv1_bn`` ...); a float is its epsilon, True
        PyTorch's 1e-5. The engine folds each into its convolution
        (`vgg_np.engine.lowering.fold_batch_norms`); ``conv_algorithm="reference"`` runs it as
        is. Every layer name keeps answering: ``features(x, "block1_conv1")`` is the
        convolution's output before its batch norm, as torchvision's module gives it.
    head : sequence of Layer, optional
        A classifier of one's own after ``block5_pool`` in place of the top, as data:
        ``flatten``, ``global_avg``, ``global_max``, ``dense`` (with any activation of
        `vgg_np.layers.ACTIVATIONS`), ``batch_norm`` (its ``eps`` per layer),
        ``dropout``. `include_top`, `pooling`, `classes`, `classifier_activation` and
        `adaptive_pool` are then read from it, not given.
    download : bool, default False
        With ``weights="imagenet"`` and no cached copy: download the published file
        (Keras's where Keras publishes one, else torchvision's) into its cache (a
        progress bar, hash and size verified, a deadline, written atomically).
    plan : {"default", "measure"} or path, optional
        How the engine chooses each convolution's algorithm and layout
        (`vgg_np.engine.measure`): ``"default"``, the built-in table; ``"measure"``,
        timed on this machine at first use (a few seconds for VGG16) and cached per CPU,
        BLAS and thread count in ``$VGG_NP_CACHE`` or ``~/.cache/vgg_np``; a ``.json``
        path, a plan file used as it is and completed by measuring. None reads
        ``$VGG_NP_PLAN`` (default ``"default"``). Any plan computes the same network
        within its algorithms' tolerance (a measured float64 plan may use Winograd F(2x2):
        logits within about 2e-15, docs/performance.md).

    Attributes
    ----------
    network : vgg_np.network.Network
        What the model is: the validated description built from these arguments
        (`vgg_np.network.describe`); ``layers``, ``input_shape`` (channels last),
        ``dtype``, ``head``, ``output_kind`` ... are read from it.

    Raises
    ------
    ValueError
        On an invalid argument, or weights that do not fit the network (every
        missing, extra and misshaped tensor is listed).

    Examples
    --------
    >>> tiny = VGGConfig("tiny", ((4,), (4,), (8,), (8,), (8,)), fc=(16,), default_size=32)
    >>> model = VGG(tiny, input_shape=(32, 32, 3), classes=10, seed=0)
    >>> model.network.output_kind, model.layers[-1].name
    ('probabilities', 'predictions')
    >>> x = np.zeros((2, 32, 32, 3), np.float32)
    >>> model(x).shape
    (2, 10)
    >>> list(model.activations(x))[-3:]
    ['flatten', 'fc1', 'predictions']
    """

    if TYPE_CHECKING:  # read-only properties made after the class from `network`
        # (`_from_network`), declared here for type checkers.
        config: VGGConfig
        layers: tuple[Layer, ...]
        input_shape: tuple
        dtype: np.dtype
        data_format: str
        include_top: bool
        pooling: str | None
        classes: int
        classifier_activation: str | None
        adaptive_pool: int | None
        batch_norm: float | None
        head: tuple[Layer, ...] | None
        output_kind: str

    def __init__(
        self,
        config: VGGConfig | str = "vgg16",
        weights: str | os.PathLike | formats.WeightSource | None = None,
        include_top: bool = True,
        input_shape: tuple | None = None,
        pooling: str | None = None,
        classes: int = 1000,
        classifier_activation: str | None = "softmax",
        dtype: str | np.dtype = "float32",
        seed: int | None = None,
        data_format: str = "channels_last",
        allow_nonfinite: bool = False,
        adaptive_pool: int | None = None,
        conv_algorithm: str = "auto",
        threads: int | None = None,
        batch_norm: bool | float = False,
        head: Sequence[Layer] | None = None,
        download: bool = False,
        plan: str | os.PathLike | None = None,
    ):
        self.network: Network = describe(
            config,
            include_top=include_top,
            input_shape=input_shape,
            pooling=pooling,
            classes=classes,
            classifier_activation=classifier_activation,
            dtype=dtype,
            data_format=data_format,
            adaptive_pool=adaptive_pool,
            batch_norm=batch_norm,
            head=head,
            provenance=getattr(weights, "provenance", None),
        )
        self.conv_algorithm = _check_conv_algorithm(conv_algorithm)
        self.threads = _check_threads(threads)
        # A bad `plan` fails here, not at the first call; a relative path means the
        # folder the model is made in, whatever the working folder at its first call.
        resolved = measure.resolve(plan)
        self.plan = resolved.absolute() if isinstance(resolved, pathlib.Path) else plan
        self._plan: tuple[Plan, Engine] | None = None  # see _lowered
        # What the last file loaded said about itself: its format, and for ONNX models
        # the tensor names of each layer's output (`formats.WeightSource`).
        self.weights_format: str | None = None
        self.weights_info: dict = {}
        self._loaded: tuple[dict, formats.Provenance] | None = None  # see weights_provenance
        self._weights: dict[str, tuple[np.ndarray, ...]] = {}
        if weights is None:
            self.set_weights(self.he_normal(seed))
        elif isinstance(weights, formats.WeightSource):  # opened by from_file
            self._load(weights, allow_nonfinite)
        else:
            path = hub.weights_path(
                weights, self.config.name, self.include_top, self.batch_norm is not None, download
            )
            self.load_weights(path, allow_nonfinite=allow_nonfinite)

    # -- construction ---------------------------------------------------------------

    def parameter_shapes(self) -> dict[str, tuple[tuple, ...]]:
        """Return the expected ``(kernel shape, bias shape)`` of every weighted layer.

        Returns
        -------
        dict
            Keras layer name -> ((kernel shape), (bias shape)), in layer order: one
            shape per tensor its kind holds (`vgg_np.layers.Kind.parameters`).

        Examples
        --------
        >>> VGG16(include_top=False, seed=0).parameter_shapes()["block1_conv1"]
        ((3, 3, 3, 64), (64,))
        """
        return self.network.parameter_shapes()

    def he_normal(self, seed: int | None = None) -> dict[str, tuple[np.ndarray, ...]]:
        """Draw seeded weights: He-normal kernels and ``N(0, 0.1**2)`` biases.

        Kernels are ``N(0, 2 / fan_in)`` with ``fan_in = KH * KW * C`` (``in`` for dense
        layers), so ReLU activations keep their scale through the network. Biases are
        drawn too (Keras starts them at zero) so that tests notice a bias that is lost.
        Values are drawn in float32, layer by layer, kernel then bias, from
        ``np.random.default_rng(seed)``, then cast to the model dtype, so a float64
        model holds exactly the same numbers as a float32 one. Each kind's draw is its
        ``initial`` in `vgg_np.layers.KINDS`.

        Parameters
        ----------
        seed : int, optional

        Returns
        -------
        dict
            Keras layer name -> (kernel, bias).

        Examples
        --------
        >>> w = VGG16(include_top=False, seed=0).he_normal(0)
        >>> w["block1_conv1"][0].shape, w["block1_conv1"][0].dtype
        ((3, 3, 3, 64), dtype('float32'))
        """
        rng = np.random.default_rng(seed)
        kinds = {layer.name: KINDS[layer.kind] for layer in self.layers}
        weights = {}
        for name, shapes in self.parameter_shapes().items():
            initial = kinds[name].initial
            assert initial is not None  # every kind with parameters draws them
            drawn = initial(shapes, rng)
            weights[name] = tuple(a.astype(self.dtype, copy=False) for a in drawn)
        return weights

    @classmethod
    def from_file(cls, path: str | os.PathLike, **kwargs: Any) -> VGG:
        """Build the network a weights file describes, and load it.

        The configuration (widths of every block, dense layers, classes), whether there
        is a classifier, and for ONNX models the input size, layout and final softmax
        are read from the file; torchvision-layout files get torchvision's adaptive
        average pool (to fc1's grid, 7x7 for VGG16). The output is what the file's own
        framework gives: logits for torchvision's and timm's weights (torch's VGG ends in a
        linear layer; their provenance says so, in any file format), what the graph
        declares for ONNX, else probabilities (Keras's last layer is a softmax); the table
        is in docs/heads.md. Keyword arguments override what was inferred
        (``classifier_activation="softmax"`` for probabilities from any file).

        Parameters
        ----------
        path : str or os.PathLike
        **kwargs
            Any argument of `VGG` but ``config`` and ``weights``.

        Returns
        -------
        VGG

        Examples
        --------
        >>> import pathlib, tempfile
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     VGG11(include_top=False, seed=0).save_weights(pathlib.Path(tmp) / "w.npz")
        ...     VGG.from_file(pathlib.Path(tmp) / "w.npz").config.blocks
        ((64,), (128,), (256, 256), (512, 512), (512, 512))
        """
        runtime = {name: kwargs.pop(name) for name in _RUNTIME if name in kwargs}
        for name in ("config", "weights"):
            if name in kwargs:
                raise TypeError(f"VGG.from_file reads `{name}` from the file: do not pass it")
        with formats.open_weights(path) as source:
            network = infer_architecture(
                source.tensors,
                source.info,
                source.provenance,
                where=source.path,
                layout=source.layout,
            )
            declared = "classifier_activation" in source.info  # an ONNX graph's own
            if source.provenance.family in _TORCH_FAMILIES and not declared:
                kwargs.setdefault("classifier_activation", None)  # logits, as torch returns
            network = network.replace(**kwargs)
            return cls(**network.arguments(), weights=source, **runtime)

    # -- weights --------------------------------------------------------------------

    @property
    def weights(self) -> dict[str, tuple[np.ndarray, ...]]:
        """Keras layer name -> (kernel, bias) in Keras layout, in layer order (a new dict).

        Examples
        --------
        >>> w = VGG16(include_top=False, seed=0).weights
        >>> w["block1_conv1"][0].shape, w["block5_conv3"][1].shape
        ((3, 3, 3, 64), (512,))
        """
        return dict(self._weights)

    def set_weights(
        self,
        weights: Mapping[str, tuple[ArrayLike, ...]],
        *,
        allow_nonfinite: bool = False,
        source: str = "the weights",
    ) -> None:
        """Replace every weight of the model, after checking that all of them fit.

        Parameters
        ----------
        weights : mapping
            Keras layer name -> (kernel, bias), Keras layout. Array-likes with ``shape``
            (h5py datasets, memory maps) are read only after every shape has been
            checked. Without the top, a classifier in `weights` (any layer not named
            ``block*``, a head of its own too) is ignored.
        allow_nonfinite : bool, default False
            Accept NaN and inf.
        source : str
            How to name the weights in error messages (e.g. the file).

        Raises
        ------
        ValueError
            Listing every missing, extra and misshaped tensor with both shapes; or
            naming the layers with non-finite values.

        Examples
        --------
        >>> model = VGG11(include_top=False, seed=0)
        >>> weights = model.weights
        >>> zeros = np.zeros((3, 3, 3, 64), np.float32), np.zeros(64, np.float32)
        >>> weights["block1_conv1"] = zeros
        >>> model.set_weights(weights)
        >>> del weights["block2_conv1"]
        >>> model.set_weights(weights)
        Traceback (most recent call last):
        ...
        ValueError: the weights do not fit vgg11 (input ?x?x3, include_top=False, classes=1000):
          missing: block2_conv1
        """
        self.network.check_weights(weights, source)
        loaded = {
            name: tuple(np.asarray(a, dtype=self.dtype) for a in weights[name])
            for name in self.network.parameter_shapes()
        }
        nonfinite = [
            n for n, arrays in loaded.items() if not all(np.isfinite(a).all() for a in arrays)
        ]
        if nonfinite and not allow_nonfinite:
            raise ValueError(
                f"{source} contain NaN or inf in {', '.join(nonfinite)}; "
                "pass allow_nonfinite=True to accept them"
            )
        _check_batch_norms(self.layers, loaded, source)
        self._weights = loaded
        self._plan = None  # the engine packed for the old weights

    def load_weights(
        self, path: str | os.PathLike, *, allow_nonfinite: bool = False, theano_flip: bool = True
    ) -> str:
        """Load a weights file of any supported format, detected from its content.

        Parameters
        ----------
        path : str or os.PathLike
        allow_nonfinite : bool, default False
        theano_flip : bool, default True
            Theano-era Keras files only: flip their convolution kernels
            (see `vgg_np.formats.theano`).

        Returns
        -------
        str
            The format that was read, e.g. ``"keras-h5"``.

        Raises
        ------
        ValueError
            If the format is unknown, the file is damaged, hostile or not a regular
            file, or its weights do not fit (every tensor is read and copied: the model
            never aliases the file).
        OSError
            If the file does not exist or cannot be opened.

        Examples
        --------
        >>> import pathlib, tempfile
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     path = pathlib.Path(tmp) / "w.h5"
        ...     _ = formats.write_weights(path, VGG11(include_top=False, seed=1).weights)
        ...     VGG11(include_top=False, seed=2).load_weights(path)
        'keras-h5 (Keras Applications layout)'
        """
        with formats.open_weights(path, theano_flip=theano_flip) as source:
            self._load(source, allow_nonfinite)
            return source.format

    def _load(self, source: formats.WeightSource, allow_nonfinite: bool) -> None:
        """Set the weights of an open file: the one way a file's weights arrive."""
        # The tensors are lazy: set_weights checks every shape before reading them, and
        # a failure while reading is already a ValueError naming the file.
        self.set_weights(
            source.tensors,
            allow_nonfinite=allow_nonfinite,
            source=f"the weights in {source.path} ({source.format})",
        )
        self.weights_format, self.weights_info = source.format, dict(source.info)
        self._loaded = (self._weights, source.provenance)

    @property
    def weights_provenance(self) -> formats.Provenance:
        """Where the current weights came from (family, preprocessing, input size, evidence).

        Weights loaded from a file keep that file's `formats.Provenance` until they are
        replaced; seeded or user-set weights have no known preprocessing.

        Examples
        --------
        >>> VGG11(include_top=False, seed=0).weights_provenance.family
        <Family.VGG_NP: 'vgg_np'>
        """
        if self._loaded is not None and self._loaded[0] is self._weights:
            return self._loaded[1]
        return formats.Provenance(
            "weights set in vgg_np",
            formats.Family.VGG_NP,
            evidence="seeded or set in vgg_np: no preprocessing is known",
        )

    def save_weights(self, path: str | os.PathLike) -> None:
        """Write the weights as a native ``.npz`` (``block1_conv1/kernel``, ...).

        The file holds plain arrays (load it with ``allow_pickle=False``), stored
        uncompressed, and records `weights_provenance` (the model's input size included)
        so that whoever loads it knows the preprocessing the weights expect.

        Examples
        --------
        >>> import tempfile, pathlib
        >>> model = VGG16(include_top=False, seed=0)
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     path = pathlib.Path(tmp) / "w.npz"
        ...     model.save_weights(path)
        ...     VGG16(weights=path, include_top=False).weights["block5_conv3"][1].shape
        (512,)
        """
        provenance = self.weights_provenance
        h, w, _ = self.input_shape
        if h and w:
            provenance = dataclasses.replace(provenance, input_size=(h, w))
        architecture = {"head": self.head, "batch_norm_eps": self.batch_norm}
        formats.write_npz(path, self._weights, provenance=provenance, info=architecture)

    # -- forward --------------------------------------------------------------------

    def _prepare_input(self, x: ArrayLike, cast: bool = True) -> np.ndarray:
        """Return `x` as ``(N, H, W, C)``, checked (`vgg_np._running.prepare_input`)."""
        family = self._loaded[1].family if self._loaded else None  # the file's, if loaded
        return _running.prepare_input(x, self.network, family, cast)

    @property
    def engine(self) -> Engine:
        """The `vgg_np.engine.Engine` that runs this network (kernels packed on first use).

        It runs the lowered network (`vgg_np.engine.lowering.lower`: batch norms folded into
        their convolutions, dropout gone, activations fused): its steps are
        ``model.engine.layers``.

        Examples
        --------
        >>> VGG16(include_top=False, seed=0).engine.algorithms((224, 224, 3))["block3_conv1"]
        'winograd-4'
        """
        return self._lowered()[1]

    def _lowered(self) -> tuple[Plan, Engine]:
        """Return the lowered plan (`vgg_np.engine.lowering.lower`) and its engine, packed once."""
        lowered = self._plan  # another thread may set it meanwhile: both are equal
        if lowered is None:
            plan = lower(self.layers, self._weights)
            lowered = (
                plan,
                Engine(plan.steps, plan.weights, self.conv_algorithm, self.threads, self.plan),
            )
            self._plan = lowered
        return lowered

    def _run(self, x: np.ndarray, keep: bool | set) -> list[tuple[str, np.ndarray]]:
        """Return [(user layer name, output)] for a prepared `x` (`vgg_np._running.run`)."""
        lowered = None if self.conv_algorithm == "reference" else self._lowered()
        return _running.run(self.layers, self._weights, x, keep, lowered)

    def _to_user_layout(self, y: np.ndarray) -> np.ndarray:
        if self.data_format == "channels_first" and y.ndim == 4:
            return y.transpose(0, 3, 1, 2)  # (N, H, W, C) -> (N, C, H, W)
        return y

    def __call__(self, x: ArrayLike) -> NDArray[np.floating]:
        """Run the network on preprocessed images.

        Parameters
        ----------
        x : array_like, shape (N, H, W, C) (or (N, C, H, W) with channels_first)
            Preprocessed images (see `vgg_np.preprocess_input`), floating point; cast
            to the model dtype.

        Returns
        -------
        ndarray
            The output of the last layer: class probabilities (or logits), or the
            features of the convolutional base without the top.
        """
        x = self._prepare_input(x)  # (N, H, W, C)
        *_, (_, last) = self._run(x, keep=False)
        return self._to_user_layout(last)

    def _layer_names(self, names: list[str]) -> list[str]:
        """Return every layer name, in order, after checking that `names` are among them."""
        order = [layer.name for layer in self.layers]
        if not names or any(name not in order for name in names):
            raise ValueError(
                f"`layers` must name layers of this model ({', '.join(order)}), got {names!r}"
            )
        return order

    def _outputs(self, x: np.ndarray, names: list[str]) -> dict[str, NDArray[np.floating]]:
        """Return the outputs of `names` for a prepared `x`, stopping after the deepest."""
        order = self._layer_names(names)
        wanted = set(names)
        # The engine fuses each pool into the convolution before it, except for the
        # convolutions asked for, and stops after the deepest layer named.
        found = {name: y for name, y in self._run(x, keep=wanted) if name in wanted}
        return {name: self._to_user_layout(found[name]) for name in order if name in wanted}

    def activations(
        self, x: ArrayLike, layers: list[str] | None = None
    ) -> dict[str, NDArray[np.floating]]:
        """Run the network and return the outputs of `layers` (default: every layer).

        With `layers` the pass stops after the deepest of them, and only their outputs
        are copied out (Keras's multi-output sub-model, torchvision's feature extractor).

        Parameters
        ----------
        x : array_like
            As for ``__call__``.
        layers : list of str, optional
            Keras layer names, in any order.

        Returns
        -------
        dict
            Keras layer name -> that layer's output, in layer order (block1_conv1 ...
            predictions). Convolution outputs are after their ReLU, as in Keras; on a
            batch-norm model before their batch norm (``block1_conv1``), the ReLU
            being the batch norm's (``block1_conv1_bn``), as in torchvision.

        Raises
        ------
        ValueError
            If a name is not a layer of this model.

        Examples
        --------
        >>> tiny = VGGConfig("tiny", ((4,), (4,), (8,), (8,), (8,)), fc=(16,), default_size=32)
        >>> model = VGG(tiny, classes=3, seed=0)
        >>> outputs = model.activations(np.ones((2, 32, 32, 3), np.float32))
        >>> [outputs[name].shape for name in ("block1_conv1", "block5_pool", "predictions")]
        [(2, 32, 32, 4), (2, 1, 1, 8), (2, 3)]
        >>> picked = model.activations(np.ones((2, 32, 32, 3), np.float32), ["fc1", "block2_conv1"])
        >>> {name: y.shape for name, y in picked.items()}
        {'block2_conv1': (2, 16, 16, 4), 'fc1': (2, 16)}
        """
        x = self._prepare_input(x)  # (N, H, W, C)
        if layers is not None:
            return self._outputs(x, list(layers))
        return {name: self._to_user_layout(y) for name, y in self._run(x, keep=True)}

    def features(self, x: ArrayLike, layer: str) -> NDArray[np.floating]:
        """Return the output of one layer, computing nothing after it.

        ``model.features(x, "fc2")`` is Keras's ``Model(base.input,
        base.get_layer("fc2").output)(x)``; ``"block5_pool"`` is torchvision's
        ``model.features(x)`` (in NHWC).

        Parameters
        ----------
        x : array_like
            As for ``__call__``.
        layer : str
            A Keras layer name of this model.

        Returns
        -------
        ndarray
            Equal, bit for bit, to ``model.activations(x, [layer])[layer]`` and to
            ``model.activations(x)[layer]``. On a batch-norm model a convolution's
            output is before its batch norm, as in torchvision's ``features`` modules:
            the engine runs each batch norm folded into its convolution, so that output
            is computed alone, by the reference forward pass, from the engine's output of
            the layer before it.

        Examples
        --------
        >>> tiny = VGGConfig("tiny", ((4,), (4,), (8,), (8,), (8,)), fc=(16,), default_size=32)
        >>> VGG(tiny, classes=3, seed=0).features(np.ones((2, 32, 32, 3), np.float32), "fc1").shape
        (2, 16)
        """
        return self._outputs(self._prepare_input(x), [layer])[layer]

    def predict(
        self,
        x: ArrayLike,
        batch_size: int = 32,
        verbose: bool | int | str = "auto",
        *,
        layer: str | None = None,
    ) -> NDArray[np.floating]:
        """Run the network `batch_size` images at a time, as Keras's ``Model.predict``.

        Memory stays bounded whatever N: beyond the input and the output array, a pass
        holds only one batch's activations. The result equals ``model(x)`` (or
        ``model.features(x, layer)``) bit for bit: results do not depend on how the
        batch is split.

        Parameters
        ----------
        x : array_like, shape (N, H, W, C) (or (N, C, H, W) with channels_first)
            As for ``__call__``; it may be a memory map (slices are read and cast one
            batch at a time).
        batch_size : int, default 32
        verbose : {"auto", 0, 1}, default "auto"
            A progress bar on stderr; ``"auto"``: when stderr is a terminal and there
            is more than one batch.
        layer : str, optional
            Return this layer's output instead of the last one's, stopping there.

        Returns
        -------
        ndarray, shape (N, ...)

        Raises
        ------
        ValueError
            On a bad `x`, `batch_size` or `layer`.

        Examples
        --------
        >>> tiny = VGGConfig("tiny", ((4,), (4,), (8,), (8,), (8,)), fc=(16,), default_size=32)
        >>> model = VGG(tiny, classes=3, seed=0)
        >>> x = np.random.default_rng(0).standard_normal((5, 32, 32, 3)).astype(np.float32)
        >>> np.array_equal(model.predict(x, batch_size=2, verbose=0), model(x))
        True
        >>> model.predict(x, batch_size=2, verbose=0, layer="block3_pool").shape
        (5, 4, 4, 8)
        """
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"`batch_size` must be a positive int, got {batch_size!r}")
        view = self._prepare_input(x, cast=False)  # (N, H, W, C), not copied
        name = layer or self.layers[-1].name
        self._layer_names([name])
        shape = self.network.output_shape(name, view.shape[1:])  # in the user's layout
        n = view.shape[0]
        out = np.empty((n, *shape), self.dtype)
        enabled = show_progress(verbose, -(-n // batch_size))
        with Progress(n, enabled=enabled) as bar:
            for start in range(0, n, batch_size):
                batch = view[start : start + batch_size].astype(self.dtype, copy=False)
                out[start : start + len(batch)] = self._outputs(batch, [name])[name]
                bar.update(len(batch))
        return out

    def summary(self, print_summary: bool = True) -> Summary:
        """Return (and print) the per-layer table: shapes, activations, parameters, work.

        Examples
        --------
        >>> s = VGG16(include_top=False, seed=0, input_shape=(224, 224, 3)).summary(False)
        >>> s.rows[1].name, s.rows[1].activations, s.rows[1].weights
        ('block1_conv1', 3211264, 1728)
        """
        title = (
            f"{self.config.name}: input {_fmt_shape(self.input_shape)}, "
            f"include_top={self.include_top}, {self.dtype.name}"
        )
        summary = Summary.of(self.layers, self.input_shape, title)
        if print_summary:
            print(summary)
        return summary

    def __repr__(self) -> str:
        extra = f", batch_norm={self.batch_norm}" if self.batch_norm is not None else ""
        if self.head is not None:
            extra += f", head=[{', '.join(layer.name for layer in self.head)}]"
        return (
            f"VGG({self.config.name!r}, include_top={self.include_top}, "
            f"input_shape={self.input_shape}, classes={self.classes}, dtype={self.dtype.name!r}"
            f"{extra})"
        )


def _check_conv_algorithm(conv_algorithm: str) -> str:
    if conv_algorithm not in CONV_ALGORITHMS:
        raise ValueError(
            f"`conv_algorithm` must be one of {CONV_ALGORITHMS}, got {conv_algorithm!r}"
        )
    return conv_algorithm


def _check_threads(threads: int | None) -> int | None:
    if threads is not None and (not isinstance(threads, int) or threads < 1):
        raise ValueError(f"`threads` must be None or a positive int, got {threads!r}")
    return threads


# Their models return logits: `from_file` follows the file's framework (docs/heads.md).
_TORCH_FAMILIES = (formats.Family.TORCHVISION, formats.Family.TIMM)

# The arguments of `VGG` that say how it runs and where its weights come from, not what it is.
_RUNTIME = ("seed", "allow_nonfinite", "conv_algorithm", "threads", "download", "plan")


def _from_network(name: str, doc: str) -> property:
    return property(lambda self: getattr(self.network, name), doc=doc)


# What the model is, read from its description (`VGG.network`); see the class example.
for _name, _doc in {
    "config": "The `VGGConfig`: widths of the blocks and of the standard top.",
    "layers": "The layer table (tuple of `Layer`), in the source framework's names.",
    "input_shape": "The per-image input shape, channels last ``(H, W, C)``.",
    "dtype": "The compute dtype.",
    "data_format": "The layout of the input and of 4-D outputs.",
    "include_top": "Whether there is a classifier (the standard top or a head).",
    "pooling": "Without the top: the global pooling after ``block5_pool``.",
    "classes": "Outputs of the classifier.",
    "classifier_activation": "Activation of the last layer.",
    "adaptive_pool": "torchvision's adaptive average pool size, or None.",
    "batch_norm": "The epsilon of the convolutions' batch norms, or None.",
    "head": "A classifier of one's own (tuple of `Layer`), or None.",
    "output_kind": "What the last layer gives: probabilities, logits, scores, features.",
}.items():
    setattr(VGG, _name, _from_network(_name, f"{_doc} See the class example."))


def _check_batch_norms(layers: Sequence[Layer], weights: Mapping[str, tuple], source: str) -> None:
    """Refuse batch norms whose variance is negative, or zero with epsilon 0 (NaN outputs)."""
    bad = []
    for layer in layers:
        if layer.kind != "batch_norm" or layer.name not in weights:
            continue
        variance = weights[layer.name][3]
        if (variance < 0).any():
            bad.append(f"{layer.name} (moving variance {float(variance.min()):g} < 0)")
        elif (variance + layer.eps <= 0).any():
            bad.append(f"{layer.name} (moving variance 0 with epsilon {layer.eps:g})")
    if bad:
        raise ValueError(
            f"{source} hold batch norm statistics no network can use: {', '.join(bad)}; "
            "every output would be NaN or inf"
        )


def _family_member(cls: Callable[Concatenate[VGGConfig, _P], VGG], name: str) -> Callable[_P, VGG]:
    """Make ``VGG16(...)`` and its siblings: `cls` (`VGG`) with the configuration fixed.

    Typed by `cls`'s own parameters (a ParamSpec), so that a type checker checks the
    arguments of ``VGG16(...)`` as it checks those of ``VGG(...)``.
    """

    def build(*args: _P.args, **kwargs: _P.kwargs) -> VGG:
        return cls(CONFIGS[name], *args, **kwargs)

    parameters = list(inspect.signature(VGG).parameters.values())[1:]  # all but `config`
    # inspect reads __signature__ (help(), docs, IDEs); typeshed's functions do not declare it.
    build.__signature__ = inspect.Signature(parameters, return_annotation=VGG)  # type: ignore[attr-defined]
    build.__name__ = build.__qualname__ = name.upper()
    build.__doc__ = f"""Build {name.upper()} with the Keras Applications signature.

    Same parameters as `VGG`, with the configuration fixed to ``CONFIGS[{name!r}]``.

    Examples
    --------
    >>> model = {name.upper()}(include_top=False, seed=0)
    >>> model.parameter_shapes()["block1_conv1"][0]
    (3, 3, 3, 64)
    """
    return build


VGG11 = _family_member(VGG, "vgg11")
VGG13 = _family_member(VGG, "vgg13")
VGG16 = _family_member(VGG, "vgg16")
VGG19 = _family_member(VGG, "vgg19")
