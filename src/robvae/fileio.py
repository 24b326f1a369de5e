"""Atomic file writes and safe reads for run folders (JSON configs, safetensors weights, CSV)."""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import math
import os
import socket
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from .errors import CheckpointError, InputError, LockError

try:  # POSIX; elsewhere the lock's check-and-take is not serialised (see _guard)
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()  # read once: os.umask is process-wide and not thread-safe to probe


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to a temporary file in the same folder, fsync, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the usual permissions
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.filename is None:  # a full disk: "[Errno 28] No space left on device"
            raise OSError(e.errno, f"{e.strerror or e}: writing {path}") from e  # names the file (audit h80)
        raise
    return path


def remove_stale_temporaries(folder: str | os.PathLike, names: Sequence[str]) -> int:
    """Delete the temporary files :func:`atomic_write_bytes` left for ``names`` in ``folder`` when
    its process was killed between writing and renaming (the caller owns those files: one robvae
    process per folder). Returns how many were removed."""
    folder = Path(folder)
    gone = 0
    for name in names:
        for tmp in folder.glob(f".{name}.*.tmp"):
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
                gone += 1
    return gone


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as strict JSON (RFC 8259), atomically: NaN and +-inf become null (bare
    ``NaN`` / ``Infinity`` are not JSON and break other readers); tuples, paths, numpy and torch
    scalars and arrays are converted."""
    return atomic_write_text(path, dumps_json(obj) + "\n")


def dumps_json(obj: Any, **kwargs: Any) -> str:
    """``obj`` as strict JSON text (non-finite floats as null); kwargs go to json.dumps."""
    kwargs.setdefault("indent", 2)
    kwargs.setdefault("sort_keys", True)
    return json.dumps(_strict(obj), allow_nan=False, **kwargs)


def _strict(o: Any) -> Any:
    """A JSON tree of plain types with every non-finite float replaced by None (paths as strings,
    sets as lists, numpy / torch scalars and arrays as numbers and lists)."""
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if isinstance(o, (str, int, bool)) or o is None:
        return o
    if isinstance(o, Mapping):
        return {(k if isinstance(k, str) else str(k)): _strict(v) for k, v in o.items()}
    if isinstance(o, (list, tuple, set, frozenset)):
        return [_strict(v) for v in o]
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "item") and getattr(o, "ndim", 0) == 0:
        return _strict(o.item())
    if hasattr(o, "tolist"):
        return _strict(o.tolist())
    raise TypeError(f"cannot write {type(o).__name__} as JSON")


def hash_arrays(h: Any, named: Iterable[tuple[str, Any]]) -> Any:
    """Feed every (name, tensor or numpy array) into the hashlib object ``h`` — its name, dtype,
    shape and bytes (bfloat16 and 0-dim tensors included) — and return ``h``: the one content
    digest behind the caches and result files keyed by weights or inputs."""
    for name, t in named:
        if isinstance(t, torch.Tensor):
            t = t.detach().cpu().contiguous()
            dtype, shape = str(t.dtype), tuple(t.shape)
            data = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
        else:
            a = np.ascontiguousarray(t)
            dtype, shape, data = a.dtype.str, a.shape, a.tobytes()
        h.update(f"{name}:{dtype}:{shape};".encode())
        h.update(data)
    return h


def read_json(path: str | os.PathLike, what: str = "file") -> Any:
    """Read a JSON file; a missing or corrupt one raises CheckpointError naming it."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} {path} is missing")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{what} {path} is corrupt (not valid JSON: {e})") from None


def result_paths(out: str | os.PathLike, command: str) -> tuple[Path, Path]:
    """(CSV, JSON) paths of a command that writes a per-input CSV at ``out`` and its summary beside
    it (``out`` with suffix .json), checked before any work: ``out`` must end in .csv, and an
    existing JSON there must be an earlier result of the same ``command`` (so that ``--out
    RUN/config.csv`` cannot replace a run's config.json). InputError otherwise."""
    csv_path = Path(out)
    if csv_path.suffix.lower() != ".csv":
        raise InputError(f"--out {csv_path}: must end in .csv (robvae {command} writes a CSV there and its "
                         "summary beside it as .json)")
    json_path = csv_path.with_suffix(".json")
    if csv_path.is_dir() or json_path.is_dir():
        raise InputError(f"--out {csv_path}: {csv_path if csv_path.is_dir() else json_path} is a folder")
    if json_path.exists() and read_json_dict(json_path).get("command") != command:
        raise InputError(f"--out {csv_path} would replace {json_path}, which is not an earlier robvae {command} "
                         "summary; choose another --out")
    if csv_path.exists() and not json_path.exists() and not _result_header(csv_path, command):
        # a CSV without its summary is an interrupted earlier result only if it has that header
        raise InputError(f"--out {csv_path} exists and is not an earlier robvae {command} result (its header "
                         f"lacks {', '.join(RESULT_COLUMNS[command])}); choose another --out")
    return csv_path, json_path


