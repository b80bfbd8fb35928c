"""The composition matrix: every model kind vgg_np accepts, through every entry point.

Each cell runs one entry point (a column of `PATHS`) on one kind of model (a row of
`matrix_kinds.KINDS`: tiny widths, 32x32 to 64x40 inputs, timm's layout at 224x224) and either
equals the reference forward -- the same file loaded with ``conv_algorithm="reference"``
in float64, the teaching kernels composed layer by layer -- within `MATRIX_REL_TOL`, or
is a refusal listed in `REFUSALS`. Anything else fails the cell: another error, a
traceback, or a refusal nobody documented.

``docs/matrix.md`` is this module's table (worst error per cell, or the refusal): a
test keeps it true, and ``VGG_NP_WRITE_MATRIX=1 pytest tests/test_matrix.py`` rewrites
it. Cells that wait for the lowering work of issue 20 (user layer names on batch-norm
models, a head's activation after Dropout) are ``xfail(strict=True)``: they flip to
passing, and must then lose their mark, when that work lands.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import os
import pathlib
import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest
from PIL import Image

from tests.conftest import ROOT, relative_error
from tests.matrix_kinds import KINDS, Kind
from vgg_np import VGG, export, formats
from vgg_np.cli import main
from vgg_np.extract import extract, weights_digest
from vgg_np.preprocess import load_image, preprocess_input
from vgg_np.streams import ImageStream, input_size
from vgg_np.summary import Summary
from vgg_np.visualize import feature_map_grid

DOC = ROOT / "docs" / "matrix.md"

# The default float32 engine (Winograd, folded batch norms) against the float64 reference
# forward, max |error| / max |reference| over every value a cell compares: measured at
# most 9e-6 (the tiny Keras VGG16's layers, inputs of std 60) on these kinds, 3e-6 on the
# batch-norm heads; --top's values are also rounded to 6 decimals by the JSON. 2x margin.
MATRIX_REL_TOL = 2e-5
# A PNG of feature maps (`vgg-np show`) against the same grid from the reference: each
# channel is stretched to 0..255 and rounded, so a value on a rounding edge may move by 1.
SHOW_PIXEL_TOL = 1
#: Each path's tolerance, MATRIX_REL_TOL unless said.
TOLERANCE = {"show": SHOW_PIXEL_TOL / 255}
# A free-size model's input in these cells: not square, so H and W cannot be swapped.
FREE_SIZE = (48, 40)


# -- running a cell ------------------------------------------------------------------------


class Refused(Exception):
    """The path refused the model in one line (a ValueError, or the CLI's exit 1)."""


def cli(*argv: str) -> str:
    """Run ``vgg-np ARGV`` in this process; its stdout, or Refused with its error line."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    if code != 0:
        lines = [line for line in err.getvalue().splitlines() if line.startswith("vgg-np")]
        raise Refused(lines[-1] if lines else f"exit {code}")
    return out.getvalue()


class Row:
    """One kind, loaded for the cells: its file, models, references and pictures."""

    def __init__(self, name: str, kind: Kind, tmp: pathlib.Path, pictures: list[str]):
        self.name, self.kind, self.tmp = name, kind, tmp
        self.weights = kind.build(tmp)
        self.pictures = pictures
        options = {"data_format": "channels_last"}
        self.model = VGG.from_file(self.weights, **options)
        self.reference = VGG.from_file(
            self.weights, conv_algorithm="reference", dtype="float64", **options
        )
        h, w, _ = self.model.input_shape
        size = (h, w) if h and w else FREE_SIZE
        rng = np.random.default_rng(len(name))
        self.x = (rng.standard_normal((2, *size, 3)) * 60).astype(np.float32)
        self.classifier = self.model.output_kind != "features"

    def same(self, actual, expected) -> float:
        error = relative_error(actual, expected)
        if not error <= MATRIX_REL_TOL:
            raise AssertionError(f"{self.name}: error {error:.2e} > {MATRIX_REL_TOL:g}")
        return error

    @functools.cached_property
    def pictures_out(self) -> np.ndarray:
        """The reference's outputs of the pictures as the CLI feeds them (sized, preprocessed)."""
        return self.reference(_stream_batch(self.reference, self.pictures))

    @functools.cached_property
    def pictures_softmax_out(self) -> np.ndarray:
        """The same from the model `predict` runs: a softmax where the file has no head."""
        reference = _softmax_reference(self)
        return reference(_stream_batch(reference, self.pictures))

    def rows_of(self, out: pathlib.Path) -> np.ndarray:
        if out.suffix == ".zarr":
            import zarr

            return np.asarray(zarr.open_array(str(out), mode="r"))
        return np.load(out)

    def check_manifest(self, out: pathlib.Path, expected: np.ndarray) -> None:
        entries = [json.loads(line) for f in out.parent.glob(f"{out.name}.manifest/*.jsonl")
                   for line in f.open()]  # fmt: skip
        assert len(entries) == len(expected), entries
        for entry in entries:
            best = np.argsort(-expected[entry["row"]], kind="stable")[:2]
            assert [int(wnid) for wnid, _, _ in entry["top"]] == best.tolist(), entry


def _stream_batch(model: VGG, pictures: list[str]) -> np.ndarray:
    """`pictures` as the CLI feeds them to `model` (its provenance's preprocessing)."""
    stream = ImageStream.for_model(pictures, model, batch_size=len(pictures))
    return np.concatenate([batch for _, batch in stream])


def _model_call(row: Row) -> float:
    return row.same(row.model(row.x), row.reference(row.x))


def _predict(row: Row) -> float:
    return row.same(row.model.predict(row.x, batch_size=1), row.reference(row.x))


def _features(row: Row) -> float:
    expected = row.reference.activations(row.x)
    return max(row.same(row.model.features(row.x, name), value) for name, value in expected.items())


def _activations(row: Row) -> float:
    expected, actual = row.reference.activations(row.x), row.model.activations(row.x)
    assert list(actual) == list(expected), f"names {list(actual)} != {list(expected)}"
    return max(row.same(actual[name], value) for name, value in expected.items())


def _extract(row: Row, suffix: str = ".npy") -> float:
    out = row.tmp / f"extract{suffix}"
    top = ["--top", "2"] if row.classifier else []
    cli("extract", *row.pictures, "--weights", row.weights, "-o", out, *top, "--threads", "1")
    expected = row.pictures_out
    if row.classifier:
        row.check_manifest(out, expected)
    return row.same(row.rows_of(out), expected)


def _extract_zarr(row: Row) -> float:
    pytest.importorskip("zarr", reason="extraction to .zarr needs zarr")
    return _extract(row, ".zarr")


def _extract_dask(row: Row) -> float:
    pytest.importorskip("distributed", reason="needs the dask extra")
    from vgg_np.distributed import extract_on_cluster

    out = row.tmp / "dask.npy"
    result = extract_on_cluster(
        row.pictures, out, row.weights, dask_client(), options={"threads": 1},
        top=2 if row.classifier else 0, verbose=False,
    )  # fmt: skip
    assert result.failed_total == 0, result
    return row.same(row.rows_of(out), row.pictures_out)


def _extract_seeded(row: Row) -> float:
    """A store seeded from an earlier one of the first picture: that row copied, bit for bit
    the row of a fresh store, the other computed (`extract(..., seed_from=...)`)."""
    donor, seeded, fresh = (row.tmp / f"extract-{name}.npy" for name in ("a", "b", "c"))
    extract(row.pictures[:1], donor, row.model, verbose=0)
    result = extract(row.pictures, seeded, row.model, seed_from=[donor], verbose=0)
    assert (result.reused, result.written) == (1, len(row.pictures) - 1), result
    extract(row.pictures, fresh, row.model, verbose=0)
    assert seeded.read_bytes() == fresh.read_bytes(), "seeded rows differ from a fresh store's"
    return row.same(row.rows_of(seeded), row.pictures_out)


def _softmax_reference(row: Row) -> VGG:
    """What `predict` runs: the file's model, with a softmax where it has no head."""
    return VGG.from_file(
        row.weights, classifier_activation="softmax", conv_algorithm="reference",
        dtype="float64", data_format="channels_last",
    )  # fmt: skip


def _predict_output(row: Row) -> float:
    out = row.tmp / "predict.npy"
    cli("predict", *row.pictures, "--weights", row.weights, "-o", out)
    return row.same(row.rows_of(out), row.pictures_softmax_out)


def _top(row: Row) -> float:
    text = cli("predict", *row.pictures, "--weights", row.weights, "--json", "--top", "3")
    key = "probability" if _softmax_reference(row).output_kind == "probabilities" else "score"
    worst = 0.0
    for line, scores in zip(text.splitlines(), row.pictures_softmax_out, strict=True):
        record = json.loads(line)
        best = np.argsort(-scores, kind="stable")[:3]
        assert [int(entry["wnid"]) for entry in record["top"]] == best.tolist(), record
        values = [entry[key] for entry in record["top"]]
        worst = max(worst, row.same(values, scores[best]))
    return worst


def _compare(row: Row) -> float:
    reference = VGG.from_file(
        row.weights, classifier_activation=None, conv_algorithm="reference", dtype="float64",
        data_format="channels_last",
    )  # fmt: skip
    dump = row.tmp / "dump.npz"
    np.savez(dump, input=row.x, **reference.activations(row.x))
    result = json.loads(cli("compare", row.weights, dump, "--oracle", "--json"))
    assert result["passed"] and not result["missing"], result
    return max(layer["max_rel"] for layer in result["layers"])


def _convert(row: Row) -> float:
    """Round trip: to vgg_np's npz, then to Keras-layout safetensors; every tensor equal."""
    npz, back = row.tmp / "converted.npz", row.tmp / "converted.safetensors"
    cli("convert", row.weights, npz)
    cli("convert", npz, back, "--layout", "keras")
    for path in (npz, back):
        model = VGG.from_file(path, data_format="channels_last")
        assert model.input_shape == row.model.input_shape, (path, model.input_shape)
        assert list(model.weights) == list(row.model.weights), path
        for name, tensors in row.model.weights.items():
            for a, b in zip(tensors, model.weights[name], strict=True):
                np.testing.assert_array_equal(a, b, err_msg=f"{path.name} {name}")
        np.testing.assert_array_equal(model(row.x), row.model(row.x), err_msg=path.name)
    return 0.0


def _export(row: Row) -> float:
    """The whole model written as Keras opens it (.keras, and .h5 of layout 'model'), read back.

    A free-size torchvision model is written at the size where its adaptive pool is the
    identity: it is fed pictures of that size.
    """
    worst = 0.0
    for name, layout in (("export.keras", None), ("export.h5", "model")):
        export.convert(row.weights, row.tmp / name, layout=layout)
        model = VGG.from_file(row.tmp / name, data_format="channels_last")
        h, w, _ = model.input_shape
        x = row.x
        if h and (h, w) != x.shape[1:3]:
            x = (np.random.default_rng(h).standard_normal((2, h, w, 3)) * 60).astype(np.float32)
        worst = max(worst, row.same(model(x), row.reference(x)))
    return worst


def _summary(row: Row) -> float:
    text = cli("summary", "--weights", row.weights)
    shapes = {
        r.name: r.output_shape for r in Summary.of(row.model.layers, row.x.shape[1:], "").rows
    }
    actual = row.reference.activations(row.x)
    for name, value in actual.items():
        assert tuple(shapes[name]) == value.shape[1:], (name, shapes[name], value.shape)
        assert name in text, name
    return 0.0


def _show(row: Row) -> float:
    out = row.tmp / "show.png"
    cli("show", row.pictures[0], "--weights", row.weights, "--layer", "block2_conv1", "-o", out)
    reference = VGG.from_file(
        row.weights, include_top=False, head=None, input_shape=None, conv_algorithm="reference",
        dtype="float64", data_format="channels_last",
    )  # fmt: skip
    pixels = preprocess_input(load_image(row.pictures[0])[None].astype(np.float64))
    maps = reference.activations(pixels)["block2_conv1"][0]
    expected = feature_map_grid(maps, scale=max(1, 56 // maps.shape[0]))
    picture = np.asarray(Image.open(out))
    assert picture.shape == expected.shape, (picture.shape, expected.shape)
    worst = int(np.abs(picture.astype(int) - expected.astype(int)).max())
    assert worst <= SHOW_PIXEL_TOL, worst
    return worst / 255


def _stream(row: Row) -> float:
    """Pictures streamed at the model's size, or a non-square one where the size is free."""
    h, w, _ = row.model.input_shape
    prep = formats.choose_preprocessing(row.model.weights_provenance)
    size = input_size(row.model) if h and w else FREE_SIZE
    stream = ImageStream(row.pictures, prep, size=size, batch_size=1)
    batches = [batch for _, batch in stream]
    assert all(b.shape[1:3] == ((h, w) if h and w else FREE_SIZE) for b in batches)
    return max(row.same(row.model(b), row.reference(b.astype(np.float64))) for b in batches)


def _digest(row: Row) -> float:
    """Every tensor the model holds changes the digest; the same weights give the same one."""
    model = VGG.from_file(row.weights)
    before = weights_digest(model)
    assert weights_digest(VGG.from_file(row.weights)) == before
    weights = model.weights
    for name, tensors in weights.items():
        for index in range(len(tensors)):
            changed = [np.array(t, copy=True) for t in tensors]
            changed[index].flat[0] += 1
            model.set_weights({**weights, name: tuple(changed)})
            assert weights_digest(model) != before, (name, index)
    return 0.0


PATHS: dict[str, Callable[[Row], float]] = {
    "model(x)": _model_call,
    "predict(batch_size)": _predict,
    "features": _features,
    "activations": _activations,
    "extract .npy": _extract,
    "extract .zarr": _extract_zarr,
    "extract Dask": _extract_dask,
    "extract seeded": _extract_seeded,
    "predict -o": _predict_output,
    "predict --top": _top,
    "compare": _compare,
    "convert": _convert,
    "export .keras / .h5": _export,
    "summary": _summary,
    "show": _show,
    "stream": _stream,
    "weights digest": _digest,
}

#: Documented one-line refusals: (kind, path) -> a pattern of the message.
_NO_CLASSIFIER = r"has no classifier vgg_np can run: a 'notop' file"
REFUSALS: dict[tuple[str, str], str] = {
    ("VGG16 notop, any size", "predict -o"): _NO_CLASSIFIER,
    ("VGG16 notop, any size", "predict --top"): _NO_CLASSIFIER,
}


# -- the matrix ----------------------------------------------------------------------------


@dataclass
class Cell:
    error: float | None = None
    refusal: str | None = None
    failure: str | None = None
    skipped: str | None = None


class Matrix:
    """Cells computed on demand, each once, and kept for the docs table."""

    def __init__(self, tmp_factory, pictures: list[str]):
        self.tmp_factory, self.pictures = tmp_factory, pictures
        self.rows: dict[str, Row] = {}
        self.cells: dict[tuple[str, str], Cell] = {}

    def row(self, kind: str) -> Row:
        if kind not in self.rows:
            tmp = self.tmp_factory.mktemp("kind")
            self.rows[kind] = Row(kind, KINDS[kind], tmp, self.pictures)
        return self.rows[kind]

    def cell(self, kind: str, path: str) -> Cell:
        if (kind, path) not in self.cells:
            self.cells[kind, path] = self._run(kind, path)
        return self.cells[kind, path]

    def _run(self, kind: str, path: str) -> Cell:
        try:
            row = self.row(kind)
            for leftover in row.tmp.glob("*"):  # each cell starts without the last one's store
                if leftover.name.startswith(("extract", "dask", "predict")):
                    _remove(leftover)
            return Cell(error=PATHS[path](row))
        except pytest.skip.Exception as why:
            return Cell(skipped=str(why))
        except (Refused, ValueError) as error:
            return Cell(refusal=str(error).splitlines()[0])
        except Exception as error:  # a crash or a wrong number: the cell fails
            return Cell(failure=f"{type(error).__name__}: {str(error)[:400]}")


def _remove(path: pathlib.Path) -> None:
    if path.is_dir():
        for child in path.iterdir():
            _remove(child)
        path.rmdir()
    else:
        path.unlink()


_CLIENT = {}


def dask_client():
    """One in-process Dask cluster for every Dask cell (threads, no worker processes)."""
    if "client" not in _CLIENT:
        from distributed import Client, LocalCluster

        cluster = LocalCluster(
            n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None
        )
        _CLIENT["client"] = Client(cluster)
    return _CLIENT["client"]


@pytest.fixture(scope="module")
def matrix(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pictures")
    rng = np.random.default_rng(2026)
    pictures = []
    for i, (h, w) in enumerate([(50, 70), (66, 44)]):
        path = folder / f"picture{i}.png"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
        pictures.append(str(path))
    yield Matrix(tmp_path_factory, pictures)
    if "client" in _CLIENT:
        client = _CLIENT.pop("client")
        cluster = client.cluster
        client.close()
        cluster.close()


def _params():
    for kind in KINDS:
        for path in PATHS:
            marks = [pytest.mark.zarr] if path == "extract .zarr" else []
            marks += [pytest.mark.dask] if path == "extract Dask" else []
            if "ONNX" in kind:
                marks.append(pytest.mark.onnx)
            yield pytest.param(kind, path, marks=marks, id=f"{kind} | {path}")


@pytest.mark.parametrize(("kind", "path"), list(_params()))
def test_cell(matrix, kind, path):
    cell = matrix.cell(kind, path)
    if cell.skipped:
        pytest.skip(cell.skipped)
    assert cell.failure is None, cell.failure
    pattern = REFUSALS.get((kind, path))
    if pattern is None:
        assert cell.refusal is None, f"undocumented refusal: {cell.refusal}"
        assert cell.error is not None and cell.error <= TOLERANCE.get(path, MATRIX_REL_TOL)
    else:
        assert cell.refusal is not None and re.search(pattern, cell.refusal), cell


@pytest.mark.onnxruntime
@pytest.mark.parametrize("kind", [kind for kind in KINDS if "ONNX" in kind])
def test_onnx_kinds_agree_with_onnxruntime(matrix, kind):
    """The framework itself: onnxruntime on the file, against the reference forward."""
    ort = pytest.importorskip("onnxruntime", reason="needs onnxruntime")
    row = matrix.row(kind)
    session = ort.InferenceSession(str(row.weights), providers=["CPUExecutionProvider"])
    x = (
        row.x
        if row.reference.weights_info["input_layout"] == "NHWC"
        else row.x.transpose(0, 3, 1, 2)
    )
    (expected,) = session.run(None, {session.get_inputs()[0].name: np.ascontiguousarray(x)})
    assert relative_error(row.reference(row.x), expected) < MATRIX_REL_TOL


# -- the table in the docs -----------------------------------------------------------------


NOT_RUN = "not run"  # a cell whose optional package is missing here


def _measured(error: float) -> str:
    """The worst error, to one significant digit ("0" for bit for bit)."""
    return "0" if error == 0 else f"{error:.0e}"


def table(matrix: Matrix) -> str:
    """The markdown of docs/matrix.md from the cells (all computed)."""
    notes: list[str] = []
    lines = [
        "# The composition matrix",
        "",
        "Every model kind vgg_np accepts, through every entry point: the table of "
        "`tests/test_matrix.py`, which fails when this page is no longer true "
        "(`VGG_NP_WRITE_MATRIX=1 pytest tests/test_matrix.py` rewrites it). Each cell runs "
        "one entry point on one kind of model (tiny widths; 64x40, 32x32 or, where the size "
        "is free, 48x40 inputs, and the 224x224 pictures a free-size model is fed; timm's "
        "layout at its 224x224) and compares it with the reference forward: the same file "
        'loaded with `conv_algorithm="reference"` in float64, the teaching kernels layer by '
        "layer. A number is the worst relative error (max |error| / max |reference|) "
        "measured when the page was written; the test holds every one under "
        f"{MATRIX_REL_TOL:g} (`show`: {SHOW_PIXEL_TOL} grey level of 255). "
        '"0" is bit '
        "for bit: the round trip of `convert` (tensors and outputs), the shapes of "
        "`summary`, a digest that every tensor changes. `compare` runs float64 against "
        "float64. A refused cell refuses in the one line given below it.",
        "",
        "| kind | " + " | ".join(PATHS) + " |",
        "|---|" + "---|" * len(PATHS),
    ]
    for kind in KINDS:
        cells = []
        for path in PATHS:
            cell = matrix.cell(kind, path)
            if cell.skipped:
                cells.append(NOT_RUN)
            elif cell.refusal is not None:
                if cell.refusal not in notes:
                    notes.append(cell.refusal)
                cells.append(f"refused ({notes.index(cell.refusal) + 1})")
            elif cell.error is not None:
                cells.append(_measured(cell.error))
            else:
                cells.append("?")
        lines.append(f"| {kind} | " + " | ".join(cells) + " |")
    lines += ["", "Refusals:", ""]
    lines += [f"{i}. `{_generic(note)}`" for i, note in enumerate(notes, start=1)]
    return "\n".join(lines) + "\n"


def _generic(note: str) -> str:
    """A refusal without this run's temporary paths."""
    return re.sub(r"(/[^\s:']+)+/([^/\s:']+)", r"\2", note)


def test_docs_matrix_is_true(matrix):
    """Every cell that runs here says what docs/matrix.md says (cells of a missing extra
    -- onnx, zarr, dask -- are left out, and the page is then not rewritten)."""
    text = table(matrix)
    complete = NOT_RUN not in text
    if os.environ.get("VGG_NP_WRITE_MATRIX"):
        assert complete, "rewrite docs/matrix.md where every cell runs (onnx, zarr, dask)"
        DOC.write_text(text)
    documented = DOC.read_text()

    def rows(page: str) -> dict[str, list[str]]:
        cells = [line.strip("| ").split(" | ") for line in page.splitlines() if line[:2] == "| "]
        return {row[0]: row[1:] for row in cells}

    measured, promised = rows(text), rows(documented)
    assert list(promised) == list(measured), "docs/matrix.md has other kinds or paths"
    for kind, cells in measured.items():
        for path, now, then in zip(measured["kind"], cells, promised[kind], strict=True):
            # A number stays a number (its bound is the cell test's); the rest is equal.
            if now != NOT_RUN and not (now[:1].isdigit() and then[:1].isdigit()):
                assert now == then, (kind, path, now, then)
    refusals = documented.split("Refusals:")[1]
    if complete:
        assert refusals == text.split("Refusals:")[1]
    else:  # the numbering may differ: each refusal seen here is listed there
        for line in text.split("Refusals:")[1].strip().splitlines():
            assert line.split(". ", 1)[1] in refusals, line
