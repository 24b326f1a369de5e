"""The IDX format of MNIST and Fashion-MNIST, gzip-compressed or raw.

An IDX file is a 4-byte magic number (two zero bytes, a type code, the number of dimensions),
one big-endian uint32 per dimension, then the values in C order. MNIST images have magic
0x00000803 (uint8, 3 dims: count, rows, cols) and labels 0x00000801 (uint8, 1 dim: count).
Compression is detected from the gzip magic bytes (1f 8b), never from the file name. Every
problem (bad magic, truncated or over-long payload, image/label count mismatch, labels out of
range) raises ``DataError`` naming the file.
"""

from __future__ import annotations

import gzip
import io
import math
import os
import re
import zlib
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from . import download as _download
from .base import ImageDataset

IDX_IMAGES_MAGIC = 0x00000803
IDX_LABELS_MAGIC = 0x00000801
GZIP_MAGIC = b"\x1f\x8b"

#: Where Debian's ``dataset-fashion-mnist`` package puts the four official .gz files.
FASHION_MNIST_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")

#: IDX type codes -> big-endian numpy dtypes.
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}

#: Base file names per split (images, labels): the downloaded names less ".gz" (a file may end in .gz or not).
IDX_NAMES: dict[str, tuple[str, ...]] = {
    split: tuple(name.removesuffix(".gz") for name in names) for split, names in _download.IDX_FILES.items()}
SPLITS = tuple(IDX_NAMES)
_SEARCH_DEPTH = 3  # how many levels of subfolders are searched for the files


#: the largest IDX payload read (bytes): 20x the 47 MB of MNIST's training images; a header that
#: declares more is refused before anything is decompressed or allocated
MAX_IDX_BYTES = 1 << 30

#: the most items (images or labels: the header's first dimension) read, a bound on absurd headers
#: (a labels file's bytes are its items): 10,000,000, 12x EMNIST's largest split; a header that
#: declares more is refused before anything is decompressed or allocated
MAX_IDX_ITEMS = 10_000_000


def _open(path: Path) -> io.BufferedIOBase:
    """The file as a stream: gzip (detected from its first bytes) decompressed on the fly. Nothing
    is read beyond what is asked for, so a header is checked before the payload costs anything."""
    try:
        raw = open(path, "rb")  # noqa: SIM115 - returned, closed by the caller
    except OSError as err:
        raise DataError(f"{path}: cannot read ({err.strerror or err})") from err
    try:
        gz = raw.peek(2)[:2] == GZIP_MAGIC
    except OSError as err:
        raw.close()
        raise DataError(f"{path}: cannot read ({err.strerror or err})") from err
    return gzip.GzipFile(fileobj=raw) if gz else raw


def _read(stream: io.BufferedIOBase, n: int, path: Path) -> bytes:
    try:
        return stream.read(n)
    except EOFError as err:
        raise DataError(f"{path}: truncated gzip stream ({err})") from err
    except (gzip.BadGzipFile, zlib.error, OSError) as err:
        raise DataError(f"{path}: corrupt gzip data ({err})") from err


def read_idx(path: str | os.PathLike, expected_magic: int | None = None) -> np.ndarray:
    """Read one IDX file (gzip or raw) into a numpy array of the shape its header gives.

    ``expected_magic`` (e.g. ``IDX_IMAGES_MAGIC``) is checked when given. The payload must be
    exactly as long as the header says: truncated files and trailing bytes are both refused, and
    so is a header declaring more than :data:`MAX_IDX_ITEMS` items or :data:`MAX_IDX_BYTES` bytes
    (checked before the payload is read).
    """
    path = Path(path)
    stream = _open(path)
    try:
        return _read_idx(stream, path, expected_magic)
    finally:
        if isinstance(stream, gzip.GzipFile):
            stream.fileobj.close()  # GzipFile does not close a file object it was given
        stream.close()


