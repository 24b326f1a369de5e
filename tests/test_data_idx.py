"""robvae.data.idx: the IDX reader (gzip or raw), its validation, and the real data folders."""

import gzip
import hashlib
import os
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from robvae.data import load_fashion_mnist, load_mnist, read_idx
from robvae.data.idx import FASHION_MNIST_SYSTEM_DIR, find_idx_files, read_idx_pair
from robvae.errors import DataError


def idx_bytes(array: np.ndarray, magic: int | None = None) -> bytes:
    array = np.ascontiguousarray(array, dtype=np.uint8)
    magic = (0x0800 | array.ndim) if magic is None else magic
    return struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def write(path: Path, payload: bytes, gz: bool) -> Path:
    path.write_bytes(gzip.compress(payload) if gz else payload)
    return path


def make_split(folder: Path, split: str, n: int, gz: bool, seed: int = 0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n, dtype=np.uint8)
    prefix = "train" if split == "train" else "t10k"
    suffix = ".gz" if gz else ""
    folder.mkdir(parents=True, exist_ok=True)
    write(folder / f"{prefix}-images-idx3-ubyte{suffix}", idx_bytes(images), gz)
    write(folder / f"{prefix}-labels-idx1-ubyte{suffix}", idx_bytes(labels), gz)
    return images, labels


@pytest.mark.parametrize("gz", [True, False])
def test_good_files_load_exactly(tmp_path, gz):
    images, labels = make_split(tmp_path, "train", 7, gz)
    make_split(tmp_path, "test", 3, gz, seed=1)
    ds = load_mnist("train", tmp_path)
    assert tuple(ds.images.shape) == (7, 1, 28, 28) and ds.images.dtype == torch.float32
    assert ds.labels.dtype == torch.int64 and ds.labels.tolist() == labels.tolist()
    np.testing.assert_array_equal(ds.images.numpy()[:, 0], images.astype(np.float32) / 255)
    assert (ds.name, ds.split) == ("mnist", "train")
    assert len(load_mnist("test", tmp_path)) == 3


def test_gzip_detected_by_magic_bytes_not_name(tmp_path):
    # a raw file named .gz and a gzip file without .gz: both read
    labels = np.arange(10, dtype=np.uint8)
    raw_named_gz = write(tmp_path / "a.gz", idx_bytes(labels), gz=False)
    gz_named_raw = write(tmp_path / "b", idx_bytes(labels), gz=True)
    assert read_idx(raw_named_gz, 0x801).tolist() == list(range(10))
    assert read_idx(gz_named_raw, 0x801).tolist() == list(range(10))


def test_files_found_in_subfolder(tmp_path):
    _, labels = make_split(tmp_path / "deep" / "MNIST" / "raw", "test", 4, gz=False)
    assert load_mnist("test", tmp_path).labels.tolist() == labels.tolist()


def test_dotted_variant_names(tmp_path):
    _, labels = make_split(tmp_path, "test", 2, gz=False)
    for p in tmp_path.iterdir():
        p.rename(p.with_name(p.name.replace("-idx", ".idx")))
    assert load_mnist("test", tmp_path).labels.tolist() == labels.tolist()


@pytest.mark.parametrize("gz", [True, False])
def test_bad_magic_names_file(tmp_path, gz):
    make_split(tmp_path, "train", 2, gz)
    images_path = next(tmp_path.glob("train-images*"))
    arr = np.zeros((2, 28, 28), np.uint8)
    write(images_path, idx_bytes(arr, magic=0x00000801 + 0x10000), gz)
    with pytest.raises(DataError, match=rf"{images_path.name}.*bad IDX magic number 0x00010801, expected 0x00000803"):
        load_mnist("train", tmp_path)


def test_labels_file_with_image_magic(tmp_path):
    make_split(tmp_path, "train", 2, False)
    write(tmp_path / "train-labels-idx1-ubyte", idx_bytes(np.zeros((2, 28, 28), np.uint8)), False)
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte: bad IDX magic number 0x00000803, expected 0x00000801"):
        load_mnist("train", tmp_path)


