"""weights="imagenet": both caches, hash checks, clear errors, downloads from 127.0.0.1 only."""

from __future__ import annotations

import hashlib
import http.server
import os
import subprocess
import sys
import threading

import numpy as np
import pytest

from tests.conftest import ROOT, TINY_CONFIG
from vgg_np import hub

CONTENT = b"not really VGG16 weights, but bytes with a known hash\n" * 1000


def fake(family: str, filename: str, content: bytes = CONTENT) -> hub.Published:
    """A published entry for a small file, with the hash its family publishes."""
    if family == "keras":
        return hub.Published(family, filename, f"http://invalid/{filename}", "md5",
                             hashlib.md5(content).hexdigest())  # fmt: skip
    prefix = hashlib.sha256(content).hexdigest()[:8]
    return hub.Published(family, filename, f"http://invalid/{filename}", "sha256", prefix)


@pytest.fixture
def caches(tmp_path, monkeypatch):
    """Empty Keras and torch caches under tmp_path, found through the environment."""
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path


@pytest.fixture
def server(tmp_path):
    """Serve tmp_path/served on 127.0.0.1; yields (base URL, folder)."""
    folder = tmp_path / "served"
    folder.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(folder), **kwargs)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/", folder
    httpd.shutdown()
    httpd.server_close()


def test_the_published_table_answers_from_hub_as_the_very_objects_it_defines():
    # The table moved to vgg_np._published: hub's names must be its objects, so that a
    # test's (or a user's) edit of hub.PUBLISHED is the table resolve reads.
    from vgg_np import _published

    for name in ("MAX_UNPUBLISHED", "NAMES", "PUBLISHED", "Published", "cache_dir"):
        assert getattr(hub, name) is getattr(_published, name), name
    assert hub.Published.__module__ == "vgg_np._published"


def test_the_published_table_holds_keras_hashes_and_torchvision_prefixes():
    keras16, torch16 = hub.PUBLISHED["vgg16", True]
    assert keras16.digest == "64373286793e3c8b2b4e3219cbf3544b"
    assert keras16.url.endswith("/vgg16/vgg16_weights_tf_dim_ordering_tf_kernels.h5")
    assert hub.PUBLISHED["vgg19", False][0].digest == "253f8cb515780f3b799900260a226db6"
    assert (torch16.filename, torch16.algorithm, torch16.digest) == (
        "vgg16-397923af.pth",
        "sha256",
        "397923af",
    )
    assert torch16.url == "https://download.pytorch.org/models/vgg16-397923af.pth"


