"""`vgg_np.train.fit` and ``vgg-np train`` against a user who gets the paths wrong.

Found by using the command as a new user would, then as an adversary: the model written
over the base's weights, outputs and caches inside the very folder of pictures (the next
run reads them as a class), a validation folder that holds the training pictures, class
folders whose names cannot be labels, a folder that cannot take the outputs found only
after the feature pass, a diverged run written as a model of NaNs.
"""

from __future__ import annotations

import os
import pathlib
import shutil

import numpy as np
import pytest

from tests.conftest import run_main as _cli
from vgg_np import VGG, VGGConfig, formats
from vgg_np.formats import Family, Provenance
from vgg_np.train import fit
from vgg_np.train.data import image_folder, write_shapes_folder

NARROW = VGGConfig("vgg16", ((4, 4), (8, 8), (8,) * 3, (16,) * 3, (16,) * 3), fc=(16, 16))
#: fit's arguments in these tests: small and fast.
QUICK = {"epochs": 1, "batch_size": 8, "learning_rate": 1e-2, "verbose": 0}


@pytest.fixture(scope="module")
def shared(tmp_path_factory) -> pathlib.Path:
    """A base (its file says torchvision preprocessing) and 4 classes x 6 pictures."""
    root = tmp_path_factory.mktemp("hostile")
    model = VGG(NARROW, include_top=False, input_shape=(32, 32, 3), seed=3)
    provenance = Provenance(
        "seeded", Family.TORCHVISION, "torch", "torchvision", (32, 32), "declared by the test"
    )
    formats.write_weights(root / "base.npz", model.weights, provenance=provenance)
    write_shapes_folder(root / "pics", 6, size=32, seed=1)
    return root


@pytest.fixture
def work(shared, tmp_path) -> pathlib.Path:
    """A copy of the base and the pictures this test may change; an empty cache."""
    shutil.copytree(shared / "pics", tmp_path / "pics")
    shutil.copy(shared / "base.npz", tmp_path / "base.npz")
    (tmp_path / "cache").mkdir()
    return tmp_path


def _fit(work: pathlib.Path, output, **options):
    arguments = {**QUICK, "cache_dir": work / "cache", **options}
    return fit(work / "pics", work / "base.npz", output, **arguments)


def _no_feature_pass(work: pathlib.Path) -> bool:
    return not any((work / "cache").iterdir())


# -- outputs that would destroy an input or feed the next run ------------------------------


def test_model_written_over_the_base_weights_is_refused_and_the_base_kept(work):
    before = (work / "base.npz").read_bytes()
    with pytest.raises(ValueError, match=r"base\.npz is the base's weights"):
        _fit(work, work / "base.npz")
    assert (work / "base.npz").read_bytes() == before and _no_feature_pass(work)
    (work / "link.npz").symlink_to(work / "base.npz")  # the same file by another name
    with pytest.raises(ValueError, match="is the base's weights"):
        _fit(work, work / "link.npz")
    code, _, err = _cli(
        "train", work / "pics", "--weights", work / "base.npz", "-o", work / "base.npz"
    )
    assert code == 2 and "is the base's weights" in err.strip().splitlines()[-1], err
    assert (work / "base.npz").read_bytes() == before


@pytest.mark.parametrize(
    ("where", "option"),
    [
        ("pics/m.npz", None),  # m.checkpoints/ would be a class folder without pictures
        ("pics/disc/m.npz", None),  # m.curves.png would be a picture of the class disc
        ("m.npz", "checkpoint_dir"),
        ("m.npz", "cache_dir"),
    ],
)
def test_outputs_inside_the_images_folder_are_refused(work, where, option):
    """The first run would succeed; the second would train on, or fail on, its own outputs."""
    output = work / where
    options = {option: work / "pics" / "disc" / "kept"} if option else {}
    if option != "cache_dir":
        options["cache_dir"] = work / "cache"
    with pytest.raises(ValueError, match=r"inside the images folder .*pics"):
        _fit(work, output, **options)
    assert _no_feature_pass(work) and not output.exists()
    assert image_folder(work / "pics").counts() == dict.fromkeys(
        ("checkerboard", "disc", "horizontal stripes", "vertical stripes"), 6
    )


def test_outputs_inside_the_validation_folder_are_refused(work, tmp_path):
    write_shapes_folder(tmp_path / "val", 2, size=32, seed=5)
    with pytest.raises(ValueError, match="inside the validation folder"):
        _fit(work, tmp_path / "val" / "m.npz", validation_dir=tmp_path / "val")


def test_output_that_cannot_be_written_is_found_before_the_feature_pass(work):
    (work / "m.checkpoints").write_text("a file where the checkpoint folder goes")
    with pytest.raises(ValueError, match=r"m\.checkpoints"):
        _fit(work, work / "m.npz")
    assert _no_feature_pass(work)


