"""Tests of vgg_np.formats: every reader gives one canonical mapping; bad files fail clearly."""

from __future__ import annotations

import io
import shutil
import zipfile

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import TINY_DIR
from tests.reference.make_keras_reference import FORMATS, TINY, TINY_CLASSES
from vgg_np import VGG, formats
from vgg_np.formats import npz

EXPECTED_FORMAT = {
    "applications.h5": "keras-h5 (Keras Applications layout)",
    "applications_notop.h5": "keras-h5 (Keras Applications layout)",
    "tf_keras.h5": "keras-h5 (save_weights layout)",
    "legacy_weights.h5": "keras-h5 (save_weights layout)",
    "model.h5": "keras-h5 (model.save layout, whole model from its config)",
    "model.weights.h5": "keras-weights-h5 (Keras 3 .weights.h5)",
    "model.keras": "keras-zip (.keras, whole model from its config)",
}


def read_all(path) -> tuple[str, dict]:
    with formats.open_weights(path) as source:
        return source.format, {
            k: (np.asarray(a), np.asarray(b)) for k, (a, b) in source.tensors.items()
        }


@pytest.fixture(scope="module")
def reference_tensors():
    return read_all(TINY_DIR / "applications.h5")[1]


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_keras_layout_gives_the_same_tensors(fmt, reference_tensors):
    kind, tensors = read_all(TINY_DIR / fmt)
    assert kind == EXPECTED_FORMAT[fmt]
    expected = dict(reference_tensors)
    if "notop" in fmt:
        expected = {k: v for k, v in expected.items() if k.startswith("block")}
    assert list(tensors) == list(expected)  # layer order kept
    for name, (kernel, bias) in expected.items():
        np.testing.assert_array_equal(tensors[name][0], kernel, err_msg=name)
        np.testing.assert_array_equal(tensors[name][1], bias, err_msg=name)
    assert tensors["block1_conv1"][0].shape == (3, 3, 3, 8)  # HWIO, as Keras stores it


def test_format_is_detected_from_content_not_name(tmp_path):
    for fmt in ("model.keras", "tf_keras.h5"):
        renamed = tmp_path / f"{fmt}.bin"
        shutil.copy(TINY_DIR / fmt, renamed)
        assert read_all(renamed)[0] == EXPECTED_FORMAT[fmt]


def test_keras3_weights_h5_maps_by_name_not_by_group_order(reference_tensors):
    # HDF5 lists groups alphabetically (conv2d_10 before conv2d_2): the `name` attribute rules.
    with h5py.File(TINY_DIR / "model.weights.h5") as f:
        groups = list(f["layers"])
        assert groups.index("conv2d_10") < groups.index("conv2d_2")
        assert f["layers/conv2d_2/vars"].attrs["name"] == "block2_conv1"
    tensors = read_all(TINY_DIR / "model.weights.h5")[1]
    np.testing.assert_array_equal(tensors["block2_conv1"][0], reference_tensors["block2_conv1"][0])


def test_layer_names_split_into_chunks_are_joined(tmp_path, reference_tensors):
    path = tmp_path / "chunked.h5"
    shutil.copy(TINY_DIR / "tf_keras.h5", path)
    with h5py.File(path, "r+") as f:
        names = list(f.attrs["layer_names"])
        del f.attrs["layer_names"]
        f.attrs["layer_names0"] = np.array(names[:10])  # Keras splits attributes over 64 KB
        f.attrs["layer_names1"] = np.array(names[10:])
    tensors = read_all(path)[1]
    assert list(tensors) == list(reference_tensors)


def test_npz_members_are_lazy_then_copied_not_mapped(tmp_path):
    path = tmp_path / "w.npz"
    kernel = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    npz.write_npz(path, {"fc1": (kernel, np.ones(4, np.float32))})
    with npz.open_npz(path) as source:
        lazy = source.tensors["fc1"][0]
        assert (lazy.shape, lazy.dtype) == ((2, 3, 4), np.float32)  # known before reading
        read = np.asarray(lazy)
        root = read
        while isinstance(root.base, np.ndarray):
            root = root.base
        assert root.base is None and root.flags.owndata  # its own memory, not a map of the file
        np.testing.assert_array_equal(read, kernel)


def test_compressed_npz_is_read_too(tmp_path):
    path = tmp_path / "w.npz"
    np.savez_compressed(path, **{"fc1/kernel": np.ones((2, 3)), "fc1/bias": np.zeros(3)})
    with npz.open_npz(path) as source:
        np.testing.assert_array_equal(source.tensors["fc1"][0], np.ones((2, 3)))


