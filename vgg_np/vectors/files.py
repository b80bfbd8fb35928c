"""A set of cases on disk: written in ONNX's backend-test layout (or ``.npy``), read back.

`write_vectors` writes every case under a new directory with an ``index.json``;
`load_case` reads one case's directory; `_read_cases` a whole directory, one case at a
time (the layout is in the `vgg_np.vectors` docstring).
"""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

import numpy as np

from vgg_np import __version__
from vgg_np.config import VGGConfig
from vgg_np.model import VGG
from vgg_np.vectors.cases import NARROW_VGG16, Case, kernel_cases, layer_cases

if TYPE_CHECKING:
    # The optional onnx package is not type-checked here (pyproject.toml): its protos are
    # Any to the checker; the names say what is meant.
    from onnx import ModelProto, ValueInfoProto

__all__ = ["ENCODINGS", "load_case", "write_vectors"]

#: How the arrays are stored: ONNX TensorProto ``.pb`` files beside a ``model.onnx``, or
#: ``.npy`` files; ``"auto"`` picks ONNX when the ``onnx`` package is installed.
ENCODINGS = ("auto", "onnx", "npy")

_OPSET = 13  # Softmax over the last axis alone since opset 13


def _onnx_model(case: Case) -> ModelProto:
    """Build the case as an ONNX graph: its inputs are the case's inputs, in order."""
    from onnx import TensorProto, helper, numpy_helper

    def value(name: str, array: np.ndarray) -> ValueInfoProto:
        elem = helper.np_dtype_to_tensor_dtype(array.dtype)
        return helper.make_tensor_value_info(name, elem, list(array.shape))

    attrs = {k: v for k, v in case.attributes.items() if k not in ("activation", "seed")}
    names = list(case.inputs)
    initializers, nodes = [], []
    out = "y" if case.attributes.get("activation") is None else "pre_activation"
    if case.op == "Dropout":
        scale = np.asarray(1.0 / (1.0 - attrs["ratio"]), np.float32)
        initializers.append(numpy_helper.from_array(scale, "scale"))
        nodes += [
            helper.make_node("Cast", ["mask"], ["keep"], to=TensorProto.FLOAT),
            helper.make_node("Mul", ["x", "keep"], ["kept"]),
            helper.make_node("Mul", ["kept", "scale"], [out]),
        ]
    elif case.op == "Gemm" and "b" not in case.inputs:
        nodes.append(helper.make_node("MatMul", names, [out]))
    else:
        nodes.append(helper.make_node(case.op, names, [out], **attrs))
    if out != "y":
        nodes.append(helper.make_node("Relu", [out], ["y"]))
    graph = helper.make_graph(
        nodes,
        case.name,
        [value(k, v) for k, v in case.inputs.items()],
        [value(k, v) for k, v in case.outputs.items()],
        initializer=initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", _OPSET)])
    model.ir_version = 8  # read by onnxruntime 1.14 and later
    return model


def _resolve_encoding(encoding: str) -> str:
    if encoding not in ENCODINGS:
        raise ValueError(f"`encoding` must be one of {ENCODINGS}, got {encoding!r}")
    try:
        import onnx  # noqa: F401
    except ImportError:
        if encoding == "onnx":
            raise ImportError(
                "encoding='onnx' needs the `onnx` package (pip install onnx); "
                "encoding='npy' writes the same cases as .npy files"
            ) from None
        return "npy"
    return "onnx" if encoding == "auto" else encoding


def _write_case(case: Case, directory: pathlib.Path, encoding: str) -> None:
    data = directory / "test_data_set_0"
    data.mkdir(parents=True)
    for kind, arrays in (("input", case.inputs), ("output", case.outputs)):
        for i, (name, array) in enumerate(arrays.items()):
            if encoding == "onnx":
                from onnx import numpy_helper

                tensor = numpy_helper.from_array(array, name)  # named as the graph's input
                (data / f"{kind}_{i}.pb").write_bytes(tensor.SerializeToString())
            else:
                np.save(data / f"{kind}_{i}.npy", array)
    if encoding == "onnx":
        import onnx

        model = _onnx_model(case)
        onnx.checker.check_model(model)
        onnx.save(model, directory / "model.onnx")
    (directory / "case.json").write_text(json.dumps(case.spec(), indent=1) + "\n")


def write_vectors(
    out_dir: str | os.PathLike,
    *,
    weights: str | os.PathLike | None = None,
    config: VGGConfig | str = "vgg16",
    seed: int = 0,
    encoding: str = "auto",
    progress: Callable[[str], None] | None = None,
) -> list[Case]:
    """Write every kernel case and one case per layer of a VGG16 under `out_dir`.

    Parameters
    ----------
    out_dir : str or os.PathLike
        A new or empty directory (a stale case left from an earlier run would be read
        as current, so a non-empty directory is refused).
    weights : str or os.PathLike, optional
        A weights file of any format vgg_np reads; its network gives the layer cases.
        Without it, `config` with seeded He-normal weights.
    config : VGGConfig or str, default "vgg16"
        The network without `weights`; `NARROW_VGG16` writes all 22 layers in a second.
    seed : int, default 0
        Seed of the weights and of every input.
    encoding : {"auto", "onnx", "npy"}, default "auto"
        See `ENCODINGS`.
    progress : callable, optional
        Called with each case's name as it is written.

    Returns
    -------
    list of Case
        What was written, in the order of ``index.json``.

    Raises
    ------
    ValueError
        If `out_dir` is a file or a non-empty directory, or `encoding` is unknown.
    ImportError
        For ``encoding="onnx"`` without the ``onnx`` package.

    Examples
    --------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     cases = write_vectors(tmp, config=NARROW_VGG16, encoding="npy")
    ...     index = json.loads((pathlib.Path(tmp) / "index.json").read_text())
    >>> len(cases) == len(index["cases"]), index["encoding"], index["cases"][0]["name"]
    (True, 'npy', 'conv2d_arange_valid')
    """
    out = pathlib.Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"{out}: `out_dir` must be a new or empty directory")
    encoding = _resolve_encoding(encoding)
    if weights is not None:
        model = VGG.from_file(weights, classifier_activation=None)
    else:
        model = VGG(
            config,
            classes=10 if config is NARROW_VGG16 else 1000,
            seed=seed,
            classifier_activation=None,
        )
    cases = kernel_cases(seed) + layer_cases(model, seed)
    out.mkdir(parents=True, exist_ok=True)
    for case in cases:
        _write_case(case, out / case.name, encoding)
        if progress is not None:
            progress(case.name)
    index = {
        "generator": f"vgg_np {__version__} (vgg_np.vectors)",
        "encoding": encoding,
        "layout": "ONNX: activations NCHW, conv weights OIHW, dense kernels (in, out)",
        "tolerance": "|actual - expected| <= atol + rtol * |expected|, per case",
        "network": {
            "name": model.config.name,
            "weights": str(weights) if weights else f"He-normal, seed {seed}",
        },
        "cases": [case.spec() for case in cases],
    }
    (out / "index.json").write_text(json.dumps(index, indent=1) + "\n")
    return cases