def test_cache_directories_follow_keras_and_torch(monkeypatch, tmp_path):
    monkeypatch.delenv("KERAS_HOME", raising=False)
    monkeypatch.delenv("TORCH_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert hub.cache_dir("keras") == tmp_path / ".keras" / "models"
    assert hub.cache_dir("torchvision") == tmp_path / "xdg" / "torch" / "hub" / "checkpoints"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert hub.cache_dir("torchvision") == tmp_path / ".cache/torch/hub/checkpoints"
    with pytest.raises(ValueError, match="`family` must be"):
        hub.cache_dir("tf")


@pytest.mark.parametrize("family", ["keras", "torchvision"])
def test_a_cached_copy_is_found_in_each_cache_and_verified(caches, family):
    entry = fake(family, "w.bin")
    assert hub.find(entry) is None
    folder = hub.cache_dir(family)
    folder.mkdir(parents=True)
    (folder / "w.bin").write_bytes(CONTENT)
    assert hub.find(entry) == folder / "w.bin"
    (folder / "w.bin").write_bytes(CONTENT[:-1])  # one byte short: a partial download
    with pytest.raises(ValueError, match=rf"w\.bin has {entry.algorithm} .* delete it"):
        hub.find(entry)


def test_resolve_prefers_keras_then_torchvision(caches, monkeypatch):
    keras, torch = fake("keras", "k.h5"), fake("torchvision", "t-0.pth")
    monkeypatch.setitem(hub.PUBLISHED, ("vgg16", False), (keras, torch))
    hub.cache_dir("torchvision").mkdir(parents=True)
    (hub.cache_dir("torchvision") / "t-0.pth").write_bytes(CONTENT)
    assert hub.resolve("vgg16", include_top=False).name == "t-0.pth"
    hub.cache_dir("keras").mkdir(parents=True)
    (hub.cache_dir("keras") / "k.h5").write_bytes(CONTENT)
    assert hub.resolve("VGG16", include_top=False).name == "k.h5"


def test_without_a_copy_one_line_names_file_url_hash_and_place(caches):
    with pytest.raises(FileNotFoundError) as info:
        hub.resolve("vgg19", include_top=True)
    message = str(info.value)
    assert "\n" not in message
    for expected in (
        "vgg19_weights_tf_dim_ordering_tf_kernels.h5",
        "md5 cbe5617147190e668d6c5d5026f83318",
        "https://storage.googleapis.com/tensorflow/keras-applications/vgg19/",
        str(caches / "keras" / "models"),
        "vgg19-dcbb9e9d.pth (sha256 dcbb9e9d) from https://download.pytorch.org/models/",
        str(caches / "torch" / "hub" / "checkpoints"),
        "download=True",
        "vgg-np fetch-weights vgg19",
    ):
        assert expected in message
    with pytest.raises(ValueError, match=r"published for \['vgg11', .*'vgg19_bn'\], not 'vgg12'"):
        hub.resolve("vgg12")


def test_download_from_a_local_server_lands_verified_and_atomic(caches, server, capsys):
    base, folder = server
    (folder / "w.h5").write_bytes(CONTENT)
    path = hub.download(fake("keras", "w.h5"), base_url=base)
    assert path == caches / "keras" / "models" / "w.h5"
    assert path.read_bytes() == CONTENT
    assert sorted(p.name for p in path.parent.iterdir()) == ["w.h5"]  # no temporary left
    assert "MB/s" in capsys.readouterr().err  # the progress bar


def test_resolve_downloads_only_when_asked(caches, server, monkeypatch):
    base, folder = server
    (folder / "k.h5").write_bytes(CONTENT)
    monkeypatch.setitem(hub.PUBLISHED, ("vgg16", True), (fake("keras", "k.h5"),))
    with pytest.raises(FileNotFoundError):
        hub.resolve("vgg16", base_url=base)
    path = hub.resolve("vgg16", download_missing=True, base_url=base, progress=False)
    assert path.read_bytes() == CONTENT
    (folder / "k.h5").unlink()  # now only the cache has it
    assert hub.resolve("vgg16", base_url=base) == path


def test_a_download_with_the_wrong_hash_leaves_nothing(caches, server):
    base, folder = server
    (folder / "w.h5").write_bytes(CONTENT + b"tampered")
    with pytest.raises(ValueError, match=r"not the published .* nothing was saved"):
        hub.download(fake("keras", "w.h5"), base_url=base, progress=False)
    assert not hub.cache_dir("keras").exists()  # nothing left, not even the folder


def test_a_failed_or_cut_download_leaves_nothing(caches, server):
    base, _ = server
    with pytest.raises(OSError, match="404"):  # urllib's HTTPError is an OSError
        hub.download(fake("keras", "missing.h5"), base_url=base, progress=False)
    assert not hub.cache_dir("keras").exists()  # nothing left, not even the folder

    class CutShort(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", str(len(CONTENT)))
            self.end_headers()
            self.wfile.write(CONTENT[:1000])  # then the connection closes

        def log_message(self, *args):
            pass

    httpd = http.server.HTTPServer(("127.0.0.1", 0), CutShort)
    threading.Thread(target=httpd.handle_request, daemon=True).start()
    try:
        with pytest.raises(OSError, match="stopped after 1000 of"):
            hub.download(
                fake("torchvision", "w-0.pth"),
                base_url=f"http://127.0.0.1:{httpd.server_address[1]}",
                progress=False,
            )
    finally:
        httpd.server_close()
    assert not hub.cache_dir("torchvision").exists()


def test_vgg16_imagenet_downloads_verifies_and_loads_the_keras_file(caches, server, monkeypatch):
    from vgg_np import VGG, VGG16, formats

    base, folder = server
    source = VGG16(include_top=False, seed=3)
    name = "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"
    formats.write_weights(folder / name, source.weights)  # the Applications layout, 59 MB
    md5 = hashlib.md5((folder / name).read_bytes()).hexdigest()
    entry = hub.Published("keras", name, f"{base}{name}", "md5", md5)  # served locally
    monkeypatch.setitem(hub.PUBLISHED, ("vgg16", False), (entry,))
    with pytest.raises(FileNotFoundError, match=f"put {name}"):
        VGG16(weights="imagenet", include_top=False)
    model = VGG16(weights="imagenet", include_top=False, download=True)
    assert (caches / "keras" / "models" / name).is_file()
    assert "Keras Applications layout" in model.weights_format
    for layer, (kernel, bias) in source.weights.items():
        np.testing.assert_array_equal(model.weights[layer][0], kernel)
        np.testing.assert_array_equal(model.weights[layer][1], bias)
    # Now cached: no download needed, and a different file under that name is refused.
    assert VGG16(weights="imagenet", include_top=False).weights_format == model.weights_format
    with open(caches / "keras" / "models" / name, "r+b") as file:
        file.seek(-1, 2)
        file.write(b"?")
    with pytest.raises(ValueError, match="a partial or different file"):
        VGG16(weights="imagenet", include_top=False)
    with pytest.raises(ValueError, match=r"published for \[.*'vgg19_bn'\], not 'tiny'"):
        VGG(TINY_CONFIG, weights="imagenet")
    with pytest.raises(ValueError, match=r"got the URL 'https://x/w\.h5': download it"):
        VGG16(weights="https://x/w.h5")


def test_fetch_weights_refuses_a_wrong_file_in_one_line(caches, server):
    base, folder = server
    (folder / "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5").write_bytes(CONTENT)
    root = ROOT
    result = subprocess.run(
        [sys.executable, "-m", "vgg_np", "fetch-weights", "vgg19", "--no-top", "--base-url", base],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(root)},
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1
    assert "not the published 253f8cb515780f3b799900260a226db6: nothing was saved" in result.stderr
    assert not hub.cache_dir("keras").exists()  # nothing left, not even the folder


def test_imagenet_warns_when_only_torchvisions_file_of_a_keras_model_is_cached(caches, monkeypatch):
    from vgg_np import VGG

    folder = hub.cache_dir("torchvision")
    folder.mkdir(parents=True)
    VGG(TINY_CONFIG, include_top=False, seed=0).save_weights(folder / "t-0.npz")
    (folder / "t-0.npz").rename(folder / "t-0.pth")  # any format: readers go by content
    torch = fake("torchvision", "t-0.pth", (folder / "t-0.pth").read_bytes())
    monkeypatch.setitem(hub.PUBLISHED, ("tiny", False), (fake("keras", "k.h5"), torch))
    # Keras's interface with torchvision's weights: caffe input would run without an error.
    with pytest.warns(UserWarning, match=r"torchvision's t-0.pth is used; it expects torch"):
        VGG(TINY_CONFIG, weights="imagenet", include_top=False)
    (hub.cache_dir("keras")).mkdir(parents=True)
    (hub.cache_dir("keras") / "k.h5").write_bytes(CONTENT)
    assert hub.resolve("tiny", include_top=False).name == "k.h5"  # Keras's, when cached
