"""robvae.data.download against a local HTTP server: checksums, atomic writes, resume, retries."""

import io
import contextlib
import gzip
import hashlib
import struct
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from robvae.data import download as dl
from robvae.data import load_fashion_mnist, load_mnist
from robvae.errors import DataError

PAYLOAD = np.random.default_rng(0).integers(0, 256, size=5000, dtype=np.uint8).tobytes()
SHA = "sha256:" + hashlib.sha256(PAYLOAD).hexdigest()
MD5 = "md5:" + hashlib.md5(PAYLOAD).hexdigest()


def _endless(handler, name):  # 200 without Content-Length, then data without end (64 MiB at most)
    handler.send_response(200)
    handler.send_header("Connection", "close")
    handler.end_headers()
    chunk = bytes(1 << 16)
    with contextlib.suppress(OSError):
        for _ in range(1024):
            handler.wfile.write(chunk)


def _huge(handler, name):  # announces a terabyte
    handler.send_response(200)
    handler.send_header("Content-Length", str(10**12))
    handler.end_headers()


def _slow_headers(handler, name):  # the status line, then a header byte every 0.05 s (for 4 s at most)
    with contextlib.suppress(OSError):
        handler.wfile.write(b"HTTP/1.1 200 OK\r\n")
        for _ in range(80):
            handler.wfile.write(b"X")
            handler.wfile.flush()
            time.sleep(0.05)


def _redirect(target):
    def send(handler, name):
        handler.send_response(302)
        handler.send_header("Location", target.format(name=name))
        handler.send_header("Content-Length", "0")
        handler.end_headers()
    return send


SPECIAL = {"endless": _endless, "huge": _huge, "slowhdr": _slow_headers,
           "redir-ftp": _redirect("ftp://127.0.0.1:1/{name}"), "redir-file": _redirect("file:///etc/passwd"),
           "redir-good": _redirect("/good/{name}")}


