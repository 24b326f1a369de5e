"""Training: run folders, save/load round trip, determinism, resume, checkpoint errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from robvae import load
from robvae.errors import CheckpointError
from robvae.fileio import read_csv
from robvae.models import ModelConfig
from robvae.training import CHECKPOINT_FILE, CONFIG_FILE, WEIGHTS_FILE, TrainConfig, train


def _config(**kw) -> TrainConfig:
    base = dict(dataset="digits", model=ModelConfig(latent_dim=4, hidden=(32,)), epochs=3, batch_size=64, seed=3)
    base.update(kw)
    return TrainConfig(**base)


def _weights(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_train_writes_a_complete_run_folder_and_loads_back(tmp_path, digits_small):
    run = train(_config(), tmp_path / "run", progress=False, data=digits_small)
    for name in (CONFIG_FILE, WEIGHTS_FILE, CHECKPOINT_FILE, "metrics.csv"):
        assert (tmp_path / "run" / name).is_file(), name
    # training draws no figures; the CLI, the sweep workers and the demo call the report's
    from robvae.report.figures import save_reconstructions

    assert not (tmp_path / "run" / "reconstructions.png").exists()
    assert save_reconstructions(run).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(run.metrics) == 3
    first, last = float(run.metrics[0]["test_elbo"]), float(run.metrics[-1]["test_elbo"])
    assert last > first  # held-out ELBO improves
    again = load(tmp_path / "run")
    x = digits_small[1].images[:8]
    with torch.no_grad():
        assert torch.equal(again.model.reconstruct(x), run.model.reconstruct(x))
    assert again.config.to_dict() == run.config.to_dict()
    assert json.loads((tmp_path / "run" / CONFIG_FILE).read_text())["model"]["latent_dim"] == 4


def test_same_config_and_seed_give_the_same_weights(tmp_path, digits_small):
    a = train(_config(epochs=2), tmp_path / "a", progress=False, data=digits_small)
    b = train(_config(epochs=2), tmp_path / "b", progress=False, data=digits_small)
    c = train(_config(epochs=2, seed=4), tmp_path / "c", progress=False, data=digits_small)
    wa, wb, wc = _weights(a.model), _weights(b.model), _weights(c.model)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not all(torch.equal(wa[k], wc[k]) for k in wa)
    for name in (WEIGHTS_FILE, CHECKPOINT_FILE, CONFIG_FILE):  # and the same files, byte for byte
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_safetensors_files_are_written_in_one_byte_order_and_read_back(tmp_path):
    from safetensors.torch import load as st_load
    from safetensors.torch import save as st_save

    from robvae.fileio import _canonical, load_tensors, save_tensors

    tensors = {"w": torch.arange(6.0).view(2, 3), "b": torch.tensor([1, 2], dtype=torch.int64), "h": torch.ones(3).half()}
    meta = {f"k{i}": f"v{i}" for i in range(12)} | {"config": '{"name": "é ✓"}'}
    raws = {_canonical(st_save(tensors, metadata=meta)) for _ in range(30)}
    assert len(raws) == 1  # safetensors' own order varies from call to call
    raw = raws.pop()
    assert (8 + int.from_bytes(raw[:8], "little")) % 8 == 0  # the data stays 8-byte aligned
    back = st_load(raw)
    assert set(back) == set(tensors) and all(torch.equal(back[k], tensors[k]) for k in tensors)
    save_tensors(tmp_path / "t.safetensors", tensors, meta)
    assert (tmp_path / "t.safetensors").read_bytes() == raw
    back, meta_back = load_tensors(tmp_path / "t.safetensors")
    assert meta_back == meta and all(torch.equal(back[k], tensors[k]) for k in tensors)


def test_interrupted_run_resumes_to_the_same_weights(tmp_path, digits_small):
    full = train(_config(epochs=4), tmp_path / "full", progress=False, data=digits_small)

    def stop_after_two(epoch, metrics):
        if epoch == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(_config(epochs=4), tmp_path / "cut", progress=False, data=digits_small, callback=stop_after_two)
    assert not (tmp_path / "cut" / WEIGHTS_FILE).exists()
    with pytest.raises(CheckpointError, match="has not finished"):
        load(tmp_path / "cut")
    assert load(tmp_path / "cut", checkpoint=True).model is not None
    epochs_seen = []
    resumed = train(_config(epochs=4), tmp_path / "cut", progress=False, data=digits_small,
                    callback=lambda e, m: epochs_seen.append(e))
    assert epochs_seen == [3, 4]  # epochs 1-2 were not recomputed
    wf, wr = _weights(full.model), _weights(resumed.model)
    assert all(torch.equal(wf[k], wr[k]) for k in wf)
    assert [r["test_elbo"] for r in resumed.metrics] == [r["test_elbo"] for r in full.metrics]


def test_a_different_config_in_an_existing_folder_is_refused(tmp_path, digits_small):
    train(_config(epochs=1), tmp_path / "run", progress=False, data=digits_small)
    with pytest.raises(CheckpointError, match=r"different config \(differs in: model\.latent_dim\)"):
        train(_config(epochs=1, model=ModelConfig(latent_dim=5, hidden=(32,))), tmp_path / "run",
              progress=False, data=digits_small)


def test_missing_corrupt_and_mismatched_checkpoints_name_the_file(tmp_path, digits_small):
    train(_config(epochs=1), tmp_path / "run", progress=False, data=digits_small)
    weights = tmp_path / "run" / WEIGHTS_FILE
    with pytest.raises(CheckpointError, match="does not exist"):
        load(tmp_path / "nowhere")
    # mismatched: the config says a different latent size than the weights hold
    cfg = json.loads((tmp_path / "run" / CONFIG_FILE).read_text())
    cfg["model"]["latent_dim"] = 7
    (tmp_path / "run" / CONFIG_FILE).write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=f"{WEIGHTS_FILE}.*does not match"):
        load(tmp_path / "run")
    cfg["model"]["latent_dim"] = 4
    (tmp_path / "run" / CONFIG_FILE).write_text(json.dumps(cfg))
    load(tmp_path / "run")
    # corrupt: truncated weights
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(CheckpointError, match=f"{WEIGHTS_FILE}.*corrupt"):
        load(tmp_path / "run")
    weights.unlink()
    (tmp_path / "run" / CHECKPOINT_FILE).unlink()
    with pytest.raises(CheckpointError, match=f"{WEIGHTS_FILE} is missing"):
        load(tmp_path / "run")
    (tmp_path / "run" / CONFIG_FILE).write_text("{not json")
    with pytest.raises(CheckpointError, match=f"{CONFIG_FILE} is corrupt"):
        load(tmp_path / "run")


def test_beta_tcvae_and_tau_train(tmp_path, digits_small):
    from robvae.objectives import ObjectiveConfig

    run = train(_config(epochs=2, objective=ObjectiveConfig("beta-tcvae", 4.0),
                        model=ModelConfig(latent_dim=4, hidden=(32,), tau=0.3)),
                tmp_path / "tc", progress=False, data=digits_small)
    _, sigma = run.model.encode(digits_small[1].images)
    assert float(sigma.min()) >= 0.3
    assert run.config.objective.name == "beta-tcvae"


def test_bad_train_config_is_rejected():
    with pytest.raises(ValueError, match="epochs"):
        TrainConfig(epochs=0)
    with pytest.raises(ValueError, match="unknown config fields"):
        TrainConfig.from_dict({"epoch": 3})


def test_atomic_writes_leave_no_temporary_files_and_normal_permissions(tmp_path):
    import stat

    from robvae.fileio import atomic_write_text

    from robvae import fileio as rio

    p = atomic_write_text(tmp_path / "a.txt", "hello")
    assert p.read_text() == "hello"
    assert stat.S_IMODE(p.stat().st_mode) == 0o666 & ~rio._UMASK
    assert [f.name for f in tmp_path.iterdir()] == ["a.txt"]


def test_a_corrupt_checkpoint_or_metrics_file_never_costs_the_finished_run(tmp_path, digits_small):
    """Found by an audit: extending a finished run whose checkpoint was corrupt deleted its good
    final weights (and wrote the longer config) before failing; a truncated metrics.csv was
    trusted (its partial row printed as the run's ELBO, the resumed file skipped epochs), an empty
    one crashed with an IndexError, and a row appended to a finished run's file was reported."""
    from robvae.training import METRICS_FILE

    run = tmp_path / "run"
    train(_config(epochs=2), run, progress=False, data=digits_small)
    weights, config, metrics = ((run / f).read_bytes() for f in (WEIGHTS_FILE, CONFIG_FILE, METRICS_FILE))
    good = (run / CHECKPOINT_FILE).read_bytes()
    (run / CHECKPOINT_FILE).write_bytes(good[:200])
    with pytest.raises(CheckpointError, match="checkpoint.safetensors is corrupt"):
        train(_config(epochs=3), run, progress=False, data=digits_small)
    assert (run / WEIGHTS_FILE).read_bytes() == weights and (run / CONFIG_FILE).read_bytes() == config
    (run / CHECKPOINT_FILE).write_bytes(good)
    cut = metrics.rindex(b"\n2,") + 4  # the last row cut after its first cells
    for damaged in (metrics[:cut], metrics[: metrics.rindex(b"\n2,") + 1], b"", metrics.replace(b"\n2,", b"\n7,")):
        (run / METRICS_FILE).write_bytes(damaged)
        with pytest.raises(CheckpointError, match="metrics.csv is corrupt or does not match the checkpoint"):
            train(_config(epochs=3), run, progress=False, data=digits_small)
        assert (run / WEIGHTS_FILE).read_bytes() == weights
    (run / METRICS_FILE).unlink()
    with pytest.raises(CheckpointError, match="metrics.csv is missing"):
        train(_config(epochs=2), run, progress=False, data=digits_small)
    (run / METRICS_FILE).write_bytes(metrics + b"3,1,1,1,1\n")  # a row the run never had
    again = train(_config(epochs=2), run, progress=False, data=digits_small)
    assert len(again.metrics) == 2 and (run / METRICS_FILE).read_bytes() == metrics


def test_a_killed_writes_temporary_files_are_removed_when_the_run_resumes(tmp_path, digits_small):
    """A process killed between writing a temporary file and renaming it leaves the temporary
    behind (seen after a SIGKILLed sweep); the resumed run removes its own, and nothing else."""
    run = tmp_path / "run"
    train(_config(epochs=1), run, progress=False, data=digits_small)
    stale = [run / ".checkpoint.safetensors.ab12cd.tmp", run / ".metrics.csv.zz.tmp"]
    other = run / ".notes.txt.keep.tmp"
    for f in (*stale, other):
        f.write_bytes(b"partial")
    train(_config(epochs=2), run, progress=False, data=digits_small)
    assert not any(f.exists() for f in stale) and other.exists()


def test_a_run_killed_between_its_metrics_and_its_checkpoint_resumes(tmp_path, digits_small, monkeypatch):
    """Found by a flaky sweep test: the checkpoint was written before metrics.csv, so a process
    killed between the two left a metrics file one row short, and the resume refused the run
    ("restore it or start a new folder"). Metrics are written first now: the extra row is dropped
    and its epoch recomputed, to the uninterrupted run's weights and metrics."""
    import robvae.training as tr

    ref = train(_config(epochs=3), tmp_path / "ref", progress=False, data=digits_small)
    real = tr.save_tensors
    calls = []

    def killed_at_second_checkpoint(path, *a, **k):
        if Path(path).name == CHECKPOINT_FILE:
            calls.append(1)
            if len(calls) == 2:
                raise KeyboardInterrupt  # after metrics.csv got epoch 2, before the checkpoint did
        return real(path, *a, **k)

    monkeypatch.setattr(tr, "save_tensors", killed_at_second_checkpoint)
    with pytest.raises(KeyboardInterrupt):
        train(_config(epochs=3), tmp_path / "run", progress=False, data=digits_small)
    monkeypatch.setattr(tr, "save_tensors", real)
    assert len(read_csv(tmp_path / "run" / "metrics.csv")) == 2  # one row ahead of the checkpoint (epoch 1)
    again = train(_config(epochs=3), tmp_path / "run", progress=False, data=digits_small)
    assert (tmp_path / "run" / WEIGHTS_FILE).read_bytes() == (tmp_path / "ref" / WEIGHTS_FILE).read_bytes()
    assert [int(m["epoch"]) for m in again.metrics] == [1, 2, 3]
    assert [m["test_elbo"] for m in again.metrics] == [m["test_elbo"] for m in ref.metrics]


# --- found by an audit of the training layer (session 13) ------------------------------------------
def _rewrite(path: Path, tensors=None, meta=None, drop_meta=()):
    """Rewrite a safetensors file with some tensors or metadata changed (a tensor given as None is
    removed)."""
    from robvae.fileio import load_tensors, save_tensors

    t, m = load_tensors(path)
    t.update(tensors or {})
    m = {**{k: v for k, v in m.items() if k not in drop_meta}, **(meta or {})}
    save_tensors(path, {k: v for k, v in t.items() if v is not None}, m)


def test_a_checkpoint_of_another_config_is_never_continued(tmp_path, digits_small):
    """config.json edited to beta 8, then more epochs at beta 8: the beta-1 checkpoint was
    continued without a word (and the finished weights, which would have told, deleted first);
    config.json deleted: the beta-1 weights were relabelled as another config's. Both refused now,
    before anything in the folder changes."""
    from robvae.objectives import ObjectiveConfig

    run = tmp_path / "run"
    train(_config(epochs=2, objective=ObjectiveConfig("beta-vae", 1.0)), run, progress=False, data=digits_small)
    before = (run / WEIGHTS_FILE).read_bytes()
    cfg = json.loads((run / CONFIG_FILE).read_text())
    cfg["objective"]["beta"] = 8.0
    (run / CONFIG_FILE).write_text(json.dumps(cfg))
    beta8 = _config(epochs=4, objective=ObjectiveConfig("beta-vae", 8.0))
    with pytest.raises(CheckpointError, match=r"checkpoint .* does not match this training's config .*: it was trained "
                                              r"with objective.beta = 1.0, this training asks for 8.0"):
        train(beta8, run, progress=False, data=digits_small)
    assert (run / WEIGHTS_FILE).read_bytes() == before
    (run / CONFIG_FILE).unlink()
    with pytest.raises(CheckpointError, match=f"run folder {run} holds a checkpoint but no {CONFIG_FILE}"):
        train(_config(epochs=2, objective=ObjectiveConfig("beta-vae", 8.0)), run, progress=False, data=digits_small)
    assert (run / WEIGHTS_FILE).read_bytes() == before


@pytest.mark.parametrize("change, msg", [
    ({"meta": {"epoch": "0"}}, "holds epoch '0', not one of 1..2"),
    ({"meta": {"epoch": "-3"}}, "holds epoch '-3', not one of 1..2"),
    ({"meta": {"epoch": "abc"}}, "holds epoch 'abc', not one of 1..2"),
    ({"meta": {"epoch": "3"}}, "holds epoch '3', not one of 1..2"),
    ({"drop_meta": ("epoch",)}, "carries no training config or epoch"),
    ({"tensors": {"optim.0.exp_avg": torch.zeros(3)}}, r"corrupt optimizer state \(parameter 0 exp_avg"),
    ({"tensors": {"optim.0": torch.zeros(1)}}, r"corrupt optimizer state \(entry 'optim.0'\)"),
    ({"tensors": {"optim.0.exp_avg_sq": None}}, r"corrupt optimizer state \(parameter 0: \['exp_avg', 'step'\]\)"),
    ({"tensors": {"model.encoder.net.0.weight": torch.zeros(32, 64, dtype=torch.int32)}},
     "encoder.net.0.weight: torch.int32 vs torch.float32"),
])
def test_a_tampered_checkpoint_is_refused_naming_it(tmp_path, digits_small, change, msg):
    """The checkpoint's epoch and optimizer state were read unchecked: epoch 0 or missing restarted
    from the epoch-2 weights, -3 trained 7 epochs, 'abc' said only "invalid literal"; a misshapen
    moment failed in Adam's step with a traceback, a missing one went on with a fresh Adam, int32
    weights were truncated."""
    run = tmp_path / "run"
    train(_config(epochs=2), run, progress=False, data=digits_small)
    _rewrite(run / CHECKPOINT_FILE, **change)  # (a tensor given as None is removed)
    with pytest.raises(CheckpointError, match=f"{CHECKPOINT_FILE}.*{msg}"):
        train(_config(epochs=4), run, progress=False, data=digits_small)


def test_a_weights_file_stripped_of_its_config_is_refused(tmp_path, digits_small):
    """Without its metadata the weights file skipped the config.json check: tau 0 -> 0.5 in
    config.json then moved every sigma (and certificate) by 0.5."""
    run = tmp_path / "run"
    train(_config(epochs=1), run, progress=False, data=digits_small)
    _rewrite(run / WEIGHTS_FILE, drop_meta=("config",))
    with pytest.raises(CheckpointError, match=f"{WEIGHTS_FILE} carries no training config"):
        load(run)


def test_a_training_that_diverges_with_finite_numbers_stops(tmp_path, digits_small):
    """lr 10 on digits reached a held-out negative ELBO of 1.5e8 nats (the trivial model: 44) and
    exited 0; only a non-finite loss was caught."""
    from robvae.training import _trivial_nelbo
    from robvae.models import VAE

    model = VAE(ModelConfig(input_shape=(1, 8, 8), latent_dim=4, hidden=(32,)))
    # the Bernoulli log-likelihood of g = 1/2 is -D log 2 whatever x is
    assert _trivial_nelbo(model, digits_small[1]) == pytest.approx(64 * math.log(2.0), rel=1e-6)  # (float32 sums)
    with pytest.raises(FloatingPointError, match="training diverged at epoch 1: held-out negative ELBO .* over 100 "
                                                 "times that of predicting 0.5 for every pixel"):
        train(_config(epochs=2, lr=10.0, n_train=64), tmp_path / "run", progress=False, data=digits_small)
    assert not (tmp_path / "run" / WEIGHTS_FILE).exists()
    run = train(_config(epochs=2), tmp_path / "ok", progress=False, data=digits_small)  # a sane lr is untouched
    assert len(run.metrics) == 2


def test_model_config_refuses_non_integer_sizes():
    """latent_dim=True trained a run that load() then refused; 2.5 and "3" failed inside torch;
    hidden=(8.7,) was truncated to 8."""
    for kw, msg in [({"latent_dim": True}, "latent_dim must be an integer, got True"),
                    ({"latent_dim": 2.5}, "latent_dim must be an integer, got 2.5"),
                    ({"latent_dim": "3"}, "latent_dim must be an integer, got '3'"),
                    ({"hidden": (8.7,)}, r"hidden must be integers, got \[8.7\]"),
                    ({"conv_hidden": 2.0}, "conv_hidden must be an integer, got 2.0")]:
        with pytest.raises(ValueError, match=msg):
            ModelConfig(**kw)
    import numpy as np

    assert ModelConfig(latent_dim=np.int64(3), hidden=(np.int32(8),)).hidden == (8,)


def test_continuing_a_run_whose_data_moved_says_how(tmp_path, digits_small):
    """Extending a run with its data at a new --data-dir is refused (the epochs to come must see the
    run's own data, which robvae cannot compare), and the message says how to go on."""
    train(_config(epochs=1, data_dir=str(tmp_path / "old")), tmp_path / "run", progress=False, data=digits_small)
    with pytest.raises(CheckpointError, match=rf"differs in: data_dir\); the run was trained from {tmp_path / 'old'}; "
                                              "to continue it, make that folder hold its data again"):
        train(_config(epochs=2, data_dir=str(tmp_path / "new")), tmp_path / "run", progress=False, data=digits_small)


def test_a_folder_holding_a_run_names_it(tmp_path, digits_small):
    """`robvae certify demo` (the demo's output folder) said only "config demo/config.json is
    missing"; the run folder inside is named now."""
    train(_config(epochs=1), tmp_path / "demo" / "run", progress=False, data=digits_small)
    with pytest.raises(CheckpointError, match=rf"{tmp_path / 'demo'} is not a run folder \(no config.json\); the run "
                                              rf"folder inside: {tmp_path / 'demo' / 'run'}$"):
        load(tmp_path / "demo")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="config .*config.json is missing"):
        load(tmp_path / "empty")
