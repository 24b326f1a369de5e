"""``robvae certify|attack|margin --model MODULE:CALLABLE``: any protocol model on the CLI."""

from __future__ import annotations

import json
import sys
import textwrap

import numpy as np
import pytest
import torch
import robvae
from robvae.cli import main
from robvae.cli.model_spec import load_inputs_file, load_model_spec
from robvae.errors import InputError

MODULE = """
import torch
import robvae


def _vae():
    torch.manual_seed(0)
    return robvae.VAE(robvae.ModelConfig(input_shape=(1, 8, 8), latent_dim=3, hidden=(16,))).eval()


def vae():
    return _vae()


def vae64():
    return _vae().double()


def vae_bf16():
    return _vae().to(torch.bfloat16)


def named():
    return _vae(), "my vae"  # robvae bench's contract


def flat_linear():
    from robvae.models import LinearVAE  # tiny singular values: huge first-order radii

    return LinearVAE.random(d=2, input_shape=(1, 8, 8), s=0.1, singular_values=[0.002, 0.001], dtype=torch.float32)


class NotAModel:
    pass


def wrong():
    return NotAModel()


class BadSigma(torch.nn.Module):
    input_shape = (1, 8, 8)

    def encode(self, x):
        mu = x.flatten(1)[:, :3]
        return mu, torch.zeros_like(mu)

    def decode(self, z):
        return torch.sigmoid(z.sum(1, keepdim=True)).expand(-1, 64).reshape(-1, 1, 8, 8)


def bad_sigma():
    return BadSigma()


def boom():
    raise RuntimeError("no weights here")


def exits():
    raise SystemExit(3)


def on_meta():
    with torch.device("meta"):
        return _vae()


def bad_kl():
    from diffusers import AutoencoderKL
    from robvae.adapters import from_diffusers

    kl = AutoencoderKL(in_channels=1, out_channels=1, block_out_channels=(8, 16), layers_per_block=1,
                       down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                       latent_channels=2, norm_num_groups=4, sample_size=9)
    return from_diffusers(kl)
"""


def _module_on_path(tmp_path, monkeypatch, name: str, source: str):
    """Write ``name``.py into tmp_path, put it on sys.path and chdir there; forget it afterwards."""
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    sys.modules.pop(name, None)
    yield tmp_path
    sys.modules.pop(name, None)


@pytest.fixture()
def user_pkg(tmp_path, monkeypatch):
    yield from _module_on_path(tmp_path, monkeypatch, "my_models", MODULE)


def _error_lines(err: str) -> list[str]:
    """stderr less warnings printed by other options (one clear line is asserted on what is left)."""
    return [ln for ln in err.strip().splitlines() if ln and "Warning" not in ln and "robvae: warning:" not in ln]


def test_certify_with_model_equals_library_certify_on_the_same_inputs(user_pkg, capsys):
    rc = main(["certify", "out", "--model", "my_models:vae", "--dataset", "digits", "--n", "20", "--r", "0.5",
               "--n-samples", "200", "--quiet"])
    assert rc == 0, capsys.readouterr().err
    rows = (user_pkg / "out" / "certify-test.csv").read_text().splitlines()
    assert len(rows) == 21
    meta = json.loads((user_pkg / "out" / "certify-test.json").read_text())
    # the same numbers from the library, blocks seeded as the CLI does
    from robvae.cli.model_spec import certify_blocks

    model = load_model_spec("my_models:vae")
    x = robvae.load_dataset("digits", "test").images[:20]
    cert = certify_blocks(model, x, 0.5, seed=0, n_samples=200)
    header = rows[0].split(",")
    p_col = [float(r.split(",")[header.index("p")]) for r in rows[1:]]
    np.testing.assert_allclose(p_col, cert.p.numpy(), rtol=1e-6)
    assert meta["r"] == 0.5


