"""robvae.data.cifar: python batches in the real (Python 2, protocol 2) format; restricted unpickling."""

import pickle
import pickletools
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from robvae.data import load_cifar10, load_dataset, read_cifar_batch
from robvae.data.cifar import RestrictedUnpickler
from robvae.errors import DataError


class Py2Pickler(pickle._Pickler):
    """Writes str and bytes the way Python 2's cPickle wrote str: (SHORT_)BINSTRING opcodes.

    That is how the real CIFAR-10 batches were written (protocol 2 by Python 2), which is why
    they need ``encoding="bytes"`` and have bytes keys.
    """

    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_str(self, obj):
        data = obj.encode("latin-1") if isinstance(obj, str) else obj
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str
    dispatch[str] = save_py2_str


def py2_pickle(obj) -> bytes:
    import io

    buf = io.BytesIO()
    Py2Pickler(buf, protocol=2).dump(obj)
    # numpy 1.x (and Python 2) named the array rebuilder numpy.core.multiarray
    return buf.getvalue().replace(b"cnumpy._core.multiarray\n_reconstruct\n",
                                  b"cnumpy.core.multiarray\n_reconstruct\n")


def batch(n: int, seed: int, labels=None) -> dict:
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n).tolist() if labels is None else labels
    return {b"batch_label": b"training batch %d of 5" % seed, b"labels": labels, b"data": data,
            b"filenames": [b"img_%d.png" % i for i in range(n)]}


def write_cifar(root: Path, n: int = 4) -> dict[str, dict]:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    batches = {f"data_batch_{i}": batch(n, i) for i in range(1, 6)}
    batches["test_batch"] = batch(n + 1, 99)
    for name, content in batches.items():
        (folder / name).write_bytes(py2_pickle(content))
    return batches


def test_fixture_is_in_the_real_format(tmp_path):
    raw = py2_pickle(batch(3, 1))
    ops = [(op.name, arg) for op, arg, _ in pickletools.genops(raw)]
    assert ops[0] == ("PROTO", 2)
    globals_ = {arg for name, arg in ops if name == "GLOBAL"}
    assert globals_ == {"numpy.core.multiarray _reconstruct", "numpy ndarray", "numpy dtype"}
    names = {name for name, _ in ops}
    assert "BINUNICODE" not in names and "SHORT_BINBYTES" not in names and "BINBYTES" not in names
    # the plain stdlib loader used everywhere for CIFAR reads it too
    assert sorted(pickle.loads(raw, encoding="bytes")) == [b"batch_label", b"data", b"filenames", b"labels"]


def test_batches_load_exactly(tmp_path):
    batches = write_cifar(tmp_path)
    train = load_cifar10("train", tmp_path)
    assert tuple(train.images.shape) == (20, 3, 32, 32) and train.images.dtype == torch.float32
    assert train.labels.dtype == torch.int64
    expected = np.concatenate([batches[f"data_batch_{i}"][b"data"] for i in range(1, 6)])
    np.testing.assert_array_equal(train.images.numpy(), expected.reshape(20, 3, 32, 32).astype(np.float32) / 255)
    assert train.labels.tolist() == sum((batches[f"data_batch_{i}"][b"labels"] for i in range(1, 6)), [])
    # channel layout: the first 1024 bytes of a row are the red plane, row-major
    assert train.images[0, 0, 0, 1].item() == pytest.approx(expected[0, 1] / 255)
    assert train.images[0, 1, 0, 0].item() == pytest.approx(expected[0, 1024] / 255)
    assert train.images[0, 2, 31, 31].item() == pytest.approx(expected[0, 3071] / 255)
    test = load_dataset("cifar10", "test", data_dir=tmp_path / "cifar-10-batches-py")
    assert len(test) == 5 and test.labels.tolist() == batches["test_batch"][b"labels"]
    assert (test.name, test.split, test.shape) == ("cifar10", "test", (3, 32, 32))


def test_forbidden_global_is_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "data_batch_1"
    evil.write_bytes(b"cos\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR.")
    with pytest.raises(DataError, match=r"data_batch_1: refusing to unpickle the forbidden global os.system"):
        read_cifar_batch(evil)
    assert not marker.exists()
    # sanity: the payload really would run under the stdlib loader (we only inspect, never load it)
    assert any(op.name == "REDUCE" for op, _, _ in pickletools.genops(evil.read_bytes()))


