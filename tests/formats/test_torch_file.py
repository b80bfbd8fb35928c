"""PyTorch ``.pth`` state dicts read and written without torch (`vgg_np.formats.torch_file`).

The reader is held to torch's own reading (marker ``torch``) on every ``.pth`` fixture and
on files torch writes here (every float dtype, views, transposes, shared storages), and
torch must load what vgg_np writes. Without torch, hostile files (pickles that would run
code, storages that lie about their size, offsets and strides out of bounds, truncations,
bit flips, mutated pickles) must each end in one `ValueError` naming the file, or load
exactly the tensors they hold.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import struct
import subprocess
import sys
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import HEADS_DIR as HEADS
from tests.conftest import ROOT, TINY_DIR
from tests.conftest import tiny_vgg16 as tiny
from vgg_np import formats
from vgg_np.formats._common import FileFormatError
from vgg_np.formats.torch_file import GLOBALS, read_state_dict, state_dict_pickle, write_state_dict

FIXTURES = sorted(HEADS.glob("*.pth"))


@pytest.fixture(scope="module")
def weights() -> dict:
    return tiny(weights=TINY_DIR / "model.h5").weights


def load(path) -> dict[str, np.ndarray]:
    with read_state_dict(path) as (tensors, _):
        return {name: np.asarray(tensor) for name, tensor in tensors.items()}


def refused(path, match: str) -> str:
    """Assert that reading `path` raises one ValueError naming it; return the message."""
    with pytest.raises(ValueError, match=match) as error:
        load(path)
    assert str(path) in str(error.value), str(error.value)
    return str(error.value)


def pth(path, pickled: bytes, storages: dict[str, bytes], extra=(), compress=None):
    """Write a zip laid out as torch.save lays it out, with any pickle and storages."""
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", pickled)
        zf.writestr("archive/byteorder", b"little")
        for key, data in storages.items():
            zf.writestr(f"archive/data/{key}", data, compress_type=compress)
        for name, data in extra:
            zf.writestr(name, data)
        zf.writestr("archive/version", b"3\n")
    return path


def tensor_pickle(*tensors: tuple) -> bytes:
    """A state dict pickle whose tensors are ``(name, storage kind, key, numel, offset,
    size, stride)``: declarations spelled out as torch spells them, however hostile."""
    items = b""
    for name, kind, key, numel, offset, size, stride in tensors:
        storage = b"(" + _plain("storage") + b"ctorch\n" + kind.encode() + b"\n"
        storage += _plain(key) + _plain("cpu") + _plain(numel) + b"tQ"
        rebuild = b"ctorch._utils\n_rebuild_tensor_v2\n("
        rebuild += storage + _plain(offset) + _plain(size) + _plain(stride) + b"\x89"
        rebuild += b"ccollections\nOrderedDict\n)RtR"
        items += _plain(name) + rebuild
    return b"\x80\x02ccollections\nOrderedDict\n)R(" + items + b"u."


def _plain(value) -> bytes:
    out = io.BytesIO()
    pickler = pickle.Pickler(out, protocol=2)
    pickler.fast = True
    pickler.dump(value)
    return out.getvalue()[2:-1]


FLOATS = np.arange(12, dtype="<f4").tobytes()


# ---------------------------------------------------------------------------------------
# Equal to torch's reading; torch reads what vgg_np writes
# ---------------------------------------------------------------------------------------


def torch_reading(torch, path) -> dict[str, np.ndarray]:
    """What torch.load(weights_only=True) gives, as vgg_np gives it (floats, bf16 widened)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = state.get("state_dict", state)  # a checkpoint's wrapper
    return {
        name: (t.float() if t.dtype == torch.bfloat16 else t).detach().numpy()
        for name, t in state.items()
        if t.dtype.is_floating_point
    }


def assert_same(got: dict, expected: dict) -> None:
    assert list(got) == list(expected)
    for name, array in expected.items():
        assert got[name].dtype == array.dtype, name
        np.testing.assert_array_equal(got[name], array, err_msg=name)