def _npz_with_header(path, header_shape, data: bytes):
    """An npz whose member declares `header_shape` but holds `data`."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buffer, {"descr": "<f4", "fortran_order": False, "shape": header_shape}
    )
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("fc1/kernel.npy", buffer.getvalue() + data)


def test_absurd_declared_size_is_refused_before_allocating(tmp_path):
    path = tmp_path / "absurd.npz"
    _npz_with_header(path, (10**6, 10**6), b"\x00" * 16)  # declares 4 TB
    with pytest.raises(ValueError, match=r"declares shape \(1000000, 1000000\).*holds 16 bytes"):
        VGG(TINY, weights=path, input_shape=(32, 32, 3), classes=TINY_CLASSES)


def test_npz_with_a_pickle_is_refused(tmp_path):
    path = tmp_path / "pickle.npz"
    np.savez(path, **{"fc1/kernel": np.array([{"a": 1}], dtype=object), "fc1/bias": np.zeros(1)})
    with pytest.raises(ValueError, match="pickle"):
        read_all(path)


def test_npz_with_foreign_keys_is_refused(tmp_path):
    path = tmp_path / "foreign.npz"
    np.savez(path, arr_0=np.zeros(3))
    with pytest.raises(ValueError, match=r"'<layer>/kernel' or '<layer>/bias' .*got \['arr_0'\]"):
        read_all(path)


def test_npz_layer_without_bias_is_refused(tmp_path):
    path = tmp_path / "half.npz"
    np.savez(path, **{"fc1/kernel": np.zeros((2, 2))})
    with pytest.raises(ValueError, match="layer 'fc1' has no /bias"):
        read_all(path)


def test_write_npz_never_leaves_a_half_written_file(tmp_path, monkeypatch):
    path = tmp_path / "w.npz"
    path.write_bytes(b"precious")

    def failing_savez(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", failing_savez)
    with pytest.raises(OSError, match="disk full"):
        npz.write_npz(path, {"fc1": (np.zeros((2, 2)), np.zeros(2))})
    assert path.read_bytes() == b"precious"
    assert [p.name for p in tmp_path.iterdir()] == ["w.npz"]


def test_write_npz_refuses_python_objects_rather_than_pickle_them(tmp_path):
    # np.savez pickles an object array by default: such a file could never be read back
    # (the reader refuses pickles), so writing it must fail, leaving the old file alone.
    path = tmp_path / "w.npz"
    path.write_bytes(b"precious")
    kernel = np.array([[1.0, None]], dtype=object)
    with pytest.raises(ValueError, match="allow_pickle=False"):
        npz.write_npz(path, {"fc1": (kernel, np.zeros(2))})
    assert path.read_bytes() == b"precious"
    assert [p.name for p in tmp_path.iterdir()] == ["w.npz"]


def test_write_npz_adds_no_suffix(tmp_path):
    npz.write_npz(tmp_path / "weights.bin", {"fc1": (np.zeros((2, 2)), np.zeros(2))})
    assert [p.name for p in tmp_path.iterdir()] == ["weights.bin"]


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"just some text\n", r"unknown weights format.*starts with b'just som'"),
        (b"", r"unknown weights format"),
        (b"PK\x03\x04garbage", r"starts like a zip file but is damaged"),
    ],
)
def test_unknown_or_damaged_content(tmp_path, content, match):
    path = tmp_path / "weights.h5"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=match):
        read_all(path)


def test_hdf5_that_is_not_keras(tmp_path):
    path = tmp_path / "other.h5"
    with h5py.File(path, "w") as f:
        f["data"] = np.zeros(3)
    with pytest.raises(ValueError, match="not a Keras weights file"):
        read_all(path)


def test_layer_with_three_tensors_is_named(tmp_path):
    path = tmp_path / "bn.h5"
    shutil.copy(TINY_DIR / "tf_keras.h5", path)
    with h5py.File(path, "r+") as f:
        group = f["fc2"]
        group["fc2/gamma:0"] = np.ones(48, np.float32)
        group.attrs["weight_names"] = np.array([b"fc2/kernel:0", b"fc2/bias:0", b"fc2/gamma:0"])
    with pytest.raises(
        ValueError, match=r"layer 'fc2' should hold a kernel and a bias, got shapes"
    ):
        read_all(path)


def test_truncated_files_fail_with_a_clear_error(tmp_path):
    for fmt in ("model.h5", "model.keras", "applications.h5"):
        data = (TINY_DIR / fmt).read_bytes()
        path = tmp_path / fmt
        path.write_bytes(data[: len(data) // 2])
        with pytest.raises(ValueError, match=r"damaged|truncated|cannot be read"):
            VGG(TINY, weights=path, input_shape=(32, 32, 3), classes=TINY_CLASSES)


@pytest.fixture(scope="module")
def pristine_files(tmp_path_factory) -> dict[str, bytes]:
    """The bytes of one small file per format, to corrupt."""
    out = tmp_path_factory.mktemp("pristine")
    weights = read_all(TINY_DIR / "model.h5")[1]
    files = {
        name: (TINY_DIR / name).read_bytes() for name in ("model.h5", "model.keras", "tf_keras.h5")
    }
    for name in ("w.npz", "w.safetensors", "keras_layout.safetensors"):
        layout = "keras" if name.startswith("keras") else None
        formats.write_weights(out / name, weights, layout=layout)
        files[name] = (out / name).read_bytes()
    return files


@settings(max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    fmt=st.sampled_from(["model.h5", "model.keras", "tf_keras.h5", "w.npz", "w.safetensors",
                         "keras_layout.safetensors"]),
    position=st.floats(0, 1, exclude_max=True),
    garbage=st.binary(min_size=1, max_size=64),
    truncate=st.booleans(),
)  # fmt: skip
def test_corrupted_bytes_never_crash_or_load_misshaped_weights(
    tmp_path, pristine_files, fmt, position, garbage, truncate
):
    data = bytearray(pristine_files[fmt])
    at = int(position * len(data))
    data = data[:at] if truncate else data[:at] + garbage + data[at + len(garbage) :]
    path = tmp_path / f"corrupt-{fmt}"
    path.write_bytes(bytes(data))
    pristine = tmp_path / f"pristine-{fmt}"
    pristine.write_bytes(pristine_files[fmt])
    expected = {name: (k.shape, b.shape) for name, (k, b) in read_all(pristine)[1].items()}
    # The reader alone, not the model, whose own shape check would hide a reader's bug.
    try:
        _, tensors = read_all(path)
    except ValueError as error:
        assert str(path) in str(error) or path.name in str(error), error  # names the file
        return
    # Bytes that did not break the structure may change values, never names or shapes.
    assert {name: (k.shape, b.shape) for name, (k, b) in tensors.items()} == expected
