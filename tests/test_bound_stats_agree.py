"""`robvae margin` and `robvae study bound-vs-margin` report the same statistics on the same run and
inputs: both go through robvae.evaluation.evaluate and robvae.stats.bound_stats."""

from __future__ import annotations

import json
import math

import torch

from robvae.cli import main
from robvae.evaluation import EvalConfig
from robvae.stats import BoundStats
from robvae.studies import Executor, TrainOptions, bound_vs_margin

OPTS = TrainOptions(epochs=2, n_train=300, latent_dim=3, hidden=(32,), batch_size=64)
EV = EvalConfig(n=12, n_samples=600, margin_tol=0.2, r_relative=1.2, seed=3)


def _same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], float) and math.isnan(a[k]):
            assert math.isnan(b[k]), k
        else:
            assert a[k] == b[k], (k, a[k], b[k])


def test_margin_command_and_study_give_identical_statistics(tmp_path, capsys):
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # the serial sweep runs its trials with one thread: same floats here
    try:
        res = bound_vs_margin("digits", tmp_path / "study", train=OPTS, evaluation=EV,
                              executor=Executor(executor="serial", progress=False))
        run_dir = next((tmp_path / "study" / "train" / "trials").iterdir()) / "run"
        rc = main(["margin", str(run_dir), "--n", "12", "--n-samples", "600",
                   "--margin-tol", "0.2", "--r-relative", "1.2", "--seed", "3", "--quiet",
                   "--out", str(tmp_path / "m.csv")])
    finally:
        torch.set_num_threads(before)
    assert rc == 0, capsys.readouterr().err
    study = json.loads((tmp_path / "study" / "summary.json").read_text())["theorem1"]
    cli = json.loads((tmp_path / "m.json").read_text())["summary"]
    fields = [k for k in BoundStats.__dataclass_fields__ if k != "mask"]
    norm = lambda d: {k: (math.nan if d[k] is None else d[k]) for k in fields}  # noqa: E731  (JSON null = NaN)
    _same(norm(study), norm(cli))
    assert isinstance(res["stats"], BoundStats) and res["stats"].n == 12 and cli["n_used"] >= 3  # not vacuous
    _same(norm(res["stats"].to_dict()), norm(cli))
