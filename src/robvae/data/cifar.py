"""CIFAR-10 from the standard ``cifar-10-batches-py`` folder (the "python version").

The folder holds ``data_batch_1`` .. ``data_batch_5`` (train) and ``test_batch`` (test), each a
Python 2 pickle (protocol 2) of a dict with ``b"data"``: uint8 [N, 3072] (1,024 red, then green,
then blue values per image, rows in order) and ``b"labels"``: a list of N ints in 0..9.

Pickles can run arbitrary code, so they are read ONLY through ``RestrictedUnpickler``, whose
``find_class`` admits the handful of numpy globals needed to rebuild an array (and
``_codecs.encode`` for latin-1 text only, which Python 3 writes for bytes in protocol 2) and refuses every
other global (``DataError`` naming the file and the global) before anything is called. The numpy
globals are wrapped too, so that no pickle makes numpy allocate more than the pickle itself
holds: ``_reconstruct`` only as numpy calls it (an empty array), dtypes only numeric ones (no
object arrays), and an array's state only with raw bytes exactly as long as its shape. CIFAR-10
is not bundled and cannot be downloaded by robvae: point ``data_dir`` at a folder holding the
extracted ``cifar-10-batches-py``.
"""

from __future__ import annotations

import io
import math
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import DataError
from .base import ImageDataset

CIFAR_FOLDER = "cifar-10-batches-py"
CIFAR_BATCHES: dict[str, tuple[str, ...]] = {
    "train": tuple(f"data_batch_{i}" for i in range(1, 6)),
    "test": ("test_batch",),
}
SPLITS = tuple(CIFAR_BATCHES)
CIFAR_SHAPE = (3, 32, 32)
_PIXELS = 3 * 32 * 32


try:  # numpy >= 2 keeps it in numpy._core; numpy.core is a deprecated alias there
    from numpy._core.multiarray import _reconstruct as _np_reconstruct
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core.multiarray import _reconstruct as _np_reconstruct


class _Refused(Exception):
    """A pickle asks for something a CIFAR batch never holds (the message, without the file)."""


def _latin1_encode(text: Any, encoding: str = "utf-8") -> bytes:
    """What ``_codecs.encode`` does for a protocol-2 pickle written by Python 3 (bytes are stored
    as ``_codecs.encode(str, "latin1")``), and nothing else: a str, the latin-1 codec only."""
    if not isinstance(text, str) or str(encoding).lower().replace("_", "-") not in ("latin1", "latin-1", "iso-8859-1"):
        raise _Refused(f"refusing _codecs.encode({type(text).__name__}, {encoding!r}) in the pickle "
                       "(only latin-1 strings are allowed)")
    return text.encode("latin-1")


#: the kinds of dtype a CIFAR batch's arrays may have: bool, signed and unsigned integers, floats
_NUMERIC_KINDS = "biuf"


def _numeric_dtype(obj: Any, what: str) -> np.dtype:
    """``obj`` as a plain numeric dtype (no objects, fields or subarrays); else _Refused."""
    dtype = obj if isinstance(obj, np.dtype) else None
    if dtype is None or dtype.kind not in _NUMERIC_KINDS or dtype.hasobject or dtype.fields or dtype.subdtype:
        raise _Refused(f"refusing {what} {obj!r} in the pickle (a CIFAR batch holds numeric arrays only)")
    return dtype


def _dtype(spec: Any, *flags: Any) -> np.dtype:
    """``numpy.dtype(spec, align, copy)`` as pickles call it, for numeric type codes only."""
    if not isinstance(spec, (str, bytes)) or len(spec) > 8 or len(flags) > 2 or not all(
            isinstance(f, (bool, int)) for f in flags):
        raise _Refused(f"refusing numpy.dtype{(spec, *flags)!r} in the pickle")
    try:
        dtype = np.dtype(spec.decode("latin-1") if isinstance(spec, bytes) else spec, *map(bool, flags))
    except (TypeError, ValueError) as err:
        raise _Refused(f"refusing numpy.dtype({spec!r}) in the pickle ({err})") from None
    return _numeric_dtype(dtype, "the dtype")


