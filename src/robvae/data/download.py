"""Downloading the official MNIST and Fashion-MNIST files: checksums, resume, atomic writes.

``download_file`` fetches one URL into ``<dest>.part`` (resuming an existing ``.part`` with an
HTTP Range request; restarting when the server ignores Range), checks the whole file against its
checksum and only then moves it to its final name with ``os.replace``. A file that fails its
checksum is deleted and reported by name (``DataError``); it is never left under the final name.
Network failures are retried a bounded number of times, keeping the ``.part`` so the next attempt
(or the next call) resumes it. Each download has an overall deadline, response headers included (a
watchdog shuts the connection), a size limit (``SIZES``: the official files' sizes; a server that
announces or sends more is stopped at once), and follows redirects to http(s) URLs only, never
from https to http.

Checksums are strings ``"<algorithm>:<hex digest>"`` (``sha256`` or ``md5``; a bare 64-hex string
is read as SHA-256, a bare 32-hex one as MD5). ``CHECKSUMS`` holds the SHA-256 digests of the
official ``.gz`` files (the values that many independent loaders pin for these exact files), and
``MD5_CHECKSUMS`` the MD5 digests the dataset authors publish, for reference. Callers (and tests)
can pass their own mapping.

Only the standard library (urllib) is used.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import re
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ..errors import DataError

#: Official base URLs (a file's URL is base + file name).
OFFICIAL_URLS: dict[str, str] = {
    "mnist": "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "fashion-mnist": "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
}

#: Environment variables that replace the official base URLs (e.g. a local mirror).
URL_ENV_VARS: dict[str, str] = {
    "mnist": "ROBVAE_MNIST_URL",
    "fashion-mnist": "ROBVAE_FASHION_MNIST_URL",
}

#: The four files of each IDX data set, by split.
IDX_FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}

#: SHA-256 digests of the official .gz files: what downloads are checked against.
CHECKSUMS: dict[str, dict[str, str]] = {
    "mnist": {
        "train-images-idx3-ubyte.gz": "sha256:440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
        "train-labels-idx1-ubyte.gz": "sha256:3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
        "t10k-images-idx3-ubyte.gz": "sha256:8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
        "t10k-labels-idx1-ubyte.gz": "sha256:f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
    },
    "fashion-mnist": {
        "train-images-idx3-ubyte.gz": "sha256:3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
        "train-labels-idx1-ubyte.gz": "sha256:a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
        "t10k-images-idx3-ubyte.gz": "sha256:346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
        "t10k-labels-idx1-ubyte.gz": "sha256:67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
    },
}

#: The MD5 digests the dataset authors publish for the same files (a second, independent check).
MD5_CHECKSUMS: dict[str, dict[str, str]] = {
    "mnist": {
        "train-images-idx3-ubyte.gz": "md5:f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "md5:d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "md5:9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "md5:ec29112dd5afa0611ce80d1b7f02629c",
    },
    "fashion-mnist": {
        "train-images-idx3-ubyte.gz": "md5:8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "md5:25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "md5:bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "md5:bb300cfdad3c16e7a12a480ee83cd310",
    },
}

#: Sizes in bytes of the official .gz files (those of ``CHECKSUMS``): a download checked against
#: an official checksum stops as soon as the server announces or sends more than this.
SIZES: dict[str, dict[str, int]] = {
    "mnist": {
        "train-images-idx3-ubyte.gz": 9912422,
        "train-labels-idx1-ubyte.gz": 28881,
        "t10k-images-idx3-ubyte.gz": 1648877,
        "t10k-labels-idx1-ubyte.gz": 4542,
    },
    "fashion-mnist": {
        "train-images-idx3-ubyte.gz": 26421880,
        "train-labels-idx1-ubyte.gz": 29515,
        "t10k-images-idx3-ubyte.gz": 4422102,
        "t10k-labels-idx1-ubyte.gz": 5148,
    },
}

#: the most bytes any other download may bring (``download_file(max_bytes=)``): 40x the largest
#: official file
MAX_DOWNLOAD_BYTES = 1 << 30

_ALGORITHMS = {"sha256": 64, "md5": 32}
_CHUNK = 1 << 20


def default_data_dir(name: str) -> Path:
    """Where downloads go when no folder is given: $ROBVAE_DATA_DIR/<name>, else the user cache."""
    root = os.environ.get("ROBVAE_DATA_DIR")
    if root:
        return Path(root).expanduser() / name
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "robvae" / name


def base_url_for(name: str, base_url: str | None = None) -> str:
    """The base URL to use: the argument, else the data set's env var, else the official one."""
    if name not in OFFICIAL_URLS:
        raise ValueError(f"no download source for {name!r}; known: {', '.join(OFFICIAL_URLS)}")
    url = base_url or os.environ.get(URL_ENV_VARS[name]) or OFFICIAL_URLS[name]
    return url if url.endswith("/") else url + "/"


