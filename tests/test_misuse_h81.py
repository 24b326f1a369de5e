"""Misuse found by audit h80: each bad input is refused in one short line naming the problem, and
nothing a damaged file did not have to take with it is lost."""

from __future__ import annotations

import json
import shutil
import time

import pytest

from robvae.errors import CheckpointError, InputError


# -- 1. YAML alias bombs and huge values in sweep files -----------------------------------------

def test_sweep_alias_bomb_is_refused_fast_in_one_short_line(tmp_path):
    from robvae.sweep.spec import SweepSpecError, load_sweep

    # 9**6 strings behind a dozen aliases (the audit's file had 9**8: 8 s, 1.8 GB, a 254 MB line)
    path = tmp_path / "bomb.yaml"
    path.write_text('out: sw\nbase: {dataset: digits, epochs: 1}\ngrid:\n'
                    '  objective.beta: [&a ["x","x","x","x","x","x","x","x","x"]]\n'
                    '  lr: [&b [*a,*a,*a,*a,*a,*a,*a,*a,*a]]\n'
                    '  epochs: [&c [*b,*b,*b,*b,*b,*b,*b,*b,*b]]\n'
                    '  batch_size: [&d [*c,*c,*c,*c,*c,*c,*c,*c,*c]]\n'
                    '  n_train: [&e [*d,*d,*d,*d,*d,*d,*d,*d,*d]]\n'
                    '  seed: [[*e,*e,*e,*e,*e,*e,*e,*e,*e]]\n')
    start = time.monotonic()
    with pytest.raises(SweepSpecError) as e:
        load_sweep(path)
    msg = str(e.value)
    assert time.monotonic() - start < 5
    assert "\n" not in msg and len(msg) < 300, msg[:300]
    assert "grid: holds more than 10000 values" in msg


def test_sweep_errors_show_long_values_shortened(tmp_path):
    """A value under the size limit still appears in a message only in part."""
    from robvae.sweep.spec import SweepSpecError, parse_sweep

    for doc in ({"grid": {"seed": [list(range(3000))]}},         # TrainConfig: seed is not an integer
                {"grid": {"seed": {"a": list(range(3000))}}},     # not a list of values
                {"grid": {"model.hidden": [list(range(3000))]}}):  # a width of 0
        with pytest.raises(SweepSpecError) as e:
            parse_sweep(doc)
        msg = str(e.value)
        assert "\n" not in msg and len(msg) < 400, msg[:400]


# -- 2. a weights file whose stored config is no config ----------------------------------------

@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from robvae.models import ModelConfig
    from robvae.training import TrainConfig, train

    run = tmp_path_factory.mktemp("h81") / "run"
    train(TrainConfig(model=ModelConfig(latent_dim=2, hidden=(16,)), epochs=1, batch_size=64, n_train=128), run,
          progress=False)
    return run


@pytest.mark.parametrize("stored", ["{}", "null", "[]", '"x"', '{"seed": 0}'])
def test_weights_metadata_without_a_config_is_refused(tiny_run, tmp_path, stored):
    from robvae.fileio import load_tensors, save_tensors
    from robvae.training import load

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    state, _ = load_tensors(run / "model.safetensors")
    save_tensors(run / "model.safetensors", state, {"config": stored})
    config = json.loads((run / "config.json").read_text())
    config["model"]["tau"] = 0.3
    (run / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError) as e:
        load(run)
    assert "training config" in str(e.value) and "model.safetensors" in str(e.value) and "\n" not in str(e.value)


# -- 3. seeds out of range ------------------------------------------------------------------------

@pytest.mark.parametrize("seed", [-1, 2**63, 99999999999999999999999])
def test_seeds_outside_0_to_2_63_are_refused_up_front(seed):
    from robvae.bench import ZooError, parse_zoo
    from robvae.sweep.spec import SweepSpecError, parse_sweep
    from robvae.training import TrainConfig

    from robvae.training import check_new_run

    assert TrainConfig(seed=seed).seed == seed  # a run trained so before still loads (review h82)
    with pytest.raises(ValueError, match=r"seed must be an integer in \[0, 2\*\*63 - 1\]"):
        check_new_run(TrainConfig(seed=seed), 100)  # a new one is refused
    with pytest.raises(SweepSpecError, match="seed") as e:
        parse_sweep({"grid": {"seed": [0, seed]}})
    assert "\n" not in str(e.value)
    with pytest.raises(ZooError, match="seed") as e:
        parse_zoo({"methods": ["vae"], "seeds": [seed]})
    assert "\n" not in str(e.value)
    assert TrainConfig(seed=2**63 - 1).seed == 2**63 - 1


