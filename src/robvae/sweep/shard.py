"""Sharded certification: Theorem 1 certificates for many inputs, split across workers.

The seeding scheme (why every executor gives the same numbers). ``certify`` draws the Monte
Carlo noise for a batch from one generator, so its numbers depend on how the inputs are batched.
``certify_sharded`` therefore never seeds per shard: it cuts the inputs into *blocks* of
``block_size`` consecutive inputs (default 64), and certifies each block with
its own CPU generator seeded from ``(seed, index of the block's first input)``. A shard is a run
of whole blocks. The numbers depend only on ``(seed, block_size)`` and the inputs — not on the
executor, the number of workers, or ``shard_size`` — and the single-process path is simply
``executor="serial"``, which runs the same blocks in this process. ``robvae certify`` uses
``certify_sharded`` for every executor, so serial, local and Ray runs draw the same noise and agree
exactly in every Monte Carlo count (p, p_lower). Bit-for-bit equality of the radii also needs the
same ``torch_threads`` everywhere (the default 1 here, as in the workers); the CLI's serial path
uses all cores instead, for speed, and its radii then agree with the workers' to float rounding
(about 1e-7 relative).

Note that ``certify(model, x, r, generator=g)`` called directly on the whole batch is a different
(equally valid) random draw; compare it with ``certify_sharded(..., block_size=len(x))``.

Resuming. Because a block's numbers depend only on the weights, the settings, ``(seed,
block_size)`` and the block's own inputs, finished blocks can be kept: with ``partial=FOLDER``
(``robvae certify`` uses ``CSV.partial`` beside its output), every finished shard (or, in this
process, every block) is saved there as it arrives (:class:`ShardStore`), and a rerun of the same
question skips them and gives the same certificate as an uninterrupted run.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import inspect
import math
import os
import re
import sys
import sysconfig
import types
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .._version import __version__
from ..errors import CheckpointError, InputError, RobvaeError
from ..fileio import (
    atomic_write_text, dumps_json, hash_arrays, load_tensors, remove_stale_temporaries, run_digest, save_tensors,
)
from ..models.fast_decode import structure_key
from ..robustness import Certificate, CertifyConfig, certify
from ..training import load
from ..validation import as_radius, host_numpy
from .executors import check_options, map_tasks, using_torch_threads

SHARD_EXECUTORS = ("serial", "local", "ray")

#: Inputs per block (each block draws from its own seeded generator; the unit of work of a worker).
BLOCK_SIZE = 64
#: the default shard's largest size, in blocks: small enough that an interrupted run loses little
#: (a shard is saved when it finishes) and that the workers stay balanced
MAX_SHARD_BLOCKS = 4

_RUN_CACHE: dict[tuple, Any] = {}


def block_seed(seed: int, start: int) -> int:
    """The Monte Carlo seed of the block starting at global input index ``start``."""
    digest = hashlib.sha256(f"robvae-certify:{int(seed)}:{int(start)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def _stat_key(run_dir: str) -> tuple:
    """What tells the run's files apart cheaply: config.json's and the weights' inode, size and
    modification time (an atomic rewrite is a new inode)."""
    key = []
    for name in ("config.json", "model.safetensors"):
        f = Path(run_dir) / name
        st = f.stat() if f.exists() else None
        key.append(None if st is None else (st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(key)


def _load_run(run_dir: str, device: str):
    """The run in ``run_dir`` and :func:`run_digest` of the files it was built from (cached per
    process while the weights file is the same file)."""
    key = (str(Path(run_dir).resolve()), str(device), _stat_key(run_dir))
    if key not in _RUN_CACHE:
        _RUN_CACHE.clear()  # one run per worker process at a time
        while True:  # the digest of the very files loaded: none replaced in between
            before = run_digest(run_dir)
            run = load(run_dir, device=device)
            if run_digest(run_dir) == before:
                break
        _RUN_CACHE[key] = (run, before)
    return _RUN_CACHE[key]


def weights_changed(run_dir: str | os.PathLike) -> RobvaeError:
    """The error of a certification whose run changed under it (shards would mix two models)."""
    return RobvaeError(f"the weights of {run_dir} changed while certify ran (a robvae train extending it?): the "
                       "certificates would mix two models; rerun certify once the run is finished")


# ---------------------------------------------------------------------------------------------
# finished shards on disk (resuming an interrupted certification)

_SHARD_FILE = re.compile(r"^shard-(\d+)-(\d+)\.safetensors$")
_KEY_FILE = "key.json"


def _digest(*arrays: np.ndarray) -> str:
    return hash_arrays(hashlib.sha256(), enumerate(arrays)).hexdigest()


def model_digest(model: torch.nn.Module) -> str:
    """A digest of a model in memory: its class, the source files of every class its modules are
    instances of and of their base classes (an edited ``encode`` / ``decode``, or ``forward`` of a
    submodule defined elsewhere, e.g. a pythae model's own decoder behind robvae's adapter; torch's
    own modules aside), its printed structure, every module's plain settings and attributes
    (:func:`robvae.models.fast_decode.structure_key`), every parameter and buffer, persistent or
    not (name, dtype, shape, values), and every other attribute of every module that holds data:
    plain tensors, numpy arrays, numbers and strings, also inside lists, tuples, sets and dicts
    (:func:`_attribute_data`). What it cannot see: state outside the model (globals, or functions of
    other files that a ``forward`` calls), and objects of other classes held as attributes (named
    by their class only)."""
    cls = type(model)
    h = hashlib.sha256(f"{cls.__module__}.{cls.__qualname__}\n{model!r}\n{structure_key(model)!r}".encode())
    # the sources' contents only, in the order of their own digests: the same model and code give
    # the same digest wherever they are installed
    for d in sorted(hashlib.sha256(src).hexdigest() for src in _sources(model)):
        h.update(d.encode())
    arrays, text = _attribute_data(model)
    h.update("\n".join(text).encode())
    return hash_arrays(h, (*model.named_parameters(), *model.named_buffers(), *arrays)).hexdigest()


#: The attributes every nn.Module has (its registries, mode and hooks): not the model's data.
_MODULE_INTERNALS = frozenset(vars(torch.nn.Module()))
#: How deep :func:`_attribute_data` follows containers, and how many elements of one it reads.
_ATTRIBUTE_DEPTH, _ATTRIBUTE_ITEMS = 4, 100_000


def _plain_object(v: Any) -> bool:
    """A settings object whose fields are data: a dataclass instance, a namespace, or an instance of
    a class of the user's own code holding its data in ``__dict__`` (a config). Not a class,
    function, module or other callable, and not an object of the standard library or of a library
    (a logging.Logger's state changes with every call: its digest would never be reused)."""
    if isinstance(v, (type, types.ModuleType)) or callable(v) or inspect.isroutine(v) or not hasattr(v, "__dict__"):
        return False
    if dataclasses.is_dataclass(v) or isinstance(v, (types.SimpleNamespace, argparse.Namespace)):
        return True
    module = sys.modules.get(type(v).__module__)
    path = getattr(module, "__file__", None)
    if path is None:
        return False
    resolved = Path(path).resolve()
    return not (resolved.is_relative_to(_STDLIB) or "site-packages" in resolved.parts or "dist-packages" in resolved.parts)


def _attribute_data(model: torch.nn.Module) -> tuple[list[tuple[str, Any]], list[str]]:
    """The data a model's modules hold outside their parameters and buffers: (name, tensor or array)
    pairs and ``name=repr`` lines for numbers, strings and the classes of other objects. A plain
    tensor attribute (``self.gain = torch.tensor(3.0)``), a list or a dict of settings changed after
    a certification had started was not seen, and a resumed run mixed two models (audit h4)."""
    arrays: list[tuple[str, Any]] = []
    text: list[str] = []

    def walk(v: Any, path: str, depth: int) -> None:
        if isinstance(v, (torch.Tensor, np.ndarray)):
            arrays.append((path, v))
        elif v is None or isinstance(v, (bool, int, float, complex, str, bytes)):
            text.append(f"{path}={v!r}")
        elif isinstance(v, torch.nn.Module):
            text.append(f"{path}: module {type(v).__qualname__}")  # its own data: named_modules, if registered
        elif isinstance(v, (list, tuple, set, frozenset, dict)) and depth < _ATTRIBUTE_DEPTH:
            items = sorted(v.items(), key=lambda kv: repr(kv[0])) if isinstance(v, dict) else (
                sorted(v, key=repr) if isinstance(v, (set, frozenset)) else v)
            text.append(f"{path}: {type(v).__qualname__} of {len(v)}")
            for i, item in enumerate(items):
                if i >= _ATTRIBUTE_ITEMS:
                    break
                key, val = item if isinstance(v, dict) else (i, item)
                walk(val, f"{path}[{key!r}]", depth + 1)
        elif _plain_object(v) and depth < _ATTRIBUTE_DEPTH:  # a settings object (a dataclass, a namespace):
            # its fields, not only its class (a config changed between a run and its rerun was not seen)
            text.append(f"{path}: {type(v).__module__}.{type(v).__qualname__}")
            for k, val in sorted(vars(v).items())[:_ATTRIBUTE_ITEMS]:
                walk(val, f"{path}.{k}", depth + 1)
        else:
            text.append(f"{path}: {type(v).__module__}.{type(v).__qualname__}")

    for name, m in model.named_modules():
        for k, v in vars(m).items():
            if k not in _MODULE_INTERNALS:
                walk(v, f"{name}.{k}", 0)
    return arrays, text


_STDLIB = Path(sysconfig.get_paths()["stdlib"]).resolve()


def _sources(model: torch.nn.Module) -> list[bytes]:
    """The source of every module (file) defining the classes of ``model``'s modules and their
    bases, torch's and Python's own aside (a file read from disk, else through its loader: a zip)."""
    out: dict[str, bytes] = {}
    for c in {k for m in model.modules() for k in type(m).__mro__}:
        name = c.__module__
        if name in out or name == "builtins" or name.split(".")[0] == "torch":
            continue
        module = sys.modules.get(name)
        try:
            f = inspect.getsourcefile(c)
        except (OSError, TypeError):  # built-in, interactive or without source
            f = None
        if f and Path(f).resolve().is_relative_to(_STDLIB) and not {"site-packages", "dist-packages"} & set(Path(f).parts):
            continue  # Python's own library (abc, typing, ...): not the model's code
        try:
            out[name] = Path(f).read_bytes() if f and Path(f).is_file() else inspect.getsource(module).encode()
        except (OSError, TypeError):  # no source anywhere: the rest still counts
            continue
    return list(out.values())


def partial_folder(out: str | os.PathLike) -> Path:
    """Where a certification written to ``out`` keeps its finished shards: ``OUT.partial``."""
    out = Path(out)
    return out.with_name(out.name + ".partial")


@dataclass(frozen=True)
class _Piece:
    """Consecutive inputs ``[start, stop)``: already finished (``cols``) or still to certify."""

    start: int
    stop: int
    cols: dict[str, np.ndarray] | None = None


class ShardStore:
    """Finished shards of one certification, kept in a folder so that an interrupted run resumes.

    ``settings`` is everything the numbers depend on besides the inputs (the model's digest, seed,
    block size, certify's settings, threads, device; robvae's version is added): it is written to
    ``key.json``, and a folder holding another question's shards is emptied first. Each shard is
    one safetensors file ``shard-START-STOP`` of its per-input columns, with a digest of its own
    inputs and radii in its metadata; a shard is reused only when that digest matches, when it
    starts on a block and ends on one (or at the last input), so a rerun with more inputs reuses
    the blocks whose inputs are unchanged. Unreadable or damaged shard files are recomputed.
    Writes are atomic; the caller deletes the folder once the result is safely written.
    """

    def __init__(self, folder: str | os.PathLike, settings: dict[str, Any]):
        self.folder = Path(folder)
        if self.folder.exists() and not self.folder.is_dir():
            raise InputError(f"{self.folder} (where certify keeps its finished shards) is not a folder; remove it "
                             "or choose another --out")
        self.key = dumps_json({**settings, "robvae": __version__}, default=repr)
        self.key_digest = hashlib.sha256(self.key.encode()).hexdigest()  # in every shard: a shard another
        # command saved into this folder (two commands, one --out) is never taken for this question's
        key_path = self.folder / _KEY_FILE
        self._keyed = False  # the folder holds this question's key (else it is written with the first shard)
        if self.folder.is_dir():
            remove_stale_temporaries(self.folder, [_KEY_FILE, *(p.name for p in self.folder.iterdir()
                                                                if _SHARD_FILE.match(p.name))])
            old = key_path.read_text(encoding="utf-8", errors="replace") if key_path.is_file() else None
            self._keyed = old == self.key
            if not self._keyed:  # another question's results (or a damaged key): not reusable
                for p in self.folder.iterdir():
                    if _SHARD_FILE.match(p.name) or p.name == _KEY_FILE:
                        p.unlink()

    def save(self, start: int, cols: dict[str, np.ndarray], x: np.ndarray, r: np.ndarray) -> None:
        """Keep the results ``cols`` of inputs ``x`` (radii ``r``) from global index ``start`` on
        (the folder and its key are made with the first shard: a call refused before it leaves none)."""
        if not self._keyed:
            atomic_write_text(self.folder / _KEY_FILE, self.key)
            self._keyed = True
        stop = start + len(x)
        save_tensors(self.folder / f"shard-{start}-{stop}.safetensors",
                     {k: torch.from_numpy(np.require(v, requirements=("C", "W"))) for k, v in cols.items()},
                     metadata={"inputs": _digest(x, r), "key": self.key_digest})

    def plan(self, x: np.ndarray, r: np.ndarray, block_size: int) -> list[_Piece]:
        """Cut inputs ``[0, N)`` into finished pieces (their columns loaded) and gaps, in order."""
        n = len(x)
        found: dict[int, list[int]] = {}
        for p in (self.folder.iterdir() if self._keyed else ()):
            m = _SHARD_FILE.match(p.name)
            if m:
                a, b = int(m.group(1)), int(m.group(2))
                if a % block_size == 0 and a < b <= n and (b % block_size == 0 or b == n):
                    found.setdefault(a, []).append(b)
        pieces: list[_Piece] = []
        s = gap = 0
        while s < n:
            cols = None
            for b in sorted(found.get(s, ()), reverse=True):  # the longest valid shard first
                cols = self._load(s, b, x, r)
                if cols is not None:
                    break
            if cols is None:
                s += block_size if s + block_size <= n else n - s
                continue
            if gap < s:
                pieces.append(_Piece(gap, s))
            pieces.append(_Piece(s, b, cols))
            s = gap = b
        if gap < n:
            pieces.append(_Piece(gap, n))
        return pieces

    def _load(self, a: int, b: int, x: np.ndarray, r: np.ndarray) -> dict[str, np.ndarray] | None:
        path = self.folder / f"shard-{a}-{b}.safetensors"
        try:
            tensors, meta = load_tensors(path)
        except CheckpointError:
            return None
        if (meta.get("inputs") != _digest(x[a:b], r[a:b]) or meta.get("key") != self.key_digest
                or any(t.shape[:1] != (b - a,) for t in tensors.values())):  # another question's shard
            return None
        return {k: t.numpy() for k, t in tensors.items()}


def _split(piece: _Piece, size: int) -> list[_Piece]:
    return [_Piece(s, min(s + size, piece.stop)) for s in range(piece.start, piece.stop, size)]


def _certificate(cols: dict[str, np.ndarray], certify_kwargs: dict[str, Any]) -> Certificate:
    settings = {k: certify_kwargs.get(k, getattr(CertifyConfig, k)) for k in ("mode", "alpha", "n_samples")}
    return Certificate.from_numpy(cols, **settings)  # certify's defaults where not given


def _settings(model: str, seed: int, block_size: int, device: str, torch_threads: int | None,
              certify_kwargs: dict[str, Any]) -> dict[str, Any]:
    return {"model": model, "seed": int(seed), "block_size": int(block_size), "device": str(device),
            "torch_threads": torch_threads, "certify": {k: certify_kwargs[k] for k in sorted(certify_kwargs)}}


# ---------------------------------------------------------------------------------------------
# certification, block by block


def certify_blocks(model: torch.nn.Module, x: torch.Tensor, r: float | torch.Tensor, *, seed: int = 0, start: int = 0,
                   block_size: int = BLOCK_SIZE, progress: bool = False, partial: str | os.PathLike | None = None,
                   **certify_kwargs: Any) -> Certificate:
    """Certify ``x`` (global input indices ``start, start+1, ...``) in this process, block by block,
    each block with its own generator seeded by :func:`block_seed` (see the module docstring).
    ``partial``: a folder that keeps every finished block (:class:`ShardStore`; the model's
    weights are part of its key), so that an interrupted call resumes where it stopped."""
    rt = as_radius(r, x.shape[0], x)
    if partial is None:
        pieces = [_Piece(i, min(i + block_size, x.shape[0])) for i in range(0, x.shape[0], block_size)]
        store = None
    else:
        if start % block_size:
            raise ValueError("partial= needs start to be a multiple of block_size")
        store = ShardStore(partial, _settings(model_digest(model), seed, block_size, str(x.device),
                                              torch.get_num_threads(), {**certify_kwargs, "start": int(start)}))
        x_np, r_np = host_numpy(x), host_numpy(rt)
        pieces = [q for p in store.plan(x_np, r_np, block_size)
                  for q in ([p] if p.cols is not None else _split(p, block_size))]
    parts = []
    with tqdm(total=int(x.shape[0]), desc="certify", unit="input", disable=not progress) as bar:
        for p in pieces:
            if p.cols is not None:
                parts.append(_certificate(p.cols, certify_kwargs))
            else:
                g = torch.Generator(device="cpu").manual_seed(block_seed(seed, start + p.start))
                cert = certify(model, x[p.start : p.stop], rt[p.start : p.stop], generator=g, **certify_kwargs)
                if store is not None:  # as certify_sharded: columns through numpy, on the CPU
                    cols = cert.as_numpy()
                    store.save(p.start, cols, x_np[p.start : p.stop], r_np[p.start : p.stop])
                    cert = _certificate(cols, certify_kwargs)
                parts.append(cert)
            bar.update(p.stop - p.start)
    return Certificate.cat(parts)


def certify_shard(run_dir: str, x: np.ndarray, r: np.ndarray, start: int, *, seed: int, block_size: int,
                  device: str = "cpu", torch_threads: int | None = 1,
                  certify_kwargs: dict[str, Any] | None = None,
                  expect_digest: str | None = None) -> dict[str, np.ndarray]:
    """Certify inputs ``x`` (global indices ``start, start+1, ...``) block by block; numpy out
    (:meth:`Certificate.as_numpy`, cheap to send back from a worker). ``expect_digest``: the
    :func:`run_digest` the run must have (a RobvaeError when its files changed since)."""
    with using_torch_threads(torch_threads):
        run, digest = _load_run(run_dir, device)
        if expect_digest is not None and digest != expect_digest:
            raise weights_changed(run_dir)
        model = run.model
        xt = torch.from_numpy(np.require(x, requirements=("C", "W"))).to(device)
        rt = torch.from_numpy(np.require(r, requirements=("C", "W"))).to(device)
        return certify_blocks(model, xt, rt, seed=seed, start=start, block_size=block_size,
                              **(certify_kwargs or {})).as_numpy()


def shard_ray_options(device: str, workers: int, torch_threads: int | None) -> dict[str, float]:
    """Ray resources of one certify task: its threads' CPUs and, on a GPU, a 1 / ``workers`` share
    of one (Ray hides the GPUs from a task that asks for none, so ``load(device="cuda")`` failed)."""
    opts: dict[str, float] = {"num_cpus": max(1, torch_threads or 1)}
    if not str(device).startswith("cpu"):
        opts["num_gpus"] = 1.0 / max(1, int(workers))
    return opts


def certify_sharded(
    run_dir: str | os.PathLike,
    x: torch.Tensor,
    r: float | torch.Tensor,
    *,
    executor: str = "local",
    workers: int = 2,
    address: str | None = None,
    shard_size: int | None = None,
    seed: int = 0,
    block_size: int = BLOCK_SIZE,
    device: str = "cpu",
    torch_threads: int | None = 1,
    progress: bool = False,
    partial: str | os.PathLike | None = None,
    weights_digest: str | None = None,
    **certify_kwargs: Any,
) -> Certificate:
    """Certify every input of ``x`` [N, *shape] with the run in ``run_dir``, sharded over workers.

    executor: "serial" (this process), "local" (``workers`` spawned processes) or "ray" (one
    task per shard; ``address`` "auto" / HOST:PORT joins a cluster, else the running or a new
    local instance with ``workers`` CPUs). Each worker loads the run with ``robvae.load``.
    r: a number or an [N] tensor. shard_size: inputs per shard (default: about 4 shards per
    worker, at most :data:`MAX_SHARD_BLOCKS` blocks; rounded up to whole blocks). seed /
    block_size: see the module docstring — the result depends on them, not on the executor,
    ``workers`` or ``shard_size``. partial: a folder that keeps every finished shard
    (:class:`ShardStore`, keyed by the run's config and weights and these settings) so that a
    rerun after an interruption certifies only the rest; the caller removes it when done
    (``robvae certify`` does once its CSV is written). certify_kwargs go to
    :func:`robvae.certify` (n_samples, alpha, mode, norms, chunk_size, ...).
    Returns one :class:`robvae.Certificate` for all N inputs, in input order, whatever the
    executor (the executors are :func:`robvae.sweep.executors.map_tasks`). Every shard checks
    that the run's files are still those of the start (``weights_digest``: a :func:`run_digest`
    taken earlier, e.g. when ``r`` was calibrated on the run): a run extended by ``robvae train``
    meanwhile is a RobvaeError, not certificates of two models.
    """
    check_options(executor, SHARD_EXECUTORS, workers=(workers, 1), block_size=(block_size, 1))
    if "generator" in certify_kwargs:
        raise ValueError("certify_sharded seeds each block itself: pass seed=..., not generator=")
    if not isinstance(x, torch.Tensor) or x.dim() < 2 or x.shape[0] == 0:
        raise ValueError("x must be a non-empty tensor of shape [N, *image_shape]")
    run_dir = str(Path(run_dir).expanduser().resolve())
    if not Path(run_dir).is_dir():
        raise FileNotFoundError(f"run folder {run_dir} does not exist")
    n = int(x.shape[0])
    x_np = host_numpy(x)
    r_np = host_numpy(as_radius(r, n, x.detach().cpu()))  # InputError (a ValueError) for a bad r
    digest = run_digest(run_dir)
    if weights_digest is not None and digest != weights_digest:
        raise weights_changed(run_dir)

    if shard_size is None:
        shard_size = min(max(1, math.ceil(n / (4 * int(workers)))), MAX_SHARD_BLOCKS * int(block_size))
    check_options(executor, SHARD_EXECUTORS, shard_size=(shard_size, 1))
    shard_size = math.ceil(int(shard_size) / block_size) * block_size
    store = None
    pieces = [_Piece(0, n)]
    if partial is not None:
        # the threads the shards are computed with (radii differ in their last bits across thread
        # counts): serial with None runs at this process's count
        threads = torch.get_num_threads() if torch_threads is None and executor == "serial" else torch_threads
        store = ShardStore(partial, _settings(digest, seed, block_size, device, threads, certify_kwargs))
        pieces = store.plan(x_np, r_np, block_size)
    pieces = [q for p in pieces for q in ([p] if p.cols is not None else _split(p, shard_size))]
    todo = [i for i, p in enumerate(pieces) if p.cols is None]
    # a Ray task sees only the GPU Ray gave it, as cuda:0: "cuda:1" would name a device it lacks
    task_device = "cuda" if executor == "ray" and str(device).startswith("cuda") else device
    kw = dict(seed=int(seed), block_size=int(block_size), device=task_device, torch_threads=torch_threads,
              certify_kwargs=certify_kwargs, expect_digest=digest)
    args = [(run_dir, x_np[pieces[i].start : pieces[i].stop], r_np[pieces[i].start : pieces[i].stop], pieces[i].start)
            for i in todo]

    results: list[dict[str, np.ndarray] | None] = [p.cols for p in pieces]
    with tqdm(total=n, initial=n - sum(len(a[1]) for a in args), desc=f"certify ({executor})", unit="input",
              disable=not progress) as bar:
        for j, res, err in map_tasks(certify_shard, args, executor=executor, workers=int(workers), address=address,
                                     kwargs=kw, ray_options=shard_ray_options(device, workers, torch_threads)):
            if isinstance(err, BrokenProcessPool):  # a worker was killed (out of memory, a signal)
                kept = "; the finished shards are kept: rerun to resume" if store is not None else ""
                raise RobvaeError(f"a certify worker process died ({err}){kept}") from None
            if err is not None:
                raise err
            results[todo[j]] = res
            if store is not None:
                store.save(args[j][3], res, args[j][1], args[j][2])
            bar.update(len(args[j][1]))
    cols = {k: np.concatenate([res[k] for res in results]) for k in results[0]}  # type: ignore[index]
    return _certificate(cols, certify_kwargs)
