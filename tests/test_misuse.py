"""Trustworthy under misuse (issue 14): a model that breaks the protocol, a corrupt or mismatched
run folder, hooks on robvae's decoder, exit codes, runs used from elsewhere, validation up front,
concurrent runs, strict JSON. Each test failed on the code before the fix."""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from robvae import InputError, LinearVAE, check_model
from robvae.cli import main
from robvae.errors import CheckpointError

# ---- 1. model outputs are checked on every call path ---------------------------------------


class Bad(torch.nn.Module):
    """A LinearVAE with one broken output (``fault``)."""

    def __init__(self, fault: str):
        super().__init__()
        self.inner = LinearVAE.random(d=3, input_shape=(1, 4, 4), s=0.1)
        self.input_shape = (1, 4, 4)
        self.fault = fault

    def encode(self, x):
        mu, sigma = self.inner.encode(x)
        if self.fault == "logvar":
            return mu, torch.log(sigma)  # a log-variance: negative
        if self.fault == "zero_sigma":
            return mu, torch.zeros_like(sigma)
        if self.fault == "one_tensor":
            return mu
        if self.fault == "nan_mu":
            return mu * float("nan"), sigma
        if self.fault == "noisy_mu":
            return mu + 0.01 * torch.randn_like(mu), sigma
        return mu, sigma

    def decode(self, z):
        out = self.inner.decode(z)
        if self.fault == "nan_decode":
            return out * float("nan")
        if self.fault == "flat_decode_wrong":
            return out.flatten(1)[:, :10]
        if self.fault == "noisy_decode":
            return out + 0.05 * torch.randn_like(out)
        if self.fault == "functional_dropout":
            return out + 0.1 * torch.nn.functional.dropout(torch.ones_like(out), 0.5, training=True)
        return out


FAULTS = {
    "logvar": "model.encode returned sigma with 6 values <= 0 (is it a log-variance?",
    "zero_sigma": "model.encode returned sigma with 6 values <= 0",
    "one_tensor": "model.encode returned a Tensor; it must return the pair (mu, sigma)",
    "nan_mu": "model.encode returned mu with 6 NaN or inf values",
    "nan_decode": "model.decode returned g(z) with 32 NaN or inf values",
    "flat_decode_wrong": "model.decode returned g(z) of shape (2, 10), expected (2, 1, 4, 4)",
    # found by an audit: randomness inside encode / decode made every estimate silently wrong
    "noisy_decode": "model.decode is not deterministic: two calls on the same input gave different g(z)",
    "functional_dropout": "model.decode is not deterministic",
    "noisy_mu": "model.encode is not deterministic: two calls on the same input gave different mu",
}


def _paths():
    from robvae.attacks import latent_attack, max_damage_attack, output_attack
    from robvae.metrics import likelihood_degradation, reconstruction_damage, reconstruction_error
    from robvae.robustness import certify, empirical_margin, jacobian_norm, r_min, r_robustness
    from robvae.robustness.jacobian import encoder_jacobian
    from robvae.robustness.sampling import delta_norms

    z = lambda x: torch.zeros_like(x)  # noqa: E731
    return {
        "r_robustness": lambda m, x: r_robustness(m, x, 0.5, n_samples=10),
        "delta_norms": lambda m, x: delta_norms(m, x, None, 10),
        "r_min": lambda m, x: r_min(m, x, 10),
        "certify": lambda m, x: certify(m, x, 0.5, n_samples=10),
        "jacobian_norm": lambda m, x: jacobian_norm(m, x),
        "jacobian_hutchinson": lambda m, x: jacobian_norm(m, x, "spectral", "hutchinson", n_iter=2),
        "encoder_jacobian": lambda m, x: encoder_jacobian(m, x),
        "max_damage_attack": lambda m, x: max_damage_attack(m, x, 0.1, steps=1),
        "latent_attack": lambda m, x: latent_attack(m, x, x.flip(0), 0.1, steps=1),
        "output_attack": lambda m, x: output_attack(m, x, x.flip(0), 0.1, steps=1),
        "empirical_margin": lambda m, x: empirical_margin(m, x, 0.5, n_samples=10, steps=1, max_iter=2),
        "reconstruction_error": lambda m, x: reconstruction_error(m, x),
        "reconstruction_damage": lambda m, x: reconstruction_damage(m, x, z(x)),
        "likelihood_degradation": lambda m, x: likelihood_degradation(m, x, z(x)),
    }