@pytest.mark.torch
@pytest.mark.parametrize("path", FIXTURES, ids=[p.name for p in FIXTURES])
def test_every_pth_fixture_reads_as_torch_reads_it(path):
    torch = pytest.importorskip("torch", reason="needs torch (pip install torch==2.13.0)")
    expected = torch_reading(torch, path)
    got = load(path)
    assert_same(got, expected)
    print(f"{path.name}: {len(got)} tensors equal to torch.load(weights_only=True)")


@pytest.mark.torch
def test_files_torch_writes_read_as_torch_reads_them(tmp_path):
    torch = pytest.importorskip("torch", reason="needs torch (pip install torch==2.13.0)")
    base = torch.arange(60, dtype=torch.float32).reshape(3, 4, 5)
    state = collections.OrderedDict()
    for dtype in (torch.float16, torch.float32, torch.float64, torch.bfloat16):
        state[f"plain.{dtype}"] = base.to(dtype) / 7
    state["transposed"] = base.permute(2, 0, 1)  # strides (1, 20, 5)
    state["slice"] = base[1:, ::2]  # an offset and a step: a strided view
    state["shared"] = base[2]  # the same storage as "transposed" and "slice"
    state["scalar"] = torch.tensor(2.5)
    state["empty"] = torch.zeros(0, 3)
    state["bn.num_batches_tracked"] = torch.tensor(7)  # a count: skipped by both
    state["parameter"] = torch.nn.Parameter(torch.ones(2))
    path = tmp_path / "many.pth"
    torch.save(state, path)
    assert_same(load(path), torch_reading(torch, path))
    # A checkpoint that wraps the state dict (plain containers around it).
    torch.save({"epoch": 3, "state_dict": state, "lr": [0.1, 0.01]}, path)
    assert_same(load(path), torch_reading(torch, path))


@pytest.mark.torch
def test_torch_loads_what_vgg_np_writes(tmp_path, weights):
    torch = pytest.importorskip("torch", reason="needs torch (pip install torch==2.13.0)")
    path = tmp_path / "w.pth"
    formats.write_weights(path, weights)
    state = torch.load(path, weights_only=True)
    assert "vgg_np.family" in state._metadata["vgg_np.provenance"]  # the provenance travels
    assert_same(load(path), {k: v.numpy() for k, v in state.items()})
    arrays = {
        "f16": np.arange(6, dtype=np.float16).reshape(2, 3),
        "f64": np.asfortranarray(np.arange(6.0).reshape(2, 3)),
        "scalar": np.array(1.5, np.float32),
        "empty": np.zeros((0, 4), np.float32),
        "big_endian": np.arange(3, dtype=">f4"),
    }
    write_state_dict(path, arrays)
    state = torch.load(path, weights_only=True)
    for name, array in arrays.items():
        assert state[name].shape == array.shape, name
        np.testing.assert_array_equal(state[name].numpy(), array, err_msg=name)
    again = tmp_path / "again.pth"
    torch.save(state, again)  # torch's own layout of the same tensors: the same members
    assert sorted(zipfile.ZipFile(path).namelist()) == sorted(
        n.replace("again/", "archive/")
        for n in zipfile.ZipFile(again).namelist()
        if not n.endswith("serialization_id")
    )


def test_what_vgg_np_writes_reads_back_exactly_and_aligned(tmp_path, weights):
    path = tmp_path / "w.pth"
    formats.write_weights(path, weights)
    again = tiny(weights=path)
    for layer, (kernel, bias) in weights.items():
        np.testing.assert_array_equal(again.weights[layer][0], kernel, err_msg=layer)
        np.testing.assert_array_equal(again.weights[layer][1], bias, err_msg=layer)
    with open(path, "rb") as f, zipfile.ZipFile(f) as zf:
        for info in zf.infolist():  # torch.save aligns every member's data to 64 bytes
            f.seek(info.header_offset + 26)
            name_len, extra_len = struct.unpack("<HH", f.read(4))
            assert (info.header_offset + 30 + name_len + extra_len) % 64 == 0, info.filename