class Server:
    """Serves ``files`` under /good/ (Range-aware), /norange/, /corrupt/, /truncated/, /flaky/, /slow/."""

    def __init__(self):
        self.files: dict[str, bytes] = {"f.bin": PAYLOAD}
        self.log: list[tuple[str, str | None, int]] = []  # (path, Range header, body bytes sent)
        self.flaky_failures = 1
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                _, mode, name = self.path.split("/", 2)
                if mode in SPECIAL:
                    outer.log.append((self.path, self.headers.get("Range"), 0))
                    SPECIAL[mode](self, name)
                    self.close_connection = True
                    return
                body = outer.files.get(name)
                rng = self.headers.get("Range")
                if body is None:
                    outer.log.append((self.path, rng, 0))
                    self.send_error(404)
                    return
                if mode == "corrupt":
                    body = bytes(b ^ 0xFF for b in body)
                truncate = mode == "truncated" or (mode == "flaky" and outer.flaky_failures > 0)
                if mode == "flaky" and truncate:
                    outer.flaky_failures -= 1
                start = 0
                if rng and mode in ("good", "flaky") and not truncate:
                    start = int(rng.removeprefix("bytes=").split("-")[0])
                    if start >= len(body):
                        outer.log.append((self.path, rng, 0))
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(body)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                part = body[start:]
                self.send_header("Content-Length", str(len(part)))
                self.end_headers()
                sent = part[: len(part) // 2] if truncate else part
                if mode == "slow":  # a trickle: 64 bytes every 0.05 s, never a long pause
                    for i in range(0, len(sent), 64):
                        try:
                            self.wfile.write(sent[i:i + 64])
                            self.wfile.flush()
                        except OSError:
                            break
                        time.sleep(0.05)
                else:
                    self.wfile.write(sent)
                self.wfile.flush()
                outer.log.append((self.path, rng, len(sent)))
                self.close_connection = True

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


def fetch(server, mode, dest, checksum=SHA, retries=2):
    return dl.download_file(f"{server.url}/{mode}/f.bin", dest, checksum, retries=retries, timeout=10, backoff=0)


def test_good_download_saved_with_right_checksum(server, tmp_path):
    dest = tmp_path / "sub" / "f.bin"
    assert fetch(server, "good", dest) == dest
    assert dest.read_bytes() == PAYLOAD
    assert hashlib.sha256(dest.read_bytes()).hexdigest() == SHA.split(":")[1]
    assert not (tmp_path / "sub" / "f.bin.part").exists()
    assert server.log == [("/good/f.bin", None, 5000)]
    # a second call finds the verified file and makes no request
    fetch(server, "good", dest)
    assert len(server.log) == 1


def test_md5_checksums_work_too(server, tmp_path):
    dest = tmp_path / "f.bin"
    fetch(server, "good", dest, checksum=MD5)
    assert dest.read_bytes() == PAYLOAD


@pytest.mark.parametrize("checksum", [SHA, MD5])
def test_corrupt_file_reported_by_name_and_never_kept(server, tmp_path, checksum):
    dest = tmp_path / "f.bin"
    algo = checksum.split(":")[0]
    with pytest.raises(DataError, match=rf"f.bin \(downloaded from .*/corrupt/f.bin\): {algo} checksum mismatch"):
        fetch(server, "corrupt", dest, checksum=checksum)
    assert not dest.exists() and not (tmp_path / "f.bin.part").exists()
    assert len(server.log) == 1  # a fresh download that fails its checksum is not retried


def test_truncated_transfer_retried_then_reported(server, tmp_path):
    dest = tmp_path / "f.bin"
    with pytest.raises(DataError, match=r"f.bin: download from .*/truncated/f.bin failed after 3 attempts"):
        fetch(server, "truncated", dest, retries=2)
    assert not dest.exists()
    assert [entry[2] for entry in server.log] == [2500, 2500, 2500]
    assert (tmp_path / "f.bin.part").stat().st_size == 2500  # kept for a later resume, never final


def test_truncated_then_resumed_with_range(server, tmp_path):
    dest = tmp_path / "f.bin"
    fetch(server, "flaky", dest, retries=2)
    assert dest.read_bytes() == PAYLOAD
    assert server.log == [("/flaky/f.bin", None, 2500), ("/flaky/f.bin", "bytes=2500-", 2500)]


def test_resume_from_existing_part(server, tmp_path):
    dest = tmp_path / "f.bin"
    (tmp_path / "f.bin.part").write_bytes(PAYLOAD[:1234])
    fetch(server, "good", dest)
    assert dest.read_bytes() == PAYLOAD
    assert server.log == [("/good/f.bin", "bytes=1234-", 5000 - 1234)]
    assert not (tmp_path / "f.bin.part").exists()


def test_server_ignoring_range_restarts(server, tmp_path):
    dest = tmp_path / "f.bin"
    (tmp_path / "f.bin.part").write_bytes(PAYLOAD[:1234])
    fetch(server, "norange", dest)
    assert dest.read_bytes() == PAYLOAD
    assert server.log == [("/norange/f.bin", "bytes=1234-", 5000)]


def test_bad_part_prefix_detected_and_restarted_once(server, tmp_path):
    dest = tmp_path / "f.bin"
    (tmp_path / "f.bin.part").write_bytes(b"\x00" * 1000)  # not the file's first bytes
    fetch(server, "good", dest)
    assert dest.read_bytes() == PAYLOAD
    assert server.log == [("/good/f.bin", "bytes=1000-", 4000), ("/good/f.bin", None, 5000)]


def test_complete_part_with_416_is_finished(server, tmp_path):
    dest = tmp_path / "f.bin"
    (tmp_path / "f.bin.part").write_bytes(PAYLOAD)
    fetch(server, "good", dest)
    assert dest.read_bytes() == PAYLOAD
    assert server.log == [("/good/f.bin", "bytes=5000-", 0)]


def test_stale_final_file_is_replaced(server, tmp_path):
    dest = tmp_path / "f.bin"
    dest.write_bytes(b"old")
    fetch(server, "good", dest)
    assert dest.read_bytes() == PAYLOAD and len(server.log) == 1


def test_http_404_not_retried(server, tmp_path):
    with pytest.raises(DataError, match=r"nothere.bin: download from .* failed with HTTP 404"):
        dl.download_file(f"{server.url}/good/nothere.bin", tmp_path / "nothere.bin", SHA, retries=3, backoff=0)
    assert len(server.log) == 1 and not (tmp_path / "nothere.bin").exists()


def test_checksum_parsing_and_official_table():
    assert dl.parse_checksum("SHA256:" + "A" * 64) == ("sha256", "a" * 64)
    assert dl.parse_checksum("b" * 32) == ("md5", "b" * 32)
    assert dl.parse_checksum("c" * 64) == ("sha256", "c" * 64)
    for bad in ("sha1:" + "a" * 40, "sha256:abc", "xyz"):
        with pytest.raises(ValueError, match="bad checksum"):
            dl.parse_checksum(bad)
    for name in ("mnist", "fashion-mnist"):
        assert sorted(dl.CHECKSUMS[name]) == sorted(sum(dl.IDX_FILES.values(), ()))
        assert sorted(dl.MD5_CHECKSUMS[name]) == sorted(dl.CHECKSUMS[name])
        for value in dl.CHECKSUMS[name].values():
            assert dl.parse_checksum(value)[0] == "sha256"
    assert dl.CHECKSUMS["mnist"]["train-images-idx3-ubyte.gz"] == (
        "sha256:440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609")
    assert dl.MD5_CHECKSUMS["mnist"]["train-images-idx3-ubyte.gz"] == "md5:f68b3c2dcbeaaa9fbdd348bbdeb94873"


def test_base_url_precedence(monkeypatch):
    monkeypatch.delenv("ROBVAE_MNIST_URL", raising=False)
    assert dl.base_url_for("mnist") == "https://ossci-datasets.s3.amazonaws.com/mnist/"
    monkeypatch.setenv("ROBVAE_MNIST_URL", "http://mirror/x")
    assert dl.base_url_for("mnist") == "http://mirror/x/"
    assert dl.base_url_for("mnist", "http://arg/") == "http://arg/"
    monkeypatch.setenv("ROBVAE_FASHION_MNIST_URL", "http://fm/")
    assert dl.base_url_for("fashion-mnist") == "http://fm/"


def test_file_without_known_checksum_refused(server, tmp_path):
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte.gz: no checksum known for mnist"):
        dl.download_dataset("mnist", tmp_path, ("test",), base_url=server.url + "/good/", checksums={})
    assert server.log == []


# --- end to end: load_mnist / load_fashion_mnist with download=True ----------------------------

def serve_idx(server, n=6, prefixes=("t10k",)):
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n, dtype=np.uint8)
    files = {}
    for prefix in prefixes:
        files[f"{prefix}-images-idx3-ubyte.gz"] = struct.pack(">IIII", 0x803, n, 28, 28) + images.tobytes()
        files[f"{prefix}-labels-idx1-ubyte.gz"] = struct.pack(">II", 0x801, n) + labels.tobytes()
    files = {k: gzip.compress(v) for k, v in files.items()}
    server.files.update(files)
    return labels, {k: "sha256:" + hashlib.sha256(v).hexdigest() for k, v in files.items()}