def _read_idx(stream: io.BufferedIOBase, path: Path, expected_magic: int | None) -> np.ndarray:
    head = _read(stream, 4, path)
    if len(head) < 4:
        raise DataError(f"{path}: {len(head)} bytes, too short for an IDX header (4-byte magic number)")
    magic = int.from_bytes(head, "big")
    if expected_magic is not None and magic != expected_magic:
        raise DataError(f"{path}: bad IDX magic number 0x{magic:08x}, expected 0x{expected_magic:08x}")
    zeros, type_code, ndim = head[0:2], head[2], head[3]
    if zeros != b"\x00\x00" or type_code not in _IDX_DTYPES or ndim == 0:
        raise DataError(f"{path}: not an IDX file (magic number 0x{magic:08x})")
    dim_bytes = _read(stream, 4 * ndim, path)
    if len(dim_bytes) < 4 * ndim:
        raise DataError(f"{path}: truncated IDX header ({4 + len(dim_bytes)} bytes, {ndim} dimensions need "
                        f"{4 + 4 * ndim})")
    dims = tuple(int.from_bytes(dim_bytes[i : i + 4], "big") for i in range(0, 4 * ndim, 4))
    dtype = np.dtype(_IDX_DTYPES[type_code])
    expected = math.prod(dims) * dtype.itemsize  # exact (numpy's int64 product can wrap)
    if expected > MAX_IDX_BYTES:
        raise DataError(f"{path}: header {dims} declares {expected} bytes of data, more than robvae reads "
                        f"({MAX_IDX_BYTES}); not an image data set file?")
    if dims[0] > MAX_IDX_ITEMS:
        raise DataError(f"{path}: header {dims} declares {dims[0]:,} items, more than robvae reads "
                        f"({MAX_IDX_ITEMS:,}); not an image data set file?")
    payload = _read(stream, expected, path)
    if len(payload) < expected:
        raise DataError(f"{path}: truncated payload: {len(payload)} bytes, header {dims} needs {expected}")
    extra = _read(stream, 1 << 16, path)
    if extra:
        more = "" if len(extra) < 1 << 16 else " or more"
        raise DataError(f"{path}: {len(extra)}{more} extra bytes after the payload of {dims} ({expected} bytes)")
    return np.frombuffer(payload, dtype=dtype).reshape(dims)


def read_idx_pair(
    images_path: str | os.PathLike,
    labels_path: str | os.PathLike,
    image_shape: tuple[int, int] | None = (28, 28),
    num_classes: int = 10,
) -> tuple[np.ndarray, np.ndarray]:
    """Images uint8 [N, rows, cols] and labels int64 [N], validated against each other."""
    images = read_idx(images_path, IDX_IMAGES_MAGIC)
    labels = read_idx(labels_path, IDX_LABELS_MAGIC)
    if images.shape[0] == 0:
        raise DataError(f"{images_path}: holds no images")
    if image_shape is not None and tuple(images.shape[1:]) != tuple(image_shape):
        raise DataError(f"{images_path}: images are {images.shape[1]}x{images.shape[2]}, expected "
                        f"{image_shape[0]}x{image_shape[1]}")
    if labels.shape[0] != images.shape[0]:
        raise DataError(f"{labels_path}: {labels.shape[0]} labels but {images_path} holds "
                        f"{images.shape[0]} images")
    if labels.size and int(labels.max()) >= num_classes:
        raise DataError(f"{labels_path}: label {int(labels.max())} out of range 0..{num_classes - 1}")
    return images, labels.astype(np.int64)


def _candidates(folder: Path, base: str) -> list[Path]:
    # the official names, then the variant some mirrors use ("train-images.idx3-ubyte")
    variant = base.replace("-idx", ".idx")
    return [folder / (stem + suffix) for stem in (base, variant) for suffix in (".gz", "")]


def _search_dirs(root: Path) -> list[Path]:
    dirs = [root]
    frontier = [root]
    for _ in range(_SEARCH_DEPTH):
        nxt = []
        for d in frontier:
            try:
                nxt.extend(sorted(p for p in d.iterdir() if p.is_dir() and not p.name.startswith(".")))
            except OSError:
                continue
        dirs.extend(nxt)
        frontier = nxt
    return dirs