@pytest.mark.parametrize("gz", [True, False])
def test_truncated_payload_names_file(tmp_path, gz):
    make_split(tmp_path, "train", 3, gz)
    p = next(tmp_path.glob("train-images*"))
    full = idx_bytes(np.ones((3, 28, 28), np.uint8))
    write(p, full[:-5], gz)
    with pytest.raises(DataError, match=rf"{p.name}: truncated payload: 2347 bytes, header \(3, 28, 28\) needs 2352"):
        load_mnist("train", tmp_path)


@pytest.mark.parametrize("gz", [True, False])
def test_extra_bytes_names_file(tmp_path, gz):
    make_split(tmp_path, "train", 3, gz)
    p = next(tmp_path.glob("train-labels*"))
    write(p, idx_bytes(np.ones(3, np.uint8)) + b"\x00\x00", gz)
    with pytest.raises(DataError, match=rf"{p.name}: 2 extra bytes after the payload"):
        load_mnist("train", tmp_path)


def test_truncated_gzip_stream_names_file(tmp_path):
    make_split(tmp_path, "train", 3, True)
    p = tmp_path / "train-images-idx3-ubyte.gz"
    p.write_bytes(p.read_bytes()[:-20])
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte.gz: (truncated|corrupt) gzip"):
        load_mnist("train", tmp_path)


def test_truncated_header(tmp_path):
    p = write(tmp_path / "x", struct.pack(">I", 0x803) + b"\x00\x00\x00\x02", False)
    with pytest.raises(DataError, match=r"x: truncated IDX header \(8 bytes, 3 dimensions need 16\)"):
        read_idx(p, 0x803)
    q = write(tmp_path / "y", b"\x00\x00", False)
    with pytest.raises(DataError, match="y: 2 bytes, too short"):
        read_idx(q)


def test_count_mismatch_names_both_files(tmp_path):
    make_split(tmp_path, "train", 5, False)
    write(tmp_path / "train-labels-idx1-ubyte", idx_bytes(np.zeros(4, np.uint8)), False)
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte: 4 labels but .*train-images-idx3-ubyte holds 5 images"):
        load_mnist("train", tmp_path)


def test_label_out_of_range_and_wrong_image_size(tmp_path):
    write(tmp_path / "i", idx_bytes(np.zeros((2, 28, 28), np.uint8)), False)
    write(tmp_path / "l", idx_bytes(np.array([3, 10], np.uint8)), False)
    with pytest.raises(DataError, match=r"l: label 10 out of range 0..9"):
        read_idx_pair(tmp_path / "i", tmp_path / "l")
    write(tmp_path / "j", idx_bytes(np.zeros((2, 27, 28), np.uint8)), False)
    with pytest.raises(DataError, match=r"j: images are 27x28, expected 28x28"):
        read_idx_pair(tmp_path / "j", tmp_path / "l")


def test_missing_partner_and_missing_folder(tmp_path):
    make_split(tmp_path, "train", 2, False)
    (tmp_path / "train-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte: found, but its partner train-labels-idx1-ubyte"):
        load_mnist("train", tmp_path)
    with pytest.raises(DataError, match=r"mnist test files not found: no t10k-images-idx3-ubyte\(.gz\)"):
        load_mnist("test", tmp_path)
    with pytest.raises(DataError, match=r"folder .*nope does not exist; pass --data-dir"):
        load_mnist("train", tmp_path / "nope")
    assert find_idx_files(tmp_path / "nope", "train") is None


def test_mnist_without_folder_says_what_to_do():
    with pytest.raises(DataError, match=r"pass --data-dir DIR .* or download=True"):
        load_mnist("train")


def test_bad_split(tmp_path):
    with pytest.raises(ValueError, match="valid splits: train, test"):
        load_mnist("val", tmp_path)


