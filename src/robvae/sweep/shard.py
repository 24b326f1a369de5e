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
"""

from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..robustness import Certificate, CertifyConfig, certify
from ..training import load
from ..validation import as_radius
from .executors import check_options, map_tasks, using_torch_threads

SHARD_EXECUTORS = ("serial", "local", "ray")

_RUN_CACHE: dict[tuple, Any] = {}


def block_seed(seed: int, start: int) -> int:
    """The Monte Carlo seed of the block starting at global input index ``start``."""
    digest = hashlib.sha256(f"robvae-certify:{int(seed)}:{int(start)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def _load_run(run_dir: str, device: str):
    weights = Path(run_dir) / "model.safetensors"
    st = weights.stat() if weights.exists() else None  # an atomic rewrite is a new inode
    key = (str(Path(run_dir).resolve()), str(device), None if st is None else (st.st_ino, st.st_size, st.st_mtime_ns))
    if key not in _RUN_CACHE:
        _RUN_CACHE.clear()  # one run per worker process at a time
        _RUN_CACHE[key] = load(run_dir, device=device)
    return _RUN_CACHE[key]


def certify_blocks(model: torch.nn.Module, x: torch.Tensor, r: float | torch.Tensor, *, seed: int = 0, start: int = 0,
                   block_size: int = 64, progress: bool = False, **certify_kwargs: Any) -> Certificate:
    """Certify ``x`` (global input indices ``start, start+1, ...``) in this process, block by block,
    each block with its own generator seeded by :func:`block_seed` (see the module docstring)."""
    rt = as_radius(r, x.shape[0], x)
    parts = []
    for i in tqdm(range(0, x.shape[0], block_size), desc="certify", unit="block", disable=not progress):
        g = torch.Generator(device="cpu").manual_seed(block_seed(seed, start + i))
        parts.append(certify(model, x[i : i + block_size], rt[i : i + block_size], generator=g, **certify_kwargs))
    return Certificate.cat(parts)


def certify_shard(run_dir: str, x: np.ndarray, r: np.ndarray, start: int, *, seed: int, block_size: int,
                  device: str = "cpu", torch_threads: int | None = 1,
                  certify_kwargs: dict[str, Any] | None = None) -> dict[str, np.ndarray]:
    """Certify inputs ``x`` (global indices ``start, start+1, ...``) block by block; numpy out
    (:meth:`Certificate.as_numpy`, cheap to send back from a worker)."""
    with using_torch_threads(torch_threads):
        model = _load_run(run_dir, device).model
        xt = torch.from_numpy(np.ascontiguousarray(x)).to(device)
        rt = torch.from_numpy(np.ascontiguousarray(r)).to(device)
        return certify_blocks(model, xt, rt, seed=seed, start=start, block_size=block_size,
                              **(certify_kwargs or {})).as_numpy()


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
    block_size: int = 64,
    device: str = "cpu",
    torch_threads: int | None = 1,
    progress: bool = False,
    **certify_kwargs: Any,
) -> Certificate:
    """Certify every input of ``x`` [N, *shape] with the run in ``run_dir``, sharded over workers.

    executor: "serial" (this process), "local" (``workers`` spawned processes) or "ray" (one
    task per shard; ``address`` "auto" / HOST:PORT joins a cluster, else the running or a new
    local instance with ``workers`` CPUs). Each worker loads the run with ``robvae.load``.
    r: a number or an [N] tensor. shard_size: inputs per shard (default: about 4 shards per
    worker; rounded up to whole blocks). seed / block_size: see the module docstring — the result
    depends on them, not on the executor, ``workers`` or ``shard_size``. certify_kwargs go to
    :func:`robvae.certify` (n_samples, alpha, mode, norms, chunk_size, ...).
    Returns one :class:`robvae.Certificate` for all N inputs, in input order, whatever the
    executor (the executors are :func:`robvae.sweep.executors.map_tasks`).
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
    x_np = x.detach().cpu().numpy()
    r_np = as_radius(r, n, x.detach().cpu()).detach().numpy()  # InputError (a ValueError) for a bad r

    if shard_size is None:
        shard_size = max(1, math.ceil(n / (4 * int(workers))))
    check_options(executor, SHARD_EXECUTORS, shard_size=(shard_size, 1))
    shard_size = math.ceil(int(shard_size) / block_size) * block_size
    kw = dict(seed=int(seed), block_size=int(block_size), device=device, torch_threads=torch_threads,
              certify_kwargs=certify_kwargs)
    args = [(run_dir, x_np[s : s + shard_size], r_np[s : s + shard_size], s) for s in range(0, n, shard_size)]

    results: list[dict[str, np.ndarray] | None] = [None] * len(args)
    with tqdm(total=n, desc=f"certify ({executor})", unit="input", disable=not progress) as bar:
        for i, res, err in map_tasks(certify_shard, args, executor=executor, workers=int(workers), address=address,
                                     kwargs=kw, ray_options={"num_cpus": max(1, torch_threads or 1)}):
            if err is not None:
                raise err
            results[i] = res
            bar.update(len(args[i][1]))
    cols = {k: np.concatenate([res[k] for res in results]) for k in results[0]}  # type: ignore[index]
    settings = {k: certify_kwargs.get(k, getattr(CertifyConfig, k)) for k in ("mode", "alpha", "n_samples")}
    return Certificate.from_numpy(cols, **settings)  # certify's defaults where not given
