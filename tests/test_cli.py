"""The command line: help, error paths (one line, exit 2, no traceback), train end to end."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest

from robvae.cli import main


def _run(capsys, *args):
    rc = main(list(args))
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.mark.parametrize("cmd", [[], ["train"], ["demo"]])
def test_help_on_every_command(capsys, cmd):
    rc, out, _ = _run(capsys, *cmd, "--help")
    assert rc == 0 and "Usage: robvae" in out


@pytest.mark.parametrize("cmd", [[], ["study"]])
def test_a_group_without_its_command_prints_its_help_not_an_error(capsys, cmd):
    """Found by audit h78: `robvae study` printed its whole help behind "robvae: error: "."""
    rc, out, err = _run(capsys, *cmd)
    assert rc == 2 and err.startswith("Usage: robvae") and "Commands:" in err and "error" not in err.split("\n")[0]


@pytest.mark.parametrize(
    "args,needle",
    [
        (["train", "--out", "x", "--dataset", "imagenet"], "'--dataset'"),
        (["train", "--out", "x", "--bogus"], "No such option '--bogus'"),
        (["train", "--out", "x", "--epochs", "0"], "'--epochs'"),
        (["train", "--out", "x", "--tau", "-1"], "'--tau'"),
        (["train", "--out", "x", "--hidden", "a,b"], "--hidden"),
        (["train", "--out", "x", "--hidden", "256,,128"], "--hidden"),  # an empty entry is a typo, not skipped
        (["study", "beta", "--out", "x", "--betas", "1,4,"], "--betas"),
        (["train"], "'--out'"),
        (["frobnicate"], "No such command"),
    ],
)
def test_bad_options_give_one_line_and_exit_2(capsys, args, needle):
    rc, out, err = _run(capsys, *args)
    assert rc == 2
    assert needle in err
    assert err.startswith("robvae: error:") and len(err.strip().splitlines()) == 1
    assert "Traceback" not in err + out


def test_library_errors_are_one_line(tmp_path, capsys):
    # MNIST without a data folder: the loader's error, as one line
    rc, out, err = _run(capsys, "train", "--dataset", "mnist", "--data-dir", str(tmp_path / "none"),
                        "--out", str(tmp_path / "r"))
    assert rc == 2 and err.startswith("robvae: error:") and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_train_end_to_end(tmp_path, capsys):
    rc, out, err = _run(capsys, "train", "--epochs", "2", "--n-train", "200", "--latent-dim", "3",
                        "--hidden", "32", "--tau", "0.1", "--out", str(tmp_path / "run"), "--quiet")
    assert rc == 0, err
    assert "held-out negative ELBO" in out
    nelbo = float(out.split("held-out negative ELBO:")[1].split()[0])
    assert 0 < nelbo < 64 * 0.7 + 50  # a finite, plausible bound in nats for 64 pixels
    from robvae import load

    run = load(tmp_path / "run")
    assert run.config.model.tau == 0.1 and run.config.model.latent_dim == 3 and run.config.n_train == 200
    # active units, from the held-out means (two epochs on 200 images: the posterior has not left the prior yet)
    from robvae import load_dataset
    from robvae.metrics import active_units

    want = active_units(run.model.encode(load_dataset("digits", "test").images[:1000])[0])
    assert f"active latent units: {want} of 3" in out
    assert ("posterior collapsed" in err) == (want == 0)


def test_console_script_entry_point():
    proc = subprocess.run([sys.executable, "-m", "robvae.cli", "--version"], capture_output=True, text=True)
    assert proc.returncode == 0 and "0.1.0" in proc.stdout


def test_study_table_marks_capped_median_margins_and_explains_infinite_radii(capsys):
    """`robvae study beta|tau` print medians: a median margin at the search's cap is a lower bound
    (">="), and an infinite median radius gets a line saying why (before: bare numbers, "inf")."""
    from robvae.cli.study import _echo_table

    row = {"margin_median": 9.5, "radius_median": math.inf, "damage_median": 0.1, "sigma_mean_median": 0.2,
           "jac_frobenius_median": 3.0, "p_median": 1.0, "reconstruction_error_median": 1.5}
    _echo_table([{"beta": 1.0, **row, "margin_median_at_cap": True},
                 {"beta": 2.0, **row, "radius_median": 0.5, "margin_median": 0.25, "margin_median_at_cap": False}],
                "beta")
    out = capsys.readouterr().out.splitlines()
    assert ">=9.5" in out[1] and ">=" not in out[2] and "0.25" in out[2]
    assert out[3].startswith("margin >=: at least half") and out[4].startswith("radius inf: at least half")
    _echo_table([{"beta": 2.0, **row, "radius_median": 0.5, "margin_median_at_cap": False}], "beta")
    assert len(capsys.readouterr().out.splitlines()) == 2  # nothing to explain: no notes


def test_memory_exhaustion_and_absurd_thread_worker_and_draw_counts_are_one_line(capsys, tmp_path):
    """Audit h80: `--latent-dim 100000000` died in a torch allocation traceback, `--threads 100000`
    in an ImportError ("failed to map segment"), and `--n-samples 1e23` was taken and never ended."""
    rc, out, err = _run(capsys, "train", "--dataset", "digits", "--epochs", "1", "--latent-dim", "100000000",
                        "--hidden", "8", "--out", str(tmp_path / "big"), "--quiet")
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert err.startswith("robvae: error:") and ("out of memory" in err or "latent" in err)
    for args in (["--threads", "100000"], ["--workers", "100000"], ["--samples", str(10**23)]):
        rc, out, err = _run(capsys, "certify", str(tmp_path / "nowhere"), *args)
        assert rc == 2 and args[0] in err and len(err.strip().splitlines()) == 1, err


def test_library_caps_on_threads_workers_and_draws():
    from robvae.errors import InputError
    from robvae.models.fast_decode import MAX_SAMPLES, draw_chunks
    from robvae.threads import MAX_THREADS, auto_workers, resolve_threads

    assert resolve_threads(MAX_THREADS) == MAX_THREADS and auto_workers(1, MAX_THREADS) == MAX_THREADS
    with pytest.raises(ValueError, match="from 1 to 1024"):
        resolve_threads(MAX_THREADS + 1)
    with pytest.raises(ValueError, match="from 1 to 1024"):
        auto_workers(1, MAX_THREADS + 1)
    assert next(draw_chunks(MAX_SAMPLES, 7)) == 7
    with pytest.raises(InputError, match="2\\^40"):
        next(draw_chunks(MAX_SAMPLES + 1, 7))


def test_outside_errors_are_memory_or_the_users_registered_code_only(tmp_path, monkeypatch):
    """Review h82: the frames that decide "your code raised" are robvae's and the files of the
    user's --model code only (click or torch installed outside site-packages were taken for the
    user's, and a robvae bug under a user's frame was blamed on the user); memory is its own line."""
    from robvae.cli import _outside_error
    from robvae.evaluation import EvalConfig
    from robvae.models.protocol import USER_CODE_FILES, register_user_code

    assert _outside_error(MemoryError()).startswith("out of memory")
    assert _outside_error(RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate "
                                       "memory: you tried to allocate 10 bytes")).startswith("out of memory")
    assert _outside_error(RuntimeError("a robvae bug")) is None  # no traceback: nobody's code
    (tmp_path / "lib_like.py").write_text("def call(f):\n    return f()\n")
    (tmp_path / "users.py").write_text("def boom():\n    raise KeyError('x')\n\n\n"
                                       "def call_robvae(f):\n    return f('x', 1, 'n')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import lib_like
    import users

    def error_of(f):
        try:
            f()
        except Exception as e:  # noqa: BLE001
            return e

    e = error_of(lambda: lib_like.call(users.boom))
    assert _outside_error(e) is None  # users.py is not registered yet: not blamed
    register_user_code(users)
    assert "your code raised KeyError" in _outside_error(e) and "users.py:2, in boom" in _outside_error(e)
    from robvae.validation import check_count

    e = error_of(lambda: lib_like.call(lambda: users.boom.__globals__["call_robvae"](check_count)))
    assert _outside_error(e) is None  # raised inside robvae, below the user's frame: robvae's
    USER_CODE_FILES.discard(str((tmp_path / "users.py").resolve()))
    with pytest.raises(ValueError, match="2\\^40"):
        EvalConfig(n_samples=2**40 + 1)