def test_load_mnist_download_via_env_url(server, tmp_path, monkeypatch):
    labels, sums = serve_idx(server)
    monkeypatch.setenv("ROBVAE_MNIST_URL", server.url + "/good")
    monkeypatch.setitem(dl.CHECKSUMS, "mnist", sums)
    ds = load_mnist("test", tmp_path / "m", download=True)
    assert ds.labels.tolist() == labels.tolist() and tuple(ds.images.shape) == (6, 1, 28, 28)
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == sorted(sums)
    assert [entry[0] for entry in server.log] == ["/good/t10k-images-idx3-ubyte.gz", "/good/t10k-labels-idx1-ubyte.gz"]
    load_mnist("test", tmp_path / "m", download=True)  # present: no new requests
    assert len(server.log) == 2
    # data_dir None + download: the cache folder under $ROBVAE_DATA_DIR
    monkeypatch.setenv("ROBVAE_DATA_DIR", str(tmp_path / "cache"))
    assert load_mnist("test", None, download=True).labels.tolist() == labels.tolist()
    assert (tmp_path / "cache" / "mnist" / "t10k-labels-idx1-ubyte.gz").is_file()


def test_load_mnist_download_with_wrong_official_checksum(server, tmp_path, monkeypatch):
    serve_idx(server)
    monkeypatch.setenv("ROBVAE_MNIST_URL", server.url + "/good/")
    # our small files are not the official ones: the official SHA-256 digests must reject them
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte.gz \(downloaded from .*\): sha256 checksum mismatch"):
        load_mnist("test", tmp_path, download=True)
    assert list(tmp_path.iterdir()) == []