def parse_checksum(checksum: str) -> tuple[str, str]:
    """``"sha256:ab.."`` / ``"md5:ab.."`` / bare hex -> (algorithm, lower-case hex digest)."""
    text = checksum.strip().lower()
    if ":" in text:
        algorithm, digest = text.split(":", 1)
    else:
        algorithm = {64: "sha256", 32: "md5"}.get(len(text), "")
        digest = text
    if algorithm not in _ALGORITHMS or not re.fullmatch(rf"[0-9a-f]{{{_ALGORITHMS.get(algorithm, 0)}}}", digest):
        raise ValueError(f"bad checksum {checksum!r}: expected 'sha256:<64 hex>' or 'md5:<32 hex>'")
    return algorithm, digest


#: (algorithm, digest) of each official file, SHA-256 and MD5 -> its size (fixed at import)
_OFFICIAL_SIZES: dict[tuple[str, str], int] = {
    parse_checksum(table[name][file]): size
    for table in (CHECKSUMS, MD5_CHECKSUMS) for name, files in SIZES.items() for file, size in files.items()}


def size_limit(checksum: str | None) -> int:
    """The most bytes a download checked against ``checksum`` may bring: the official file's size
    when ``checksum`` is an official one (``SIZES``), else :data:`MAX_DOWNLOAD_BYTES`."""
    return MAX_DOWNLOAD_BYTES if checksum is None else _OFFICIAL_SIZES.get(parse_checksum(checksum), MAX_DOWNLOAD_BYTES)


def file_digest(path: str | os.PathLike, algorithm: str = "sha256") -> str:
    """Hex digest of a file's bytes, read in 1 MiB blocks (``hashlib.file_digest`` needs Python 3.11)."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verify_checksum(path: str | os.PathLike, checksum: str, label: str | None = None) -> None:
    """Raise DataError naming the file (``label`` or the path) when its digest is not ``checksum``."""
    algorithm, expected = parse_checksum(checksum)
    actual = file_digest(path, algorithm)
    if actual != expected:
        raise DataError(
            f"{label or path}: {algorithm} checksum mismatch (got {actual}, expected {expected}); "
            "the file is corrupt or not the official one"
        )


def matches_checksum(path: str | os.PathLike, checksum: str) -> bool:
    """Whether the file's digest is ``checksum`` (False when it cannot be read)."""
    algorithm, expected = parse_checksum(checksum)
    try:
        return file_digest(path, algorithm) == expected
    except OSError:
        return False


class _Restart(Exception):
    """The .part must be discarded and the download started again from byte 0."""


class _Deadline(Exception):
    """The whole download took longer than its deadline (a server that trickles never times out)."""


class _TooLarge(Exception):
    """The server announced (``args[0]``: the size) or sent (``args[0]`` None) more bytes than allowed."""


class _BadRedirect(Exception):
    """A redirect to a URL that is not http(s), or from https to http (``args[0]``: the target)."""


