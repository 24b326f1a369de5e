"""``robvae.studies.certified.certified_study``: resuming a study folder (tiny models on digits)."""

from __future__ import annotations

import pytest

import robvae.studies.certified as certified
from robvae.errors import CheckpointError
from robvae.studies.certified import StudyModel, certified_study

TINY = dict(dataset="digits", epochs=1, latent_dim=2, hidden=(8,), n_train=100, n=2, n_samples=50)


def test_a_changed_model_is_refused_before_any_model_is_evaluated(tmp_path, monkeypatch):
    """Found by audit h60: a rerun of a study folder with another --beta evaluated model0 again
    and only then failed on model1's stored config; every folder is compared before any work."""
    models = [StudyModel("vae"), StudyModel("beta-vae (beta=4)", "beta-vae", 4.0)]
    certified_study(tmp_path, models=models, **TINY)

    def boom(*a, **k):
        raise AssertionError("a model was trained or evaluated before the changed config was found")

    monkeypatch.setattr(certified, "rigorous_certify", boom)
    monkeypatch.setattr(certified, "train", boom)
    changed = [models[0], StudyModel("beta-vae (beta=2)", "beta-vae", 2.0)]
    with pytest.raises(CheckpointError, match=r"model1 holds a different config \(differs in: objective\.beta\)"):
        certified_study(tmp_path, models=changed, **TINY)
