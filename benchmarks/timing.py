"""Timing on a shared, noisy machine: interleaved repeats, best-of timings, the same-run GEMM rate.

Every ratio the benchmarks report is formed from timings taken in the same run, interleaved
(A, B, A, B, ...), each side the *minimum* over its repeats: on a machine shared with other
jobs the minimum is the timing least disturbed by them, and interleaving makes both sides see
the same load. Absolute times are reported too but only the ratios are meant to be compared.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch


def sync(device: torch.device | str | None = None) -> None:
    """Wait for queued device work (a no-op on the CPU)."""
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def once(fn: Callable[[], object], device=None) -> float:
    """Wall time of one call (seconds), synchronising the device around it."""
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def best_of(fn: Callable[[], object], repeats: int = 5, warmup: int = 1, device=None) -> float:
    """Minimum wall time over ``repeats`` calls after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    return min(once(fn, device) for _ in range(max(1, repeats)))


def interleaved(fns: dict[str, Callable[[], object]], repeats: int = 5, warmup: int = 1, device=None) -> dict[str, float]:
    """Best-of timings of several callables measured round-robin (A, B, C, A, B, C, ...)."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    best = {k: float("inf") for k in fns}
    for _ in range(max(1, repeats)):
        for k, fn in fns.items():
            best[k] = min(best[k], once(fn, device))
    return best


class GemmRate:
    """The float32 matrix-multiply rate ``torch.mm`` reaches on this machine, measured on demand.

    ``rate()`` times one n x n x n product (2 n^3 FLOPs) and returns FLOP/s; :func:`fraction`
    interleaves it with the timed code so both see the same machine load.
    """

    def __init__(self, n: int = 2048, device: str | torch.device = "cpu"):
        self.n = n
        self.device = torch.device(device)
        g = torch.Generator(device="cpu").manual_seed(0)
        self.a = torch.randn(n, n, generator=g).to(self.device)
        self.b = torch.randn(n, n, generator=g).to(self.device)
        self.flops = 2.0 * n ** 3

    def call(self) -> torch.Tensor:
        return torch.mm(self.a, self.b)

    def rate(self, repeats: int = 3) -> float:
        return self.flops / best_of(self.call, repeats, device=self.device)


def fraction(fn: Callable[[], object], flops: float, gemm: GemmRate, repeats: int = 5, device=None) -> dict[str, float]:
    """Achieved FLOP/s of ``fn`` (doing ``flops``) over the GEMM rate, timed interleaved with the GEMM."""
    t = interleaved({"fn": fn, "gemm": gemm.call}, repeats=repeats, device=device)
    achieved = flops / t["fn"]
    peak = gemm.flops / t["gemm"]
    return {"seconds": t["fn"], "flops": flops, "gflops": achieved / 1e9, "gemm_gflops": peak / 1e9,
            "fraction": achieved / peak}