def test_load_fashion_mnist_download(server, tmp_path, monkeypatch):
    labels, sums = serve_idx(server)
    monkeypatch.setenv("ROBVAE_FASHION_MNIST_URL", server.url + "/good/")
    monkeypatch.setitem(dl.CHECKSUMS, "fashion-mnist", sums)
    ds = load_fashion_mnist("test", tmp_path, download=True)
    assert ds.name == "fashion-mnist" and ds.labels.tolist() == labels.tolist()


def test_cli_train_download_fills_the_cache_and_records_it(server, tmp_path, monkeypatch, capsys):
    from robvae import load
    from robvae.cli import main

    _, sums = serve_idx(server, n=40, prefixes=("train", "t10k"))
    monkeypatch.setenv("ROBVAE_MNIST_URL", server.url + "/good")
    monkeypatch.setenv("ROBVAE_DATA_DIR", str(tmp_path / "cache"))
    monkeypatch.setitem(dl.CHECKSUMS, "mnist", sums)
    rc = main(["train", "--dataset", "mnist", "--download", "--epochs", "1", "--hidden", "16", "--latent-dim", "2",
               "--out", str(tmp_path / "run"), "--quiet"])
    assert rc == 0, capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "cache" / "mnist").iterdir()) == sorted(sums)
    assert load(tmp_path / "run").config.data_dir == str(tmp_path / "cache" / "mnist")


def test_a_refused_connection_does_not_claim_a_partial_file(tmp_path):
    """Found by an audit: after errors that received nothing (refused connection, 5xx) the message
    said a partial file was kept, and there was none."""
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(DataError, match=r"failed after 2 attempts \(.*\); nothing was received$"):
        dl.download_file(f"http://127.0.0.1:{port}/f.bin", tmp_path / "f.bin", SHA, retries=1, timeout=5, backoff=0)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://127.0.0.1/f.bin"])
def test_only_http_urls_are_fetched(tmp_path, url):
    with pytest.raises(DataError, match="is not an http\\(s\\) URL"):
        dl.download_file(url, tmp_path / "f.bin", SHA)


def test_download_fetches_a_damaged_file_again(server, tmp_path, monkeypatch):
    """Left from session 7: with --download, an existing official file that was cut short was
    read (DataError) and never fetched again; now it is, and replaces the damaged one."""
    labels, sums = serve_idx(server)
    monkeypatch.setenv("ROBVAE_MNIST_URL", server.url + "/good")
    monkeypatch.setitem(dl.CHECKSUMS, "mnist", sums)
    load_mnist("test", tmp_path / "m", download=True)
    images = tmp_path / "m" / "t10k-images-idx3-ubyte.gz"
    images.write_bytes(images.read_bytes()[:40])  # cut short
    with pytest.raises(DataError):
        load_mnist("test", tmp_path / "m")  # without --download: the error, nothing fetched
    before = len(server.log)
    ds = load_mnist("test", tmp_path / "m", download=True)
    assert ds.labels.tolist() == labels.tolist()
    assert [e[0] for e in server.log[before:]] == ["/good/t10k-images-idx3-ubyte.gz"]  # only the damaged one