#: Columns every per-input CSV of these commands has: an existing CSV at ``--out`` without its
#: JSON summary is replaced only if its header holds them (not a run's metrics.csv, audit h80).
RESULT_COLUMNS = {"certify": ("index", "p", "p_lower"), "margin": ("index", "bound", "margin")}


def _result_header(path: Path, command: str) -> bool:
    try:
        with open(path, newline="", encoding="utf-8") as f:
            header = next(csv.reader(f), [])
    except (OSError, UnicodeDecodeError, csv.Error):
        return False
    return set(RESULT_COLUMNS[command]) <= set(header)


def read_json_dict(path: str | os.PathLike) -> dict[str, Any]:
    """A JSON file's top-level object, or {} when the file is missing, corrupt or not an object."""
    try:
        d = read_json(path)
    except CheckpointError:
        return {}
    return d if isinstance(d, dict) else {}


def save_tensors(path: str | os.PathLike, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None) -> Path:
    """Save tensors as safetensors, atomically; the same tensors and metadata give the same bytes."""
    flat = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    return atomic_write_bytes(path, _canonical(st_save(flat, metadata=dict(metadata) if metadata else None)))


def _canonical(raw: bytes) -> bytes:
    """``raw`` (a safetensors file) with its JSON header written in one order: safetensors writes
    the metadata's keys in a per-process random (hash) order, so two identical runs wrote
    different files. The tensor offsets are relative to the data, so only the header changes; it
    is padded with spaces (as the format allows) to keep the data 8-byte aligned."""
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n].decode("utf-8"))
    if isinstance(header.get("__metadata__"), dict):
        header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-(8 + len(text)) % 8)
    return len(text).to_bytes(8, "little") + text + raw[8 + n :]


def load_tensors(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Load a safetensors file (never pickle); a missing or corrupt one raises CheckpointError naming it."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file {path} is missing")
    raw = path.read_bytes()
    try:
        tensors = st_load(raw)
        meta = _safetensors_metadata(raw)
    except (SafetensorError, ValueError, OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"weights file {path} is corrupt ({e})") from None
    return {k: v.to(device) for k, v in tensors.items()}, meta


def _safetensors_metadata(raw: bytes) -> dict[str, str]:
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n].decode("utf-8"))
    return dict(header.get("__metadata__", {}) or {})


def csv_text(rows: Sequence[Mapping[str, Any]], fieldnames: Sequence[str] | None = None) -> str:
    """Rows (dicts) as CSV text. The columns: ``fieldnames``, or every key of any row in order of
    first appearance (a row without one gets an empty cell)."""
    buf = io.StringIO()
    names = list(fieldnames) if fieldnames is not None else list(dict.fromkeys(k for row in rows for k in row))
    w = csv.DictWriter(buf, fieldnames=names)
    w.writeheader()
    for row in rows:
        w.writerow({k: _csv_value(v) for k, v in row.items()})
    return buf.getvalue()


def write_csv(path: str | os.PathLike, rows: Sequence[Mapping[str, Any]], fieldnames: Sequence[str] | None = None) -> Path:
    """Write rows (dicts) as CSV (:func:`csv_text`), atomically."""
    return atomic_write_text(path, csv_text(rows, fieldnames))


def text_sha256(data: bytes) -> str:
    """The SHA-256 (hex) of a text's bytes, line endings normalised to LF (:func:`file_sha256`)."""
    return hashlib.sha256(data.replace(b"\r\n", b"\n")).hexdigest()


def file_sha256(path: str | os.PathLike) -> str:
    """The SHA-256 of a text file's content (hex), line endings normalised to LF: the same CSV
    checked out of git with other line endings, or re-saved by a tool, keeps its digest."""
    return text_sha256(Path(path).read_bytes())


#: config fields that do not change the model a run folder holds (where it was trained)
_NOT_MODEL = ("device",)