def load_case(directory: str | os.PathLike) -> tuple[dict, dict, dict]:
    """Read a written case: its ``case.json``, its inputs and its expected outputs.

    Parameters
    ----------
    directory : str or os.PathLike
        One case's directory (``OUT_DIR/<case>``), in either encoding.

    Returns
    -------
    spec : dict
        ``case.json``.
    inputs, outputs : dict
        Name -> array, in the case's order.

    Raises
    ------
    ImportError
        For ``.pb`` files without the ``onnx`` package.

    Examples
    --------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     _ = write_vectors(tmp, config=NARROW_VGG16, encoding="npy")
    ...     spec, inputs, outputs = load_case(pathlib.Path(tmp) / "max_pool2d_arange_2x2")
    >>> spec["op"], outputs["y"][0, 0].tolist()
    ('MaxPool', [[5.0, 7.0], [13.0, 15.0]])
    """
    directory = pathlib.Path(directory)
    spec = json.loads((directory / "case.json").read_text())
    data = directory / "test_data_set_0"

    def read(entry: dict) -> np.ndarray:
        if (data / f"{entry['file']}.npy").exists():
            return np.load(data / f"{entry['file']}.npy", allow_pickle=False)
        from onnx import TensorProto, numpy_helper

        tensor = TensorProto()
        tensor.ParseFromString((data / f"{entry['file']}.pb").read_bytes())
        return numpy_helper.to_array(tensor)

    inputs = {e["name"]: read(e) for e in spec["inputs"]}
    outputs = {e["name"]: read(e) for e in spec["outputs"]}
    return spec, inputs, outputs


def _read_cases(source: Iterable[Case] | str | os.PathLike) -> Iterator[Case]:
    """Yield the cases given, or a `write_vectors` directory's in its index's order.

    One at a time: full-size VGG16's weigh 650 MB.
    """
    if not isinstance(source, (str, os.PathLike)):
        yield from source
        return
    root = pathlib.Path(source)
    index = root / "index.json"
    if not index.is_file():
        raise ValueError(f"`source`: {root} holds no index.json (write it with `vgg-np vectors`)")
    try:
        entries = json.loads(index.read_text())["cases"]
        for entry in entries:
            name = entry["name"]
            if not isinstance(name, str) or pathlib.Path(name).name != name or name in ("", ".."):
                raise ValueError(f"the case name {name!r} is not a directory of {root}")
            spec, inputs, outputs = load_case(root / name)
            tolerance = {key: spec[key] for key in ("rtol", "atol", "description")}
            case = Case(
                spec["name"], spec["kernel"], spec["op"], spec["attributes"], inputs, outputs,
                **tolerance,
            )  # fmt: skip
            yield case
    except (OSError, ValueError, KeyError, TypeError, ImportError) as error:
        # json, numpy and onnx raise their own kinds for a damaged file: one line for all
        raise ValueError(f"{index}: a damaged or incomplete set of cases: {error!r}") from None