class _CheckedArray(np.ndarray):
    """The array type the pickle's arrays are rebuilt as: its ``__setstate__`` (the pickle's
    BUILD) checks the state, numeric dtype and raw bytes exactly as long as the shape needs, before
    numpy allocates anything. ``read_cifar_batch`` turns them back into plain arrays."""

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise _Refused("refusing an array state that is not numpy's (version, shape, dtype, fortran, data)")
        shape, dtype, _, data = state[-4:]
        if not isinstance(shape, tuple) or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise _Refused(f"refusing an array of shape {shape!r} in the pickle")
        dtype = _numeric_dtype(dtype, "an array of dtype")
        if not isinstance(data, bytes) or len(data) != math.prod(shape) * dtype.itemsize:
            size = len(data) if isinstance(data, (bytes, list)) else type(data).__name__
            raise _Refused(f"refusing an array of shape {shape} {dtype} with {size} bytes of data in the pickle")
        # numpy's own dtype of that type code, not the pickle's object: a later BUILD on that
        # (memoized) object could still turn its flags to "holds objects" behind this check
        super().__setstate__((*state[:-3], np.dtype(dtype.str), *state[-2:]))


class _NdarrayName:
    """What the pickle's ``numpy.ndarray`` resolves to: only a name for ``_reconstruct``'s first
    argument, never called (``ndarray((N,))`` would allocate N items)."""

    def __repr__(self) -> str:
        return "numpy.ndarray"


_NDARRAY = _NdarrayName()


