"""The demo: trains, evaluates, prints one table whose numbers come from its saved results."""

from __future__ import annotations

import numpy as np

from robvae.demo import run_demo
from robvae.fileio import read_csv


def test_demo_end_to_end(tmp_path):
    lines: list[str] = []
    out = run_demo(tmp_path / "demo", epochs=3, n_eval=6, progress=False, echo=lines.append)
    text = "\n".join(lines)
    assert "held-out negative ELBO" in text and "Theorem 1 radius, median" in text
    rows = read_csv(tmp_path / "demo" / "eval" / "per_input.csv")
    assert len(rows) == 6
    radius = np.array([float(r["radius"]) for r in rows])
    line = next(l for l in lines if l.startswith("Theorem 1 radius, median"))
    assert float(line.split()[-1]) == round(float(np.median(radius)), 4)
    # a second call resumes: the same numbers, nothing retrained
    again = run_demo(tmp_path / "demo", epochs=3, n_eval=6, progress=False, echo=lambda s: None)
    assert again["summary"]["radius"] == out["summary"]["radius"]