class _Watchdog:
    """Shuts down the connections of one download once its deadline passes: ``timeout`` bounds each
    wait for data, which a server sending its headers or body a byte at a time never exceeds."""

    def __init__(self, stop: float) -> None:
        self.expired = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        left = stop - time.monotonic()
        # no deadline (inf): no timer (threading.Timer(inf) fails in its thread; review h64)
        self._timer = threading.Timer(max(0.0, left), self._expire) if left < threading.TIMEOUT_MAX else None
        if self._timer is not None:
            self._timer.daemon = True
            self._timer.start()

    def watch(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.append(sock)
            if self.expired:
                self._shut(sock)

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            for sock in self._sockets:
                self._shut(sock)

    @staticmethod
    def _shut(sock: socket.socket) -> None:
        with contextlib.suppress(OSError):  # the plain socket's shutdown, under TLS too: the blocked read returns
            socket.socket.shutdown(sock, socket.SHUT_RDWR)

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()


class _Watched:
    """Mixed into an http.client connection: its socket is handed to the download's watchdog once
    connected (for HTTPS, the TLS socket)."""

    def __init__(self, *args: Any, watchdog: _Watchdog, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._watchdog = watchdog

    def connect(self) -> None:  # noqa: D102
        super().connect()  # type: ignore[misc]
        self._watchdog.watch(self.sock)  # type: ignore[attr-defined]


class _WatchedHTTPConnection(_Watched, http.client.HTTPConnection):
    pass


class _WatchedHTTPSConnection(_Watched, http.client.HTTPSConnection):
    pass


class _WatchedHTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, watchdog: _Watchdog) -> None:
        super().__init__()
        self._watchdog = watchdog

    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:  # noqa: D102
        return self.do_open(_WatchedHTTPConnection, req, watchdog=self._watchdog)


class _WatchedHTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, watchdog: _Watchdog) -> None:
        super().__init__()
        self._watchdog = watchdog

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:  # noqa: D102
        return self.do_open(_WatchedHTTPSConnection, req, context=self._context, watchdog=self._watchdog)


class _SafeRedirectHandler(urllib.request.HTTPRedirectHandler):
    """Follows redirects to http(s) URLs only, and never from https to http (urllib alone follows
    one to ftp://, and refuses one to file:// with an error that looks temporary)."""

    def http_error_302(self, req, fp, code, msg, headers):  # noqa: ANN001, D102
        target = headers.get("location") or headers.get("uri")
        if target:
            new = urllib.parse.urljoin(req.full_url, target)
            scheme = urllib.parse.urlsplit(new).scheme.lower()
            was = urllib.parse.urlsplit(req.full_url).scheme.lower()  # req.type is the proxy's, behind one
            if scheme not in ("http", "https") or (scheme == "http" and was == "https"):
                raise _BadRedirect(new)
        return super().http_error_302(req, fp, code, msg, headers)

    http_error_301 = http_error_303 = http_error_307 = http_error_308 = http_error_302


def _opener(watchdog: _Watchdog) -> urllib.request.OpenerDirector:
    """urllib's opener with http(s) only (proxies from the environment as usual), watched connections
    and safe redirects."""
    opener = urllib.request.OpenerDirector()
    for handler in (urllib.request.ProxyHandler(), urllib.request.UnknownHandler(), _WatchedHTTPHandler(watchdog),
                    _WatchedHTTPSHandler(watchdog), urllib.request.HTTPDefaultErrorHandler(), _SafeRedirectHandler(),
                    urllib.request.HTTPErrorProcessor()):
        opener.add_handler(handler)
    return opener


def _announced_size(response: http.client.HTTPResponse, offset: int) -> int | None:
    """The whole file's size as the response announces it (Content-Range's total, else offset +
    Content-Length), or None."""
    total = re.fullmatch(r"bytes \d+-\d+/(\d+)", response.headers.get("Content-Range", "").strip())
    if total:
        return int(total.group(1))
    length = response.headers.get("Content-Length")
    return offset + int(length) if length is not None and length.strip().isdigit() else None


def _fetch_once(url: str, part: Path, timeout: float, stop: float, limit: int, watchdog: _Watchdog) -> None:
    """One HTTP attempt appending to ``part`` (resuming from its size). Raises on short bodies,
    _TooLarge once the file would pass ``limit`` bytes, and _Deadline once ``time.monotonic()``
    passes ``stop`` (what was received stays in ``part``)."""
    try:
        _fetch(url, part, timeout, stop, limit, watchdog)
    except (_Restart, _Deadline, _TooLarge, _BadRedirect):
        raise
    except Exception:
        if watchdog.expired:  # the watchdog shut the connection: whatever broke, it was the deadline
            raise _Deadline() from None
        raise
    if watchdog.expired:  # a shut connection can also look like a body without Content-Length that ended
        raise _Deadline()