def test_relative_folders_still_to_be_made_are_accepted(work, monkeypatch):
    """Relative names of folders not made yet (``--cache c``): their parent is checked."""
    monkeypatch.chdir(work)
    history = fit("pics", "base.npz", "m.npz", **{**QUICK, "cache_dir": "c/d"})
    assert history.epoch == [1] and any((work / "c" / "d").iterdir())


def test_cache_or_validation_folder_that_is_a_fifo_is_named_as_such(work):
    """Before: ``cf: File exists`` after the weights loaded, and ``no such folder``."""
    os.mkfifo(work / "cf")
    with pytest.raises(ValueError, match=r"`cache_dir` .*cf is not a folder"):
        _fit(work, work / "m.npz", cache_dir=work / "cf")
    code, _, err = _cli(
        "train", work / "pics", "--weights", work / "base.npz", "-o", work / "m.npz",
        "--validation-dir", work / "cf",
    )  # fmt: skip
    assert code == 2 and err.strip().endswith("cf: not a folder"), err


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux's /proc")
def test_read_only_output_folder_is_refused_before_the_feature_pass(work):
    """/proc takes no new file, even from root (who writes into a folder of mode 0o555)."""
    with pytest.raises(ValueError, match="`checkpoint_dir`: cannot write in /proc"):
        _fit(work, "/proc/m.npz")
    with pytest.raises(ValueError, match="`output`: cannot write in /proc"):
        _fit(work, "/proc/m.npz", checkpoint_dir=work / "kept")
    assert _no_feature_pass(work)


# -- a validation folder that is not held out ----------------------------------------------


@pytest.mark.parametrize("how", ["same folder", "a link to it", "copies by hard link"])
def test_validation_folder_holding_training_pictures_is_refused(work, tmp_path, how):
    """Validation on the pictures trained on measures nothing: refused, naming one."""
    pics = work / "pics"
    if how == "same folder":
        validation = pics
    elif how == "a link to it":
        validation = tmp_path / "val"
        validation.symlink_to(pics, target_is_directory=True)
    else:
        validation = tmp_path / "val"
        write_shapes_folder(validation, 2, size=32, seed=7)
        os.link(pics / "disc" / sorted(os.listdir(pics / "disc"))[0], validation / "disc" / "x.png")
    with pytest.raises(ValueError, match=r"validation folder .* holds \d+ of the training"):
        _fit(work, work / "m.npz", validation_dir=validation)
    assert _no_feature_pass(work)


@pytest.mark.parametrize("how", ["a link to another class", "a hard link"])
def test_same_picture_in_two_classes_is_refused(work, how):
    """Trained as both classes, and perhaps held out under one while trained under the other."""
    pics = work / "pics"
    if how == "a link to another class":
        (pics / "checkerboard" / "more").symlink_to(pics / "disc", target_is_directory=True)
    else:
        os.link(
            pics / "disc" / sorted(os.listdir(pics / "disc"))[0], pics / "checkerboard" / "x.png"
        )
    with pytest.raises(ValueError, match=r"same picture in two classes \(checkerboard and disc\)"):
        _fit(work, work / "m.npz")
    assert _no_feature_pass(work)


def test_links_within_one_class_are_one_picture_each(work):
    """A link loop and a second name of a picture of the same class: allowed, counted once."""
    disc = work / "pics" / "disc"
    (disc / "loop").symlink_to(disc, target_is_directory=True)
    (disc / "again.png").symlink_to(disc / sorted(os.listdir(disc))[0])
    assert image_folder(work / "pics").counts()["disc"] == 6


# -- resuming with fewer epochs ------------------------------------------------------------


def test_resuming_with_fewer_epochs_than_the_checkpoint_holds_is_refused(work):
    """Before: the model of 3 epochs written and reported where 2 were asked."""
    _fit(work, work / "m.npz", epochs=3)
    before = (work / "m.npz").read_bytes()
    with pytest.raises(ValueError, match="holds 3 epochs, more than the 2 asked"):
        _fit(work, work / "m.npz", epochs=2)
    assert (work / "m.npz").read_bytes() == before
    assert _fit(work, work / "m.npz", epochs=2, restart=True).epoch == [1, 2]


# -- class folders whose names cannot be labels --------------------------------------------


@pytest.mark.parametrize("name", ["two\nlines", "   "])
def test_class_folder_whose_name_cannot_be_a_label_is_refused_up_front(work, name):
    """Before: trained for every epoch, then a model file that no reader accepts."""
    shutil.copytree(work / "pics" / "disc", work / "pics" / name)
    with pytest.raises(ValueError, match="cannot be a class name"):
        _fit(work, work / "m.npz")
    assert _no_feature_pass(work) and not (work / "m.npz").exists()