@pytest.mark.parametrize("fault", sorted(FAULTS))
@pytest.mark.parametrize("path", sorted(_paths()))
def test_every_call_path_refuses_a_model_that_breaks_the_protocol(fault, path):
    model = Bad(fault).double()
    x = torch.rand(2, 1, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    if path == "likelihood_degradation":
        model.log_likelihood = lambda xx, zz: -torch.ones(xx.shape[0], dtype=xx.dtype)
    with pytest.raises(InputError) as e:
        _paths()[path](model, x)
    assert FAULTS[fault] in str(e.value), str(e.value)


@pytest.mark.parametrize("layer", ["dropout", "batchnorm"])
def test_every_call_path_refuses_a_model_with_active_dropout_or_batch_norm(layer):
    """Found by an audit: a batch norm in training mode failed with torch's own error from the
    Jacobian step (one input), and a dropout in training mode was used as it was (every decode a
    different network). Every estimator and attack now refuses them in one line; eval mode works."""
    class WithLayer(Bad):
        def __init__(self):
            super().__init__("none")
            self.extra = torch.nn.Dropout(0.2) if layer == "dropout" else torch.nn.BatchNorm1d(4)

    model = WithLayer().double().train()
    x = torch.rand(2, 1, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    name = "Dropout" if layer == "dropout" else "BatchNorm1d"
    for path, call in _paths().items():
        if path == "likelihood_degradation":
            model.log_likelihood = lambda xx, zz: -torch.ones(xx.shape[0], dtype=xx.dtype)
        with pytest.raises(InputError, match=f"training mode with {name} layers.*model.eval"):
            call(model, x)
    _paths()["certify"](model.eval(), x)


def test_the_output_check_sees_every_input_of_a_large_batch():
    """The protocol check runs CHECK_BATCH inputs at a time (memory): a sigma <= 0 for one input
    in the last batch is still refused, and certify / r_min refuse it before drawing."""
    from robvae.robustness import r_min
    from robvae.validation import CHECK_BATCH, check_model_outputs

    class OneBad(Bad):
        def encode(self, x):
            mu, sigma = self.inner.encode(x)
            bad = x.flatten(1)[:, 0] > 0.999  # only the marked input
            return mu, torch.where(bad[:, None], -sigma, sigma)

    model = OneBad("none")
    x = torch.rand(2 * CHECK_BATCH + 7, 1, 4, 4, dtype=torch.float64) * 0.9
    check_model_outputs(model, x)  # fine
    x[-1, 0, 0, 0] = 1.0
    with pytest.raises(InputError, match=r"model.encode returned sigma with 3 values <= 0"):
        check_model_outputs(model, x)
    with pytest.raises(InputError, match="sigma"):
        r_min(model, x, 10)


def test_a_decoder_that_is_nan_only_away_from_mu_is_refused():
    from robvae.robustness import certify, r_robustness

    class FarNaN(Bad):
        def decode(self, z):
            out = self.inner.decode(z)
            far = (z - z.mean(0)).norm(dim=1) > 0.05  # NaN for most noisy draws, finite at mu
            return torch.where(far.view(-1, 1, 1, 1), torch.full_like(out, float("nan")), out)

    model = FarNaN("none").double()
    x = torch.rand(1, 1, 4, 4, dtype=torch.float64)
    assert check_model(model, x).ok  # one input: decode(mu) is finite
    with pytest.raises(InputError, match=r"model.decode returned NaN or inf for \d+ of 100 latent draws"):
        r_robustness(model, x, 0.5, n_samples=100)
    with pytest.raises(InputError, match="latent draws"):
        certify(model, x, 0.5, n_samples=100)


def test_check_model_reports_what_it_found():
    x = torch.rand(5, 1, 4, 4, dtype=torch.float64)
    good = check_model(Bad("none").double(), x)
    assert good.ok and good.latent_dim == 3 and good.mu_shape == (5, 3) and good.sigma_shape == (5, 3)
    assert good.decode_shape == (5, 1, 4, 4) and good.encode_finite and good.decode_finite
    assert good.sigma_min == pytest.approx(0.1) and good.n_sigma_nonpositive == 0 and "ok" in str(good)
    bad = check_model(Bad("logvar").double(), x)
    assert not bad.ok and bad.n_sigma_nonpositive == 15 and bad.sigma_min < 0
    assert "log-variance" in bad.problems[0] and "problems:" in str(bad)
    with pytest.raises(InputError, match="sigma with 15 values <= 0"):
        bad.raise_if_failed()
    assert "model.encode returned a Tensor" in check_model(Bad("one_tensor").double(), x).problems[0]


def test_float64_input_to_a_float32_model_is_a_clear_error():
    from robvae.robustness import certify

    model = Bad("none").float()
    x = torch.rand(2, 1, 4, 4, dtype=torch.float64)
    with pytest.raises(InputError, match=r"x has dtype float64 but the model's weights are float32"):
        certify(model, x, 0.5, n_samples=10)
    rep = check_model(model, x)
    assert not rep.ok and "float64" in rep.problems[0]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, digits_small):
    from robvae.models import ModelConfig
    from robvae.training import TrainConfig, train

    out = tmp_path_factory.mktemp("misuse") / "run"
    cfg = TrainConfig(dataset="digits", n_train=100, epochs=1, model=ModelConfig(latent_dim=2, hidden=(16,), tau=0.05))
    train(cfg, out, progress=False, data=digits_small)
    return out


def _copy_run(run_dir: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(run_dir, dst)
    return dst


def test_a_weights_file_with_a_nan_weight_is_refused_at_load(run_dir, tmp_path):
    from robvae.fileio import load_tensors, save_tensors
    from robvae.training import load

    run = _copy_run(run_dir, tmp_path / "run")
    tensors, meta = load_tensors(run / "model.safetensors")
    key = sorted(k for k in tensors if k.startswith("decoder"))[0]
    tensors[key].view(-1)[0] = float("nan")
    save_tensors(run / "model.safetensors", tensors, meta)
    with pytest.raises(CheckpointError, match=rf"holds NaN or inf values \({key}: 1 of them\)"):
        load(run)
    assert main(["certify", str(run), "--r", "1", "--n", "5", "--samples", "10", "--quiet"]) == 2


# ---- 2. the weights file carries the training config ----------------------------------------


@pytest.mark.parametrize("edit,field", [
    (lambda c: c["model"].update(tau=0.5), "model.tau"),
    (lambda c: c["objective"].update(beta=4.0), "objective.beta"),
    (lambda c: c.update(epochs=7), "epochs"),
])
def test_a_hand_edited_config_json_is_refused_naming_the_field(run_dir, tmp_path, edit, field):
    from robvae.training import load

    run = _copy_run(run_dir, tmp_path / "run")
    cfg = json.loads((run / "config.json").read_text())
    edit(cfg)
    (run / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=rf"model.safetensors does not match its config.json .*trained with "
                                              rf"{field} = "):
        load(run)
    with pytest.raises(CheckpointError, match=rf"checkpoint.safetensors does not match .* with {field} = "):
        load(run, checkpoint=True)
    # where the data lives and the device are not part of the training
    cfg = json.loads((run_dir / "config.json").read_text())
    cfg["device"] = "cpu"
    cfg["data_dir"] = str(tmp_path)
    (run / "config.json").write_text(json.dumps(cfg))
    assert load(run).config.data_dir == str(tmp_path)


# ---- 3. hooks on robvae's own decoder are honoured by the fast route ------------------------


@pytest.mark.parametrize("arch", ["mlp", "conv"])
@pytest.mark.parametrize("where", ["decoder_hook", "layer_pre_hook", "model_hook", "global_hook", "instance_decode"])
def test_fast_decode_honours_hooks_and_overrides(arch, where):
    from robvae.models import VAE, ModelConfig
    from robvae.models.fast_decode import flat_decode
    from robvae.robustness import r_robustness

    torch.manual_seed(0)
    model = VAE(ModelConfig(input_shape=(1, 8, 8), latent_dim=3, arch=arch, hidden=(16,))).double().eval()
    z = torch.randn(4, 3, dtype=torch.float64)
    handles = []
    if where == "decoder_hook":
        handles.append(model.decoder.register_forward_hook(lambda m, i, o: o - 3.0))
    elif where == "layer_pre_hook":
        first = next(m for m in model.decoder.modules() if isinstance(m, torch.nn.Linear))
        handles.append(first.register_forward_pre_hook(lambda m, i: (i[0] * 0.0,)))
    elif where == "model_hook":  # a hook on the VAE itself: decode is not forward, but be safe
        handles.append(model.register_forward_pre_hook(lambda m, i: None))
    elif where == "global_hook":
        handles.append(torch.nn.modules.module.register_module_forward_hook(
            lambda m, i, o: o * 0.5 if isinstance(m, torch.nn.Linear) else o))
    else:
        plain = model.decode
        model.decode = lambda zz: plain(zz) * 0.25
    try:
        with torch.inference_mode():
            want = model.decode(z).flatten(1)
            got = flat_decode(model, z)
        torch.testing.assert_close(got, want, atol=1e-12, rtol=0)
        # and the estimators see the hooked decoder: p with the hook equals p of a plain wrapper
        x = torch.rand(2, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(2))

        class Wrapper(torch.nn.Module):
            def __init__(self, m):
                super().__init__()
                self.m, self.input_shape = m, m.input_shape

            def encode(self, xx):
                return self.m.encode(xx)

            def decode(self, zz):
                return self.m.decode(zz)

        g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
        a = r_robustness(model, x, 0.3, n_samples=50, generator=g1)
        b = r_robustness(Wrapper(model), x, 0.3, n_samples=50, generator=g2)
        assert torch.equal(a.n_within, b.n_within)
    finally:
        for h in handles:
            h.remove()


# ---- 4. exit codes and one-line errors -------------------------------------------------------


def _one_line(capsys, rc_expected, *args):
    rc = main(list(args))
    cap = capsys.readouterr()
    assert rc == rc_expected, (rc, cap.err)
    assert "Traceback" not in cap.err + cap.out
    return cap


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
@pytest.mark.parametrize("device,needle", [("cuda", "CUDA is not available"), ("foo", "is not a torch device"),
                                           ("cuda:0", "CUDA is not available")])
def test_unusable_device_is_a_one_line_usage_error(capsys, tmp_path, device, needle):
    cap = _one_line(capsys, 2, "train", "--epochs", "1", "--n-train", "50", "--device", device, "--quiet",
                    "--out", str(tmp_path / "r"))
    assert cap.err.startswith("robvae: error:") and needle in cap.err and len(cap.err.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()


def test_diverging_training_is_a_one_line_error(capsys, tmp_path):
    cap = _one_line(capsys, 2, "train", "--epochs", "1", "--hidden", "16", "--lr", "1e6",
                    "--quiet", "--out", str(tmp_path / "r"))
    assert cap.err.startswith("robvae: error: training diverged") and len(cap.err.strip().splitlines()) == 1


def test_ctrl_c_prints_the_resumable_message(capsys, tmp_path, monkeypatch):
    import importlib

    import robvae.training

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    main(["--help"])  # registers the command modules
    capsys.readouterr()
    monkeypatch.setattr(robvae.training, "train", interrupted)
    cli_train = importlib.import_module("robvae.cli.train")
    if hasattr(cli_train, "train"):  # imported at the top of the command module
        monkeypatch.setattr(cli_train, "train", interrupted)
    cap = _one_line(capsys, 130, "train", "--epochs", "1", "--quiet", "--out", str(tmp_path / "r"))
    # exactly robvae's line: click's own handler printed a blank line before it
    assert cap.err == "robvae: interrupted (whatever had finished is saved; rerun the same command to resume)\n"


def test_sigterm_is_handled_as_ctrl_c_and_commands_that_save_nothing_say_so(capsys, tmp_path, monkeypatch):
    """SIGTERM (a scheduler ending a job) killed robvae without a message, left trials recorded as
    running and a stale lock; it now unwinds as Ctrl-C does (exit 143). And Ctrl-C of a command
    that writes its files at the end (attack, margin) said "finished work is saved"."""
    import subprocess
    import sys
    import textwrap

    from robvae.cli import robust

    # in a child process: unhandled, the SIGTERM would end the test run itself
    code = textwrap.dedent(f"""
        import os, signal, sys, time
        from robvae.cli import main
        import robvae.cli.train as cli_train
        def killed(*a, **k):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler raises before this ends
            sys.exit(99)
        main(["--help"])
        cli_train.train = killed
        before = signal.getsignal(signal.SIGTERM)
        rc = main(["train", "--epochs", "1", "--quiet", "--out", {str(tmp_path / "r")!r}])
        assert signal.getsignal(signal.SIGTERM) == before  # main() restores the handler
        sys.exit(rc)
    """)
    child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert child.returncode == 143, (child.returncode, child.stderr[-500:])
    assert child.stderr == "robvae: interrupted (whatever had finished is saved; rerun the same command to resume)\n"
    assert not (tmp_path / "r" / ".robvae.lock").exists()  # the lock was released on the way out

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    (tmp_path / "quick_models.py").write_text(
        "import robvae\n\ndef vae():\n"
        "    return robvae.VAE(robvae.ModelConfig(input_shape=(1, 8, 8), latent_dim=2, hidden=(8,))).eval()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(robust, "attack_report", interrupted)
    try:
        cap = _one_line(capsys, 130, "attack", "out", "--model", "quick_models:vae", "--n", "2", "--eps", "0.1",
                        "--quiet")
    finally:
        sys.modules.pop("quick_models", None)
    assert cap.err == "robvae: interrupted (no complete result was written; rerun the command to start again)\n"


@pytest.mark.parametrize("command, target, needle", [
    ("demo", "robvae.cli.train.run_demo", "whatever had finished is saved; rerun the same command to resume"),
    ("report", "robvae.cli.report.render_report", "the results finished before it are written"),
])
def test_ctrl_c_message_says_what_was_kept(tmp_path, capsys, monkeypatch, run_dir, command, target, needle):
    """Found by an audit: demo (whose run resumes) and report (which writes each result when it is
    done) said "nothing was written" on Ctrl-C."""
    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(target, interrupted)
    args = ["demo", "--out", str(tmp_path / "d"), "--quiet"] if command == "demo" else ["report", str(run_dir)]
    cap = _one_line(capsys, 130, *args)
    assert needle in cap.err and "nothing was written" not in cap.err


def test_sweep_with_failed_trials_exits_1(capsys, tmp_path):
    data = tmp_path / "baddata"  # files by the right names, but not IDX: found before the run, fail in the trial
    data.mkdir()
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        (data / name).write_bytes(b"not an IDX file")
    spec = tmp_path / "s.yaml"
    spec.write_text(
        f"out: {tmp_path / 'out'}\nbase: {{dataset: mnist, data_dir: {data}, epochs: 1, n_train: 50,"
        " model: {latent_dim: 2, hidden: [8]}}\ngrid: {seed: [0]}\nevaluation: null\n")
    cap = _one_line(capsys, 1, "sweep", str(spec), "--executor", "serial", "--quiet")
    assert "1 failed" in cap.out


def test_sweep_with_missing_data_is_refused_before_any_trial(capsys, tmp_path):
    spec = tmp_path / "s.yaml"
    spec.write_text(
        f"out: {tmp_path / 'out'}\nbase: {{dataset: mnist, data_dir: {tmp_path / 'nodata'}, epochs: 1}}\n"
        "grid: {seed: [0]}\nevaluation: null\n")
    cap = _one_line(capsys, 2, "sweep", str(spec), "--executor", "serial", "--quiet")
    assert f"folder {tmp_path / 'nodata'} does not exist" in cap.err and "current folder" not in cap.err
    assert not (tmp_path / "out").exists()
    spec.write_text(f"out: {tmp_path / 'out'}\nbase: {{dataset: mnist, epochs: 1}}\ngrid: {{seed: [0]}}\n")
    cap = _one_line(capsys, 2, "sweep", str(spec), "--executor", "serial", "--quiet")
    assert "mnist: no data folder given" in cap.err and "set data_dir" in cap.err


# ---- 5. runs usable from anywhere ------------------------------------------------------------


def test_train_stores_an_absolute_data_dir(tmp_path, monkeypatch, digits_small):
    from robvae.models import ModelConfig
    from robvae.training import TrainConfig, train

    monkeypatch.chdir(tmp_path)
    cfg = TrainConfig(dataset="digits", data_dir="data/here", n_train=50, epochs=1,
                      model=ModelConfig(latent_dim=2, hidden=(8,)))
    run = train(cfg, "run", progress=False, data=digits_small)
    stored = json.loads((tmp_path / "run" / "config.json").read_text())["data_dir"]
    assert stored == str(tmp_path / "data" / "here") and run.config.data_dir == stored


@pytest.mark.parametrize("cmd", ["certify", "attack", "margin"])
def test_every_command_that_reads_data_has_data_dir_and_download(capsys, cmd):
    assert main([cmd, "--help"]) == 0
    out = capsys.readouterr().out
    assert "--data-dir" in out and "--download" in out


def test_study_has_download(capsys):
    assert main(["study", "bound-vs-margin", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--data-dir" in out and "--download" in out


def test_a_run_trained_with_a_relative_data_dir_works_from_another_folder(tmp_path, monkeypatch, capsys):
    from conftest import mnist10k_dir

    src = mnist10k_dir()
    if src is None:
        pytest.skip("the shared MNIST subset (../shared/data/mnist-10k) is not on this machine")
    monkeypatch.chdir(src.parent)
    rc = main(["train", "--dataset", "mnist", "--data-dir", src.name, "--epochs", "1", "--n-train", "100",
               "--hidden", "16", "--latent-dim", "2", "--quiet", "--out", str(tmp_path / "run")])
    assert rc == 0, capsys.readouterr().err
    monkeypatch.chdir(tmp_path)
    args = ["certify", "run", "--r", "3", "--n", "5", "--samples", "20", "--quiet"]
    assert main(args) == 0, capsys.readouterr().err
    # data moved: the stored folder is gone, --data-dir points to the new place
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    cfg["data_dir"] = str(tmp_path / "moved")
    (tmp_path / "run" / "config.json").write_text(json.dumps(cfg))
    capsys.readouterr()
    assert main(args) == 2
    assert main([*args, "--data-dir", str(src)]) == 0
    assert main(["attack", "run", "--eps", "0.5", "--n", "3", "--preset", "legacy", "--steps", "1",
                 "--data-dir", str(src)]) == 0


def test_n_larger_than_the_split_says_so(run_dir, tmp_path, capsys):
    from robvae.data import load_dataset

    n_test = len(load_dataset("digits", "test"))
    out = tmp_path / "c.csv"
    assert main(["certify", str(run_dir), "--r", "1", "--n", "100000", "--samples", "5", "--quiet",
                 "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert f"robvae: warning: --n 100000 is larger than the test split of digits ({n_test} images)" in err
    assert len(out.read_text().splitlines()) == n_test + 1


# ---- 6. validation before work starts --------------------------------------------------------


@pytest.mark.parametrize("doc,needle", [
    ({"base": {"dataset": "svhn"}}, "dataset: unknown data set 'svhn'"),
    ({"base": {"dataset": "digits"}, "grid": {"seed": [0.5]}}, "field seed: expected an integer, got 0.5"),
    ({"base": {"dataset": "digits"}, "grid": {"epochs": [True]}}, "field epochs: expected an integer, got True"),
    ({"base": {"dataset": "digits", "epochs": "three"}}, "field epochs: expected an integer, got 'three'"),
    ({"base": {"model": {"latent_dim": 2.5}}}, "field latent_dim: expected an integer, got 2.5"),
    ({"base": {"objective": {"beta": "big"}}}, "field beta: expected a number, got 'big'"),
    ({"base": {"model": {"hidden": [8, "x"]}}}, "field hidden: expected a list of integers"),
    ({"evaluation": {"r": 0.5, "r_relative": 2}}, "evaluation: give r or r_relative, not both"),
    ({"evaluation": {"r_relative": 2}, "grid": {"evaluation.r": [0.5]}},
     "grid point evaluation.r=0.5: give r or r_relative, not both"),
])
def test_sweep_fields_are_type_checked_up_front(tmp_path, capsys, doc, needle):
    import yaml

    spec = tmp_path / "s.yaml"
    spec.write_text(yaml.safe_dump({"out": str(tmp_path / "out"), **doc}))
    assert main(["sweep", str(spec), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("robvae: error:") and needle in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("extra, needle", [
    (["--executor", "serial", "--workers", "2"], "--workers goes with --executor auto, local or ray"),
    (["--address", "auto"], "--address joins a Ray cluster: it goes with --executor ray"),
])
def test_certify_executor_options_that_would_be_ignored_are_refused(run_dir, tmp_path, capsys, extra, needle):
    """Found by an audit: --executor serial --workers 2 ran serially without a word."""
    rc = main(["certify", str(run_dir), "--n", "2", "--samples", "20", "--r", "1", "--quiet",
               "--out", str(tmp_path / "c.csv"), *extra])
    err = capsys.readouterr().err
    assert rc == 2 and needle in err and len(err.strip().splitlines()) == 1
    assert not list(tmp_path.iterdir())


def test_config_json_with_a_wrong_type_names_the_field(run_dir, tmp_path):
    from robvae.training import load

    run = _copy_run(run_dir, tmp_path / "run")
    cfg = json.loads((run / "config.json").read_text())
    cfg["model"]["latent_dim"] = "ten"
    (run / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"config\.json is invalid: model config field latent_dim: expected an "
                                              r"integer, got 'ten'"):
        load(run)


@pytest.mark.parametrize("value", ["-1", "nan"])
def test_negative_gaussian_scale_is_a_clear_error(capsys, tmp_path, value):
    rc = main(["train", "--likelihood", "gaussian", "--gaussian-scale", value, "--epochs", "1", "--quiet",
               "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert rc == 2 and "gaussian" in err and "math domain" not in err and len(err.strip().splitlines()) == 1
    from robvae.models import ModelConfig

    with pytest.raises(ValueError, match="gaussian_scale must be a finite number > 0"):
        ModelConfig(likelihood="gaussian", gaussian_scale=float(value))


@pytest.mark.parametrize("kw,needle", [
    ({"epochs": 2.5}, "epochs must be an integer >= 1, got 2.5"),
    ({"batch_size": 2.5}, "batch_size must be an integer >= 1, got 2.5"),
    ({"epochs": True}, "epochs must be an integer >= 1, got True"),
    ({"n_train": 0}, "n_train must be an integer >= 1"),
    ({"lr": float("inf")}, "lr must be a finite number > 0, got inf"),
    ({"seed": 1.5}, "seed must be an integer, got 1.5"),
    ({"model": {"tau": float("inf")}}, "tau must be a finite number >= 0, got inf"),
])
def test_train_config_refuses_what_the_cli_refuses(kw, needle):
    """Found by an audit: TrainConfig(epochs=2.5) was accepted and train() then raised a
    TypeError; lr = inf and tau = inf stopped as "training diverged ... lower the learning rate"."""
    from robvae.training import TrainConfig

    with pytest.raises(ValueError, match=needle):
        TrainConfig(**kw)


@pytest.mark.parametrize("call,needle", [
    (lambda m, x: __import__("robvae").r_robustness(m, x, 0.5, n_samples=10, generator=0),
     "generator must be a torch.Generator"),
    (lambda m, x: __import__("robvae").certify(m, x, 0.5, n_samples=10, generator=0), "generator must be a torch.Generator"),
    (lambda m, x: __import__("robvae").max_damage_attack(m, x, 0.1, steps=1, generator=0),
     "generator must be a torch.Generator"),
    (lambda m, x: __import__("robvae").r_robustness(m, x, 0.5, n_samples=100.5), "n_samples must be an integer >= 1"),
    (lambda m, x: __import__("robvae").certify(m, x, 0.5, n_samples=100.5), "n_samples must be an integer >= 1"),
    (lambda m, x: __import__("robvae").certify(m, x.float(), 0.5, n_samples=10), "x has dtype float32"),
    (lambda m, x: __import__("robvae").certify(Bad("one_tensor").double(), x, 0.5, n_samples=10),
     "model.encode returned a Tensor"),
])
def test_api_misuse_gives_clear_input_errors(call, needle):
    model = Bad("none").double()
    x = torch.rand(2, 1, 4, 4, dtype=torch.float64)
    with pytest.raises(InputError, match=needle):
        call(model, x)


# ---- 7. one robvae train / sweep per folder ---------------------------------------------------


def _dead_pid() -> int:
    import subprocess
    import sys

    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _write_lock(folder: Path, pid: int, host: str | None = None) -> Path:
    import socket

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / ".robvae.lock"
    path.write_text(json.dumps({"pid": pid, "host": host or socket.gethostname(), "command": "robvae train",
                                "started": "2026-01-01 00:00:00"}))
    return path


def test_folder_lock_refuses_a_second_holder_and_takes_over_a_dead_ones(tmp_path):
    from robvae.errors import LockError
    from robvae.fileio import folder_lock

    with folder_lock(tmp_path, "robvae train") as path:
        assert json.loads(path.read_text())["pid"] == os.getpid()
        with pytest.raises(LockError, match=rf"folder {tmp_path} is in use by robvae train \(pid {os.getpid()}"):
            with folder_lock(tmp_path, "robvae train"):
                pass
        assert path.exists()  # the refused one does not remove the holder's lock
    assert not path.exists()
    _write_lock(tmp_path, _dead_pid())
    with folder_lock(tmp_path, "robvae sweep") as path:
        assert json.loads(path.read_text())["command"] == "robvae sweep"
    # a lock of another machine is never taken for stale
    _write_lock(tmp_path, _dead_pid(), host="some-other-host")
    with pytest.raises(LockError, match="some-other-host"):
        with folder_lock(tmp_path, "robvae train"):
            pass


def test_two_takers_of_a_dead_processs_lock_never_both_hold_it(tmp_path, monkeypatch):
    """Two processes that both found a dead process's lock could both take it over: the second
    renamed away the lock the first had just written (4 of 40 rounds of a race had two holders).
    Here two threads are held together right after the staleness check (a barrier that times out
    when only one can get there): with the look-and-take serialised, one holds, one is refused."""
    import threading

    from robvae import fileio
    from robvae.errors import LockError

    _write_lock(tmp_path, _dead_pid())
    barrier = threading.Barrier(2, timeout=1.0)
    real = fileio._stale

    def stale_then_wait(path, owner, *guarded):
        out = real(path, owner, *guarded)
        with contextlib.suppress(threading.BrokenBarrierError):
            barrier.wait()
        return out

    monkeypatch.setattr(fileio, "_stale", stale_then_wait)
    held, refused = [], []

    def take():
        try:
            with fileio.folder_lock(tmp_path, "robvae train"):
                held.append(1)
                time.sleep(0.3)
        except LockError:
            refused.append(1)

    threads = [threading.Thread(target=take) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert (len(held), len(refused)) == (1, 1)
    assert not (tmp_path / ".robvae.lock").exists() and not (tmp_path / ".robvae.lock.guard").exists()


def test_folder_lock_works_where_flock_is_refused(tmp_path, monkeypatch):
    """On a file system without flock (ENOLCK on some NFS mounts) the lock is still taken and
    a second holder refused; the guard file is not left behind, nor a folder the call created."""
    import errno

    from robvae import fileio
    from robvae.errors import LockError

    def no_flock(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fileio.fcntl, "flock", no_flock)
    out = tmp_path / "new"
    with fileio.folder_lock(out, "robvae train") as path:
        assert path.exists() and not (out / ".robvae.lock.guard").exists()
        with pytest.raises(LockError, match="in use by robvae train"):
            with fileio.folder_lock(out, "robvae certify"):
                pass
        assert path.exists()
    assert not out.exists()  # created, left empty, removed
    refused = tmp_path / "refused"
    _write_lock(refused, os.getpid())
    with pytest.raises(LockError):
        with fileio.folder_lock(refused, "robvae train"):
            pass
    assert sorted(p.name for p in refused.iterdir()) == [".robvae.lock"]


@pytest.mark.parametrize("cmd", ["train", "sweep", "study"])
def test_a_second_train_or_sweep_into_one_folder_is_refused(tmp_path, capsys, cmd):
    import subprocess
    import sys

    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        out = tmp_path / "out"
        _write_lock(out, holder.pid)
        if cmd == "train":
            args = ["train", "--epochs", "1", "--n-train", "50", "--hidden", "8", "--quiet", "--out", str(out)]
        else:
            spec = tmp_path / "s.yaml"
            spec.write_text(f"out: {out}\nbase: {{dataset: digits, epochs: 1, n_train: 50, model: {{hidden: [8]}}}}\n"
                            "evaluation: null\n")
            args = ["sweep", str(spec), "--executor", "serial", "--quiet"]
        if cmd == "study":
            args = ["study", "theorem2", "--betas", "1", "--column-norms", "1,2", "--data-dim", "4", "--steps", "20",
                    "--out", str(out)]
        rc = main(args)
        err = capsys.readouterr().err
        assert rc == 2 and f"is in use by robvae train (pid {holder.pid}" in err and len(err.strip().splitlines()) == 1
        assert sorted(p.name for p in out.iterdir()) == [".robvae.lock"]  # nothing written
    finally:
        holder.kill()
        holder.wait()
    # the holder died: its lock is stale and the command runs
    assert main(args) == 0
    assert not (out / ".robvae.lock").exists()


@pytest.mark.parametrize("cmd", ["attack", "margin"])
def test_attack_and_margin_hold_their_output_and_leave_a_run_being_trained(run_dir, tmp_path, capsys, cmd):
    """As certify: a second attack / margin into one output is refused (two runs' CSV, JSON and
    PNG would mix, each write atomic), and so is a RUN another robvae process holds (a robvae
    train extending it); once the holder is gone the command runs and leaves no lock."""
    import shutil
    import subprocess
    import sys

    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    if cmd == "attack":
        out = tmp_path / "a"
        held = out
        args = ["attack", str(run), "--eps", "0.5", "--n", "2", "--preset", "legacy", "--steps", "1", "--quiet",
                "--out", str(out)]
    else:
        out = tmp_path / "m.csv"
        held = tmp_path / "m.csv.partial"
        args = ["margin", str(run), "--r", "1", "--n", "2", "--samples", "30", "--tol", "0.5", "--quiet",
                "--out", str(out)]
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        _write_lock(held, holder.pid)
        assert main(args) == 2
        err = capsys.readouterr().err
        name = f"folder {out}" if cmd == "attack" else f"output {out}"
        assert f"{name} is in use by robvae train (pid {holder.pid}" in err and len(err.strip().splitlines()) == 1, err
        assert sorted(p.name for p in held.iterdir()) == [".robvae.lock"]  # nothing written
        assert not out.is_file()
        os.unlink(held / ".robvae.lock")
        _write_lock(run, holder.pid)
        assert main(args) == 2
        err = capsys.readouterr().err
        assert f"is in use by robvae train (pid {holder.pid}" in err and "once that has finished" in err, err
    finally:
        holder.kill()
        holder.wait()
    assert main(args) == 0, capsys.readouterr().err  # the holder died: its locks are stale
    assert not (held / ".robvae.lock").exists()  # (the run's stale lock is read, not taken: it stays)
    if cmd == "margin":
        assert out.is_file() and not held.exists()


# ---- 8. usability ------------------------------------------------------------------------------


def test_a_cifar_batch_pickled_by_python3_with_protocol_2_loads(tmp_path):
    import pickle

    import numpy as np

    from robvae.data.cifar import read_cifar_batch

    rng = np.random.default_rng(0)
    data = rng.integers(0, 256, size=(3, 3072), dtype=np.uint8)
    p = tmp_path / "test_batch"
    p.write_bytes(pickle.dumps({b"data": data, b"labels": [1, 2, 3]}, protocol=2))
    assert b"_codecs" in p.read_bytes()  # how Python 3 writes bytes in protocol 2
    images, labels = read_cifar_batch(p)
    assert np.array_equal(images, data) and labels.tolist() == [1, 2, 3]


@pytest.mark.parametrize("payload", [
    b"\x80\x02c_codecs\nencode\nq\x00X\x03\x00\x00\x00abcq\x01X\x04\x00\x00\x00zlibq\x02\x86q\x03Rq\x04.",
    b"\x80\x02c_codecs\nencode\nq\x00K\x05X\x06\x00\x00\x00latin1q\x02\x86q\x03Rq\x04.",
])
def test_codecs_encode_is_allowed_for_latin1_text_only(tmp_path, payload):
    from robvae.data.cifar import read_cifar_batch
    from robvae.errors import DataError

    p = tmp_path / "test_batch"
    p.write_bytes(payload)
    with pytest.raises(DataError, match="only latin-1 strings are allowed"):
        read_cifar_batch(p)


def test_json_outputs_are_strict(tmp_path):
    import numpy as np

    from robvae.fileio import write_json

    p = write_json(tmp_path / "a.json", {"a": float("nan"), "b": [1.5, float("inf"), -float("inf")],
                                         "c": np.float32("nan"), "d": torch.tensor(float("nan")),
                                         "e": np.array([1.0, np.nan]), "f": (1, 2), "g": np.int64(3)})
    text = p.read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text, parse_constant=lambda c: pytest.fail(f"bare {c}")) == {
        "a": None, "b": [1.5, None, None], "c": None, "d": None, "e": [1.0, None], "f": [1, 2], "g": 3}


def _help(capsys, *cmd) -> str:
    assert main([*cmd, "--help"]) == 0
    return " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize("cmd,opts", [
    (["train"], ["--arch", "--quiet", "--epochs"]),
    (["attack"], ["--steps", "--restarts", "--eps"]),
    (["margin"], ["--quiet"]),
    (["certify"], ["--quiet"]),
    (["sweep"], ["--quiet"]),
    (["study", "bound-vs-margin"], ["--arch", "--quiet", "--attack-preset"]),
])
def test_every_option_has_help(capsys, cmd, opts):
    import click

    from robvae.cli import _register, app

    _register()
    command = app
    for c in cmd:
        command = command.commands[c]
    missing = [o.opts[0] for o in command.params if isinstance(o, click.Option) and not o.help and not o.hidden]
    assert not missing, f"{' '.join(cmd)}: no help for {missing}"
    text = _help(capsys, *cmd)
    for o in opts:
        assert o in text


def test_attack_eps_states_its_norm(capsys):
    text = _help(capsys, "attack")
    assert "||delta|| allowed, in the norm of --" in text and "(L2 by default)" in text


def test_alpha_has_one_default_across_commands(capsys):
    import re

    from robvae.config import ALPHA

    for cmd in (["certify"], ["margin"], ["study", "bound-vs-margin"], ["study", "beta"]):
        text = _help(capsys, *cmd)
        m = re.search(r"--alpha .*?\[default: ([0-9.e-]+)", text)
        assert m and float(m.group(1)) == ALPHA, (cmd, m and m.group(1))


def test_more_epochs_continue_a_finished_run(tmp_path, digits_small):
    from robvae.fileio import load_tensors
    from robvae.models import ModelConfig
    from robvae.training import TrainConfig, train

    def cfg(epochs):
        return TrainConfig(dataset="digits", n_train=100, epochs=epochs, batch_size=50,
                           model=ModelConfig(latent_dim=2, hidden=(16,)))

    train(cfg(1), tmp_path / "a", progress=False, data=digits_small)
    run = train(cfg(3), tmp_path / "a", progress=False, data=digits_small)
    assert [int(r["epoch"]) for r in run.metrics] == [1, 2, 3]
    train(cfg(3), tmp_path / "b", progress=False, data=digits_small)
    a, _ = load_tensors(tmp_path / "a" / "model.safetensors")
    b, _ = load_tensors(tmp_path / "b" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in b)
    with pytest.raises(CheckpointError, match=r"epochs \(2 < the run's 3"):
        train(cfg(2), tmp_path / "a", progress=False, data=digits_small)


def test_report_renders_a_plain_run_folder(run_dir, tmp_path, capsys):
    run = _copy_run(run_dir, tmp_path / "run")
    assert main(["attack", str(run), "--eps", "0.5", "--n", "4", "--preset", "legacy", "--steps", "1",
                 "--batch-size", "2"]) == 0
    err = capsys.readouterr().err
    assert "attack: 100%" in err and "2/2" in err  # the progress bar, per batch of inputs
    assert main(["report", str(run)]) == 0
    page = (run / "report.html").read_text()
    for needle in ("training_curves.png", "attack-test/attack.png", "metrics.csv",
                   "attack-test/attack.csv", "attack-test/attack.json", "data:image/png;base64,"):
        assert needle in page, needle
    assert ("reconstructions.png" in page) == (run / "reconstructions.png").is_file()
    assert (run / "training_curves.png").read_bytes().startswith(b"\x89PNG")
    assert main(["report", str(tmp_path)]) == 2  # neither a study nor a run folder


def test_empirical_margin_reports_progress_per_attack():
    from robvae.robustness import empirical_margin

    model = Bad("none").double()
    x = torch.rand(3, 1, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    calls = []
    res = empirical_margin(model, x, 0.3, n_samples=200, tol=0.1, progress=lambda k, a: calls.append((k, a)),
                           generator=torch.Generator().manual_seed(1))
    assert calls and [k for k, _ in calls] == list(range(1, res.n_attacks + 1))
    assert all(1 <= a <= 3 for _, a in calls)


# ---- 9. docs: no absolute paths of one machine -------------------------------------------------


def test_examples_docs_and_tests_use_no_absolute_machine_paths():
    import re

    repo = Path(__file__).resolve().parents[1]
    pattern = re.compile(r"(?<![\w.])/(work|home|Users|mnt|scratch|data|srv)/[\w.-]+")
    allowed = {"tests/test_docs_links.py", "tests/test_misuse.py"}  # they test the rule itself
    bad = []
    for folder in ("examples", "docs", "tests", "src", "benchmarks"):
        for p in sorted((repo / folder).rglob("*")):
            rel = p.relative_to(repo).as_posix()
            if p.suffix not in {".py", ".md", ".yaml", ".yml", ".toml", ".sh", ".txt"} or rel in allowed:
                continue
            for k, line in enumerate(p.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
                if pattern.search(line):
                    bad.append(f"{rel}:{k}: {line.strip()[:100]}")
    assert not bad, "absolute machine paths:\n" + "\n".join(bad)


def test_csv_cells_of_numpy_and_torch_scalars(tmp_path):
    """numpy 2's float64 is a float whose repr is "np.float64(0.5)": cells hold the plain number."""
    import numpy as np

    from robvae.fileio import read_csv, write_csv

    path = tmp_path / "t.csv"
    write_csv(path, [{"a": np.float64(0.5), "b": np.float32(0.25), "c": torch.tensor(3), "d": 0.1, "e": np.int64(7)}])
    assert read_csv(path) == [{"a": "0.5", "b": "0.25", "c": "3", "d": "0.1", "e": "7"}]


def test_csv_rows_with_different_columns_are_written_with_all_of_them(tmp_path):
    """A leaderboard whose first row (a user's model without a likelihood) lacks the degradation
    columns of the others stopped `robvae bench` ("dict contains fields not in fieldnames"): the
    header is every key in order of first appearance, missing cells empty."""
    from robvae.fileio import read_csv, write_csv

    path = tmp_path / "t.csv"
    write_csv(path, [{"name": "mine", "cf": 0.5}, {"name": "vae", "cf": 0.25, "degradation@1": 2.0}])
    assert read_csv(path) == [{"name": "mine", "cf": "0.5", "degradation@1": ""},
                              {"name": "vae", "cf": "0.25", "degradation@1": "2.0"}]


@pytest.mark.parametrize("args, needle", [
    (["train", "--lr", "inf"], "'--lr': 'inf' is not a finite number"),
    (["train", "--tau", "inf"], "'--tau': 'inf' is not a finite number"),
    (["train", "--hidden", "-5"], "'--hidden': expected comma-separated integers from 1 to 1048576, got '-5'"),
    (["train", "--hidden", "64,0"], "'--hidden': expected comma-separated integers from 1 to 1048576"),
    (["train", "--seed", str(2**70)], "'--seed'"),
    (["margin", "RUN", "--r", "1", "--margin-eps-max", "inf"], "'--margin-eps-max': 'inf' is not a finite number"),
    (["study", "theorem2", "--noise-scale", "inf"], "'--noise-scale': 'inf' is not a finite number"),
    (["study", "beta", "--betas", "1,nan"], "'--betas': expected comma-separated finite numbers"),
])
def test_non_finite_and_out_of_range_values_are_usage_errors(capsys, tmp_path, args, needle):
    """Found by an audit: inf passed to code that overflowed (a traceback) or trained a model that
    diverged and left a config that a rerun refused; a negative width crashed in torch, a huge
    seed gave "Overflow when unpacking long long"."""
    args = [str(tmp_path / "run") if a == "RUN" else a for a in args]
    cap = _one_line(capsys, 2, *args, "--out", str(tmp_path / "out"))
    assert needle in cap.err
    assert not (tmp_path / "out").exists()


def test_a_refused_train_leaves_no_empty_run_folder(capsys, tmp_path):
    """The folder lock made the run folder before the data was read: a refused command left an
    empty folder behind."""
    _one_line(capsys, 2, "train", "--dataset", "mnist", "--data-dir", str(tmp_path / "none"), "--out",
              str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_a_cifar_label_too_large_for_numpy_is_a_data_error(tmp_path):
    import pickle

    import numpy as np

    from robvae.data.cifar import read_cifar_batch

    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps({b"data": np.zeros((1, 3072), np.uint8), b"labels": [2**70]}, protocol=2))
    with pytest.raises(Exception) as e:
        read_cifar_batch(path)
    assert type(e.value).__name__ == "DataError" and "labels out of range 0..9 (a label of 1180591620717411303424)" in str(e.value)


def test_api_arguments_found_by_the_training_audit_are_refused():
    """Found by an audit: jacobian_penalty(projections=0) returned NaN, beta-TCVAE with
    dataset_size=0 raised "math domain error", sigma_cap=inf was accepted (the encoder then gave
    an infinite std), plan_certified_margin crashed on latent_dim=0 and refused numpy floats, and
    barrett_margin(m=0) returned a number."""
    import numpy as np

    from robvae.models import VAE, ModelConfig
    from robvae.objectives import jacobian_penalty, tc_decomposition
    from robvae.robustness.rigorous import barrett_margin, plan_certified_margin

    model = VAE(ModelConfig(input_shape=(1, 4, 4), latent_dim=2, hidden=(8,)))
    x = torch.rand(3, 1, 4, 4)
    with pytest.raises(InputError, match="projections must be an integer >= 1"):
        jacobian_penalty(model, x, projections=0)
    z = torch.randn(3, 2)
    with pytest.raises(InputError, match="dataset_size must be an integer >= 1"):
        tc_decomposition(z, z, torch.ones_like(z), 0)
    with pytest.raises(ValueError, match="finite sigma_cap > 0"):
        ModelConfig(arch="lipschitz-mlp", sigma_cap=float("inf"))
    with pytest.raises(InputError, match="latent_dim must be an integer >= 1"):
        plan_certified_margin(0.5, 2.0, 0)
    with pytest.raises(InputError, match="latent_dim must be an integer >= 1, got 2.5"):
        plan_certified_margin(0.5, 2.0, 2.5)
    assert plan_certified_margin(np.float32(0.5), 2.0, 4) == plan_certified_margin(0.5, 2.0, 4)
    with pytest.raises(InputError, match="m must be an integer >= 1"):
        barrett_margin(1.0, 1.0, 0.1, 0.1, 2.0, 0)


def test_a_sweep_whose_out_is_a_file_says_so(capsys, tmp_path):
    """It printed a bare "[Errno 17] File exists"."""
    (tmp_path / "taken").write_text("x")
    (tmp_path / "s.yaml").write_text(f"out: {tmp_path / 'taken'}\nbase: {{dataset: digits, epochs: 1}}\n"
                                     "grid: {seed: [0]}\nevaluation: null\n")
    cap = _one_line(capsys, 2, "sweep", str(tmp_path / "s.yaml"), "--executor", "serial", "--quiet")
    assert "output folder" in cap.err and "is a file" in cap.err
    assert (tmp_path / "taken").read_text() == "x"


def test_a_model_built_under_inference_mode_is_a_clear_error():
    """Its weights are inference tensors: the caches' version keys raised torch's "Inference
    tensors do not track version counter", and the Jacobian "cannot be saved for backward"."""
    from robvae.models import VAE, ModelConfig
    from robvae.robustness import certify, r_robustness

    with torch.inference_mode():
        model = VAE(ModelConfig(input_shape=(1, 4, 4), latent_dim=2, hidden=(8,))).eval()
    x = torch.rand(2, 1, 4, 4)
    for call in (lambda: r_robustness(model, x, 0.5, n_samples=10), lambda: certify(model, x, 0.5, n_samples=10)):
        with pytest.raises(InputError, match="made under torch.inference_mode"):
            call()


class _OldStyleClamp(torch.autograd.Function):
    """A straight-through clamp in the old style (forward with ctx, no setup_context)."""

    @staticmethod
    def forward(ctx, x):
        return x.clamp(0.05, 0.95)

    @staticmethod
    def backward(ctx, g):
        return g


class _EncoderQuirkVAE(torch.nn.Module):
    def __init__(self, quirk: str):
        super().__init__()
        self.quirk, self.input_shape = quirk, (1, 4, 4)
        self.enc, self.dec = torch.nn.Linear(16, 4), torch.nn.Linear(2, 16)

    def encode(self, x):
        if self.quirk == "function":
            x = _OldStyleClamp.apply(x)
        else:
            x = x.clamp_(0.05, 0.95)
        h = self.enc(x.flatten(1))
        return h[:, :2], torch.nn.functional.softplus(h[:, 2:]) + 0.05

    def decode(self, z):
        return torch.sigmoid(self.dec(z)).view(-1, 1, 4, 4)


@pytest.mark.parametrize("quirk, msg", [("function", "torch.autograd.Function without torch.func support"),
                                        ("inplace", "modifies its input (x )?in place")])
def test_encoders_torch_func_cannot_differentiate_are_one_line_errors(quirk, msg):
    """An old-style autograd.Function or an in-place clamp of x in encode: certify and the attacks
    raised torch's raw RuntimeError (a 60-line traceback, status 1 on the command line)."""
    from robvae.attacks import EnsembleAttack
    from robvae.robustness import certify

    torch.manual_seed(0)
    model = _EncoderQuirkVAE(quirk).eval()
    x = torch.rand(3, 1, 4, 4, generator=torch.Generator().manual_seed(0)) * 0.8 + 0.1
    with pytest.raises(InputError, match=msg):
        certify(model, x, 0.5, n_samples=50)
    with pytest.raises(InputError, match=msg):
        EnsembleAttack("cheap")(model, x, 0.3)


class _QuirkDecodeVAE(torch.nn.Module):
    """A small protocol VAE whose decode has a quirk: "clamp_" edits z in place, "noise" adds noise,
    "dropout" has a Dropout layer (left in training mode by the test)."""

    def __init__(self, quirk: str):
        super().__init__()
        self.quirk, self.input_shape = quirk, (1, 4, 4)
        self.enc, self.dec = torch.nn.Linear(16, 4), torch.nn.Linear(2, 16)
        self.drop = torch.nn.Dropout(0.3)
        with torch.no_grad():
            self.enc.bias[:2] = 2.0  # |mu| > 0.5: the clamp changes every mu

    def encode(self, x):
        h = self.enc(x.flatten(1))
        return h[:, :2], torch.nn.functional.softplus(h[:, 2:]) + 0.05

    def decode(self, z):
        if self.quirk == "clamp_":
            z = z.clamp_(-0.5, 0.5)
        h = self.dec(z)
        if self.quirk == "noise":
            h = h + 0.1 * torch.randn_like(h)
        return torch.sigmoid(self.drop(h)).view(-1, 1, 4, 4)


@pytest.mark.parametrize("quirk, train, msg", [("clamp_", False, "model.decode modifies its input z in place"),
                                               ("noise", False, "model.decode is not deterministic"),
                                               (None, True, "training mode with Dropout")])
def test_check_model_reports_what_the_estimators_refuse(quirk, train, msg):
    """check_model said ok for a model in training mode with dropout or a random decode, which every
    estimator refuses; and a decode that clamps its z in place (so mu, the centre of every draw)
    was blamed on randomness in encode."""
    from robvae.robustness import r_robustness

    torch.manual_seed(0)
    model = _QuirkDecodeVAE(quirk).train(train)
    x = torch.rand(5, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    rep = check_model(model, x)
    assert not rep.ok and any(msg in p for p in rep.problems), rep.problems
    with pytest.raises(InputError, match=msg):
        r_robustness(model, x, 0.5, n_samples=20)
    assert check_model(_QuirkDecodeVAE(None).eval(), x).ok  # the same model without the quirk


def test_n_train_larger_than_the_split_says_so(tmp_path, capsys):
    """As certify's --n: the run trains on every image and says so (it was silent)."""
    from robvae.data import load_dataset

    n = len(load_dataset("digits", "train"))
    rc = main(["train", "--n-train", "100000000", "--epochs", "1", "--hidden", "8", "--latent-dim", "2", "--quiet",
               "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert rc == 0 and err.splitlines()[0] == (f"robvae: warning: --n-train 100000000 is larger than the train split "
                                               f"of digits ({n} images): using all {n}"), err


# --- found by an audit of users' models (session 13) ------------------------------------------------
class _Session13VAE(torch.nn.Module):
    """A protocol VAE with one quirk: "meta" returns mu, sigma on the meta device; "fragile" has a
    sigma that overflows once x leaves the clean inputs; "clamp_" clamps z in place within a range
    the latents never leave (no value changes)."""

    def __init__(self, quirk: str, x0: torch.Tensor | None = None):
        super().__init__()
        self.quirk, self.input_shape = quirk, (1, 4, 4)
        self.x0 = x0
        self.enc, self.dec = torch.nn.Linear(16, 4), torch.nn.Linear(2, 16)

    def encode(self, x):
        mu, s = self.enc(x.flatten(1)).chunk(2, dim=1)
        sigma = torch.nn.functional.softplus(s) + 0.1
        if self.quirk == "meta":
            return mu.to("meta"), sigma.to("meta")
        if self.quirk == "fragile":  # finite at the clean inputs, inf a little away from them
            far = (x.flatten(1) - self.x0.flatten(1)[: x.shape[0]].repeat(-(-x.shape[0] // self.x0.shape[0]), 1)[
                : x.shape[0]]).abs().amax(1, keepdim=True)
            sigma = torch.where(far > 1e-3, torch.full_like(sigma, float("inf")), sigma)
        return mu, sigma

    def decode(self, z):
        if self.quirk == "clamp_":
            z.clamp_(-1e6, 1e6)
        return torch.sigmoid(self.dec(z)).view(-1, 1, 4, 4)


def test_outputs_on_another_device_are_one_line_errors():
    """mu and sigma on another device than x: certify and check_model raised torch's RuntimeError
    (a 40-line traceback on the command line)."""
    from robvae import check_model
    from robvae.robustness import certify

    torch.manual_seed(0)
    model = _Session13VAE("meta").eval()
    x = torch.rand(3, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    rep = check_model(model, x)
    assert rep.problems == ["model.encode returned mu on device meta, but the input is on cpu",
                            "model.encode returned sigma on device meta, but the input is on cpu"]
    with pytest.raises(InputError, match="model.encode returned mu on device meta, but the input is on cpu"):
        certify(model, x, 0.5, n_samples=20)


def test_an_attack_on_a_model_whose_sigma_overflows_off_the_data_is_refused():
    """sigma finite at the clean inputs and inf once they move: the attack wrote NaN expected
    damages with exit status 0 (robvae margin refused the same model)."""
    from robvae.attacks import EnsembleAttack

    torch.manual_seed(0)
    x = torch.rand(2, 1, 4, 4, generator=torch.Generator().manual_seed(0)) * 0.8 + 0.1
    model = _Session13VAE("fragile", x).eval()
    with pytest.raises(InputError, match="model.encode returned sigma with .* NaN or inf values"):
        EnsembleAttack("cheap", target="expected")(model, x, 0.5)


def test_a_decode_that_edits_z_in_place_without_changing_it_is_refused():
    """z.clamp_(-1e6, 1e6) changes no value of any latent, so the equality check passed it; its
    version counter shows the edit."""
    from robvae.robustness import certify

    torch.manual_seed(0)
    model = _Session13VAE("clamp_").eval()
    x = torch.rand(3, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    with pytest.raises(InputError, match=r"model.decode modifies its input z in place"):
        certify(model, x, 0.5, n_samples=20)


def test_a_decode_that_returns_nan_far_out_is_named_not_blamed_on_the_rewrite():
    """A decoder of standard layers (rewritten by robvae) whose decode gives NaN for some rows: the
    spot check called it a disagreement of the rewrite (a RuntimeWarning) instead of letting the
    finiteness check name model.decode."""
    import warnings

    from robvae.models.fast_decode import _matches

    a = torch.tensor([[0.5, float("nan"), float("inf")]])
    assert _matches(a, a.clone(), nonfinite=True) and not _matches(a, a.clone())
    assert not _matches(a, torch.tensor([[0.5, 0.2, float("inf")]]), nonfinite=True)
    assert not _matches(a, torch.tensor([[0.5, float("nan"), float("-inf")]]), nonfinite=True)
    assert not _matches(torch.tensor([[0.6, float("nan"), float("inf")]]), a, nonfinite=True)

    class NanFar(torch.nn.Module):
        input_shape = (1, 2, 2)

        def __init__(self):
            super().__init__()
            self.enc, self.decoder = torch.nn.Linear(4, 4), torch.nn.Sequential(torch.nn.Linear(2, 4))

        def encode(self, x):
            mu, s = self.enc(x.flatten(1)).chunk(2, dim=1)
            return mu, torch.nn.functional.softplus(s) + 0.1

        def decode(self, z):
            return torch.sigmoid(self.decoder(z)).view(-1, 1, 2, 2)

    from robvae.models.fast_decode import decoder_plan

    model = NanFar().eval()
    z = torch.randn(32, 2, generator=torch.Generator().manual_seed(0))
    plan = decoder_plan(model, z)
    assert plan is not None
    zn = z.clone()
    zn[5, 0] = float("nan")
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("error")  # no "the fast decode route disagreed" warning
        out = plan(zn)
        assert plan.spot_check(model, zn, out) and bool(torch.isnan(out[5]).all())


def test_robvaes_warnings_are_one_line_on_the_command_line(tmp_path, monkeypatch, capsys):
    """robvae's own warnings reached the terminal as FILE:LINE: DecoderRangeWarning: ... plus a
    line of robvae's source; they are one ``robvae: warning:`` line now, and other libraries'
    warnings keep Python's form."""
    import warnings

    (tmp_path / "logit_models.py").write_text(
        "import torch\n"
        "class L(torch.nn.Module):\n"
        "    input_shape = (1, 8, 8)\n"
        "    def __init__(self):\n"
        "        super().__init__(); self.e = torch.nn.Linear(64, 4); self.d = torch.nn.Linear(2, 64)\n"
        "    def encode(self, x):\n"
        "        mu, s = self.e(x.flatten(1)).chunk(2, 1)\n"
        "        return mu, torch.nn.functional.softplus(s) + 0.1\n"
        "    def decode(self, z):\n"
        "        return (5 * self.d(z)).view(-1, 1, 8, 8)\n"
        "def build():\n"
        "    torch.manual_seed(0)\n"
        "    return L().eval()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        rc = main(["certify", "--model", "logit_models:build", "--n", "5", "--r", "0.5", "--samples", "30", "--quiet",
                   "--no-rigorous", "--out", str(tmp_path / "c.csv")])
    err = capsys.readouterr().err
    assert rc == 0, err
    lines = [ln for ln in err.splitlines() if "warning" in ln.lower()]
    assert lines and all(ln.startswith("robvae: warning: model.decode returns values in [") for ln in lines), err
    assert "DecoderRangeWarning" not in err and "validation.py" not in err
    with warnings.catch_warnings():  # another library's warning: Python's own form
        warnings.simplefilter("always")
        from robvae.cli import _robvae_warning

        shown = []
        _robvae_warning(lambda *a: shown.append(a))("numpy says", UserWarning, "x.py", 1)
        assert shown and shown[0][0] == "numpy says"
    import sys

    sys.modules.pop("logit_models", None)


# ---- session 14: an edge-case audit of the Python API (h75) ---------------------------------


def _lin():
    return LinearVAE.random(d=4, input_shape=(1, 4, 4), s=0.1), torch.full((3, 1, 4, 4), 0.5, dtype=torch.float64)


@pytest.mark.parametrize("chunk", [-3, -1, 0, 2.5, True])
def test_chunk_sizes_that_are_not_positive_integers_are_refused(chunk):
    """A negative chunk_size made delta_norms / r_min return uninitialised memory (values like
    2e-314) with no error; 0 was read as the default, 2.5 failed in range()."""
    import robvae
    from robvae.robustness import delta_norms, encoder_jacobian

    m, x = _lin()
    for call in (lambda: robvae.r_min(m, x, 100, chunk_size=chunk),
                 lambda: delta_norms(m, x, None, 5, chunk_size=chunk),
                 lambda: robvae.r_robustness(m, x, 0.2, n_samples=50, chunk_size=chunk),
                 lambda: robvae.certify(m, x, 0.2, n_samples=50, chunk_size=chunk),
                 lambda: encoder_jacobian(m, x, chunk_size=chunk)):
        with pytest.raises(InputError, match=r"chunk_size must be an integer >= 1"):
            call()


def test_certify_refuses_bad_batch_sizes_norm_strings_rigorous_and_early_abstain_values():
    import robvae

    m, x = _lin()
    for kw, needle in [({"batch_size": 0}, "batch_size"), ({"batch_size": -3}, "batch_size"),
                       ({"batch_size": 2.7}, "batch_size"), ({"norms": "frobenius"}, "tuple of names"),
                       ({"rigorous": "yes"}, "rigorous"), ({"early_abstain": "no"}, "early_abstain")]:
        with pytest.raises(InputError, match=needle):
            robvae.certify(m, x, 0.2, n_samples=20, **kw)
    # the right forms still work: a tuple of one norm, a batch that splits the inputs
    c = robvae.certify(m, x, 0.2, n_samples=20, norms=("frobenius",), batch_size=2)
    assert c.p.shape == (3,)


def test_inputs_made_under_inference_mode_are_not_taken_for_an_in_place_edit():
    """A batch built inside torch.inference_mode() was refused by every estimator with "model.encode
    modifies its input x in place" (a copy of an inference tensor starts at version 1); the same
    numbers as an ordinary tensor now, and a real in-place edit is still named."""
    import robvae

    m, x = _lin()
    with torch.inference_mode():
        xi = x.clone()
    a = robvae.certify(m, xi, 0.25, n_samples=100, generator=torch.Generator().manual_seed(0))
    b = robvae.certify(m, x, 0.25, n_samples=100, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a.p, b.p) and torch.equal(a.radius, b.radius)
    check_model(m, xi).raise_if_failed()

    class Clamps(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner, self.input_shape = m, m.input_shape

        def encode(self, x):
            return self.inner.encode(x.clamp_(0, 1))  # no value changes: only the version counter tells

        def decode(self, z):
            return self.inner.decode(z)

    with pytest.raises(InputError, match="modifies its input x in place"):
        robvae.certify(Clamps(), xi, 0.25, n_samples=10)


def test_a_bfloat16_margin_search_never_reports_a_budget_above_its_cap():
    """bfloat16 holds 0.3 as 0.30078 and the box diameter 9.798 as 9.8125 (rounded to nearest): a
    capped margin was reported above the cap it was searched under; now the cap is rounded down."""
    import robvae

    torch.manual_seed(0)
    vb = robvae.VAE(robvae.ModelConfig(input_shape=(1, 8, 12), arch="conv", latent_dim=2, conv_hidden=16,
                                       conv_channels=(4, 4))).to(torch.bfloat16).eval()
    xb = torch.rand(1, 1, 8, 12, generator=torch.Generator().manual_seed(1)).bfloat16()
    for cap in (0.3, None):
        res = robvae.empirical_margin(vb, xb, 2.0, n_samples=200, tol=0.3, eps_max=cap,
                                      generator=torch.Generator().manual_seed(0))
        limit = 0.3 if cap is not None else (8 * 12) ** 0.5
        assert bool(res.capped.all()) and float(res.margin.max()) <= limit and res.eps_max <= limit
        assert float(res.margin.max()) > limit * (1 - 2 ** -7)  # the largest bfloat16 below it


def test_draw_probe_and_iteration_counts_are_checked():
    """sequential_robustness(n_max=0) reported p = 0 from no draw; n_iter=0 returned the random
    start's norm as the spectral norm (2.1 for an exact 3.0) and iters=-1 a random direction;
    n_probes=0 failed inside torch (h75)."""
    import robvae
    from robvae.attacks.starts import top_singular_direction
    from robvae.robustness import jacobian_norm, sequential_robustness
    from robvae.robustness.jacobian import jacobian_norms

    m, x = _lin()
    for call, needle in [(lambda: sequential_robustness(m, x, 0.2, n_max=0), "n_max"),
                         (lambda: sequential_robustness(m, x, 0.2, n_max=-5), "n_max"),
                         (lambda: sequential_robustness(m, x, 0.2, n_first=0), "n_first"),
                         (lambda: jacobian_norm(m, x, "spectral", method="hutchinson", n_iter=0), "n_iter"),
                         (lambda: jacobian_norm(m, x, "frobenius", method="hutchinson", n_probes=0), "n_probes"),
                         (lambda: jacobian_norm(m, x, "frobenius", method="hutchinson", n_probes=2.5), "n_probes"),
                         (lambda: jacobian_norms(m, x, "frobenius"), "tuple of names"),
                         (lambda: top_singular_direction(m, x, iters=-1), "iters")]:
        with pytest.raises(InputError, match=needle):
            call()
    assert robvae.robustness.sequential_robustness(m, x, 0.2, n_max=100).n_samples.min() >= 1


@pytest.mark.parametrize("alpha", [0.5, 0.9, 0.999999])
def test_levels_alpha_of_one_half_or_more_are_refused(alpha, capsys):
    """At alpha = 0.999999 Clopper-Pearson's lower bound (0.958) passed its upper bound (0.630) and
    at 0.9 the sound radius exceeded Theorem 1's for every input (h75): a one-sided bound at
    confidence 1 - alpha <= 1/2 is no bound. Refused by the library, the configs and the CLI."""
    import robvae
    from robvae.evaluation import EvalConfig
    from robvae.robustness import clopper_pearson

    m, x = _lin()
    for call in (lambda: robvae.certify(m, x, 0.2, n_samples=20, alpha=alpha), lambda: clopper_pearson(3, 10, alpha),
                 lambda: EvalConfig(alpha=alpha), lambda: robvae.empirical_margin(m, x, 0.2, alpha=alpha)):
        with pytest.raises(ValueError, match=r"level in \(0, 0\.5\)"):
            call()
    assert main(["certify", "--model", "x:y", "--alpha", str(alpha), "--r", "1"]) == 2
    assert "0<x<0.5" in capsys.readouterr().err.replace(" ", "")
    lo, hi = clopper_pearson(3, 10, 0.49)
    assert float(lo) <= 0.3 <= float(hi)


def test_remaining_api_edges_of_the_h75_audit():
    """h75's low findings: r=True was r = 1 and r="0.1" a torch TypeError; alpha >= 1/2 was refused
    only after every draw; damages refused delta=None (r_robustness reads it as 0); a float16
    LinearVAE's closed forms failed in torch; empirical_margin ignored norm= beside an attack and
    steps= beside an attack, and took no preset name; inputs that require grad warned from robvae's
    own range check; exact_optimum gave a wrong closed form for non-orthogonal columns."""
    import warnings as _w

    import robvae
    from robvae.attacks import EnsembleAttack
    from robvae.metrics import expected_damage, perceptual_damage, reconstruction_damage
    from robvae.studies import exact_optimum

    m, x = _lin()
    for bad in (True, "0.1", torch.tensor([True, False, True])):
        with pytest.raises(InputError, match="r must be a number"):
            robvae.r_robustness(m, x, bad, n_samples=10)
    assert robvae.r_robustness(m, x, np.array([0.1, 0.2, 0.3]), n_samples=10).r.tolist() == [0.1, 0.2, 0.3]
    calls = []
    m.decode = lambda z, _d=m.decode: calls.append(1) or _d(z)  # counts decoder calls
    with pytest.raises(InputError, match="alpha"):
        robvae.r_robustness(m, x, 0.2, n_samples=10, alpha=0.9)
    assert not calls  # refused before any draw
    del m.decode
    zero = torch.zeros_like(x)
    assert torch.equal(reconstruction_damage(m, x, None), reconstruction_damage(m, x, zero))
    assert torch.equal(perceptual_damage(m, x, None).ssim, perceptual_damage(m, x, zero).ssim)
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    assert torch.equal(expected_damage(m, x, None, generator=g()), expected_damage(m, x, zero, generator=g()))
    half = LinearVAE.random(d=2, input_shape=(1, 4, 4), s=0.1, dtype=torch.float16)
    assert half.exact_margin(0.25) > 0 and half.exact_bound(0.25) > 0
    with pytest.raises(InputError, match="attacks in 'l2'"):
        robvae.empirical_margin(m, x[:1], 0.25, attack=EnsembleAttack("cheap"), norm="linf", n_samples=50)
    with pytest.raises(InputError, match="steps"):
        robvae.empirical_margin(m, x[:1], 0.25, attack=EnsembleAttack("cheap"), steps=5, n_samples=50)
    a = robvae.empirical_margin(m, x[:1], 0.25, attack="cheap", norm="linf", n_samples=200, generator=g())
    b = robvae.empirical_margin(m, x[:1], 0.25, attack=EnsembleAttack("cheap", norm="linf"), n_samples=200,
                                generator=g())
    assert torch.equal(a.margin, b.margin)
    with _w.catch_warnings():
        _w.simplefilter("error")
        robvae.r_robustness(m, x.clone().requires_grad_(), 0.25, n_samples=10)
    W = torch.randn(16, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with pytest.raises(InputError, match="orthogonal columns"):
        exact_optimum(W, 0.5, 1.0)
    Q = torch.linalg.qr(W).Q * torch.tensor([0.5, 1.0, 2.0, 4.0], dtype=torch.float64)
    for s, beta in ((0.0, 1.0), (0.5, 0.0), (0.5, float("nan"))):
        with pytest.raises(InputError):
            exact_optimum(Q, s, beta)
    assert exact_optimum(Q, 0.5, 1.0)["sigma"].shape == (4,)


def test_flag_strings_other_than_true_false_and_empty_similarity_batches_are_refused():
    """bound_stats read every flag string but exactly "True" as False ("true", "yes"), and
    image_similarity failed with an IndexError inside torchmetrics on an empty batch (h75)."""
    from robvae.metrics import image_similarity
    from robvae.stats import bound_stats

    bound, margin = np.array([0.1, 0.2, 0.3]), np.array([0.2, 0.3, 0.4])
    for flags in (["true", "False", "False"], np.array(["yes", "no", "no"], dtype=object)):
        with pytest.raises(ValueError, match="flags must be booleans"):
            bound_stats(bound, margin, capped=flags)
    a = bound_stats(bound, margin, capped=["True", "False", "False"])
    b = bound_stats(bound, margin, capped=np.array(["True", "False", "False"], dtype=object))
    assert a.n_capped == b.n_capped == 1
    with pytest.raises(InputError, match="empty batch"):
        image_similarity(torch.zeros(0, 1, 16, 16), torch.zeros(0, 1, 16, 16))


def test_numeric_settings_are_not_truncated():
    """h75: MaxDamageAttack(steps=2.7) ran 2 steps and took steps="10"; apgd took rho=-1 and
    momentum=2; EvalConfig(n=2.5) failed deep inside evaluate. (Fractional counts stay accepted by
    sequential_bernoulli_test: its futility rule tests projected counts.)"""
    from robvae.attacks import MaxDamageAttack, apgd
    from robvae.evaluation import EvalConfig

    m, x = _lin()
    for kw in ({"steps": 2.7}, {"steps": "10"}, {"restarts": 0}):
        with pytest.raises(InputError):
            MaxDamageAttack(**kw)
    f = lambda d: d.flatten(1).pow(2).sum(1)  # noqa: E731
    for kw in ({"rho": -1.0}, {"momentum": 2.0}, {"momentum": 0.0}, {"steps": 2.5}):
        with pytest.raises(InputError):
            apgd(f, x, 0.1, **{"steps": 3, **kw})
    for kw in ({"n": 2.5}, {"n_samples": 1.5}, {"batch_size": 0}):
        with pytest.raises(InputError):
            EvalConfig(**kw)
    assert EvalConfig(n=np.int64(3)).n == 3


def test_argument_types_that_worked_before_the_session_14_checks_still_work():
    """Review h76: per-input radii as a list, alpha as a 0-d tensor and early_abstain=np.False_ were
    refused by the new checks; they are the same numbers as before."""
    import robvae

    m, x = _lin()
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    a = robvae.certify(m, x, [0.1, 0.2, 0.3], n_samples=50, alpha=torch.tensor(0.01, dtype=torch.float64),
                       early_abstain=np.False_,
                       generator=g())
    b = robvae.certify(m, x, torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64), n_samples=50, alpha=0.01,
                       early_abstain=False, generator=g())
    assert torch.equal(a.p, b.p) and torch.equal(a.p_lower, b.p_lower)
    for bad in ([], [True, 1.0, 2.0], ["0.1", 0.2, 0.3]):
        with pytest.raises(InputError, match="r must be a number"):
            robvae.certify(m, x, bad, n_samples=10)


@pytest.mark.parametrize("argv0, cli", [("/venv/bin/robvae", True), ("my_script.py", False), ("-m robvae.cli", True)])
def test_ctrl_c_while_the_command_imports_torch_is_one_line(argv0, cli):
    """Audit h73: Ctrl-C in the first seconds of a robvae command (while robvae imports torch and
    scipy) printed a 25-50 line KeyboardInterrupt traceback. The console script now prints the
    one line and exits 130; a library import keeps Python's KeyboardInterrupt."""
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent(f"""
        import sys
        class Interrupts:  # Ctrl-C arriving while robvae.attacks (torch) is imported
            def find_spec(self, name, path=None, target=None):
                if name == "robvae.attacks":
                    raise KeyboardInterrupt
        sys.meta_path.insert(0, Interrupts())
        sys.argv = [{argv0!r}, "certify"]
        import robvae.cli
    """)
    if argv0.startswith("-m"):  # python -m robvae.cli (as the tests run it): argv[0] is "-m" while it imports
        code = code.replace(f"sys.argv = [{argv0!r}, \"certify\"]", "sys.orig_argv = [sys.executable, '-m', "
                                                                         "'robvae.cli', 'certify']; sys.argv = ['-m']")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    if cli:
        assert res.returncode == 130
        assert res.stderr == "robvae: interrupted (nothing was written; rerun the command to start again)\n"
    else:
        assert res.returncode != 0 and "KeyboardInterrupt" in res.stderr


def test_an_empty_lock_left_by_a_killed_taker_is_taken_over_at_once_under_the_guard(tmp_path, monkeypatch):
    """Audit h73 (by reading): a SIGKILL between creating the lock file and writing its owner left
    an empty lock that counted as live for 10 s, so an immediate rerun was refused. Locks are only
    created under the folder's guard, so an empty one found under it is a dead taker's: taken over
    after 1 s (not 10). Without flock (unguarded) the 10-second rule stays."""
    import errno

    from robvae import fileio
    from robvae.errors import LockError

    lock = tmp_path / ".robvae.lock"
    lock.write_text("")
    with pytest.raises(LockError):  # being written right now, perhaps by another host (review h77)
        with fileio.folder_lock(tmp_path, "robvae certify"):
            pass
    os.utime(lock, (time.time() - 2, time.time() - 2))  # 2 s later: a dead taker's
    with fileio.folder_lock(tmp_path, "robvae certify") as path:
        assert json.loads(path.read_text())["command"] == "robvae certify"
    lock.write_text("")
    os.utime(lock, (time.time() - 2, time.time() - 2))

    def no_flock(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fileio.fcntl, "flock", no_flock)
    with pytest.raises(LockError):
        with fileio.folder_lock(tmp_path, "robvae certify"):
            pass