# -- 4. latent_dim and widths capped ---------------------------------------------------------------

def test_latent_dim_and_widths_are_capped():
    from robvae.models import ModelConfig

    with pytest.raises(ValueError, match="latent_dim .*1048576"):
        ModelConfig(latent_dim=100_000_000)
    with pytest.raises(ValueError, match="hidden widths .*1048576"):
        ModelConfig(hidden=(64, 1 << 21))
    assert ModelConfig(latent_dim=1 << 20).latent_dim == 1 << 20  # the cap itself is allowed (nothing built)


def test_cli_train_latent_dim_too_large_is_one_line(tmp_path, capsys):
    from robvae.cli import main

    rc = main(["train", "--latent-dim", "100000000", "--epochs", "1", "--n-train", "64", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "latent_dim" in err and "1048576" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


# -- 5. a --model module that exits at import ------------------------------------------------------

def test_model_module_calling_sys_exit_at_import_is_one_line(tmp_path, monkeypatch):
    from robvae.models.protocol import import_spec

    (tmp_path / "h81_exits_at_import.py").write_text("import sys\nsys.exit(3)\n\ndef factory():\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(InputError) as e:
        import_spec("h81_exits_at_import:factory", "robvae --model")
    msg = str(e.value)
    assert msg.startswith("robvae --model: module 'h81_exits_at_import' does not import") and "3" in msg
    assert "\n" not in msg


# -- 6. robvae report with damaged results -------------------------------------------------------

def _results_folder(tmp_path):
    folder = tmp_path / "res"
    folder.mkdir()
    (folder / "margin-test.json").write_text(json.dumps({"command": "margin", "summary": {"median_margin": 0.25}}))
    (folder / "margin-test.csv").write_text("index,margin\n0,0.25\n")
    return folder


def test_report_flags_a_truncated_results_json_and_writes_the_rest(tmp_path, capsys):
    from robvae.cli import main

    folder = _results_folder(tmp_path)
    whole = json.dumps({"command": "certify", "summary": {"median_radius": 0.5}, "n": 4})
    (folder / "certify-test.json").write_text(whole[: len(whole) // 2])
    (folder / "certify-test.csv").write_text("index,radius\n0,0.5\n")
    assert main(["report", str(folder), "--html", str(tmp_path / "r.html")]) == 0, capsys.readouterr().err
    page = (tmp_path / "r.html").read_text()
    assert "<strong>Not shown as this run's: certify-test.json: certify-test.json is not valid JSON" in page
    assert "<dt>median empirical margin</dt><dd>0.25</dd>" in page  # the rest of the folder is shown


def test_report_flags_a_garbage_metrics_csv_by_name(tmp_path, capsys):
    from robvae.cli import main

    folder = _results_folder(tmp_path)
    (folder / "metrics.csv").write_text("epoch,train_elbo,test_elbo\nx,y,z\n")
    assert main(["report", str(folder), "--html", str(tmp_path / "r.html")]) == 0, capsys.readouterr().err
    page = (tmp_path / "r.html").read_text()
    assert "<strong>metrics.csv" in page and "training curves not drawn" in page
    assert "<dt>median empirical margin</dt><dd>0.25</dd>" in page


def test_bench_model_callable_calling_sys_exit_is_a_model_spec_error(tmp_path, monkeypatch):
    """The same for a benchmark's user model whose callable exits: it ended the whole leaderboard."""
    from robvae.bench.loader import ModelSpecError, build_model

    (tmp_path / "h81_exits_when_called.py").write_text("import sys\n\ndef build():\n    sys.exit(4)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModelSpecError, match=r"build\(\) called sys.exit\(4\)"):
        build_model("h81_exits_when_called:build")
