"""Child process for the memory benchmark: peak memory of one ``certify`` call (prints one JSON line).

CPU: the resident set sampled every millisecond by a thread during certify (/proc/self/statm),
its maximum minus the resident set just before the call, after a warm-up certify with S = 10
draws (imports, weights, allocator pools), so only what the call itself adds is reported
(ru_maxrss, a high-water mark over the whole process, is reported alongside). CUDA:
torch.cuda.max_memory_allocated above the allocation before the call.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import threading

import torch

from robvae.robustness import certify

from .suite import images, make_model


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _rss_now_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class _Sampler(threading.Thread):
    """Maximum resident set seen while running (sampled every millisecond)."""

    def __init__(self):
        super().__init__(daemon=True)
        self.peak = _rss_now_mib()
        self.stop = threading.Event()

    def run(self):
        while not self.stop.wait(0.001):
            self.peak = max(self.peak, _rss_now_mib())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", default="mlp")
    ap.add_argument("--samples", type=int, default=1000)
    ap.add_argument("--inputs", type=int, default=4)
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    model = make_model(a.arch, device=a.device)
    x = images(a.inputs, device=a.device)
    g = torch.Generator(device=a.device).manual_seed(0)
    certify(model, x, 1.0, n_samples=10, generator=g)
    cuda = torch.device(a.device).type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.max_memory_allocated() / 2**20
        certify(model, x, 1.0, n_samples=a.samples, generator=g)
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() / 2**20
        how, maxrss = "torch.cuda.max_memory_allocated", None
    else:
        base = _rss_now_mib()
        sampler = _Sampler()
        sampler.start()
        certify(model, x, 1.0, n_samples=a.samples, generator=g)
        sampler.stop.set()
        sampler.join()
        peak = max(sampler.peak, _rss_now_mib())
        how, maxrss = "RSS sampled every 1 ms minus RSS before the call", _rss_mib()
    print(json.dumps({"peak_mib": max(peak - base, 0.0), "baseline_mib": base, "total_peak_mib": peak, "how": how,
                      "ru_maxrss_mib": maxrss}))


if __name__ == "__main__":
    main()