@pytest.mark.parametrize("module,name", [("builtins", "eval"), ("numpy", "load"), ("posix", "system"),
                                         ("numpy.core.multiarray", "scalar"), ("codecs", "encode"),
                                         ("_codecs", "decode")])
def test_other_globals_refused(tmp_path, module, name):
    p = tmp_path / "test_batch"
    p.write_bytes(b"\x80\x02}q\x00U\x04dataq\x01c" + f"{module}\n{name}\n".encode() + b"q\x02s.")
    with pytest.raises(DataError, match=rf"test_batch: refusing to unpickle the forbidden global {module}.{name}"):
        read_cifar_batch(p)


def test_restricted_unpickler_resolves_only_numpy():
    import io

    u = RestrictedUnpickler(io.BytesIO(b""), "x")
    assert u.find_class("numpy", "dtype")("u1", False, True) == np.dtype("u1")  # numeric dtypes only
    assert not callable(u.find_class("numpy", "ndarray"))  # a name for _reconstruct, never called
    assert u.find_class("numpy.core.multiarray", "_reconstruct") is u.find_class("numpy._core.multiarray", "_reconstruct")


def _write(tmp_path, obj) -> Path:
    p = tmp_path / "data_batch_1"
    p.write_bytes(py2_pickle(obj))
    return p


def test_validation_errors_name_the_file(tmp_path):
    good = batch(3, 1)
    cases = [
        ({k: v for k, v in good.items() if k != b"labels"}, r"missing key b'labels'"),
        ({**good, b"data": good[b"data"][:, :100]}, r"b'data' must be uint8 \[N, 3072\], found uint8 \(3, 100\)"),
        ({**good, b"data": good[b"data"].astype(np.int16)}, r"b'data' must be uint8 .* found int16 \(3, 3072\)"),
        ({**good, b"labels": [0, 1]}, r"2 labels for 3 images"),
        ({**good, b"labels": [0, 1, 10]}, r"labels out of range 0..9 \(min 0, max 10\)"),
        ({**good, b"labels": [0, 1, -1]}, r"labels out of range 0..9 \(min -1, max 1\)"),
        ([1, 2, 3], r"expected a dict, found list"),
    ]
    for obj, message in cases:
        with pytest.raises(DataError, match=r"data_batch_1: " + message):
            read_cifar_batch(_write(tmp_path, obj))


def test_truncated_and_garbage_pickles(tmp_path):
    p = _write(tmp_path, batch(3, 1))
    p.write_bytes(p.read_bytes()[:500])
    with pytest.raises(DataError, match=r"data_batch_1: not a valid pickle, or truncated"):
        read_cifar_batch(p)
    p.write_bytes(b"this is not a pickle")
    with pytest.raises(DataError, match=r"data_batch_1: "):
        read_cifar_batch(p)