def test_class_folder_name_that_is_not_utf8_trains_and_is_named(work):
    """A name of bytes that are not UTF-8 (os.fsdecode gives surrogates) ends in a model."""
    raw = os.fsencode(work / "pics") + b"/caf\xe9"
    shutil.copytree(os.fsencode(work / "pics" / "disc"), raw)
    code, out, err = _cli(
        "train", work / "pics", "--weights", work / "base.npz", "-o", work / "m.npz",
        "--epochs", "1", "--batch-size", "8", "--cache", work / "cache",
    )  # fmt: skip
    assert code == 0, err
    labels = VGG.from_file(work / "m.npz").weights_info["labels"]
    assert os.fsdecode(b"caf\xe9") in labels and os.fsdecode(b"caf\xe9") in out


# -- a run that diverged -------------------------------------------------------------------


def test_diverged_run_writes_no_model_of_nans(work):
    """An epoch whose loss is not finite leaves weights no prediction can use."""
    with pytest.raises(ValueError, match=r"diverged.*--lr"):
        _fit(work, work / "m.npz", optimizer="sgd", learning_rate=1e30, epochs=2)
    assert not (work / "m.npz").exists()


def test_diverged_run_writes_its_best_epoch_when_that_was_finite(work):
    """Diverging after a finite best epoch: that epoch's weights are written, as before."""
    history = _fit(work, work / "m.npz", optimizer="sgd", learning_rate=1e3, epochs=3)
    weights = VGG.from_file(work / "m.npz").weights
    assert history.best_epoch is not None
    assert all(np.isfinite(t).all() for tensors in weights.values() for t in tensors)


# -- a base of one's own ---------------------------------------------------------------


def test_unfrozen_kernels_in_another_memory_order_train_as_their_c_order_copies(work):
    """A base converted by the user (PyTorch's OIHW kernels as ``W.transpose(2, 3, 1, 0)``,
    views in another memory order) trains block 5 to the very bits of the same weights in
    C order. Before: SGD wrote each step into a temporary copy, so block 5 held
    uninitialised memory after the first step, and its velocity never moved."""
    loaded = VGG.from_file(work / "base.npz").weights
    views = {
        name: (np.ascontiguousarray(k.transpose(3, 2, 0, 1)).transpose(2, 3, 1, 0), b)
        for name, (k, b) in loaded.items()
        if name.startswith("block5")
    }
    trained = {}
    for kind, block5 in (("views", views), ("copies", {})):
        base = VGG.from_file(work / "base.npz")
        base.set_weights({**loaded, **block5})
        assert kind == "copies" or not base.weights["block5_conv1"][0].flags.c_contiguous
        output = work / f"{kind}.npz"
        options = {"unfreeze": 1, "optimizer": "sgd", "epochs": 2, "preprocess": "torch"}
        fit(work / "pics", base, output, **{**QUICK, "cache_dir": work / "cache", **options})
        trained[kind] = VGG.from_file(output).weights
    for name in views:
        for a, b in zip(trained["views"][name], trained["copies"][name], strict=True):
            np.testing.assert_array_equal(a, b, err_msg=name)
    assert not np.array_equal(trained["copies"]["block5_conv1"][0], loaded["block5_conv1"][0])


# -- early stopping without a validation set -----------------------------------------------


def test_patience_without_validation_is_refused(work, tmp_path):
    """Before: --patience was ignored without a word, and every epoch ran."""
    with pytest.raises(ValueError, match=r"`patience` .* no picture is held out"):
        _fit(work, work / "m.npz", validation_split=0.0, patience=1)
    for name in ("a", "b"):  # one picture per class: the split holds none out
        (tmp_path / "one" / name).mkdir(parents=True)
        shutil.copy(sorted((work / "pics" / "disc").iterdir())[0], tmp_path / "one" / name)
    with pytest.raises(ValueError, match="`patience`"):
        fit(tmp_path / "one", work / "base.npz", tmp_path / "m.npz", patience=2,
            cache_dir=work / "cache", **QUICK)  # fmt: skip
    code, _, err = _cli(
        "train", tmp_path / "one", "--weights", work / "base.npz", "-o", tmp_path / "m.npz",
        "--epochs", "1", "--cache", work / "cache",
    )  # fmt: skip
    assert code == 0 and "no picture held out for validation" in err, err


# -- the feature cache ---------------------------------------------------------------------


def test_swapping_the_training_and_validation_folders_reuses_the_cached_features(work, tmp_path):
    """The same pictures in another order name the same store, and it serves them all."""
    write_shapes_folder(tmp_path / "val", 2, size=32, seed=5)
    first = _fit(work, work / "a.npz", validation_dir=tmp_path / "val")
    swapped = fit(
        tmp_path / "val", work / "base.npz", work / "b.npz", validation_dir=work / "pics",
        cache_dir=work / "cache", **QUICK,
    )  # fmt: skip
    assert first.feature_rows["computed"] == 24 + 8
    assert swapped.feature_rows == {"computed": 0, "changed": 0, "reused": 0, "cached": 32}
    assert swapped.counts["train"] == dict.fromkeys(first.classes, 2)