def test_writing_refuses_non_float_tensors(tmp_path):
    with pytest.raises(TypeError, match=r"'counts'.*int64"):
        write_state_dict(tmp_path / "w.pth", {"counts": np.arange(3)})
    assert not (tmp_path / "w.pth").exists()


# A fresh interpreter in which `import torch` fails, as on a machine without it.
WITHOUT_TORCH = """
import sys

class Block:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] == "torch":
            raise ImportError(f"{name} is blocked by the test")

sys.meta_path.insert(0, Block())
import numpy as np
from vgg_np import VGG, formats

model = VGG.from_file(sys.argv[1], dtype=np.float64)
formats.convert(sys.argv[1], sys.argv[2])
again = VGG.from_file(sys.argv[2], dtype=np.float64)
same = all(
    np.array_equal(a, b)
    for layer in model.weights
    for a, b in zip(model.weights[layer], again.weights[layer], strict=True)
)
print(len(model.weights), same, "torch" in sys.modules)
"""


def test_pth_files_load_and_convert_with_torch_blocked(tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", WITHOUT_TORCH, str(HEADS / "vgg16_bn.pth"), str(tmp_path / "o.pth")],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["29", "True", "False"]  # 13 convs, 13 batch norms, 3 dense


# ---------------------------------------------------------------------------------------
# Hostile pickles: nothing runs, every refused global is named
# ---------------------------------------------------------------------------------------


class Payload:
    """Unpickling this with a plain unpickler would run a shell command."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


@pytest.mark.parametrize(
    ("pickled", "named"),
    [
        ("payload", "posix.system"),
        (b"\x80\x02cbuiltins\neval\nX\x03\x00\x00\x001+1\x85R.", "builtins.eval"),
        (b"cos\nsystem\n(S'touch pwned'\ntR.", "os.system"),  # protocol 0
        (b"(S'touch pwned'\nios\nsystem\n.", "os.system"),  # INST
        (b"\x80\x04\x8c\x08builtins\x8c\x04exec\x93.", "builtins.exec"),  # STACK_GLOBAL
        (b"\x80\x02ctorch\nload\n.", "torch.load"),
        (b"\x80\x02ctorch._utils\n_rebuild_tensor\n.", "torch._utils._rebuild_tensor"),
        (b"\x80\x02cnumpy.core.multiarray\n_reconstruct\n.", "numpy.core.multiarray._reconstruct"),
        (b"\x80\x02ccollections\ndefaultdict\n.", "collections.defaultdict"),
        (b"\x80\x02c__builtin__\ngetattr\n.", "__builtin__.getattr"),
    ],
    ids=["os.system reduce", "eval", "protocol 0", "INST", "STACK_GLOBAL", "torch.load",
         "old rebuild", "numpy reconstruct", "defaultdict", "getattr"],
)  # fmt: skip
def test_a_pickle_asking_for_any_other_global_is_refused_naming_it(tmp_path, pickled, named):
    target = tmp_path / "pwned"
    if pickled == "payload":
        pickled = pickle.dumps({"features.0.weight": Payload(f"touch {target}")}, protocol=2)
    path = pth(tmp_path / "evil.pth", pickled, {})
    cwd = os.getcwd()
    os.chdir(tmp_path)  # where 'touch pwned' would leave its mark
    try:
        message = refused(path, f"not a loadable PyTorch state dict: its pickle asks for {named},")
    finally:
        os.chdir(cwd)
    assert not target.exists()
    assert "\n" not in message


@pytest.mark.parametrize(
    ("pickled", "match"),
    [
        (b"\x80\x02ctorch\nFloatStorage\n)R.", "not callable"),  # a storage type called
        (b"\x80\x02\x82\x01.", "extension code"),  # EXT1 from copyreg's registry
        (b"\x80\x02]q\x00.", "expected a dict of tensors"),  # a list
        (b"\x80\x02}(K\x01K\x02u.", "expected a dict of tensors"),  # not tensors
        (b"\x80\x02}X\x01\x00\x00\x00ab.", "damaged"),  # BUILD on a plain dict
        (b"\x80\x02(" * 100_000 + b".", "damaged"),  # marks without end
        (b"\x80\x02B\xff\xff\xff\x7f.", "damaged"),  # bytes declared far past the end
        (b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n(X\x01\x00\x00\x00xK\x00)))tR.",
         "expected a dict of tensors"),  # a bare tensor, not a dict
        (b"", "damaged"),
        (b"\x80\x02N" + b"r\xff\xff\xff\x7f" + b".", "memo entry 2147483647 at byte 3"),
        (b"\x80\x02Ncx\ny\np99999999999\n.", "memo entry 99999999999"),
        (b"\x80\x04\x8e" + (1 << 40).to_bytes(8, "little") + b".", "damaged"),  # BINBYTES8
        (b"\x80\x04\x8d" + (1 << 40).to_bytes(8, "little") + b".", "damaged"),  # BINUNICODE8
        (b"\x80\x02\x8b\xff\xff\xff\x7f.", "damaged"),  # LONG4 of 2 GB
        (b"\x80\x04\x95" + (1 << 40).to_bytes(8, "little") + b"N.", "damaged"),  # FRAME
    ],
    ids=["storage called", "EXT1", "list", "ints", "build", "marks", "huge bytes", "bare",
         "empty", "memo index", "text memo index", "BINBYTES8", "BINUNICODE8", "LONG4",
         "FRAME"],
)  # fmt: skip
def test_pickles_that_are_not_state_dicts_are_refused(tmp_path, pickled, match):
    refused(pth(tmp_path / "w.pth", pickled, {}), match)


def test_a_state_dict_whose_storage_is_no_storage_is_refused(tmp_path):
    pickled = b"\x80\x02}X\x01\x00\x00\x00wctorch._utils\n_rebuild_tensor_v2\n(X\x01\x00\x00\x00"
    pickled += b"0K\x00K\x03\x85K\x01\x85\x89tRs."  # the storage is the string '0'
    refused(pth(tmp_path / "w.pth", pickled, {"0": FLOATS}), "is not a storage reference")


# ---------------------------------------------------------------------------------------
# Storages that lie: sizes, offsets, strides, members
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tensor", "match"),
    [
        (("w", "FloatStorage", "0", 13, 0, (12,), (1,)), "declares 13 elements of float32 but "
         "its member holds 48 bytes"),
        (("w", "DoubleStorage", "0", 12, 0, (12,), (1,)), "declares 12 elements of float64"),
        (("w", "FloatStorage", "0", 12, 1, (12,), (1,)), "reach beyond the 12 elements"),
        (("w", "FloatStorage", "0", 12, 0, (4, 4), (4, 1)), "reach beyond"),
        (("w", "FloatStorage", "0", 12, 0, (2,), (12,)), "reach beyond"),
        (("w", "FloatStorage", "0", 12, 13, (0,), (1,)), "reach beyond"),
        (("w", "FloatStorage", "0", 12, 0, (2**62, 2**62), (1, 1)), "reach beyond"),
        (("w", "FloatStorage", "0", 12, 0, (2**64 + 1,), (0,)), "reach beyond|damaged"),
        (("w", "FloatStorage", "0", 12, 11, (3,), (-1,)), "non-negative"),
        (("w", "FloatStorage", "0", 12, -1, (1,), (1,)), "offset is malformed"),
        (("w", "FloatStorage", "0", 12, 0, (-1,), (1,)), "non-negative"),
        (("w", "FloatStorage", "0", 12, 0, (True,), (1,)), "non-negative integers"),
        (("w", "FloatStorage", "0", 12, 0, (3, 4), (4,)), "2 sizes but 1 strides"),
        (("w", "FloatStorage", "0", 12, 0, [12], [1]), "non-negative integers"),
        (("w", "FloatStorage", "7", 12, 0, (12,), (1,)), "no member in the zip"),
        (("w", "LongStorage", "0", 6, 0, (6,), (1,)), "floating point, got torch.int64"),
        (("w", "BoolStorage", "0", 48, 0, (48,), (1,)), "floating point, got torch.bool"),
        (("w", "ComplexFloatStorage", "0", 6, 0, (6,), (1,)), "got torch.complex64"),
        (("x.num_batches_tracked", "LongStorage", "0", 6, 0, (6,), (1,)), "floating point"),
    ],
)  # fmt: skip
def test_declared_sizes_offsets_and_strides_are_checked_against_the_member(tmp_path, tensor, match):
    path = pth(tmp_path / "w.pth", tensor_pickle(tensor), {"0": FLOATS})
    refused(path, match)


def test_a_storage_declared_twice_differently_is_refused(tmp_path):
    pickled = tensor_pickle(
        ("a", "FloatStorage", "0", 12, 0, (12,), (1,)),
        ("b", "FloatStorage", "0", 6, 0, (6,), (1,)),
    )
    refused(pth(tmp_path / "w.pth", pickled, {"0": FLOATS}), "declared twice, differently")


def test_shared_storages_overlapping_views_and_zero_strides_load_what_they_declare(tmp_path):
    pickled = tensor_pickle(
        ("all", "FloatStorage", "0", 12, 0, (3, 4), (4, 1)),
        ("columns", "FloatStorage", "0", 12, 0, (4, 3), (1, 4)),
        ("windows", "FloatStorage", "0", 12, 0, (10, 3), (1, 1)),
        ("repeated", "FloatStorage", "0", 12, 5, (2, 3), (0, 1)),
        ("last", "FloatStorage", "0", 12, 11, (), ()),
    )
    got = load(pth(tmp_path / "w.pth", pickled, {"0": FLOATS}))
    items = np.arange(12, dtype=np.float32)
    np.testing.assert_array_equal(got["all"], items.reshape(3, 4))
    np.testing.assert_array_equal(got["columns"], items.reshape(3, 4).T)  # a transpose
    np.testing.assert_array_equal(got["windows"], [items[i : i + 3] for i in range(10)])
    np.testing.assert_array_equal(got["repeated"], [[5, 6, 7], [5, 6, 7]])
    assert got["last"].shape == () and got["last"] == 11
    got["all"][0, 0] = 99  # each tensor is its own copy: writing one changes no other
    assert got["columns"][0, 0] == 0 and got["windows"][0, 0] == 0


def test_compressed_or_big_endian_or_bare_pickle_files_are_refused(tmp_path):
    tensor = ("w", "FloatStorage", "0", 12, 0, (12,), (1,))
    path = pth(
        tmp_path / "z.pth", tensor_pickle(tensor), {"0": FLOATS}, compress=zipfile.ZIP_DEFLATED
    )
    refused(path, "compressed")
    path = tmp_path / "big.pth"
    with zipfile.ZipFile(pth(tmp_path / "x.pth", tensor_pickle(tensor), {"0": FLOATS})) as zf:
        with zipfile.ZipFile(path, "w") as out:
            for info in zf.infolist():
                data = b"big" if info.filename.endswith("byteorder") else zf.read(info)
                out.writestr(info.filename, data)
    refused(path, "byte order b'big'")
    path = tmp_path / "legacy.pth"
    path.write_bytes(pickle.dumps({"w": 1}, protocol=2))  # PyTorch's pre-1.6 format
    refused(path, "older than 1.6")
    path = pth(tmp_path / "two.pth", tensor_pickle(tensor), {"0": FLOATS},
               extra=[("other/data.pkl", b"")])  # fmt: skip
    refused(path, "found 2")


def test_a_huge_pickle_is_refused_before_it_is_read(tmp_path, monkeypatch):
    from vgg_np.formats import torch_file

    monkeypatch.setattr(torch_file, "MAX_PICKLE", 1000)
    refused(pth(tmp_path / "w.pth", b"\x80\x02" + b"N0" * 600 + b"}.", {}), "too many")


def test_the_globals_table_holds_only_recorders():
    """Every global a file may name is a container type, a recorder or an inert marker."""
    allowed = {"collections.OrderedDict", "torch._utils._rebuild_tensor_v2",
               "torch._utils._rebuild_parameter"}  # fmt: skip
    names = {f"{module}.{name}" for module, name in GLOBALS}
    assert allowed <= names
    assert all(name.endswith("Storage") for name in names - allowed)
    assert all(not callable(value) for (module, _), value in GLOBALS.items() if module == "torch")


# ---------------------------------------------------------------------------------------
# Fuzzing: truncations, bit flips, mutated pickles
# ---------------------------------------------------------------------------------------


def outcome(path, expected: dict) -> str:
    """Load `path`: 'refused' with a ValueError naming it, or 'loaded' exactly `expected`."""
    try:
        with read_state_dict(path) as (tensors, _):
            got = {name: np.asarray(tensor) for name, tensor in tensors.items()}
    except ValueError as error:
        assert str(path) in str(error), str(error)
        return "refused"
    assert_same(got, expected)
    return "loaded unchanged"


def test_every_truncation_is_refused(tmp_path, weights):
    path = tmp_path / "w.pth"
    formats.write_weights(path, weights)
    data = path.read_bytes()
    expected = load(path)
    counts = collections.Counter()
    for length in [*range(0, 200, 7), *np.linspace(200, len(data) - 1, 120).astype(int)]:
        cut = tmp_path / f"cut{length}.pth"
        cut.write_bytes(data[:length])
        counts[outcome(cut, expected)] += 1
        cut.unlink()
    print(f"{sum(counts.values())} truncations: {dict(counts)}")
    assert counts == {"refused": sum(counts.values())}


def test_single_bit_flips_never_load_changed_weights(tmp_path, weights):
    path = tmp_path / "w.pth"
    formats.write_weights(path, weights)
    data = path.read_bytes()
    expected = load(path)
    counts = collections.Counter()
    for position in np.linspace(0, len(data) - 1, 400).astype(int):
        flipped = bytearray(data)
        flipped[position] ^= 1 << (position % 8)
        target = tmp_path / "flip.pth"
        target.write_bytes(bytes(flipped))
        counts[outcome(target, expected)] += 1
    print(f"400 single bit flips: {dict(counts)}")
    # Harmless bytes: zip timestamps, the alignment padding, unused header fields.
    assert counts["refused"] >= 340


@pytest.fixture(scope="module")
def small_state() -> tuple[bytes, dict]:
    arrays = {"a.weight": np.arange(6, dtype=np.float32).reshape(2, 3), "a.bias": np.ones(3)}
    return state_dict_pickle(arrays, {"vgg_np.provenance": {"family": "keras"}}), arrays


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_mutated_pickles_are_refused_or_load_what_they_declare(tmp_path, small_state, data):
    pickled, arrays = small_state
    mutated = bytearray(pickled)
    for _ in range(data.draw(st.integers(1, 4))):
        position = data.draw(st.integers(0, len(mutated) - 1))
        action = data.draw(st.sampled_from(["set", "insert", "delete"]))
        byte = data.draw(st.integers(0, 255))
        if action == "set":
            mutated[position] = byte
        elif action == "insert":
            mutated.insert(position, byte)
        elif len(mutated) > 1:
            del mutated[position]
    storages = {"0": arrays["a.weight"].tobytes(), "1": arrays["a.bias"].tobytes()}
    path = pth(tmp_path / "m.pth", bytes(mutated), storages)
    try:
        with read_state_dict(path) as (tensors, _):
            for tensor in tensors.values():  # whatever it declares, within its storage
                assert np.asarray(tensor).dtype.kind == "f"
    except ValueError as error:
        assert isinstance(error, FileFormatError) and str(path) in str(error), repr(error)