def find_idx_files(data_dir: str | os.PathLike, split: str, name: str | None = None, *,
                   partial_ok: bool = False) -> tuple[Path, Path] | None:
    """(images, labels) paths of ``split`` in ``data_dir`` or its subfolders; None when absent.

    Both files must sit in the same folder. ``data_dir`` itself wins when it holds both. MNIST and
    Fashion-MNIST use the same file names, so with the data set's ``name`` the folders' names are
    read (:func:`folder_names_dataset`), the nearest name deciding: a ``data_dir`` whose name (or,
    for torchvision's ``<root>/FashionMNIST/raw``, its parent's) says it holds another data set is
    refused (DataError), even when it holds no files yet, unless a subfolder below it names this
    data set and holds its files (a clone holding ``mnist/`` and ``fashion/``); below it, a subfolder whose path names another
    data set (``fashion-mnist/``, ``FashionMNIST/``, ``kmnist/`` when MNIST is asked for,
    ``mnist/`` for Fashion-MNIST) is never taken; one that names this data set is preferred over
    one that names none; among the rest the shallowest wins, and a tie is refused naming the
    folders. Raises DataError when a folder holds one of the two files but no folder holds both,
    unless ``partial_ok`` (then None: ``--download`` fetches the missing one).
    """
    if split not in IDX_NAMES:
        raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
    root = Path(data_dir)
    verdict, where, says = _verdict(root, root, name) if name is not None else (None, None, None)
    image_base, label_base = IDX_NAMES[split]
    half: tuple[Path, str] | None = None
    found: list[tuple[Path, Path, Path]] = []  # (folder, images, labels), shallowest first
    for folder in _search_dirs(root) if root.is_dir() else []:
        images = next((p for p in _candidates(folder, image_base) if p.is_file()), None)
        labels = next((p for p in _candidates(folder, label_base) if p.is_file()), None)
        if images and labels:
            if name is None or (folder == root and verdict is not False):
                return images, labels
            found.append((folder, images, labels))
        elif half is None and (images or labels):
            half = (images, label_base) if images else (labels, image_base)  # type: ignore[assignment]
    if verdict is False and not any(_names(f[0], root, name) for f in found):
        # nothing below a folder named after another data set names this one: refused (also before
        # a download into it); a subfolder that does name it (a clone holding mnist/ and fashion/) wins
        inside = "its name" if where == root else f"its parent {where}'s name"
        raise DataError(f"{root}: {inside} says it holds {says}, not {name} (the IDX files of the two have the same "
                        f"names); pass the folder of {name}'s files as --data-dir")
    if found:
        return _pick(found, root, split, name)
    if half is not None and not partial_ok:
        raise DataError(f"{half[0]}: found, but its partner {half[1]}(.gz) is missing from {half[0].parent}")
    return None


#: folder names of other data sets stored as IDX files: (prefix before "mnist", the data set)
_OTHER_MNISTS = {"k": "kmnist", "e": "emnist", "q": "qmnist", "not": "notmnist"}

#: a folder with this name is read with its parent's name (torchvision keeps the IDX files in
#: ``<root>/MNIST/raw`` and ``<root>/FashionMNIST/raw``)
_PARENT_NAMED = ("raw",)


