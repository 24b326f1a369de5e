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
    # the new rows: rigorous radii, preset, both damages, each read back from the per-input CSV
    def value(prefix):
        return next(l for l in lines if l.startswith(prefix)).split()[-1]

    for col, prefix in (("radius_rigorous_mean", "rigorous radius (mean-only), median"),
                        ("radius_rigorous_full", "rigorous radius (full), median")):
        assert float(value(prefix)) == float(f"{np.median([float(r[col]) for r in rows]):.4g}")
    assert value("attack preset") == "cheap"
    assert float(value("expected damage (paper eq. 5), median")) == round(
        float(np.median([float(r["expected_damage"]) for r in rows])), 4)
    assert float(value("damage ||g(mu(x+d)) - g(mu(x))|| (deterministic), median")) == round(
        float(np.median([float(r["damage"]) for r in rows])), 4)
    assert next(l for l in lines if l.startswith("rigorous radius (full) above margin")).split()[-4] == "0"
    # a second call resumes: the same numbers, nothing retrained
    again = run_demo(tmp_path / "demo", epochs=3, n_eval=6, progress=False, echo=lambda s: None)
    assert again["summary"]["radius"] == out["summary"]["radius"]