def test_missing_batch_and_missing_folder(tmp_path):
    write_cifar(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(DataError, match=r"data_batch_3: missing \(cifar10 train needs data_batch_1"):
        load_cifar10("train", tmp_path)
    assert len(load_cifar10("test", tmp_path)) == 5
    with pytest.raises(DataError, match=r"cifar10: no cifar-10-batches-py batch files in"):
        load_cifar10("train", tmp_path / "elsewhere")
    with pytest.raises(DataError, match=r"cifar10: no data folder given \(download is not supported"):
        load_cifar10("train", None, download=True)


def _bomb(body: bytes) -> bytes:
    """A protocol-2 pickle of ``body`` (memo 0: dtype('O8'), built first when ``body`` uses it)."""
    dtype = b"cnumpy\ndtype\nX\x02\x00\x00\x00O8\x89\x88\x87Rq\x00" if b"h\x00" in body else b""
    return b"\x80\x02" + dtype + body + b"."


@pytest.mark.parametrize("body,message", [
    # numpy._reconstruct(ndarray, (N,), dtype('O8')): numpy zero-fills N x 8 bytes before any check
    (b"cnumpy._core.multiarray\n_reconstruct\ncnumpy\nndarray\nJ\x00\x00\x10\x00\x85h\x00\x87R",
     r"refusing the dtype dtype\('O'\)"),
    # the same with a numeric dtype: any shape but numpy's (0,) is refused
    (b"cnumpy._core.multiarray\n_reconstruct\ncnumpy\nndarray\nJ\x00\x00\x10\x00\x85U\x01b\x87R",
     r"refusing numpy _reconstruct\(numpy.ndarray, \(1048576,\), b'b'\)"),
    # ndarray((N,)) called directly
    (b"cnumpy\nndarray\nJ\x00\x00\x10\x00\x85\x85R", r"corrupt pickle \(TypeError"),
])
def test_a_tiny_batch_cannot_make_numpy_allocate(tmp_path, body, message):
    """Found by an audit: a 91-byte batch made numpy allocate and zero-fill N x 8 bytes (24 GB for
    N = 3e9) through the allowed _reconstruct before any check."""
    p = tmp_path / "test_batch"
    p.write_bytes(_bomb(body))
    with pytest.raises(DataError, match=r"test_batch: " + message):
        read_cifar_batch(p)


def test_an_array_state_must_match_its_bytes(tmp_path):
    arr = np.zeros(4, np.uint8)
    raw = pickle.dumps({b"data": arr, b"labels": [0]}, protocol=2)
    good = pickle.loads(raw)[b"data"]
    assert good.tolist() == [0, 0, 0, 0]
    # the state claims 10**6 items for 4 bytes of data
    bad = raw.replace(b"K\x04\x85", b"J@B\x0f\x00\x85", 1)
    assert bad != raw
    p = tmp_path / "test_batch"
    p.write_bytes(bad)
    with pytest.raises(DataError, match=r"test_batch: refusing an array of shape \(1000000,\) uint8 with 4 bytes"):
        read_cifar_batch(p)


def test_labels_that_are_not_1d_are_refused(tmp_path):
    """Found by an audit: b"labels" as a 0-d array escaped as a TypeError (a traceback in the CLI)."""
    good = batch(1, 1)
    for labels, shape in ((np.array(3), r"\(\)"), (np.zeros((1, 1), np.int64), r"\(1, 1\)")):
        with pytest.raises(DataError, match=r"data_batch_1: b'labels' must be 1-D .* shape " + shape):
            read_cifar_batch(_write(tmp_path, {**good, b"labels": labels}))


def test_a_dtype_changed_after_its_array_was_checked_does_not_reach_the_array(tmp_path):
    """Review h64: a pickle that BUILDs its memoized uint8 dtype again after the array passed its
    check turned the array's dtype into one that "holds objects" (numpy then crashed on freeing
    it). The array now gets numpy's own dtype of the checked type code."""
    P = pickle

    def text(s):
        return P.SHORT_BINUNICODE + bytes([len(s)]) + s.encode()

    def short(b):
        return (P.SHORT_BINBYTES + bytes([len(b)]) + b) if len(b) < 256 else (P.BINBYTES + struct.pack("<I", len(b)) + b)

    def state(flags):  # numpy's dtype state (3, '|', None, None, None, -1, -1, flags)
        return (P.MARK + P.BININT1 + b"\x03" + text("|") + P.NONE * 3 + (P.BININT + struct.pack("<i", -1)) * 2
                + P.BININT + struct.pack("<i", flags) + P.TUPLE)

    out = P.PROTO + b"\x04" + P.EMPTY_DICT + P.MARK + short(b"data")
    out += P.GLOBAL + b"numpy.core.multiarray\n_reconstruct\n" + P.GLOBAL + b"numpy\nndarray\n"
    out += P.BININT1 + b"\x00" + P.TUPLE1 + short(b"b") + P.TUPLE3 + P.REDUCE
    out += P.MARK + P.BININT1 + b"\x01" + P.BININT1 + b"\x01" + P.BININT2 + struct.pack("<H", 3072) + P.TUPLE2
    out += P.GLOBAL + b"numpy\ndtype\n" + text("u1") + P.NEWFALSE + P.NEWTRUE + P.TUPLE3 + P.REDUCE
    out += P.BINPUT + b"\x07" + state(0) + P.BUILD
    out += P.NEWFALSE + short(bytes(range(256)) * 12) + P.TUPLE + P.BUILD
    out += short(b"labels") + P.EMPTY_LIST + P.BININT1 + b"\x03" + P.APPEND
    out += short(b"x") + P.BINGET + b"\x07" + state(63) + P.BUILD  # the dtype's flags changed afterwards
    out += P.SETITEMS + P.STOP
    path = tmp_path / "data_batch_1"
    path.write_bytes(out)
    x, y = read_cifar_batch(path)
    assert x.dtype == np.uint8 and not x.dtype.hasobject and x.shape == (1, 3072) and list(y) == [3]
    assert float(x.astype(np.float64).mean()) == 127.5