def folder_names_dataset(folder_name: str) -> str | None:
    """The IDX data set a folder's name names: "mnist", "fashion-mnist", another one ("kmnist",
    "emnist", "qmnist", "notmnist") or None. Names are matched inside words: ``FashionMNIST``,
    ``fashion_mnist`` and ``fmnist`` are Fashion-MNIST, ``mnist-10k`` and ``MNIST`` are MNIST; a
    plain "mnist" beside "fashion" is Fashion-MNIST (``MNIST-Fashion``); any other name naming two
    data sets (``emnist-and-mnist``) names none."""
    low = re.sub(r"(fashion|kuzushiji)[-_ .]*(?=mnist)", r"\1", folder_name.lower())  # fashion-mnist: one word
    kinds = set()
    for word in re.findall(r"[a-z]*mnist|fashion|kuzushiji", low):
        prefix = word.removesuffix("mnist")
        if prefix.endswith("fashion") or prefix == "f":
            kinds.add("fashion-mnist")
        elif prefix.endswith("kuzushiji"):
            kinds.add("kmnist")
        elif prefix in _OTHER_MNISTS:
            kinds.add(_OTHER_MNISTS[prefix])
        else:
            kinds.add("mnist")
    if kinds == {"mnist", "fashion-mnist"}:  # "MNIST-Fashion", "mnist_fashion": Fashion-MNIST
        kinds = {"fashion-mnist"}
    return kinds.pop() if len(kinds) == 1 else None  # a name naming two data sets says nothing


def _verdict(folder: Path, root: Path, name: str) -> tuple[bool | None, Path | None, str | None]:
    """Whether ``folder`` (``root`` or below it) holds data set ``name`` by the nearest folder name
    that names an IDX data set, looking up to ``root`` (and ``root``'s parent when ``root`` is
    called ``raw``): (True / False / None when none names one, that folder, what it names)."""
    chain = []
    while folder != root and folder != folder.parent:  # folder .. the child of root
        chain.append(folder)
        folder = folder.parent
    chain.append(root)
    top = Path(os.path.abspath(root))  # "." and ".." have names too
    if top.name.lower() in _PARENT_NAMED and top.parent != top:
        chain.append(top.parent)
    for where in chain:
        says = folder_names_dataset(Path(os.path.abspath(where)).name)
        if says is not None:
            return says == name, where, says
    return None, None, None


def _names(folder: Path, root: Path, name: str | None) -> bool | None:
    """Whether ``folder``'s path (below and up to ``root``) names data set ``name`` (True), another
    IDX data set (False) or none (None)."""
    return None if name is None else _verdict(folder, root, name)[0]


def _pick(found: list[tuple[Path, Path, Path]], root: Path, split: str, name: str | None) -> tuple[Path, Path]:
    verdicts = [_names(f[0], root, name) for f in found]
    for want in (True, None):
        group = [f for f, v in zip(found, verdicts) if v is want]
        if group:
            depth = len(group[0][0].relative_to(root).parts)
            tied = [f for f in group if len(f[0].relative_to(root).parts) == depth]
            if len(tied) > 1:
                raise DataError(f"{name} {split}: several folders under {root} hold its IDX files "
                                f"({', '.join(str(f[0]) for f in tied)}); pass the one you mean as --data-dir")
            return tied[0][1], tied[0][2]
    others = ", ".join(str(f[0]) for f in found)
    raise DataError(f"{name} {split}: the only IDX files under {root} are in {others}, whose name says they are "
                    "another data set's (MNIST and Fashion-MNIST files have the same names); pass the folder of "
                    f"{name}'s files as --data-dir")


def load_idx_dataset(data_dir: str | os.PathLike, split: str, name: str) -> ImageDataset:
    """Load a split from a folder of IDX files as float32 [N, 1, 28, 28] in [0, 1]."""
    found = find_idx_files(data_dir, split, name)
    if found is None:
        raise DataError(_missing_message(name, Path(data_dir), split))
    images, labels = read_idx_pair(*found)
    x = torch.from_numpy(images.astype(np.float32) / np.float32(255.0)).unsqueeze(1)
    return ImageDataset(x, torch.from_numpy(labels), name, split)


def _missing_message(name: str, folder: Path, split: str) -> str:
    wanted = " and ".join(f"{b}(.gz)" for b in IDX_NAMES[split])
    if folder.is_dir():
        where = f"no {wanted} in {folder} or its subfolders"
    else:
        where = f"{folder} is not a folder" if folder.exists() else f"folder {folder} does not exist"
    return f"{name} {split} files not found: {where}; pass --data-dir DIR or download=True (--download)"


