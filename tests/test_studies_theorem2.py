"""Theorem 2 (THEORY.md section 7): a trained linear encoder against the closed-form beta-VAE optimum."""

from __future__ import annotations

import math

import pytest
import torch

from robvae.studies.theorem2 import Theorem2Config, exact_optimum, make_decoder, theorem2_study, train_linear_encoder


def test_closed_form_hand_values():
    # |w| = 2, s = 1, beta = 4: sigma^2 = 1 / (1 + 4 / 4) = 1/2; Jacobian = (1/2) w^T / 4, norm = 2 * 1/8
    W = torch.zeros(3, 1, dtype=torch.float64)
    W[0, 0] = 2.0
    ex = exact_optimum(W, 1.0, 4.0)
    assert float(ex["sigma"][0]) == pytest.approx(math.sqrt(0.5))
    assert ex["jac_frobenius"] == pytest.approx(0.25)


def test_decoder_columns_orthogonal_with_given_norms():
    cfg = Theorem2Config(column_norms=(0.5, 3.0), data_dim=5)
    W = make_decoder(cfg)
    G = W.T @ W
    assert torch.allclose(G, torch.diag(torch.tensor([0.25, 9.0], dtype=torch.float64)), atol=1e-12)


def test_trained_encoder_matches_optimum():
    cfg = Theorem2Config(column_norms=(0.5, 1.0, 2.0), data_dim=8, n_data=200, steps=50)
    W = make_decoder(cfg)
    for beta in (1.0, 8.0):
        fit = train_linear_encoder(W, cfg, beta)
        ex = exact_optimum(W, cfg.noise_scale, beta)
        assert torch.allclose(fit["sigma"], ex["sigma"], rtol=2e-2), (beta, fit["sigma"], ex["sigma"])
        assert fit["jac_frobenius"] == pytest.approx(ex["jac_frobenius"], rel=2e-2)
        assert torch.allclose(fit["A"], ex["jacobian"], atol=2e-2)


def test_study_writes_files_and_trends(tmp_path):
    cfg = Theorem2Config(column_norms=(1.0, 2.0), data_dim=6, n_data=200, steps=60)
    res = theorem2_study([1, 4, 16], tmp_path, cfg)
    s = res["summary"]
    assert s["max_rel_error_sigma"] < 0.02 and s["max_rel_error_jacobian"] < 0.02
    assert s["sigma_increasing_in_beta"] and s["jacobian_decreasing_in_beta"]
    for f in ("theorem2.png", "theorem2.csv", "theorem2_jacobian.csv", "summary.json", "study.json"):
        assert (tmp_path / f).is_file(), f
    assert (tmp_path / "theorem2.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(res["rows"]) == 3 * 2 and len(res["jacobian_rows"]) == 3


def test_cli_theorem2_and_bad_betas(tmp_path, capsys):
    from robvae.cli import main

    assert main(["study", "theorem2", "--out", str(tmp_path), "--betas", "1,4", "--column-norms", "1,2",
                 "--data-dim", "4", "--steps", "40"]) == 0
    out = capsys.readouterr().out
    assert "largest relative error" in out and (tmp_path / "theorem2.png").is_file()
    assert main(["study", "theorem2", "--out", str(tmp_path), "--betas", "1,x"]) == 2
    assert main(["study", "beta", "--out", str(tmp_path), "--betas", "0,1"]) == 2


def test_the_monotonicity_flags_follow_beta_not_the_order_given():
    """Found by the studies audit: --betas 4,1,2 reported the Jacobian as not decreasing in beta."""
    cfg = Theorem2Config(column_norms=(1.0, 2.0), data_dim=6, n_data=200, steps=60)
    s = theorem2_study([16, 1, 4, 4], None, cfg)["summary"]
    assert s["betas"] == [16.0, 1.0, 4.0]
    assert s["sigma_increasing_in_beta"] and s["jacobian_decreasing_in_beta"]