def _fetch(url: str, part: Path, timeout: float, stop: float, limit: int, watchdog: _Watchdog) -> None:
    offset = part.stat().st_size if part.exists() else 0
    if offset > limit:  # an old .part longer than the file: start again
        raise _Restart()
    request = urllib.request.Request(url, headers={"User-Agent": "robvae"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    left = stop - time.monotonic()
    if left <= 0:
        raise _Deadline()
    try:
        response = _opener(watchdog).open(request, timeout=min(timeout, left))
    except urllib.error.HTTPError as err:
        if err.code == 416 and offset:  # our .part is at least as long as the file: start again
            err.close()
            raise _Restart() from err
        raise
    with response:
        status = response.status
        if offset and status == 206:
            content_range = response.headers.get("Content-Range", "")
            if not content_range.startswith(f"bytes {offset}-"):
                raise _Restart()
            mode = "ab"
        elif status == 200:  # full body: the server ignored Range (or there was no .part)
            mode = "wb"
            offset = 0
        else:
            raise urllib.error.HTTPError(url, status, f"unexpected HTTP status {status}", response.headers, None)
        announced = _announced_size(response, offset)
        if announced is not None and announced > limit:
            raise _TooLarge(announced)
        length = response.headers.get("Content-Length")
        expected = int(length) if length is not None and length.isdigit() else None
        with open(part, mode) as out:
            start = out.tell()
            while chunk := response.read1(_CHUNK):  # what has arrived: a trickle cannot hide the deadline
                out.write(chunk)
                if out.tell() > limit:
                    raise _TooLarge(None)
                if time.monotonic() > stop:
                    out.flush()
                    raise _Deadline()
            received = out.tell() - start
            out.flush()
            os.fsync(out.fileno())
        if expected is not None and received != expected:
            raise http.client.IncompleteRead(b"", expected - received)


#: seconds a whole file may take to download (``download_file(deadline=)``): 30 minutes, about 15
#: KB/s for the largest official file (26 MB)
DOWNLOAD_DEADLINE_S = 1800.0


def download_file(
    url: str,
    dest: str | os.PathLike,
    checksum: str | None,
    *,
    retries: int = 3,
    timeout: float = 60.0,
    backoff: float = 1.0,
    deadline: float = DOWNLOAD_DEADLINE_S,
    max_bytes: int | None = None,
) -> Path:
    """Download ``url`` to ``dest`` atomically, verified against ``checksum``.

    An existing ``dest`` that matches the checksum is kept (no request is made). ``checksum=None``
    skips verification (only the transfer length is checked); pass one whenever you know it.
    Network errors and short bodies are retried up to ``retries`` more times (sleeping
    ``backoff * attempt`` seconds), resuming the ``.part``. Raises DataError naming the file on a
    checksum mismatch (the bad file is deleted), an HTTP error, when the retries run out, or when
    the whole download takes longer than ``deadline`` seconds, response headers included
    (``timeout`` bounds each wait for data, which a server sending a byte at a time never exceeds;
    the ``.part`` is kept). A server that announces or sends more than ``max_bytes`` (default
    :func:`size_limit`: the official file's size for an official checksum, else
    :data:`MAX_DOWNLOAD_BYTES`) is stopped at once and the ``.part`` deleted. Redirects are followed
    to http(s) URLs only, and never from https to http; any other is refused, not retried.
    """
    stop = time.monotonic() + float(deadline)
    dest = Path(dest)
    name = dest.name
    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        raise DataError(f"{name}: {url!r} is not an http(s) URL (check the mirror setting)")
    if checksum is not None:
        parse_checksum(checksum)  # a malformed checksum is the caller's bug: fail before any I/O
        with contextlib.suppress(DataError):  # a stale or foreign file: download again and replace it
            if dest.exists():
                verify_checksum(dest, checksum)
                return dest
    limit = size_limit(checksum) if max_bytes is None else int(max_bytes)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(name + ".part")
    watchdog = _Watchdog(stop)
    try:
        return _download(url, dest, part, checksum, retries, timeout, backoff, deadline, stop, limit, watchdog)
    finally:
        watchdog.cancel()


def _download(url: str, dest: Path, part: Path, checksum: str | None, retries: int, timeout: float, backoff: float,
              deadline: float, stop: float, limit: int, watchdog: _Watchdog) -> Path:
    name = dest.name
    last_error: BaseException | None = None
    restarted = False
    attempt = 0
    while attempt <= retries:
        resumed = part.exists() and part.stat().st_size > 0
        try:
            _fetch_once(url, part, timeout, stop, limit, watchdog)
        except _Deadline:
            raise DataError(f"{name}: download from {url} took longer than {deadline:g} s (the server sends too "
                            f"slowly); {_what_is_kept(part)}") from None
        except _TooLarge as err:
            part.unlink(missing_ok=True)
            what = f"announces {err.args[0]} bytes" if err.args[0] is not None else f"sent more than {limit} bytes"
            official = checksum is not None and _OFFICIAL_SIZES.get(parse_checksum(checksum)) == limit
            expected = f"the official file has {limit} bytes" if official else f"the limit is {limit} bytes"
            raise DataError(f"{name}: the server at {url} {what}, but {expected}; stopped (not the official file, "
                            "or a server that sends without end) and the partial file deleted") from None
        except _BadRedirect as err:
            raise DataError(f"{name}: {url} redirects to {err.args[0]}, which robvae does not follow (only http(s) "
                            "URLs, and never from https to http); check the mirror setting") from None
        except _Restart:
            if checksum is not None and part.exists():  # e.g. 416: the .part may already be whole
                with contextlib.suppress(DataError):  # (an earlier run stopped before the move)
                    verify_checksum(part, checksum)
                    os.replace(part, dest)
                    return dest
            part.unlink(missing_ok=True)
            if restarted:
                raise DataError(f"{name}: the server at {url} keeps refusing to resume; giving up") from None
            restarted = True
            continue  # a restart is not a failed attempt
        except urllib.error.HTTPError as err:
            # 3xx here: a redirect urllib would not follow (a loop, no Location); 4xx: the server's no
            if 300 <= err.code < 500 and err.code not in (408, 429):
                raise DataError(f"{name}: download from {url} failed with HTTP {err.code} {err.reason}") from err
            last_error = err
        except (urllib.error.URLError, http.client.HTTPException, OSError) as err:
            last_error = err
        else:
            if checksum is not None:
                try:
                    verify_checksum(part, checksum, label=f"{name} (downloaded from {url})")
                except DataError:
                    part.unlink(missing_ok=True)
                    if resumed and not restarted:  # a bad resume can corrupt: try once from scratch
                        restarted = True
                        continue
                    raise
            os.replace(part, dest)
            return dest
        attempt += 1
        if attempt <= retries and backoff > 0:
            time.sleep(min(backoff * attempt, max(0.0, stop - time.monotonic())))
    reason = str(last_error).replace("\n", " ")
    raise DataError(f"{name}: download from {url} failed after {retries + 1} attempts ({reason}); "
                    f"{_what_is_kept(part)}")


def _what_is_kept(part: Path) -> str:
    """The end of a failed download's message: whether a partial file is kept for the next one."""
    return (f"the partial file {part} is kept and the next download resumes it"
            if part.exists() and part.stat().st_size > 0 else "nothing was received")


def download_dataset(
    name: str,
    data_dir: str | os.PathLike,
    splits: Iterable[str] = ("train", "test"),
    *,
    base_url: str | None = None,
    checksums: Mapping[str, str] | None = None,
    retries: int = 3,
    timeout: float = 60.0,
    backoff: float = 1.0,
) -> list[Path]:
    """Download the official .gz files of ``name`` ("mnist" or "fashion-mnist") into ``data_dir``.

    ``base_url`` defaults to $ROBVAE_MNIST_URL / $ROBVAE_FASHION_MNIST_URL, else the official
    mirror; ``checksums`` (file name -> checksum) defaults to ``CHECKSUMS[name]``. A file without
    a known checksum is refused. Returns the paths of the files, in split order.
    """
    url = base_url_for(name, base_url)
    table = CHECKSUMS[name] if checksums is None else checksums
    paths = []
    for split in splits:
        if split not in IDX_FILES:
            raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(IDX_FILES)}")
        for file_name in IDX_FILES[split]:
            if file_name not in table:
                raise DataError(f"{file_name}: no checksum known for {name}; pass checksums={{...}}")
            paths.append(
                download_file(url + file_name, Path(data_dir) / file_name, table[file_name],
                              retries=retries, timeout=timeout, backoff=backoff)
            )
    return paths