def _load(name: str, split: str, data_dir: Path, download: bool) -> ImageDataset:
    if not download:
        return load_idx_dataset(data_dir, split, name)
    # an unknown split, or a folder named after another data set, is refused here, before any download;
    # one file of the pair without the other (a download stopped half way) is fetched below
    damage: DataError | None = None
    if find_idx_files(data_dir, split, name, partial_ok=True) is not None:
        try:
            return load_idx_dataset(data_dir, split, name)
        except DataError as err:  # damaged (cut short, corrupt): the official files are fetched again
            damage = err
    _refuse_replacing_own_files(name, split, data_dir, damage)
    _download.download_dataset(name, data_dir, (split,))  # keeps the files that pass their checksums
    return load_idx_dataset(data_dir, split, name)


def _refuse_replacing_own_files(name: str, split: str, data_dir: Path, damage: DataError | None) -> None:
    """Before ``--download`` fetches the files of ``split`` into ``data_dir``: it replaces only
    missing files, official ones that fail their checksums and files that cannot be read as IDX. A
    readable IDX file that is not the official one is the user's own: it is kept and nothing is
    fetched to pair with it (DataError naming it)."""
    table = _download.CHECKSUMS[name]
    own: list[Path] = []
    fetch: list[str] = []  # why each file is fetched
    for base, magic, file_name in zip(IDX_NAMES[split], (IDX_IMAGES_MAGIC, IDX_LABELS_MAGIC),
                                      _download.IDX_FILES[split]):
        present = next((p for p in _candidates(data_dir, base) if p.is_file()), None)
        if present is None:
            fetch.append(f"{file_name} is missing")
            continue
        if present.name == file_name and file_name in table and _download.matches_checksum(present, table[file_name]):
            continue  # the official file
        try:
            read_idx(present, magic)
        except DataError as err:
            fetch.append(f"its partner is damaged ({err})")
            continue
        own.append(present)
    if own and fetch:
        raise DataError(f"{own[0]}: not the official {name} file, so --download keeps it (it replaces only missing or "
                        f"damaged files), but {fetch[0]}; repair that yourself, or move {own[0].name} away to "
                        f"download the official {split} files")
    if not fetch and damage is not None:  # nothing a download would change (e.g. two own files that disagree)
        raise damage


def load_mnist(split: str = "train", data_dir: str | os.PathLike | None = None,
               download: bool = False) -> ImageDataset:
    """MNIST from a folder of IDX files (any folder holding the standard names, .gz or raw).

    With ``download=True`` the missing files of ``split`` are fetched first (into ``data_dir``,
    or ``default_data_dir("mnist")`` when it is None) from $ROBVAE_MNIST_URL or the official
    mirror, and checked against ``download.CHECKSUMS["mnist"]``.
    """
    if data_dir is None:
        if not download:
            raise DataError("mnist: no data folder given; pass --data-dir DIR (a folder holding the MNIST "
                            "IDX files) or download=True (--download)")
        data_dir = _download.default_data_dir("mnist")
    return _load("mnist", split, Path(data_dir), download)


def load_fashion_mnist(split: str = "train", data_dir: str | os.PathLike | None = None,
                       download: bool = False) -> ImageDataset:
    """Fashion-MNIST from a folder of IDX files.

    With ``data_dir`` None it is read from ``/usr/share/datasets/fashion-mnist`` (Debian package
    ``dataset-fashion-mnist``); failing that, ``download=True`` fetches it into
    ``default_data_dir("fashion-mnist")``.
    """
    if data_dir is None:
        if find_idx_files(FASHION_MNIST_SYSTEM_DIR, split, "fashion-mnist") is not None or not download:
            if not FASHION_MNIST_SYSTEM_DIR.is_dir():
                raise DataError(f"fashion-mnist: {FASHION_MNIST_SYSTEM_DIR} does not exist; install the Debian "
                                "package dataset-fashion-mnist, pass --data-dir DIR or download=True (--download)")
            data_dir = FASHION_MNIST_SYSTEM_DIR
        else:
            data_dir = _download.default_data_dir("fashion-mnist")
    return _load("fashion-mnist", split, Path(data_dir), download)