# --- the real data ---------------------------------------------------------------------------

def _mnist10k() -> Path | None:
    candidates = [os.environ.get("ROBVAE_MNIST10K"),
                  Path(__file__).resolve().parents[2] / "shared/data/mnist-10k"]
    for c in candidates:
        if c and (Path(c) / "train-images-idx3-ubyte.gz").is_file():
            return Path(c)
    return None


MNIST10K = _mnist10k()
MNIST10K_SHA256 = {
    "t10k-images-idx3-ubyte.gz": "47225405e2a4a602c42c5df218f9ed4cda114ce99977ea3f0a31b7c3d9daee3d",
    "t10k-labels-idx1-ubyte.gz": "142624c8f3ae0e3d36afe21579bfa4ace627bd7f6f921be9d0f840452b0efde4",
    "train-images-idx3-ubyte.gz": "71e0e0dd710ecd2d7ead1460d4a1e34f0fb4b851e0484e2a57540886058e2089",
    "train-labels-idx1-ubyte.gz": "45f5f1ec777ab35eb8a2e7c57f7dd6cf548651dde096b111c31e6fd3f3d15373",
}


@pytest.mark.skipif(MNIST10K is None, reason="mnist-10k folder not found (set ROBVAE_MNIST10K)")
def test_real_mnist10k_loads_through_the_reader():
    for name, digest in MNIST10K_SHA256.items():
        assert hashlib.sha256((MNIST10K / name).read_bytes()).hexdigest() == digest, name
    train, test = load_mnist("train", MNIST10K), load_mnist("test", MNIST10K)
    assert tuple(train.images.shape) == (8000, 1, 28, 28)
    assert tuple(test.images.shape) == (2000, 1, 28, 28)
    counts = (torch.bincount(train.labels, minlength=10) + torch.bincount(test.labels, minlength=10)).tolist()
    assert counts == [1001, 1127, 991, 1032, 980, 863, 1014, 1070, 944, 978]  # from its README
    assert torch.bincount(test.labels).tolist() == [217, 245, 186, 204, 191, 184, 203, 188, 189, 193]
    for ds in (train, test):
        assert ds.images.min().item() == 0.0 and ds.images.max().item() == 1.0
        levels = ds.images * 255
        assert torch.allclose(levels, levels.round(), atol=1e-4)


@pytest.mark.skipif(not (FASHION_MNIST_SYSTEM_DIR / "t10k-images-idx3-ubyte.gz").is_file(),
                    reason="Fashion-MNIST not installed (Debian package dataset-fashion-mnist)")
def test_real_fashion_mnist_from_system_folder():
    test = load_fashion_mnist("test")
    assert tuple(test.images.shape) == (10000, 1, 28, 28)
    assert torch.bincount(test.labels).tolist() == [1000] * 10
    assert test.name == "fashion-mnist" and test.images.dtype == torch.float32
    assert test.images.min().item() == 0.0 and test.images.max().item() == 1.0
    train = load_fashion_mnist("train")
    assert len(train) == 60000 and torch.bincount(train.labels).tolist() == [6000] * 10


