"""Downloads against hostile or broken servers (all on 127.0.0.1), and every published VGG.

Each server here is started by the test: a slow drip, an answer longer than the published
file, a wrong hash, a Content-Length that is not a number, a refused connection, and a
host name that cannot resolve (``x.invalid``, reserved for that). Every failure must be
one error naming the URL and the reason, within a deadline, leaving nothing behind.
"""

from __future__ import annotations

import hashlib
import http.server
import os
import socket
import threading
import time

import pytest

from tests.conftest import TINY_CONFIG
from vgg_np import VGG, VGG11, VGG16, cli, hub

CONTENT = b"published weights, in miniature\n" * 500


def entry(family: str = "torchvision", content: bytes = CONTENT, size=None) -> hub.Published:
    """A published entry for `content`: its hash and (default) its exact size."""
    name = "w.h5" if family == "keras" else "w-0.pth"
    if family == "keras":
        digest, algorithm = hashlib.md5(content).hexdigest(), "md5"
    else:
        digest, algorithm = hashlib.sha256(content).hexdigest()[:8], "sha256"
    size = len(content) if size is None else size
    return hub.Published(family, name, f"http://x.invalid/{name}", algorithm, digest, size)


@pytest.fixture
def caches(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path


def serve(respond):
    """Start a server on 127.0.0.1 whose GET runs `respond(handler)`; return (URL, stop)."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            try:
                respond(self)
            except (BrokenPipeError, ConnectionResetError):  # the client gave up
                pass

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()

    def stop():
        httpd.shutdown()
        httpd.server_close()

    return f"http://127.0.0.1:{httpd.server_address[1]}/", stop


def left_behind(caches) -> list[str]:
    return sorted(str(p.relative_to(caches)) for p in caches.rglob("*"))


def test_a_server_that_drips_bytes_is_given_up_at_the_deadline(caches):
    def drip(handler):
        handler.send_response(200)
        handler.send_header("Content-Length", str(len(CONTENT)))
        handler.end_headers()
        for byte in CONTENT:
            handler.wfile.write(bytes([byte]))
            handler.wfile.flush()
            time.sleep(0.2)

    url, stop = serve(drip)
    try:
        start = time.monotonic()
        with pytest.raises(OSError, match=r"w-0\.pth: not complete after 1 s .* deadline"):
            hub.download(entry(), base_url=url, progress=False, deadline=1.0)
        assert time.monotonic() - start < 5
    finally:
        stop()
    assert left_behind(caches) == []


def test_a_server_that_never_answers_is_given_up_at_the_deadline(caches):
    with socket.socket() as silent:  # accepts connections (the backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/"
        start = time.monotonic()
        with pytest.raises(OSError) as info:
            hub.download(entry(), base_url=url, progress=False, deadline=1.0)
    folder = hub.cache_dir("torchvision")
    assert time.monotonic() - start < 5
    assert str(info.value) == (
        f"{url}w-0.pth: the server stopped answering (timed out); nothing was saved (to do "
        f"it by hand: download that URL elsewhere and put w-0.pth in {folder})"
    )
    assert left_behind(caches) == []


@pytest.mark.parametrize("declared", [True, False])
def test_more_bytes_than_the_published_size_are_refused(caches, declared):
    def endless(handler):
        handler.send_response(200)
        if declared:
            handler.send_header("Content-Length", str(10 * len(CONTENT)))
        handler.end_headers()
        for _ in range(10):
            handler.wfile.write(CONTENT)

    url, stop = serve(endless)
    try:
        with pytest.raises(OSError, match=r"w-0\.pth: the server (offers|sent) .*more than the"):
            hub.download(entry(), base_url=url, progress=False)
    finally:
        stop()
    assert left_behind(caches) == []


def test_a_content_length_that_is_not_a_number_is_named(caches):
    def garbled(handler):
        handler.send_response(200)
        handler.send_header("Content-Length", "lots")
        handler.end_headers()
        handler.wfile.write(CONTENT)

    url, stop = serve(garbled)
    try:
        with pytest.raises(OSError) as info:
            hub.download(entry(), base_url=url, progress=False)
    finally:
        stop()
    message = str(info.value)
    assert f"{url}w-0.pth" in message and "Content-Length of 'lots', not a size" in message
    assert "invalid literal" not in message
    assert left_behind(caches) == []


def test_a_refused_connection_and_an_unknown_host_name_the_url_and_reason(caches):
    with socket.socket() as probe:  # a port that was free a moment ago: nothing listens
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/"
    with pytest.raises(OSError) as info:
        hub.download(entry(), base_url=url, progress=False)
    refused = "the connection was refused (nothing listens there); nothing was saved"
    assert str(info.value).startswith(f"{url}w-0.pth: {refused} (to do it by hand: ")
    # what to do offline: the file's name and the folder it belongs in
    assert str(info.value).endswith(f"put w-0.pth in {hub.cache_dir('torchvision')})")
    with pytest.raises(OSError) as info:
        hub.download(entry(), base_url="http://x.invalid/", progress=False)
    message = str(info.value)
    assert message.startswith("http://x.invalid/w-0.pth: its host name does not resolve")
    assert "Name or service" not in message and "None" not in message
    assert left_behind(caches) == []


def test_force_replaces_a_cached_copy_that_fails_its_hash(caches, monkeypatch):
    def good(handler):
        handler.send_response(200)
        handler.send_header("Content-Length", str(len(CONTENT)))
        handler.end_headers()
        handler.wfile.write(CONTENT)

    published = entry()
    monkeypatch.setitem(hub.PUBLISHED, ("vgg11", True), (published,))
    folder = hub.cache_dir("torchvision")
    folder.mkdir(parents=True)
    (folder / published.filename).write_bytes(CONTENT[:-7])  # a partial copy
    url, stop = serve(good)
    try:
        with pytest.raises(ValueError, match=r"a partial or different file.*--force"):
            hub.resolve("vgg11", download_missing=True, base_url=url, progress=False)
        assert cli.main(["fetch-weights", "vgg11", "--base-url", url]) == 1
        assert cli.main(["fetch-weights", "vgg11", "--base-url", url, "--force"]) == 0
    finally:
        stop()
    assert (folder / published.filename).read_bytes() == CONTENT
    assert left_behind(caches) == ["torch", "torch/hub", "torch/hub/checkpoints",
                                   f"torch/hub/checkpoints/{published.filename}"]  # fmt: skip


def test_a_cached_copy_larger_than_published_is_refused_unread(caches, monkeypatch):
    published = entry()
    folder = hub.cache_dir("torchvision")
    folder.mkdir(parents=True)
    with open(folder / published.filename, "wb") as f:
        f.truncate(1 << 30)  # sparse: 1 GiB that is never hashed
    start = time.monotonic()
    with pytest.raises(ValueError, match=r"1,073,741,824 bytes, more than the published"):
        hub.find(published)
    assert time.monotonic() - start < 1


# -- every published VGG ---------------------------------------------------------------


def test_every_vgg_keras_or_torchvision_publishes_is_known_with_size_and_hash():
    torch = {name: hub.PUBLISHED[name, True][-1] for name in hub.NAMES}
    assert {name: e.filename for name, e in torch.items()} == {
        "vgg11": "vgg11-8a719046.pth",
        "vgg11_bn": "vgg11_bn-6002323d.pth",
        "vgg13": "vgg13-19584684.pth",
        "vgg13_bn": "vgg13_bn-abd245e5.pth",
        "vgg16": "vgg16-397923af.pth",
        "vgg16_bn": "vgg16_bn-6c64b313.pth",
        "vgg19": "vgg19-dcbb9e9d.pth",
        "vgg19_bn": "vgg19_bn-c79401a0.pth",
    }
    for name, e in torch.items():
        assert e.url == f"https://download.pytorch.org/models/{e.filename}"
        assert e.digest == e.filename.rsplit("-", 1)[1][:8] and e.algorithm == "sha256"
        assert 500 * 2**20 < e.size < 550 * 2**20  # torchvision's files are 507-548 MiB
        assert hub.PUBLISHED[name, False][-1] == e  # the whole network serves both
    # vgg16-397923af.pth is 553,433,881 bytes; torchvision publishes 527.796 MiB.
    assert 553_433_881 <= torch["vgg16"].size < 553_433_881 + 2**10
    keras = {(e.filename, e.size) for key in hub.PUBLISHED for e in hub.PUBLISHED[key][:-1]}
    assert keras == {
        ("vgg16_weights_tf_dim_ordering_tf_kernels.h5", 553_467_096),
        ("vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5", 58_889_256),
        ("vgg19_weights_tf_dim_ordering_tf_kernels.h5", 574_710_816),
        ("vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5", 80_134_624),
    }


@pytest.mark.parametrize(
    ("build", "filename"),
    [
        (lambda: VGG11(weights="imagenet"), "vgg11-8a719046.pth"),
        (lambda: VGG("vgg13", weights="imagenet", batch_norm=True), "vgg13_bn-abd245e5.pth"),
        (lambda: VGG16(weights="imagenet", batch_norm=True), "vgg16_bn-6c64b313.pth"),
    ],
)
def test_imagenet_names_the_torchvision_file_of_each_variant(caches, build, filename):
    with pytest.raises(FileNotFoundError, match=f"put {filename} .* in {caches}/torch"):
        build()


def test_cli_weights_imagenet_takes_the_cached_file_of_the_named_variant(
    caches, monkeypatch, capsys
):
    folder = hub.cache_dir("torchvision")
    folder.mkdir(parents=True)
    path = folder / "vgg11-8a719046.pth"  # any format: readers go by content
    VGG(TINY_CONFIG, include_top=False, input_shape=(32, 32, 3), seed=0).save_weights(path)
    sha = hashlib.sha256(path.read_bytes()).hexdigest()[:8]
    published = hub.Published("torchvision", path.name, "http://x.invalid/", "sha256", sha)
    monkeypatch.setitem(hub.PUBLISHED, ("vgg11", True), (published,))
    assert cli.main(["summary", "--weights", "imagenet:vgg11"]) == 0
    assert f"{path} (npz" in capsys.readouterr().out
    assert cli.main(["summary", "--weights", "imagenet", "--model", "vgg11"]) == 0
    assert cli.main(["summary", "--weights", "imagenet:vgg11:keras"]) == 1
    err = capsys.readouterr().err
    assert "keras publishes no ImageNet weights of vgg11; torchvision does" in err
    assert "(--family torchvision)" in err  # what to do
    with pytest.raises(SystemExit) as info:
        cli.main(["summary", "--weights", "imagenet:vgg12"])
    assert info.value.code == 2
    assert "published for vgg11, vgg11_bn" in capsys.readouterr().err


def test_a_fifo_where_the_cached_copy_belongs_is_refused_at_once(caches):
    published = entry()
    folder = hub.cache_dir("torchvision")
    folder.mkdir(parents=True)
    os.mkfifo(folder / published.filename)
    with pytest.raises(ValueError, match=r"w-0\.pth' is a FIFO, not a regular copy of w-0\.pth"):
        hub.find(published)


@pytest.mark.parametrize(
    ("command", "spec", "name"),
    [
        ("predict", "imagenet:vgg16_bn", "vgg16_bn-6c64b313.pth"),
        ("predict", "imagenet:vgg16:torchvision", "vgg16-397923af.pth"),
        ("extract", "imagenet:vgg11", "vgg11-8a719046.pth"),
    ],
)
def test_cli_imagenet_model_and_family_are_not_taken_for_file_names(
    caches, tmp_path, capsys, command, spec, name
):
    """README's `--weights imagenet:vgg16_bn` (`imagenet:vgg16:torchvision`) reaches the hub:
    without a copy, the error names the file to put in place (exit 1), never 'no such file'."""
    from PIL import Image

    picture = tmp_path / "a.png"
    Image.new("RGB", (40, 30)).save(picture)
    argv = [command, str(picture), "--weights", spec]
    if command == "extract":
        argv += ["--layer", "fc2", "-o", str(tmp_path / "fc2.npy")]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert "no such file" not in err
    assert name in err and "download.pytorch.org" in err


@pytest.mark.parametrize(
    ("kwargs", "command"),
    [
        ({}, "vgg-np fetch-weights vgg16)"),
        ({"include_top": False}, "vgg-np fetch-weights vgg16 --no-top)"),
        ({"family": "torchvision"}, "vgg-np fetch-weights vgg16 --family torchvision)"),
    ],
)
def test_the_missing_copy_error_names_the_command_that_fetches_that_very_file(
    caches, kwargs, command
):
    """The hint fetches the file the call asked for: the notop file, torchvision's file."""
    kwargs.setdefault("include_top", True)
    with pytest.raises(FileNotFoundError) as info:
        hub.resolve("vgg16", **kwargs)
    assert str(info.value).endswith(command)


def test_a_bad_cached_copy_names_a_command_that_runs_as_typed(caches):
    """'vgg-np fetch-weights --force' lacks MODEL (exit 2): the hint names it, and the file."""
    import shlex

    folder = hub.cache_dir("keras")
    folder.mkdir(parents=True)
    (folder / "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5").write_bytes(b"junk")
    with pytest.raises(ValueError) as info:
        hub.resolve("vgg16", include_top=False)
    command = "vgg-np fetch-weights vgg16 --no-top --family keras --force"
    assert f"({command}, or resolve" in str(info.value)
    args = cli.build_parser().parse_args(shlex.split(command)[1:])  # exits 2 if stale
    assert (args.model, args.no_top, args.family, args.force) == ("vgg16", True, "keras", True)
