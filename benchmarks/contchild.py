"""Child process of the contention benchmark: one ``certify_sharded`` run under one thread policy.

``python -m benchmarks.contchild --variant V --run RUN --n N --samples S`` prints one JSON line
with the wall time of the call (worker start-up included). The variant is applied before torch
loads, as the ``robvae`` command does:

- ``today``: torch's defaults (one spinning OpenMP thread per core), this process (the CLI's
  serial path before issue 11);
- ``default``: robvae's default now (robvae.threads: passive OpenMP waiting and one thread per
  core, one worker process per core with one thread each when the work is large);
- ``threads1``: one thread, this process;
- ``workers``: one worker process per core, one thread each;
- ``passive``: torch's thread count (one per core) with passive OpenMP waiting, this process;
- ``threads1`` with passive waiting is not run (one thread never waits for another).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--variant", required=True, choices=["today", "default", "threads1", "workers", "passive"])
    ap.add_argument("--run", required=True)
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--samples", type=int, default=10_000)
    a = ap.parse_args()
    from robvae import threads

    if a.variant in ("default", "passive"):
        threads.prefer_passive_wait()
    import torch

    from robvae.data import load_dataset
    from robvae.sweep import certify_sharded
    from robvae.training import load

    run = load(a.run)
    x = load_dataset(run.config.dataset, "test", run.config.data_dir).subset(a.n).images
    rows = a.n * a.samples
    if a.variant in ("today", "passive"):
        executor, workers, tt = "serial", 1, None
    elif a.variant == "default":
        threads.set_threads(None)
        executor, workers = threads.auto_executor(rows)
        tt = None if executor == "serial" else 1
    elif a.variant == "threads1":
        torch.set_num_threads(1)
        executor, workers, tt = "serial", 1, None
    else:
        torch.set_num_threads(1)
        executor, workers, tt = "local", threads.cores(), 1
    t0 = time.perf_counter()
    cert = certify_sharded(a.run, x, 3.0, executor=executor, workers=workers, torch_threads=tt, n_samples=a.samples)
    dt = time.perf_counter() - t0
    k = cert.as_numpy()["p"] if hasattr(cert, "as_numpy") else cert["p"]
    print(json.dumps({"variant": a.variant, "seconds": dt, "executor": executor, "workers": workers,
                      "threads": torch.get_num_threads(), "p_sum": float(k.sum()),
                      "load1": os.getloadavg()[0]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
