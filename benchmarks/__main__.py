"""``python -m benchmarks [--quick] [--only certify,peak,...] [--out FILE.json] [--device cpu|cuda]``

Prints one table (every ratio measured side by side in this run) and writes it as JSON with the
machine it ran on, to ``runs/benchmarks.json`` unless ``--out`` says otherwise (the recorded run,
``benchmarks/results.json``, is replaced only when named: ``--out benchmarks/results.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

from robvae.fileio import atomic_write_text

from .suite import SECTIONS, Settings
from .timing import GemmRate


#: Where a run's JSON goes unless ``--out`` names a file (git-ignored, like every ``runs/`` folder).
DEFAULT_OUT = "runs/benchmarks.json"


def machine() -> dict:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"nproc": os.cpu_count(), "cpu": cpu or platform.processor(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "python": platform.python_version(),
            "mkldnn": torch.backends.mkldnn.is_available(), "platform": platform.platform()}
    if torch.cuda.is_available():
        info["cuda_device"] = torch.cuda.get_device_name(0)
    return info


def fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "yes" if v else "NO"
    if isinstance(v, float):
        if v == 0 or 0.01 <= abs(v) < 1e5:
            return f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"
        return f"{v:.2e}"
    return str(v)


def table(rows: list[dict]) -> str:
    head = ("section", "benchmark", "value", "unit", "ratio", "goal", "ok", "ratio of / note")
    lines = [[r["section"], r["name"], fmt(r["value"]), r["unit"],
              (fmt(r["ratio"]) + ("x" if r["ratio"] is not None else "")), fmt(r["goal"]), fmt(r["ok"]),
              (r["ratio_vs"] or "") + (f"; {r['note']}" if r["note"] else "")] for r in rows]
    widths = [max(len(h), *(len(l[i]) for l in lines)) if lines else len(h) for i, h in enumerate(head)]
    widths[-1] = len(head[-1])
    out = ["  ".join(h.ljust(w) for h, w in zip(head, widths))]
    out.append("  ".join("-" * w for w in widths))
    out += ["  ".join(c.ljust(w) for c, w in zip(l, widths)) for l in lines]
    return "\n".join(out)


def markdown(rows: list[dict]) -> str:
    out = ["| section | benchmark | value | unit | ratio | goal | ok | ratio of / note |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ratio = fmt(r["ratio"]) + ("x" if r["ratio"] is not None else "")
        note = (r["ratio_vs"] or "") + (f"; {r['note']}" if r["note"] else "")
        out.append(f"| {r['section']} | {r['name']} | {fmt(r['value'])} | {r['unit']} | {ratio} | {fmt(r['goal'])} "
                   f"| {fmt(r['ok'])} | {note} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer repeats and smaller workloads (a few minutes)")
    ap.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated sections: {', '.join(SECTIONS)}")
    ap.add_argument("--out", default=DEFAULT_OUT, help=f"JSON output path (default {DEFAULT_OUT}; the recorded run is "
                    "benchmarks/results.json)")
    ap.add_argument("--markdown", default=None, help="also write the table as Markdown to this path")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (models and inputs follow it)")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's default)")
    ap.add_argument("--gemm-n", type=int, default=2048, help="size n of the n x n x n reference GEMM")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    names = [n.strip() for n in a.only.split(",") if n.strip()]
    unknown = set(names) - set(SECTIONS)
    if unknown:
        ap.error(f"unknown sections {sorted(unknown)}; choose from {', '.join(SECTIONS)}")
    s = Settings(quick=a.quick, device=a.device)
    gemm = GemmRate(a.gemm_n, device=a.device)
    rows: list[dict] = []
    t0 = time.perf_counter()
    for n in names:
        t1 = time.perf_counter()
        print(f"[benchmarks] {n} ...", file=sys.stderr, flush=True)
        rows += SECTIONS[n](s, gemm)
        print(f"[benchmarks] {n} done in {time.perf_counter() - t1:.0f}s", file=sys.stderr, flush=True)
    print(table(rows))
    goals = [r for r in rows if r["ok"] is not None]
    missed = [r["name"] for r in goals if not r["ok"]]
    print(f"\ngoals met: {len(goals) - len(missed)}/{len(goals)}" + (f"; missed: {', '.join(missed)}" if missed else ""))
    doc = {"command": "python -m benchmarks " + " ".join(argv if argv is not None else sys.argv[1:]),
           "machine": machine(), "quick": a.quick, "device": a.device, "seconds": time.perf_counter() - t0,
           "rows": rows}
    atomic_write_text(a.out, json.dumps(doc, indent=1, default=float))
    if a.markdown:
        atomic_write_text(a.markdown, markdown(rows) + "\n")
    print(f"written {a.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