def test_mnist_and_fashion_subfolders_are_told_apart(tmp_path):
    """Found by an audit: MNIST and Fashion-MNIST share file names, and the search took the first
    subfolder in sorted order, so --dataset mnist over a folder holding fashion-mnist/ and mnist/
    trained on Fashion-MNIST (exit 0)."""
    mnist, _ = make_split(tmp_path / "mnist", "test", 3, gz=True, seed=1)
    fashion, _ = make_split(tmp_path / "fashion-mnist", "test", 5, gz=True, seed=2)
    np.testing.assert_array_equal(load_mnist("test", tmp_path).images.numpy()[:, 0], mnist / np.float32(255))
    np.testing.assert_array_equal(load_fashion_mnist("test", tmp_path).images.numpy()[:, 0],
                                  fashion / np.float32(255))
    # only the other data set's folder: refused, naming it; a neutral folder is taken
    only = tmp_path / "only"
    make_split(only / "Fashion_MNIST" / "raw", "test", 2, gz=False)
    with pytest.raises(DataError, match=r"only IDX files .*Fashion_MNIST/raw, whose name says they are another"):
        load_mnist("test", only)
    make_split(only / "data", "test", 4, gz=False)
    assert len(load_mnist("test", only)) == 4 and len(load_fashion_mnist("test", only)) == 2
    # two neutral folders at one depth: refused, naming both
    two = tmp_path / "two"
    make_split(two / "a", "test", 2, gz=False)
    make_split(two / "b", "test", 3, gz=False)
    with pytest.raises(DataError, match=r"several folders.*two/a.*two/b"):
        load_mnist("test", two)
    assert find_idx_files(two, "test") is not None  # no data set named: the first, as before
    # the folder given is read by its name too (see the test below)
    with pytest.raises(DataError, match=r"fashion-mnist: its name says it holds fashion-mnist, not mnist"):
        load_mnist("test", tmp_path / "fashion-mnist")
    assert len(load_fashion_mnist("test", tmp_path / "fashion-mnist")) == 5


@pytest.mark.parametrize("layout", ["tv/FashionMNIST/raw", "fm/fmnist", "kmnist", "x/EMNIST", "fashion_mnist_data",
                                    "MNIST-Fashion", "mnist_fashion"])
@pytest.mark.parametrize("given", ["root", "folder"])
def test_another_data_sets_folder_is_never_read_as_mnist(tmp_path, monkeypatch, layout, given):
    """Found by an audit: the folder names were matched as whole words below --data-dir only, so
    torchvision's root/FashionMNIST/raw, fmnist/, kmnist/ and a --data-dir named fashion-mnist were
    all loaded as MNIST without a word."""
    monkeypatch.setenv("ROBVAE_MNIST_URL", "http://127.0.0.1:9/")  # were a download tried: never the network
    folder = tmp_path / "d" / layout
    make_split(folder, "test", 3, gz=True)
    data_dir = tmp_path / "d" if given == "root" else folder
    with pytest.raises(DataError, match=r"(another data set's|says it holds (fashion-mnist|kmnist|emnist), not mnist)"):
        load_mnist("test", data_dir)
    with pytest.raises(DataError, match=r"says it holds fashion-mnist, not mnist"):
        load_mnist("test", tmp_path / "d" / "fashion-mnist", download=True)  # refused before any download
    assert not (tmp_path / "d" / "fashion-mnist").exists()


@pytest.mark.parametrize("layout", ["shared/data/mnist-10k", "data", "tv/MNIST/raw", "usr/share/datasets/fashion-mnist"])
def test_legitimate_folder_names_are_read(tmp_path, layout):
    folder = tmp_path / layout
    make_split(folder, "test", 3, gz=True)
    load = load_fashion_mnist if "fashion" in layout else load_mnist
    assert len(load("test", folder)) == 3 and len(load("test", folder.parent)) == 3
    other = load_mnist if load is load_fashion_mnist else load_fashion_mnist
    if layout != "data":
        with pytest.raises(DataError, match="says it holds"):
            other("test", folder)


@pytest.mark.parametrize("name,given,layout,expect", [
    # review h64: refused since the given folder's own name was checked first; the nearest name wins
    ("mnist", "fashion-mnist", ["fashion-mnist/data/fashion", "fashion-mnist/data/mnist"], "fashion-mnist/data/mnist"),
    ("fashion-mnist", "datasets/mnist", ["datasets/mnist/fashion", "datasets/mnist/digits"], "datasets/mnist/fashion"),
    ("mnist", "qmnist-compat", ["qmnist-compat/mnist"], "qmnist-compat/mnist"),
    ("mnist", "emnist-and-mnist", ["emnist-and-mnist"], "emnist-and-mnist"),  # names two: none
])
def test_a_subfolder_naming_the_data_set_wins_over_the_given_folders_name(tmp_path, name, given, layout, expect):
    for k, folder in enumerate(layout):
        make_split(tmp_path / folder, "test", 3 + k, gz=True)
    load = load_mnist if name == "mnist" else load_fashion_mnist
    assert len(load("test", tmp_path / given)) == 3 + layout.index(expect)