def test_attack_and_margin_with_model_and_inputs_file(user_pkg, capsys):
    x = robvae.load_dataset("digits", "test").images[:6]
    np.save(user_pkg / "x.npy", x.numpy())
    torch.save(x.clone(), user_pkg / "x.pt")
    rc = main(["attack", "--model", "my_models:vae", "--inputs", "x.npy", "--n", "6", "--eps", "0.5", "--preset", "legacy",
               "--steps", "3", "--restarts", "1", "--quiet"])
    assert rc == 0, capsys.readouterr().err
    assert not (user_pkg / "attack-test").exists()  # the outputs are named after the inputs file
    lines = (user_pkg / "attack-x" / "attack.csv").read_text().splitlines()
    assert len(lines) == 7
    header = lines[0].split(",")
    assert "ssim" in header and "ms_ssim" in header  # perceptual damage beside the L2 damage
    ssim = [float(r.split(",")[header.index("ssim")]) for r in lines[1:]]
    assert all(-1 <= v < 1 for v in ssim)
    meta = json.loads((user_pkg / "attack-x" / "attack.json").read_text())
    assert meta["perceptual"]["ms_ssim_scales"] == 2 and meta["perceptual"]["kernel_size"] == 7
    rc = main(["margin", "m", "--model", "my_models:vae", "--inputs", "x.pt", "--n", "4", "--r", "0.5",
               "--n-samples", "100", "--attack-preset", "cheap", "--quiet"])
    assert rc == 0, capsys.readouterr().err
    assert len((user_pkg / "m" / "margin-x.csv").read_text().splitlines()) == 5
    rc = main(["certify", "m", "--model", "my_models:vae", "--inputs", "x.npy", "--n", "4", "--r", "0.5",
               "--n-samples", "50", "--quiet"])
    assert rc == 0, capsys.readouterr().err
    assert (user_pkg / "m" / "certify-x.csv").is_file() and not (user_pkg / "m" / "certify-test.csv").exists()
    # the JSON files say where the inputs came from (no split)
    # and which model (an audit found none of the three recorded --model, and margin's JSON said
    # split "test" and no count of the inputs it used)
    cert = json.loads((user_pkg / "m" / "certify-x.json").read_text())
    assert cert["split"] is None and cert["inputs"] == "x.npy" and cert["model"] == "my_models:vae"
    mar = json.loads((user_pkg / "m" / "margin-x.json").read_text())
    assert mar["split"] is None and mar["inputs"] == "x.pt" and mar["model"] == "my_models:vae" and mar["n"] == 4
    att = json.loads((user_pkg / "attack-x" / "attack.json").read_text())
    assert att["split"] is None and att["inputs"] == "x.npy" and att["model"] == "my_models:vae" and att["n"] == 6
    np.save(user_pkg / "train.npy", x.numpy())  # a file named after a split never takes the split's name
    rc = main(["certify", "m", "--model", "my_models:vae", "--inputs", "train.npy", "--n", "4", "--r", "0.5",
               "--n-samples", "50", "--quiet"])
    assert rc == 0, capsys.readouterr().err
    assert (user_pkg / "m" / "certify-train-inputs.csv").is_file() and not (user_pkg / "m" / "certify-train.csv").exists()


@pytest.mark.parametrize("spec, message", [
    ("nowhere_module:build", "does not import"),
    ("my_models:missing", "has no attribute 'missing'"),
    ("my_models:wrong", "NotAModel"),
    ("my_models:boom", "boom() raised RuntimeError: no weights here"),
    ("my_models:exits", "exits() called sys.exit(3) instead of returning a model"),  # was exit 3, no message
    ("my_models", "expected MODULE:CALLABLE"),
    ("my_models:bad_sigma", "sigma"),
    ("my_models:on_meta", "on the 'meta' device"),  # was a traceback, status 1
])
def test_bad_model_specs_are_one_line_exit_2(user_pkg, capsys, spec, message):
    rc = main(["certify", "--model", spec, "--n", "4", "--r", "0.5", "--n-samples", "10", "--quiet"])
    err = _error_lines(capsys.readouterr().err)
    assert rc == 2
    assert len(err) == 1 and err[0].startswith("robvae: error: ") and message in err[0], err
    assert not (user_pkg / "certify-test.csv").exists()  # checked before any work


def test_neither_run_nor_model_is_a_usage_error(user_pkg, capsys):
    assert main(["certify", "--r", "0.5"]) == 2
    assert "RUN folder or --model" in capsys.readouterr().err