def test_a_server_that_trickles_hits_the_deadline_and_the_rerun_resumes(server, tmp_path):
    """Left from session 7: a server sending a little at a time never hit the per-read timeout, so a
    download could last forever; the whole download now has a deadline, and the .part is kept."""
    server.files["big.bin"] = bytes(range(256)) * 64  # 16 KiB: about 13 s at the trickle's pace
    dest = tmp_path / "big.bin"
    with pytest.raises(DataError, match=r"took longer than 0.5 s .*the partial file .* is kept"):
        dl.download_file(f"{server.url}/slow/big.bin", dest, None, retries=0, timeout=10, backoff=0, deadline=0.5)
    part = tmp_path / "big.bin.part"
    assert not dest.exists() and 0 < part.stat().st_size < 16384
    sha = "sha256:" + hashlib.sha256(server.files["big.bin"]).hexdigest()
    dl.download_file(f"{server.url}/good/big.bin", dest, sha, retries=0, timeout=10, backoff=0)  # resumes
    assert dest.read_bytes() == server.files["big.bin"]
    # a Range request (the slow request may log after it: it ends when the server notices the close)
    assert [e[1] is not None for e in server.log if e[0] == "/good/big.bin"] == [True]


def test_an_interrupted_download_of_a_pair_is_finished_by_the_same_command(server, tmp_path, monkeypatch):
    """Found by an audit: after Ctrl-C (or a network failure) during the second file of a pair, the
    same --download command failed "found, but its partner ... is missing" before downloading."""
    labels, sums = serve_idx(server)
    monkeypatch.setenv("ROBVAE_MNIST_URL", server.url + "/good")
    monkeypatch.setitem(dl.CHECKSUMS, "mnist", sums)
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "t10k-images-idx3-ubyte.gz").write_bytes(server.files["t10k-images-idx3-ubyte.gz"])
    whole = server.files["t10k-labels-idx1-ubyte.gz"]
    (folder / "t10k-labels-idx1-ubyte.gz.part").write_bytes(whole[:10])
    with pytest.raises(DataError, match="found, but its partner t10k-labels-idx1-ubyte"):
        load_mnist("test", folder)  # without --download: the error, as before
    ds = load_mnist("test", folder, download=True)
    assert ds.labels.tolist() == labels.tolist()
    assert server.log == [("/good/t10k-labels-idx1-ubyte.gz", "bytes=10-", len(whole) - 10)]  # resumed


@pytest.mark.parametrize("partner", ["damaged", "missing"])
def test_download_never_replaces_the_users_own_readable_file(server, tmp_path, monkeypatch, partner):
    """Found by an audit: with one file of a split damaged, --download replaced both with the
    official ones, the user's own intact (non-official) images file included, without a word."""
    _, sums = serve_idx(server)
    monkeypatch.setenv("ROBVAE_MNIST_URL", server.url + "/good")
    monkeypatch.setitem(dl.CHECKSUMS, "mnist", sums)
    own = gzip.compress(struct.pack(">IIII", 0x803, 3, 28, 28) + bytes(3 * 784))  # readable, not official
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(own)
    if partner == "damaged":
        (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(struct.pack(">II", 0x801, 3))[:-5])
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte.gz: not the official mnist file, so --download "
                                        r"keeps it .*, but (its partner is damaged|t10k-labels-idx1-ubyte.gz is "
                                        r"missing).*move t10k-images-idx3-ubyte.gz away"):
        load_mnist("test", tmp_path, download=True)
    assert (tmp_path / "t10k-images-idx3-ubyte.gz").read_bytes() == own and server.log == []
    # moved away: the official files are fetched (the damaged one replaced)
    (tmp_path / "t10k-images-idx3-ubyte.gz").rename(tmp_path / "mine.gz")
    assert len(load_mnist("test", tmp_path, download=True)) == 6


def test_an_endless_body_is_stopped_at_the_official_size(server, tmp_path):
    """Found by an audit: a server streaming without end filled the disk (2.45 GB in 3 s) until the
    deadline, and the error blamed a slow server; the official sizes now bound each file."""
    dest = tmp_path / "train-labels-idx1-ubyte.gz"
    official = dl.CHECKSUMS["mnist"]["train-labels-idx1-ubyte.gz"]
    start = time.monotonic()
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte.gz: the server at .*/endless/.* sent more than "
                                        r"28881 bytes, but the official file has 28881 bytes; stopped"):
        dl.download_file(f"{server.url}/endless/{dest.name}", dest, official, retries=2, timeout=5, backoff=0,
                         deadline=3)
    assert time.monotonic() - start < 2 and list(tmp_path.iterdir()) == [] and len(server.log) == 1
    with pytest.raises(DataError, match=r"announces 1000000000000 bytes, but the official file has 4542 bytes"):
        dl.download_file(f"{server.url}/huge/t10k-labels-idx1-ubyte.gz", tmp_path / "t10k-labels-idx1-ubyte.gz",
                         dl.MD5_CHECKSUMS["mnist"]["t10k-labels-idx1-ubyte.gz"], retries=2, timeout=5, backoff=0)
    with pytest.raises(DataError, match=r"announces 1000000000000 bytes, but the limit is 5000 bytes"):
        dl.download_file(f"{server.url}/huge/f.bin", tmp_path / "f.bin", None, retries=0, max_bytes=5000)
    fetch(server, "good", tmp_path / "f.bin")  # a file within the limit is fine
    assert dl.size_limit(official) == 28881 and dl.size_limit(SHA) == dl.MAX_DOWNLOAD_BYTES