def test_a_gzip_bomb_and_a_wrapping_header_are_refused_without_reading_them(tmp_path):
    """Found by an audit: a 2 MB .gz of zeros inflated to 2 GiB in memory before the header was
    checked, and dimensions whose product wraps in int64 passed as 0 bytes."""
    import zlib

    huge = struct.pack(">I", 0x803) + struct.pack(">3I", 1 << 31, 1 << 31, 4)
    path = tmp_path / "wrap-images-idx3-ubyte"
    path.write_bytes(huge)
    with pytest.raises(DataError, match=r"wrap-images.*declares 18446744073709551616 bytes"):
        read_idx(path)
    # a valid header for 16 images followed by 64 MiB of zeros, compressed to ~64 KiB
    comp = zlib.compressobj(9, zlib.DEFLATED, 31)
    body = [comp.compress(idx_bytes(np.zeros((16, 28, 28), np.uint8)))]
    zeros = bytes(1 << 20)
    body += [comp.compress(zeros) for _ in range(64)]
    path = tmp_path / "bomb.gz"
    path.write_bytes(b"".join(body) + comp.flush())
    assert path.stat().st_size < 1 << 20
    with pytest.raises(DataError, match=r"bomb.gz: 65536 or more extra bytes after the payload"):
        read_idx(path, 0x803)


def test_cli_download_of_fashion_mnist_uses_the_installed_package_folder(tmp_path, monkeypatch):
    """Found by an audit: `--download` for Fashion-MNIST always fetched into the cache (and failed
    offline) although the library reads Debian's package folder first."""
    from robvae.cli import options

    system = tmp_path / "system"
    make_split(system, "train", 3, gz=True)
    make_split(system, "test", 2, gz=True)
    monkeypatch.setattr(options, "FASHION_MNIST_SYSTEM_DIR", system)
    monkeypatch.setattr(options, "load_dataset", lambda *a, **k: pytest.fail("nothing to download"))
    assert options.fetch_data("fashion-mnist", None) == str(system)


def test_a_header_declaring_too_many_items_is_refused_before_reading(tmp_path):
    """Found by an audit: a small gzip declaring a huge header was inflated before anything was
    refused; the header's item count is capped beside its bytes (at 10,000,000: a review found a
    cap of 1,000,000 refused a legitimate 1.2M-item labels file)."""
    path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(gzip.compress(struct.pack(">II", 0x801, 10_000_001)))
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte.gz: header \(10000001,\) declares 10,000,001 "
                                        r"items, more than robvae reads \(10,000,000\)"):
        read_idx(path, 0x801)
    path.write_bytes(gzip.compress(struct.pack(">II", 0x801, 1_200_000) + bytes(1_200_000)))
    assert read_idx(path, 0x801).shape == (1_200_000,)


def test_a_raw_file_is_not_read_whole_before_its_header(tmp_path):
    """Found by an audit: a raw (not gzip) file was read into memory whole before its 4-byte header
    was looked at: 1 GiB of RAM to be told "bad magic"."""
    import tracemalloc

    path = tmp_path / "t10k-images-idx3-ubyte"
    with open(path, "wb") as f:
        f.truncate(64 << 20)  # 64 MiB of zeros (sparse: costs no disk)
    tracemalloc.start()
    try:
        with pytest.raises(DataError, match="bad IDX magic number 0x00000000"):
            read_idx(path, 0x803)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20