def test_inputs_files_are_read_without_pickles(tmp_path):
    x = np.random.default_rng(0).random((3, 1, 8, 8)).astype(np.float32)
    np.save(tmp_path / "a.npy", x)
    torch.testing.assert_close(load_inputs_file(tmp_path / "a.npy", (1, 8, 8)), torch.from_numpy(x))
    np.save(tmp_path / "b.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(InputError, match="not a plain .npy array") as err:
        load_inputs_file(tmp_path / "b.npy")
    assert "allow_pickle" not in str(err.value)
    (tmp_path / "junk.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(InputError, match="--inputs .*junk.npy"):
        load_inputs_file(tmp_path / "junk.npy")
    (tmp_path / "junk.pt").write_bytes(b"\x80\x04not a tensor file")  # torch's error advises unpickling: not passed on
    with pytest.raises(InputError, match="not a plain tensor file") as err:
        load_inputs_file(tmp_path / "junk.pt")
    assert "weights_only=False" not in str(err.value) and "False" not in str(err.value)
    torch.save({"k": torch.zeros(2)}, tmp_path / "c.pt")
    with pytest.raises(InputError, match="expected one tensor"):
        load_inputs_file(tmp_path / "c.pt")
    np.save(tmp_path / "d.npy", (x * 255).astype(np.uint8)[:, 0])  # uint8 [N, H, W]
    y = load_inputs_file(tmp_path / "d.npy", (1, 8, 8))
    assert y.shape == (3, 1, 8, 8) and float(y.max()) <= 1
    np.save(tmp_path / "e.npy", x * 3)
    with pytest.raises(InputError, match="outside"):
        load_inputs_file(tmp_path / "e.npy", (1, 8, 8))


def test_unsupported_diffusers_config_is_one_line_exit_2(user_pkg, capsys):
    pytest.importorskip("diffusers", reason="diffusers extra not installed")
    rc = main(["certify", "--model", "my_models:bad_kl", "--n", "4", "--r", "0.5", "--quiet"])
    err = _error_lines(capsys.readouterr().err)
    assert rc == 2 and len(err) == 1 and "not divisible by the autoencoder's downsampling factor 2" in err[0], err


TINY = """
import torch


class Tiny(torch.nn.Module):
    '''A protocol model that is not robvae's: no log_likelihood, no Lipschitz bounds.'''

    input_shape = (1, 8, 8)

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.enc = torch.nn.Linear(64, 4)
        self.dec = torch.nn.Linear(2, 64)

    def encode(self, x):
        h = self.enc(x.flatten(1))
        return h[:, :2], torch.nn.functional.softplus(h[:, 2:]) + 0.05

    def decode(self, z):
        return torch.sigmoid(self.dec(z)).reshape(-1, 1, 8, 8)


def build():
    return Tiny()


def wrong():
    return torch.nn.Linear(2, 2)
"""


@pytest.fixture()
def tiny_pkg(tmp_path, monkeypatch):
    yield from _module_on_path(tmp_path, monkeypatch, "tiny_model", TINY)


def test_report_with_model_evaluates_then_renders_the_numbers_it_wrote(tiny_pkg, capsys):
    from robvae.report.html import _fmt

    rc = main(["report", "--model", "tiny_model:build", "--dataset", "digits", "--n", "8", "--quiet", "OUT"])
    assert rc == 0, capsys.readouterr().err
    out = tiny_pkg / "OUT"
    assert len((out / "margin-test.csv").read_text().splitlines()) == 9
    assert len((out / "attack-test" / "attack.csv").read_text().splitlines()) == 9
    margin = json.loads((out / "margin-test.json").read_text())
    attack = json.loads((out / "attack-test" / "attack.json").read_text())
    assert margin["model"] == "tiny_model:build" and margin["evaluation"]["n_samples"] == robvae.EvalConfig().n_samples
    s = margin["summary"]
    assert s["n"] == 8 and s["n_used"] >= 1 and np.isfinite(s["median_margin"]) and np.isfinite(s["median_bound"])
    page = (out / "report.html").read_text()
    # the headline numbers are the ones in the JSON files (formatted as the page formats them)
    assert f"<dt>median empirical margin</dt><dd>{_fmt(s['median_margin'])}</dd>" in page
    assert f"(inputs compared with the margin)</dt><dd>{_fmt(s['median_bound'])}</dd>" in page
    assert (f"<dt>attack damage (deterministic), median</dt><dd>{_fmt(attack['summary']['damage median'])}</dd>"
            in page)
    assert "data:image/png;base64," in page  # attack.png embedded


def test_report_with_model_and_inputs_file_names_and_renders_the_outputs_by_the_file(tiny_pkg, capsys):
    np.save(tiny_pkg / "imgs.npy", robvae.load_dataset("digits", "test").images[:5].numpy())
    rc = main(["report", "--model", "tiny_model:build", "--inputs", "imgs.npy", "--n", "5", "--quiet", "OUT"])
    assert rc == 0, capsys.readouterr().err
    out = tiny_pkg / "OUT"
    assert (out / "margin-imgs.csv").is_file() and (out / "attack-imgs" / "attack.png").is_file()
    assert not (out / "margin-test.csv").exists() and not (out / "attack-test").exists()
    page = (out / "report.html").read_text()
    assert "margin-imgs.csv" in page and "attack-imgs/attack.csv" in page
    assert page.count("data:image/png;base64,") >= 1  # the attack figure, found under its new name
    margin = json.loads((out / "margin-imgs.json").read_text())
    assert f"<dd>{robvae.report.html._fmt(margin['summary']['median_margin'])}</dd>" in page
    # JSON files that only match the results' names are not results (review: a list crashed the report)
    (out / "margin-notes.json").write_text("[1, 2]")
    (out / "certify-thresholds.json").write_text('{"low": 0.1}')
    rc = main(["report", str(out), "--html", str(out / "again.html")])
    assert rc == 0, capsys.readouterr().err
    again = (out / "again.html").read_text()
    assert "margin-notes" not in again and "certify-thresholds" not in again and "margin-imgs.csv" in again


@pytest.mark.parametrize("spec, message", [
    ("nowhere_module:build", "does not import"),
    ("tiny_model:wrong", "has no encode / decode"),
])
def test_report_with_bad_model_is_one_line_exit_2(tiny_pkg, capsys, spec, message):
    rc = main(["report", "--model", spec, "--n", "4", "--quiet", "OUT"])
    err = _error_lines(capsys.readouterr().err)
    assert rc == 2
    assert len(err) == 1 and err[0].startswith("robvae: error: ") and message in err[0], err
    assert not (tiny_pkg / "OUT").exists()  # checked before any work


def test_report_without_model_rejects_model_only_options(tiny_pkg, capsys):
    (tiny_pkg / "F").mkdir()
    assert main(["report", "--n", "4", "F"]) == 2
    assert "--n go with --model" in capsys.readouterr().err
    assert main(["report"]) == 2
    assert "Missing argument" in capsys.readouterr().err


def test_a_float64_model_gets_float64_inputs_on_the_cli(user_pkg, capsys):
    """Found by an audit: the CLI reads images as float32, and a float64 model was refused with
    advice (x.to(torch.float64)) a CLI user cannot follow; its inputs now come in its dtype."""
    rc = main(["certify", "out64", "--model", "my_models:vae64", "--dataset", "digits", "--n", "6", "--r", "0.5",
               "--n-samples", "100", "--quiet"])
    assert rc == 0, capsys.readouterr().err
    from robvae.cli.model_spec import certify_blocks

    cert = certify_blocks(load_model_spec("my_models:vae64"), robvae.load_dataset("digits", "test").images[:6].double(),
                          0.5, seed=0, n_samples=100)
    rows = (user_pkg / "out64" / "certify-test.csv").read_text().splitlines()
    header = rows[0].split(",")
    np.testing.assert_allclose([float(r.split(",")[header.index("radius")]) for r in rows[1:]], cert.radius.numpy(),
                               rtol=1e-12)


def test_margin_with_a_float64_model_gets_float64_inputs(user_pkg, capsys):
    """Found by the dtype audit: certify and attack fed a float64 --model its dtype, but margin (and
    report) reloaded the data as float32 and refused the model."""
    rc = main(["margin", "m64", "--model", "my_models:vae64", "--dataset", "digits", "--n", "3", "--r", "0.5",
               "--n-samples", "100", "--attack-preset", "cheap", "--quiet"])
    assert rc == 0, capsys.readouterr().err
    assert len((user_pkg / "m64" / "margin-test.csv").read_text().splitlines()) == 4


def test_bfloat16_model_certifies_and_attacks_on_the_cli(user_pkg, capsys):
    """Found by the dtype audit: a bfloat16 --model crashed (a traceback) in the radii (no
    half-precision ndtri) and where its numbers reached numpy."""
    rc = main(["certify", "cb", "--model", "my_models:vae_bf16", "--dataset", "digits", "--n", "6", "--r", "0.5",
               "--n-samples", "200", "--quiet"])
    assert rc == 0, capsys.readouterr().err
    rows = (user_pkg / "cb" / "certify-test.csv").read_text().splitlines()
    header = rows[0].split(",")
    p = [float(r.split(",")[header.index("p")]) for r in rows[1:]]
    n_within = [float(r.split(",")[header.index("p")]) * 200 for r in rows[1:]]
    assert len(p) == 6 and all(abs(v - round(v)) < 1e-3 for v in n_within)  # k / 200 exactly, not bfloat16's
    rc = main(["attack", "ab", "--model", "my_models:vae_bf16", "--dataset", "digits", "--n", "4", "--eps", "0.5",
               "--preset", "legacy", "--steps", "3", "--restarts", "1", "--quiet"])
    assert rc == 0, capsys.readouterr().err
    lines = (user_pkg / "ab" / "attack-test" / "attack.csv").read_text().splitlines()
    header = lines[0].split(",")
    assert all(float(r.split(",")[header.index("delta_norm")]) <= 0.5 for r in lines[1:])


def test_certify_with_model_runs_in_this_process_when_auto_would_start_workers(user_pkg, capsys, monkeypatch):
    """Found by the dtype audit: past 5M decoder rows --executor auto chose local workers, which
    --model cannot use ("--executor local / ray need a RUN folder")."""
    import robvae.threads

    monkeypatch.setattr(robvae.threads, "AUTO_WORKERS_MIN_ROWS", 10)
    monkeypatch.setattr(robvae.threads, "cores", lambda: 2)
    rc = main(["certify", "big", "--model", "my_models:vae", "--dataset", "digits", "--n", "4", "--r", "0.5",
               "--n-samples", "100", "--quiet"])
    assert rc == 0, capsys.readouterr().err
    assert len((user_pkg / "big" / "certify-test.csv").read_text().splitlines()) == 5


def test_a_bench_callable_returning_model_and_name_works_for_certify(user_pkg, capsys):
    """Found by the docs walk-through: bench's --model callables return (model, name), which
    certify / attack / margin refused ("a tuple, which has no encode / decode")."""
    rc = main(["certify", "nm", "--model", "my_models:named", "--dataset", "digits", "--n", "3", "--r", "0.5",
               "--n-samples", "100", "--quiet"])
    assert rc == 0, capsys.readouterr().err
    assert len((user_pkg / "nm" / "certify-test.csv").read_text().splitlines()) == 4


def test_certify_notes_theorem1_radii_beyond_the_pixel_box(user_pkg, capsys):
    """Found by the robust-training audit: on Jacobian-penalised models certify printed median
    Theorem 1 radii of 15-42 (the 8x8 box's diameter is 8) without a word; a sigma-moving attack
    broke them at a quarter of that."""
    rc = main(["certify", "lin", "--model", "my_models:flat_linear", "--dataset", "digits", "--n", "4", "--r", "0.2",
               "--n-samples", "200", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "Theorem 1 radii (radius) exceed the diameter of the pixel box (sqrt(D) = 8)" in err
    rc = main(["certify", "v", "--model", "my_models:vae", "--dataset", "digits", "--n", "4", "--r", "0.5",
               "--n-samples", "100", "--quiet"])
    assert rc == 0 and "pixel box" not in capsys.readouterr().err


def test_uint8_inputs_that_are_not_0_255_images_are_refused_or_noted(tmp_path, capsys):
    """Found by an audit: binarized (0/1) or 8x8-digit (0..16) uint8 inputs were divided by 255
    into near-black images without a word. Binarized ones are refused; others reaching only 16 get
    a note (a review: dark images and all-black batches are legitimate)."""
    x = np.random.default_rng(0).integers(0, 2, size=(3, 1, 8, 8)).astype(np.uint8)
    x[0, 0, 0, 0] = 1
    np.save(tmp_path / "u.npy", x)
    with pytest.raises(InputError, match=r"u.npy: uint8 images are read as 0..255, but these hold only 0 and 1 "
                                         r".*save them as float images in \[0, 1\]"):
        load_inputs_file(tmp_path / "u.npy", (1, 8, 8))
    for top, noted in ((16, True), (0, False), (17, False)):
        x = np.random.default_rng(0).integers(0, top + 1, size=(3, 1, 8, 8)).astype(np.uint8)
        x[0, 0, 0, 0] = top
        np.save(tmp_path / "u.npy", x)
        got = load_inputs_file(tmp_path / "u.npy", (1, 8, 8))
        assert float(got.max()) == pytest.approx(top / 255)
        err = capsys.readouterr().err
        assert ("uint8 images are read as 0..255 and these only reach 16" in err) == noted, err


def test_inputs_that_are_not_dense_tensors_are_one_line_errors(tmp_path):
    """Found by an audit: a sparse, meta or nested tensor in a .pt crashed with a traceback."""
    x = torch.rand(2, 1, 8, 8)
    tensors = {"sparse_coo": x.to_sparse(), "meta": x.to("meta"),
               "nested": torch.nested.nested_tensor([torch.rand(1, 8, 8), torch.rand(1, 4, 4)])}
    for kind, t in tensors.items():
        torch.save(t, tmp_path / f"{kind}.pt")
        with pytest.raises(InputError, match=rf"{kind}.pt: holds a {kind} tensor; expected a plain dense tensor"):
            load_inputs_file(tmp_path / f"{kind}.pt", (1, 8, 8))


def test_npy_inputs_keep_their_shape_and_may_be_big_endian(tmp_path):
    """Found by an audit: a 0-d .npy was reported as "has shape (1,)", and a big-endian .npy refused."""
    np.save(tmp_path / "scalar.npy", np.array(0.5, np.float32))
    with pytest.raises(InputError, match=r"scalar.npy has shape \(\),"):
        load_inputs_file(tmp_path / "scalar.npy", (1, 8, 8))
    x = np.random.default_rng(0).random((3, 1, 8, 8))
    np.save(tmp_path / "be.npy", x.astype(">f4"))
    torch.testing.assert_close(load_inputs_file(tmp_path / "be.npy", (1, 8, 8)), torch.from_numpy(x.astype(np.float32)))


def test_n_larger_than_the_inputs_says_so_when_given(user_pkg, capsys):
    """--n 500 with a 6-image --inputs file used 6 without a word (a run folder's split says so);
    said only where --n was given, not for the option's default."""
    np.save(user_pkg / "x.npy", robvae.load_dataset("digits", "test").images[:6].numpy())
    args = ["certify", "--model", "my_models:vae", "--inputs", "x.npy", "--r", "0.5", "--n-samples", "20", "--quiet"]
    assert main([*args, "--n", "500"]) == 0
    err = capsys.readouterr().err
    assert "robvae: warning: --n 500 is larger than --inputs x.npy (6 images): using all 6" in err, err
    assert main(args) == 0
    assert "warning: --n" not in capsys.readouterr().err


def test_a_zip_named_npy_is_named_as_such(tmp_path):
    """np.load reads a torch.save file (a zip) named .npy as an archive: the message was
    "cannot read (AttributeError: 'NpzFile' object has no attribute 'dtype')"."""
    x = torch.rand(2, 1, 8, 8)
    torch.save(x, tmp_path / "x.npy")
    np.savez(tmp_path / "y.npy", x=x.numpy())  # numpy appends .npz
    for name in ("x.npy", "y.npy.npz"):
        p = tmp_path / name
        if name.endswith(".npz"):
            p = p.rename(tmp_path / "y.npy")
        with pytest.raises(InputError, match=r"a zip archive \(.npz, or a torch.save file named .npy\), not a .npy"):
            load_inputs_file(p)


def test_model_and_data_of_different_sizes_say_which_option(user_pkg, capsys):
    """A digits-size model on MNIST-size data said "x has shape (8, 1, 28, 28)" (8: the check
    batch, not --n) without naming --dataset."""
    rc = main(["certify", "--model", "my_models:vae", "--dataset", "digits", "--n", "50", "--r", "0.5", "--quiet"])
    assert rc == 0, capsys.readouterr().err  # the right size runs
    (user_pkg / "big_models.py").write_text(
        "import torch, robvae\n"
        "def vae28():\n"
        "    torch.manual_seed(0)\n"
        "    return robvae.VAE(robvae.ModelConfig(input_shape=(1, 28, 28), latent_dim=3, hidden=(16,))).eval()\n")
    sys.modules.pop("big_models", None)
    rc = main(["certify", "--model", "big_models:vae28", "--dataset", "digits", "--n", "50", "--r", "0.5", "--quiet"])
    err = _error_lines(capsys.readouterr().err)
    sys.modules.pop("big_models", None)
    assert rc == 2 and err == ["robvae: error: the images of the test split of digits are 1x8x8 but the model "
                               "expects 1x28x28: pass --dataset with the model's data (digits 1x8x8; mnist, "
                               "fashion-mnist 1x28x28; cifar10 3x32x32)"], err


def test_attack_says_why_a_model_has_no_likelihood_degradation(user_pkg, capsys):
    (user_pkg / "noll.py").write_text(textwrap.dedent("""
        import torch
        import robvae

        class NoLL(torch.nn.Module):
            def __init__(self):
                super().__init__()
                torch.manual_seed(0)
                self.v = robvae.VAE(robvae.ModelConfig(input_shape=(1, 8, 8), latent_dim=3, hidden=(16,))).eval()
                self.input_shape = (1, 8, 8)

            def encode(self, x):
                return self.v.encode(x)

            def decode(self, z):
                return self.v.decode(z)

        def build():
            return NoLL().eval()
    """))
    sys.modules.pop("noll", None)
    rc = main(["attack", "out", "--model", "noll:build", "--n", "3", "--eps", "0.5", "--preset", "legacy", "--steps",
               "1", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 0 and "robvae: note: no likelihood degradation: the model has no log_likelihood(x, z)" in err, err
    sys.modules.pop("noll", None)
    rc = main(["attack", "out2", "--model", "my_models:vae", "--n", "3", "--eps", "0.5", "--preset", "legacy",
               "--steps", "1", "--quiet"])
    assert rc == 0 and "no likelihood degradation" not in capsys.readouterr().err


def test_a_model_failing_mid_run_is_one_line_naming_its_code_and_robvae_bugs_keep_their_traceback(
        tmp_path, monkeypatch, capsys):
    """Audit h80: a user's decode that raised only on batches larger than robvae's check batch
    ended in a 68-line traceback and status 1. An exception from the user's own code is one line
    naming it (file, line, function), status 2; one raised inside robvae alone stays a traceback."""
    source = MODULE + '''

class Picky(torch.nn.Module):
    input_shape = (1, 8, 8)

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.e, self.d = torch.nn.Linear(64, 8), torch.nn.Linear(4, 64)

    def encode(self, x):
        h = self.e(x.flatten(1))
        return h[:, :4], torch.nn.functional.softplus(h[:, 4:]) + 0.05

    def decode(self, z):
        if z.shape[0] > 50:
            raise RuntimeError("cannot take more than 50 rows")
        return torch.sigmoid(self.d(z)).view(-1, 1, 8, 8)


def picky():
    return Picky().eval()
'''
    for _ in _module_on_path(tmp_path, monkeypatch, "picky_models", source):
        rc = main(["certify", "--model", "picky_models:picky", "--dataset", "digits", "--n", "3", "--samples", "200",
                   "--r", "0.5", "--quiet"])
        err = capsys.readouterr().err
        assert rc == 2 and len(_error_lines(err)) == 1, err
        assert "your code raised RuntimeError: cannot take more than 50 rows (picky_models.py:" in err
        assert "in decode)" in err and "Traceback" not in err
        import functools
        import operator

        import robvae.cli.robust as robust

        monkeypatch.setattr(robust, "certify_blocks", functools.partial(operator.truediv, 1, 0))
        with pytest.raises(TypeError):  # raised by robvae's own call, no user frame: not hidden
            main(["certify", "--model", "picky_models:picky", "--dataset", "digits", "--n", "3", "--samples", "20",
                  "--r", "0.5", "--executor", "serial", "--quiet"])