def run_digest(run_dir: str | os.PathLike) -> str:
    """A digest of what :func:`robvae.load` builds a run's model from: its config (parsed; the
    device it was trained on left out) and its weights' tensors (names, dtypes, shapes, values;
    not the file's bytes or metadata). A train command rerun on a finished run (another device, a
    rewritten config.json or weights file with the same content) keeps the digest (review h77);
    a missing or unreadable file enters as such."""
    h = hashlib.sha256()
    folder = Path(run_dir)
    h.update(b"config.json")
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        if isinstance(config, dict):
            config = {k: v for k, v in config.items() if k not in _NOT_MODEL}
        h.update(json.dumps(config, sort_keys=True, allow_nan=True).encode())
    except (OSError, ValueError):
        h.update(b"<missing or unreadable>")
    h.update(b"model.safetensors")
    try:
        tensors, _ = load_tensors(folder / "model.safetensors")
        hash_arrays(h, sorted(tensors.items()))
    except CheckpointError:
        h.update(b"<missing or unreadable>")
    return h.hexdigest()


def write_results(csv_path: str | os.PathLike, rows: Sequence[Mapping[str, Any]], json_path: str | os.PathLike,
                  doc: Mapping[str, Any], *, fieldnames: Sequence[str] | None = None,
                  then: Iterable[Any] = ()) -> None:
    """One command's per-input CSV and its JSON summary as one result: the callables ``then``
    (e.g. a figure) run first, then the previous JSON is removed, the CSV written and the JSON
    last, with ``"csv_sha256"``, the digest of the CSV it describes. Each file is atomic, and an
    interrupt between them leaves a CSV without a JSON (or a JSON whose digest does not match),
    never a finished-looking pair from two runs (audit h73: the new CSV beside the previous run's
    JSON); an interrupt during the slow part (the figure: about a second) leaves the previous
    result whole (audit h80). The caller holds the output (robvae.fileio.folder_lock):
    temporaries of the two files that a killed earlier run left are removed."""
    for f in (Path(csv_path), Path(json_path)):
        remove_stale_temporaries(f.parent, [f.name])
    text = csv_text(rows, fieldnames).encode("utf-8")
    for step in then:
        step()
    Path(json_path).unlink(missing_ok=True)
    atomic_write_bytes(csv_path, text)
    write_json(json_path, {**doc, "csv_sha256": text_sha256(text)})


def _csv_value(v: Any) -> Any:
    """Floats as repr (every digit); numpy / torch scalars as Python numbers first (numpy's float64
    is a float whose repr is "np.float64(...)" under numpy 2)."""
    if hasattr(v, "item"):
        v = v.item()
    return repr(v) if isinstance(v, float) else v


def read_csv(path: str | os.PathLike) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


# --------------------------------------------------------------------------------------------
# One robvae process per folder

LOCK_FILE = ".robvae.lock"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    except OSError:
        return False
    return True


def _lock_owner(path: Path) -> dict[str, Any] | None:
    """The lock file's content, or None when it is gone, empty or unreadable."""
    try:
        owner = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return owner if isinstance(owner, dict) else None


def _stale(path: Path, owner: dict[str, Any] | None, guarded: bool = False) -> bool:
    """A lock left by a process that is gone: same host and its pid is not running (a lock of
    another host is never taken for stale), or a lock file still empty after 10 seconds; after 1
    second when ``guarded`` (the caller holds the folder's guard, under which every lock is created
    and written: an empty one is a taker killed between the two, audit h73)."""
    if owner is None:
        try:  # (guarded: a taker writes its lock within microseconds of creating it; 1 s still covers a
            # guard that does not reach another host, flock on some NFS mounts, review h77)
            return time.time() - path.stat().st_mtime > (1 if guarded else 10)
        except FileNotFoundError:
            return True
    if owner.get("host") != socket.gethostname():
        return False
    pid = owner.get("pid")
    return not isinstance(pid, int) or not _pid_alive(pid)


@contextlib.contextmanager
def _guard(folder: Path) -> Iterator[bool]:
    """Serialise robvae processes' look-and-take of a folder's lock: an exclusive ``flock`` on
    ``FOLDER/.robvae.lock.guard`` (released by the kernel if the holder dies), removed again when
    the block ends. Without it two processes that both found a dead process's lock could both
    take it over: the second renamed away the lock the first had just written (4 of 40 rounds
    of a race had two holders). A guard file replaced while we waited for it is opened again.
    Where the file system refuses ``flock`` (ENOLCK on some NFS mounts) the look-and-take runs
    unguarded (a lock is still taken, only that rare race is open again) and the guard file is
    removed. Yields whether the guard is held."""
    if fcntl is None:  # pragma: no cover
        yield False
        return
    path = folder / f"{LOCK_FILE}.guard"
    while True:
        fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:  # a file system without flock (ENOLCK on some NFS): unguarded, as before
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(path)
            fd = None
            break
        except BaseException:
            os.close(fd)
            raise
        try:
            mine = os.fstat(fd)
            try:
                now = os.stat(path)
            except FileNotFoundError:
                now = None
        except BaseException:
            os.close(fd)
            raise
        if now is not None and (now.st_dev, now.st_ino) == (mine.st_dev, mine.st_ino):
            break
        os.close(fd)  # its holder removed it while we waited: take the current one
    if fd is None:
        yield False
        return
    try:
        yield True
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        os.close(fd)