def test_official_sizes_cover_the_pinned_files():
    for name in dl.CHECKSUMS:
        assert sorted(dl.SIZES[name]) == sorted(dl.CHECKSUMS[name])


def test_the_deadline_covers_response_headers_sent_slowly(server, tmp_path):
    """Found by an audit: the deadline was checked between body chunks only, so a server sending
    its headers a byte at a time kept urlopen (and the download) waiting for ever."""
    start = time.monotonic()
    with pytest.raises(DataError, match=r"f.bin: download from .* took longer than 0.5 s .*nothing was received"):
        dl.download_file(f"{server.url}/slowhdr/f.bin", tmp_path / "f.bin", SHA, retries=2, timeout=5, backoff=0,
                         deadline=0.5)
    assert time.monotonic() - start < 2.5


@pytest.mark.parametrize("mode,target", [("redir-ftp", "ftp://127.0.0.1:1/f.bin"), ("redir-file", "file:///etc/passwd")])
def test_redirects_leave_http_never(server, tmp_path, mode, target):
    """Found by an audit: urllib followed a 302 to ftp:// (sending credentials), and a 302 to
    file:// was retried as a temporary failure."""
    with pytest.raises(DataError, match=rf"f.bin: .*/{mode}/f.bin redirects to {target}, which robvae does not follow"):
        fetch(server, mode, tmp_path / "f.bin", retries=3)
    assert len(server.log) == 1  # refused, not retried
    fetch(server, "redir-good", tmp_path / "f.bin")  # http -> http is followed
    assert (tmp_path / "f.bin").read_bytes() == PAYLOAD


def test_a_redirect_from_https_to_http_is_refused():
    handler = dl._SafeRedirectHandler()
    request = urllib.request.Request("https://mirror.example/f.bin")
    with pytest.raises(dl._BadRedirect):
        handler.http_error_302(request, None, 302, "Found", {"location": "http://mirror.example/f.bin"})
    # an http download behind an https:// proxy: urllib sets req.type to the proxy's scheme, and an
    # ordinary http -> http redirect was taken for https -> http (review h64); the URL's scheme decides
    behind = urllib.request.Request("http://mirror.example/a/f.bin")
    behind.set_proxy("proxy.example:3128", "https")
    assert behind.type == "https"
    try:
        handler.http_error_302(behind, io.BytesIO(), 302, "Found", {"location": "http://mirror.example/b/f.bin"})
    except dl._BadRedirect:
        pytest.fail("an http -> http redirect behind an https proxy was refused")
    except AttributeError:  # accepted: urllib's handler then opens the target through its opener (none here)
        pass


def test_no_deadline_starts_no_watchdog_thread(server, tmp_path):
    """download_file(deadline=math.inf): threading.Timer(inf) failed in its thread, printing a
    traceback, and the download ran unwatched (review h64)."""
    import math
    import threading

    seen = []
    hook, threading.excepthook = threading.excepthook, lambda args: seen.append(args.exc_value)
    try:
        path = dl.download_file(f"{server.url}/good/f.bin", tmp_path / "f.bin", SHA, timeout=10, backoff=0,
                                deadline=math.inf)
        watchdogs = [t for t in threading.enumerate() if isinstance(t, threading.Timer)]
    finally:
        threading.excepthook = hook
    assert path.is_file() and seen == [] and watchdogs == []
