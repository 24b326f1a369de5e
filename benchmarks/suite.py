"""The benchmark sections. Each returns rows (dicts) for the table; every ratio in a row comes from
timings taken in the same run, interleaved (see :mod:`benchmarks.timing`).

Row fields: section, name, value, unit, ratio (with ``ratio_vs``: what it is a ratio to), goal
(a number the ratio must reach, or None), ok (goal met, or None), note, extra (a dict).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass

import torch

from robvae.attacks import MaxDamageAttack
from robvae.models import VAE, ModelConfig
from robvae.models.fast_decode import flat_decode
from robvae.robustness import certify, empirical_margin, jacobian_norm, r_robustness

from . import reference
from .flops import decoder_flops
from .timing import GemmRate, best_of, fraction, interleaved

MNIST = (1, 28, 28)
CIFAR = (3, 32, 32)


@dataclass
class Settings:
    """Sizes of one run (``quick`` shrinks repeats and workloads, never the comparisons)."""

    quick: bool = False
    device: str = "cpu"

    @property
    def repeats(self) -> int:
        return 2 if self.quick else 4

    @property
    def rows_budget(self) -> int:
        """Decoder rows (inputs x draws) per timed certify call."""
        return 16_000 if self.quick else 64_000


def row(section, name, value, unit, *, ratio=None, ratio_vs=None, goal=None, note="", **extra) -> dict:
    ok = None if goal is None or ratio is None else bool(ratio >= goal)
    return {"section": section, "name": name, "value": value, "unit": unit, "ratio": ratio, "ratio_vs": ratio_vs,
            "goal": goal, "ok": ok, "note": note, "extra": extra}


def make_model(arch: str, shape=MNIST, latent_dim: int = 10, device="cpu") -> VAE:
    torch.manual_seed(0)
    return VAE(ModelConfig(input_shape=shape, arch=arch, latent_dim=latent_dim)).eval().to(device)


def images(n: int, shape=MNIST, device="cpu", seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, *shape, generator=g).to(device)


def radius_for(model, x) -> float:
    """A radius near the median ||Delta|| so p_r is not trivially 0 or 1."""
    from robvae.robustness import r_min
    return float(r_min(model, x[:4], n_samples=200, generator=torch.Generator().manual_seed(0)).median()) * 1.1


def inputs_for(S: int, s: Settings, cap: int = 32) -> int:
    return max(1, min(cap, s.rows_budget // S))


# --------------------------------------------------------------------------------------------
# 1. certification throughput against the per-sample reference
# --------------------------------------------------------------------------------------------
def certify_throughput(s: Settings) -> list[dict]:
    rows = []
    n_ref, s_ref = (1, 20) if s.quick else (2, 50)
    for arch in ("mlp", "conv"):
        model = make_model(arch, device=s.device)
        x_all = images(64, device=s.device)
        r = radius_for(model, x_all)
        xr = x_all[:n_ref].cpu()
        model_cpu = model if s.device == "cpu" else make_model(arch)
        fns = {
            "ref_sampling": lambda: [reference.sample_counts(model_cpu, xr[i:i + 1], r, s_ref) for i in range(n_ref)],
            "ref_jacobian": lambda: [reference.jacobian_rows(model_cpu, xr[i:i + 1]) for i in range(n_ref)],
        }
        batch = {}
        for S in (100, 1000, 10_000):
            B = inputs_for(S, s)
            batch[S] = B
            x = x_all[:B]
            g = torch.Generator(device=s.device).manual_seed(0)
            fns[f"certify_{S}"] = (lambda x=x, S=S, g=g: certify(model, x, r, n_samples=S, generator=g))
        t = interleaved(fns, repeats=s.repeats, device=s.device)
        per_draw = t["ref_sampling"] / (n_ref * s_ref)
        per_jac = t["ref_jacobian"] / n_ref
        for S in (100, 1000, 10_000):
            t_lib = t[f"certify_{S}"] / batch[S]
            t_ref = per_jac + S * per_draw
            rows.append(row(
                "certify", f"{arch} certify S={S}", 1.0 / t_lib, "inputs/s", ratio=t_ref / t_lib,
                ratio_vs="reference (loop over images and draws, Jacobian row by row)",
                goal=10.0 if S == 1000 else None,
                note=f"{batch[S]} inputs per call; reference timed on {n_ref} input(s) x {s_ref} draws, "
                     f"scaled per input per draw", reference_inputs_per_s=1.0 / t_ref,
                reference_s_per_draw=per_draw, reference_s_jacobian=per_jac))
    return rows


# --------------------------------------------------------------------------------------------
# 2. fraction of the same-run GEMM rate for the decoder sampling
# --------------------------------------------------------------------------------------------
def peak_fraction(s: Settings, gemm: GemmRate) -> list[dict]:
    rows = []
    for arch in ("mlp", "conv"):
        model = make_model(arch, device=s.device)
        f_row = decoder_flops(model, device=s.device)
        x_all = images(64, device=s.device)
        r = radius_for(model, x_all)
        for S in (1000, 10_000):
            B = inputs_for(S, s)
            x = x_all[:B]
            g = torch.Generator(device=s.device).manual_seed(0)
            fr = fraction(lambda: r_robustness(model, x, r, n_samples=S, generator=g), B * (S + 1) * f_row, gemm,
                          repeats=s.repeats, device=s.device)
            rows.append(row(
                "peak", f"{arch} sampling S={S}", fr["gflops"], "GFLOP/s", ratio=fr["fraction"],
                ratio_vs=f"same-run torch.mm {gemm.n}^3 float32 ({fr['gemm_gflops']:.1f} GFLOP/s)", goal=0.5,
                note=f"r_robustness, {B} inputs; decoder FLOPs {f_row / 1e6:.2f} M/row from layer shapes",
                seconds=fr["seconds"], flops=fr["flops"], gemm_gflops=fr["gemm_gflops"]))
    return rows


def decoder_variants(s: Settings, gemm: GemmRate) -> list[dict]:
    """What helps the decoder: plain NCHW eager vs the library's path, chunk sizes, mkldnn off."""
    rows = []
    n = 4096 if s.quick else 8192
    for arch in ("mlp", "conv"):
        model = make_model(arch, device=s.device)
        f_row = decoder_flops(model, device=s.device)
        z = torch.randn(n, model.latent_dim, device=s.device)
        ref = torch.rand(1, int(torch.tensor(MNIST).prod()), device=s.device)

        def plain(z=z):
            with torch.inference_mode():
                return (model.decode(z).flatten(1) - ref).norm(dim=-1)

        def library(z=z):
            with torch.inference_mode():
                return (flat_decode(model, z) - ref).norm(dim=-1)

        variants = {"plain model.decode (NCHW, eager)": plain, "library flat_decode": library}
        if s.device == "cpu":
            def no_mkldnn(z=z):
                with torch.backends.mkldnn.flags(enabled=False):
                    return library(z)
            variants["library flat_decode, mkldnn off"] = no_mkldnn
        for name, fn in variants.items():
            fr = fraction(fn, n * f_row, gemm, repeats=s.repeats, device=s.device)
            rows.append(row("decoder", f"{arch} {name}, {n} rows", fr["gflops"], "GFLOP/s", ratio=fr["fraction"],
                            ratio_vs="same-run GEMM rate", note="decode + ||g(z) - ref||"))
        for rows_per_call in (256, 1024, 4096, 16384):
            zz = torch.randn(rows_per_call, model.latent_dim, device=s.device)
            reps = max(1, 16384 // rows_per_call)

            def chunked(zz=zz, reps=reps):
                for _ in range(reps):
                    library(zz)
            fr = fraction(chunked, reps * rows_per_call * f_row, gemm, repeats=s.repeats, device=s.device)
            rows.append(row("decoder", f"{arch} rows per decoder call = {rows_per_call}", fr["gflops"], "GFLOP/s",
                            ratio=fr["fraction"], ratio_vs="same-run GEMM rate", note="library flat_decode"))
    return rows


# --------------------------------------------------------------------------------------------
# 3. Jacobian norms
# --------------------------------------------------------------------------------------------
def _loop_frobenius(model, x):
    """One latent row at a time with autograd, all inputs of the batch together."""
    with torch.enable_grad():
        xg = x.detach().clone().requires_grad_(True)
        mu, _ = model.encode(xg)
        sq = torch.zeros(x.shape[0], device=x.device)
        for j in range(mu.shape[1]):
            (gj,) = torch.autograd.grad(mu[:, j].sum(), xg, retain_graph=True)
            sq += gj.flatten(1).pow(2).sum(1)
    return sq.sqrt()


def jacobian_norms(s: Settings) -> list[dict]:
    rows = []
    B = 16 if s.quick else 32
    for d in (10, 32, 128):
        model = make_model("mlp", latent_dim=d, device=s.device)
        x = images(B, device=s.device)
        exact = jacobian_norm(model, x, "frobenius", "exact")
        g = torch.Generator(device=s.device).manual_seed(0)
        fns = {
            "loop": lambda: _loop_frobenius(model, x),
            "exact": lambda: jacobian_norm(model, x, "frobenius", "exact"),
            "hutch16": lambda: jacobian_norm(model, x, "frobenius", "hutchinson", n_probes=16, generator=g),
            "hutch64": lambda: jacobian_norm(model, x, "frobenius", "hutchinson", n_probes=64, generator=g),
        }
        t = interleaved(fns, repeats=s.repeats, device=s.device)
        errs = {"loop": _loop_frobenius(model, x), "exact": exact,
                "hutch16": jacobian_norm(model, x, "frobenius", "hutchinson", n_probes=16, generator=g),
                "hutch64": jacobian_norm(model, x, "frobenius", "hutchinson", n_probes=64, generator=g)}
        labels = {"loop": "row-at-a-time loop", "exact": "exact vectorised (vmap)", "hutch16": "Hutchinson k=16",
                  "hutch64": "Hutchinson k=64"}
        for k, lab in labels.items():
            err = float(((errs[k] - exact).abs() / exact).median())
            rows.append(row("jacobian", f"d={d} ||J||_F {lab}", B / t[k], "inputs/s", ratio=t["loop"] / t[k],
                            ratio_vs="row-at-a-time loop", note=f"median rel. error {err:.2e}; {B} inputs, MLP MNIST",
                            rel_error=err))
    return rows


# --------------------------------------------------------------------------------------------
# 4. attacks and the margin search
# --------------------------------------------------------------------------------------------
def attacks(s: Settings) -> list[dict]:
    rows = []
    steps = 10 if s.quick else 20
    B = 32 if s.quick else 64
    n_one = 2 if s.quick else 4
    eps = 1.0
    for arch in ("mlp", "conv"):
        model = make_model(arch, device=s.device)
        x = images(B, device=s.device)
        g = torch.Generator(device=s.device).manual_seed(0)
        atk = MaxDamageAttack(model, eps, steps=steps, restarts=1, eta_samples=1, generator=g)
        step = eps / 4
        fns = {
            "batched": lambda: atk(x),
            "reference": lambda: [reference.max_damage_one(model, x[i:i + 1], eps, steps, step) for i in range(n_one)],
            "library_one": lambda: [atk(x[i:i + 1]) for i in range(n_one)],
        }
        t = interleaved(fns, repeats=s.repeats, device=s.device)
        per_in = {"batched": t["batched"] / B, "reference": t["reference"] / n_one, "library_one": t["library_one"] / n_one}
        rows.append(row("attack", f"{arch} max-damage PGD, batched ({B} inputs)", steps / per_in["batched"],
                        "steps/s per input", ratio=per_in["reference"] / per_in["batched"],
                        ratio_vs="one image at a time (research-style loop)", goal=10.0,
                        note=f"L2 eps={eps}, {steps} steps, 1 eta draw/step"))
        rows.append(row("attack", f"{arch} max-damage PGD, library one image at a time", steps / per_in["library_one"],
                        "steps/s per input", ratio=per_in["reference"] / per_in["library_one"],
                        ratio_vs="one image at a time (research-style loop)", note="same attack, B = 1 per call"))
        # margin search
        Bm = 4 if s.quick else 8
        xm = x[:Bm]
        r = radius_for(model, xm)
        kw = dict(n_samples=200 if s.quick else 500, steps=10 if s.quick else 20, restarts=1, eta_samples=2,
                  tol=0.05, max_iter=8)
        gm = torch.Generator(device=s.device).manual_seed(0)
        tm = interleaved({
            "batched": lambda: empirical_margin(model, xm, r, generator=gm, **kw),
            "one": lambda: [empirical_margin(model, xm[i:i + 1], r, generator=gm, **kw) for i in range(2)],
        }, repeats=max(1, s.repeats // 2), device=s.device)
        res = empirical_margin(model, xm, r, generator=gm, **kw)
        rows.append(row("margin", f"{arch} empirical margin, batched ({Bm} inputs)", tm["batched"] / Bm, "s per input",
                        ratio=(tm["one"] / 2) / (tm["batched"] / Bm), ratio_vs="one image at a time (library)",
                        note=f"bisection tol 0.05, {kw['steps']} PGD steps, {kw['n_samples']} draws per p; "
                             f"{res.n_attacks} batched attacks", n_attacks=res.n_attacks))
    return rows


# --------------------------------------------------------------------------------------------
# 5. memory, one fresh subprocess per S
# --------------------------------------------------------------------------------------------
def memory(s: Settings) -> list[dict]:
    rows = []
    archs = ("mlp",) if s.quick else ("mlp", "conv")
    for arch in archs:
        B = 8 if arch == "mlp" else 2
        base = None
        for S in (1000, 10_000, 100_000):
            cmd = [sys.executable, "-m", "benchmarks.memchild", "--arch", arch, "--samples", str(S), "--inputs", str(B),
                   "--device", s.device]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True, env={**os.environ},
                                 cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
            m = json.loads(out.stdout.strip().splitlines()[-1])
            peak = m["peak_mib"]
            base = base if base is not None else peak
            rows.append(row("memory", f"{arch} certify peak memory S={S}", peak, "MiB above baseline",
                            ratio=peak / base if base > 0 else None, ratio_vs="same at S=1000",
                            note=f"{B} input(s); {m['how']}; fresh subprocess", **m))
        last = rows[-1]
        unchunked = B * 100_000 * 784 * 4 / 2**20  # the [B, S, D] float32 outputs of one unchunked call
        last["goal"] = "<= 2x + 16 MiB"
        last["ok"] = bool(last["value"] <= 2.0 * base + 16.0)
        last["note"] += f"; one unchunked decoder call would hold {unchunked:.0f} MiB of outputs alone"
    return rows


# --------------------------------------------------------------------------------------------
# 6. scaling in batch size and input size
# --------------------------------------------------------------------------------------------
def scaling(s: Settings) -> list[dict]:
    rows = []
    S = 500
    model = make_model("mlp", device=s.device)
    x_all = images(64, device=s.device)
    r = radius_for(model, x_all)
    sizes = (1, 4, 16, 64)
    g = torch.Generator(device=s.device).manual_seed(0)
    t = interleaved({B: (lambda B=B: certify(model, x_all[:B], r, n_samples=S, generator=g)) for B in sizes},
                    repeats=s.repeats, device=s.device)
    for B in sizes:
        rows.append(row("scaling", f"mlp certify S={S}, batch {B}", t[B] / B * 1e3, "ms per input",
                        ratio=(t[B] / B) / (t[sizes[-1]] / sizes[-1]), ratio_vs=f"per-input time at batch {sizes[-1]}"))
    for arch in ("mlp", "conv"):
        fns, work = {}, {}
        for label, shape in (("MNIST 1x28x28", MNIST), ("CIFAR 3x32x32", CIFAR)):
            m = make_model(arch, shape=shape, device=s.device)
            x = images(8, shape=shape, device=s.device)
            rr = radius_for(m, x)
            work[label] = decoder_flops(m, device=s.device) * S
            fns[label] = (lambda m=m, x=x, rr=rr: certify(m, x, rr, n_samples=S, generator=g))
        t = interleaved(fns, repeats=s.repeats, device=s.device)
        for label in fns:
            rows.append(row("scaling", f"{arch} certify S={S}, {label}", t[label] / 8 * 1e3, "ms per input",
                            ratio=(t[label] / work[label]) / (t["MNIST 1x28x28"] / work["MNIST 1x28x28"]),
                            ratio_vs="time per decoder FLOP relative to MNIST (1 = linear in the work)",
                            note=f"decoder work {work[label] / 1e9:.2f} GFLOP per input"))
    return rows


SECTIONS = {
    "certify": lambda s, g: certify_throughput(s),
    "peak": peak_fraction,
    "decoder": decoder_variants,
    "jacobian": lambda s, g: jacobian_norms(s),
    "attack": lambda s, g: attacks(s),
    "memory": lambda s, g: memory(s),
    "scaling": lambda s, g: scaling(s),
}


def _perf11():
    from . import perf11  # issue 11's sections (they import this module's helpers)

    return perf11


SECTIONS.update({
    "contention": lambda s, g: _perf11().contention(s),
    "usermodels": lambda s, g: _perf11().usermodels(s, g),
    "bf16": lambda s, g: _perf11().bf16(s, g),
    "lipschitz": lambda s, g: _perf11().lipschitz(s),
})


def _issue9():
    from . import attacks as issue9  # issue 9's rows: attack ensemble presets vs the old default
    return issue9


SECTIONS["ensemble"] = lambda s, g: _issue9().ensemble(s)

__all__ = ["SECTIONS", "Settings", "best_of"]