def _in_use(folder: Path, owner: dict[str, Any] | None, advice: str, what: str | None = None) -> LockError:
    """The refusal of ``folder`` (named ``what``, default "folder FOLDER") while ``owner`` (its lock
    file's content) holds it."""
    started = f", started {owner['started']}" if owner and owner.get("started") else ""
    who = (f"{owner.get('command', 'robvae')} (pid {owner.get('pid')} on {owner.get('host')}{started})"
           if owner else "another robvae process")
    return LockError(f"{what or f'folder {folder}'} is in use by {who}; {advice} (if that process is gone, delete "
                     f"{folder / LOCK_FILE})")


def live_holder(folder: str | os.PathLike) -> dict[str, Any] | None:
    """The lock file's content (command, pid, host, started; {} when unreadable) when a live robvae
    process holds ``FOLDER/.robvae.lock``, else None."""
    path = Path(folder) / LOCK_FILE
    if path.exists():
        owner = _lock_owner(path)
        if not _stale(path, owner):
            return owner or {}
    return None


def check_not_held(folder: str | os.PathLike, advice: str) -> None:
    """A LockError (naming the holder, ending with ``advice``) when a live robvae process holds
    ``FOLDER/.robvae.lock``, for a command that reads the folder without taking it."""
    owner = live_holder(folder)
    if owner is not None:
        raise _in_use(Path(folder), owner or None, advice)


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike, command: str, what: str | None = None) -> Iterator[Path]:
    """Hold ``FOLDER/.robvae.lock`` while the block runs: a second robvae process (``command``,
    e.g. "robvae train") into the same folder is refused with a LockError naming the holder. A
    lock left by a process that died (same host, pid not running) is taken over; the lock file
    is removed when the block ends (also on an error or Ctrl-C); a folder this call created and
    the block left empty (a command refused before it wrote anything) is removed too. ``what`` names
    the folder in the refusal (default "folder FOLDER"; e.g. the output a hidden work folder is for)."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise InputError(f"output folder {folder} is a file; choose another --out (or out:)")
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_FILE
    me = {"pid": os.getpid(), "host": socket.gethostname(), "command": command,
          "argv": " ".join(sys.argv), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    try:
        _take(folder, path, me, what)
    except BaseException:
        if created:  # refused (or failed) before anything was written: leave no empty folder
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise
    try:
        yield path
    finally:
        if (_lock_owner(path) or {}).get("pid") == me["pid"]:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        if created:
            with contextlib.suppress(OSError):  # not empty (or gone): kept
                folder.rmdir()


def _take(folder: Path, path: Path, me: dict, what: str | None = None) -> None:
    """Write ``me`` into the lock file ``path`` of ``folder`` (taking over a dead process's lock),
    or raise LockError naming the live holder."""
    with _guard(folder) as guarded:  # one process at a time looks at the lock and takes it
        for _ in range(3):
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = _lock_owner(path)
                if _stale(path, owner, guarded):  # its process is gone: remove it and take the folder
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(path)
                    continue
                raise _in_use(folder, owner, "wait for it to finish or use another folder", what) from None
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(json.dumps(me))
            break
        else:
            raise LockError(f"could not take the lock {path} (other processes keep taking it)")


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml's safe loader, refusing a mapping that repeats a key (safe_load keeps the last value
    silently: a zoo's or sweep's second ``n_samples:`` would override the first unseen)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, (str, int, float, bool)) and key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: str | os.PathLike, error: type[Exception], what: str) -> Any:
    """The document of a YAML file (safe loader): FileNotFoundError when it is missing, ``error``
    naming the file when it is not valid YAML or empty (``what``: "sweep file", "zoo file", ...)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist")
    try:
        doc = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)  # noqa: S506 - a safe loader
    except yaml.YAMLError as e:
        raise error(f"{path}: not valid YAML ({str(e).replace(chr(10), ' ')})") from None
    if doc is None:
        raise error(f"{path}: empty {what}")
    return doc