def _reconstruct_empty(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
    """``numpy._reconstruct(ndarray, (0,), b"b")``, the empty array every pickled array starts
    as (its ``__setstate__`` then fills it), and nothing else: numpy would allocate any shape."""
    if subtype is not _NDARRAY or shape != (0,) or not (dtype in (b"b", "b") or isinstance(dtype, np.dtype)):
        raise _Refused(f"refusing numpy _reconstruct({subtype!r}, {shape!r}, "
                       f"{dtype!r}) in the pickle (numpy writes (ndarray, (0,), b'b'))")
    if isinstance(dtype, np.dtype):
        _numeric_dtype(dtype, "an array of dtype")
    return _np_reconstruct(_CheckedArray, (0,), dtype)


#: (module, name) -> the object; the complete list of globals a CIFAR batch may name.
def _allowed() -> dict[tuple[str, str], Any]:
    return {
        ("numpy.core.multiarray", "_reconstruct"): _reconstruct_empty,
        ("numpy._core.multiarray", "_reconstruct"): _reconstruct_empty,
        ("numpy", "ndarray"): _NDARRAY,
        ("numpy", "dtype"): _dtype,
        # protocol 2 written by Python 3 stores bytes as _codecs.encode(text, "latin1")
        ("_codecs", "encode"): _latin1_encode,
    }


class RestrictedUnpickler(pickle.Unpickler):
    """An Unpickler that resolves only numpy's array-rebuilding globals; anything else -> DataError."""

    def __init__(self, file: io.BufferedIOBase, source: str = "<pickle>") -> None:
        super().__init__(file, encoding="bytes")
        self.source = source
        self._allowed = _allowed()

    def find_class(self, module: str, name: str) -> Any:  # noqa: D102
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise DataError(
                f"{self.source}: refusing to unpickle the forbidden global {module}.{name} "
                "(a CIFAR batch may only hold numpy arrays)"
            ) from None

    def persistent_load(self, pid: Any) -> Any:  # noqa: D102
        raise DataError(f"{self.source}: refusing a persistent id in the pickle")


def restricted_load(path: str | os.PathLike) -> Any:
    """Unpickle ``path`` through ``RestrictedUnpickler``; every failure is a DataError naming it."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            return RestrictedUnpickler(f, str(path)).load()
    except DataError:
        raise
    except _Refused as err:
        raise DataError(f"{path}: {err}") from None
    except OSError as err:
        raise DataError(f"{path}: cannot read ({err.strerror or err})") from err
    except (pickle.UnpicklingError, EOFError) as err:
        raise DataError(f"{path}: not a valid pickle, or truncated ({err or type(err).__name__})") from err
    except Exception as err:  # malformed arguments to the allowed numpy globals, bad opcodes, ...
        raise DataError(f"{path}: corrupt pickle ({type(err).__name__}: {err})") from err


def read_cifar_batch(path: str | os.PathLike, num_classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """One batch file -> (uint8 [N, 3072], int64 [N]), with keys, shapes and labels validated."""
    path = Path(path)
    obj = restricted_load(path)
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a dict, found {type(obj).__name__}")
    entries = {(k.decode("latin-1") if isinstance(k, bytes) else k): v for k, v in obj.items()}
    for key in ("data", "labels"):
        if key not in entries:
            raise DataError(f"{path}: missing key b{key!r} (keys: {sorted(map(str, entries))})")
    data, labels = entries["data"], entries["labels"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != _PIXELS:
        desc = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"{path}: b'data' must be uint8 [N, {_PIXELS}], found {desc}")
    if not isinstance(labels, (list, np.ndarray)):
        raise DataError(f"{path}: b'labels' must be a list of ints, found {type(labels).__name__}")
    if isinstance(labels, np.ndarray) and labels.ndim != 1:
        raise DataError(f"{path}: b'labels' must be 1-D (one label per image), found an array of shape {labels.shape}")
    data = data.view(np.ndarray)  # the checked arrays of the unpickler, as plain ones
    if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in labels):
        raise DataError(f"{path}: b'labels' holds values that are not integers")
    huge = [int(v) for v in labels if not -2**62 < int(v) < 2**62]  # numpy's int64 would overflow
    if huge:
        raise DataError(f"{path}: labels out of range 0..{num_classes - 1} (a label of {huge[0]})")
    y = np.asarray(labels, dtype=np.int64).reshape(-1)
    if y.shape[0] != data.shape[0]:
        raise DataError(f"{path}: {y.shape[0]} labels for {data.shape[0]} images")
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        raise DataError(f"{path}: labels out of range 0..{num_classes - 1} (min {y.min()}, max {y.max()})")
    if data.shape[0] == 0:
        raise DataError(f"{path}: holds no images")
    return data, y


def find_cifar_dir(data_dir: str | os.PathLike) -> Path | None:
    """The folder holding the batch files: ``data_dir`` itself or ``data_dir/cifar-10-batches-py``."""
    root = Path(data_dir)
    for folder in (root, root / CIFAR_FOLDER):
        if any((folder / b).is_file() for names in CIFAR_BATCHES.values() for b in names):
            return folder
    return None


def load_cifar10(split: str = "train", data_dir: str | os.PathLike | None = None,
                 download: bool = False) -> ImageDataset:
    """CIFAR-10 as float32 [N, 3, 32, 32] in [0, 1] from an extracted ``cifar-10-batches-py``."""
    if split not in CIFAR_BATCHES:
        raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
    how = ("pass --data-dir DIR pointing at the extracted cifar-10-batches-py folder (or its parent), "
           "from the python version of CIFAR-10")
    extra = " (download is not supported for cifar10)" if download else ""
    if data_dir is None:
        raise DataError(f"cifar10: no data folder given{extra}; {how}")
    folder = find_cifar_dir(data_dir)
    if folder is None:
        raise DataError(f"cifar10: no {CIFAR_FOLDER} batch files in {data_dir}{extra}; {how}")
    parts = []
    for batch in CIFAR_BATCHES[split]:
        path = folder / batch
        if not path.is_file():
            raise DataError(f"{path}: missing (cifar10 {split} needs {', '.join(CIFAR_BATCHES[split])})")
        parts.append(read_cifar_batch(path))
    data, labels = (np.concatenate(arrays) for arrays in zip(*parts))
    x = torch.from_numpy(data.reshape(-1, *CIFAR_SHAPE).astype(np.float32) / np.float32(255.0))
    return ImageDataset(x, torch.from_numpy(labels), "cifar10", split)
