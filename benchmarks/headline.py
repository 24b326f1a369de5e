"""Headline figures (docs/PERFORMANCE.md): ``robvae certify`` with default flags on a slice of the
MNIST test set at S = 10,000, timed, with the peak memory of the whole process tree (the command
and its worker processes, resident set sampled every 0.2 s from /proc).

``python -m benchmarks.headline RUN --n 1000 [--samples 10000] [--scale-to 10000] [--fit-from M]``
prints one JSON line: wall seconds, the seconds per input, the time extrapolated to
``--scale-to`` inputs, and the peak memory. The extrapolation is reported as such, never as a
measurement. A command has a fixed part (start-up, worker processes, the rigorous radii's
Lipschitz constants: 7 s for the conv VAE at one thread, 43 s before session 5) and a part
linear in the inputs (blocks of 64 inputs); ``--fit-from M`` also runs the first M inputs and
extrapolates with the line through both runs (``extrapolated_seconds_fit``: intercept + slope x
``--scale-to``), so the fixed part is not multiplied by ``--scale-to / N`` as the per-input
extrapolation (``extrapolated_seconds``) does.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _tree_rss_mib(root: int) -> float:
    """Resident set of ``root`` and all its descendants (MiB)."""
    parent: dict[int, int] = {}
    rss: dict[int, int] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            stat = Path(f"/proc/{d}/stat").read_text()
            fields = stat[stat.rindex(")") + 2:].split()
            parent[int(d)] = int(fields[1])
            rss[int(d)] = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            continue
    tree, frontier = {root}, [root]
    while frontier:
        p = frontier.pop()
        for c, pp in parent.items():
            if pp == p and c not in tree:
                tree.add(c)
                frontier.append(c)
    return sum(rss.get(p, 0) for p in tree) / 2**20


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.headline")
    ap.add_argument("run")
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--samples", type=int, default=10_000)
    ap.add_argument("--scale-to", type=int, default=10_000)
    ap.add_argument("--split", default="test", help="the split to take the N inputs from (mnist-10k: 2,000 test, "
                                                   "8,000 train)")
    radius = ap.add_mutually_exclusive_group()
    radius.add_argument("--r", default=None, help="an absolute r")
    radius.add_argument("--r-relative", default=None,
                        help="r as a multiple of the median r_min (default: neither, i.e. certify's own default "
                             "radius, --r-relative 1.5, whose calibration is timed with the rest)")
    ap.add_argument("--extra", default="", help="extra robvae certify flags (default: none, i.e. default flags)")
    ap.add_argument("--fit-from", type=int, default=None, metavar="M",
                    help="also run the first M < N inputs and extrapolate with the line through both runs")
    a = ap.parse_args(argv)
    if a.fit_from is not None and not 0 < a.fit_from < a.n:
        ap.error("--fit-from M needs 0 < M < --n")
    robvae = str(Path(sys.executable).with_name("robvae"))
    radius = (["--r", a.r] if a.r is not None else ["--r-relative", a.r_relative] if a.r_relative is not None
              else [])
    res = _run(robvae, a, a.n, radius)
    res.update({"extrapolated_seconds": res["seconds"] / a.n * a.scale_to, "extrapolated_to": a.scale_to})
    if a.fit_from:
        small = _run(robvae, a, a.fit_from, radius)
        slope = (res["seconds"] - small["seconds"]) / (a.n - a.fit_from)
        res.update({"fit_from": {k: small[k] for k in ("n", "seconds", "peak_mib_process_tree", "rc")},
                    "fit_seconds_per_input": slope, "fit_fixed_seconds": res["seconds"] - slope * a.n,
                    "extrapolated_seconds_fit": res["seconds"] + slope * (a.scale_to - a.n)})
        res["rc"] = res["rc"] or small["rc"]
    print(json.dumps(res))
    return 0 if res["rc"] == 0 else 1


def _run(robvae: str, a: argparse.Namespace, n: int, radius: list[str]) -> dict:
    """One timed ``robvae certify`` of the first ``n`` inputs, with its process tree's peak memory."""
    out = Path(tempfile.mkdtemp(prefix="robvae-headline-")) / "certify.csv"
    cmd = [robvae, "certify", a.run, "--split", a.split, "--n", str(n), "--samples", str(a.samples), *radius,
           "--quiet", "--out", str(out), *a.extra.split()]
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "MKL_NUM_THREADS")}
    loads = [os.getloadavg()[0]]
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = 0.0
    while p.poll() is None:
        peak = max(peak, _tree_rss_mib(p.pid))
        time.sleep(0.2)
    dt = time.perf_counter() - t0
    loads.append(os.getloadavg()[0])
    stdout, stderr = p.communicate()
    return {"command": " ".join(["robvae", *cmd[1:]]), "rc": p.returncode, "n": n, "samples": a.samples,
            "seconds": dt, "seconds_per_input": dt / n, "peak_mib_process_tree": peak, "load1_before_after": loads,
            "cpus": os.cpu_count(), "stdout_tail": stdout[-800:], "stderr_tail": stderr[-800:]}


if __name__ == "__main__":
    raise SystemExit(main())
