"""Every ```python block of README.md runs, so the README's examples stay true to the code.

Each block is one test, in README order, named after the nearest heading above it. It runs with
the current folder a fresh temporary one holding ``runs/digits`` (a small digits VAE trained for
one epoch, shared by the whole file), in a namespace prepared by a small prelude with the names the
snippets assume without defining them, as the README's own setup block of "Certifying and
attacking (Python API)" defines them: ``model`` (the linear VAE of that block), ``x``, ``gen``,
``r``, ``xt`` / ``x_target``, ``delta``, ``cert``, ... Some sections need other stand-ins (an image
batch for a 28x28 VAE, a trained VAE with a likelihood for the damage metrics, networks for the
Lipschitz bound); ``SETUPS`` holds them, by heading. Imports are the snippets' own business
(``torch`` and ``robvae`` aside, which the setup block imports for its whole section). To keep the
file fast, a few sizes a snippet spells out (epochs, number of inputs, draws, the "strong" preset)
are made smaller before it runs: ``SMALLER`` lists each replacement, and each replaced text must
still be in the README.

Blocks that need an optional extra (pythae, diffusers, ray) or data a fresh machine lacks are
skipped with the reason; blocks that only make sense as fragments carry the marker
``<!-- not-run: reason -->`` on the line above their fence and are skipped with that reason. A
block too slow for the test suite (minutes of training) runs in *dry* mode: its imports and
everything up to the slow call run for real, the slow call's arguments are bound to the real
function's signature (a wrong keyword fails the test), and the test is then skipped.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import re
import shutil
import textwrap
from pathlib import Path

import pytest
import torch

import robvae
from conftest import mnist10k_dir

README = Path(__file__).resolve().parents[1] / "README.md"

_FENCE_OPEN = re.compile(r"^```python\s*$")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*$")
_NOT_RUN = re.compile(r"^<!--\s*not-run:\s*(.*?)\s*-->\s*$")


def _slug(heading: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", heading.lower()).strip("-")


def python_blocks(text: str) -> list[dict]:
    """The ```python blocks of a Markdown page: heading, id, first line number, code, not-run reason."""
    lines = text.splitlines()
    out: list[dict] = []
    heading, fenced, i = "top", False, 0
    while i < len(lines):
        line = lines[i]
        if fenced:
            fenced = line.strip() != "```"
        elif _FENCE_OPEN.match(line):
            j = i + 1
            while j < len(lines) and not lines[j].startswith("```"):
                j += 1
            k = i - 1
            while k >= 0 and not lines[k].strip():
                k -= 1
            marker = _NOT_RUN.match(lines[k]) if k >= 0 else None
            out.append({
                "heading": heading.replace("`", ""),
                "line": i + 1,
                "code": "\n".join(lines[i + 1:j]) + "\n",
                "not_run": marker.group(1) if marker else None,
            })
            i = j
        elif line.startswith("```"):
            fenced = True
        elif m := _HEADING.match(line):
            heading = m.group(2)
        i += 1
    seen: dict[str, int] = {}
    for b in out:
        base = _slug(b["heading"])
        seen[base] = seen.get(base, 0) + 1
        b["id"] = base if seen[base] == 1 else f"{base}-{seen[base]}"
    return out


BLOCKS = python_blocks(README.read_text())


def test_block_parser_on_a_synthetic_page():
    page = textwrap.dedent("""\
        # Top
        ```python
        a = 1
        ```
        ## Two `x`
        ```bash
        # not a heading
        ```
        <!-- not-run: a fragment -->
        ```python
        b = ...
        ```

        ```python
        c = 3
        ```
        """)
    blocks = python_blocks(page)
    assert [b["id"] for b in blocks] == ["top", "two-x", "two-x-2"]
    assert [b["not_run"] for b in blocks] == [None, "a fragment", None]
    assert blocks[0]["code"] == "a = 1\n" and blocks[2]["line"] == 14
    assert len(BLOCKS) >= 20  # the README really was parsed


# ---------------------------------------------------------------- the prelude


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """runs/digits of the README: a small digits VAE, one epoch (what `robvae train --dataset digits` writes)."""
    from robvae import ModelConfig, TrainConfig, train

    path = tmp_path_factory.mktemp("readme") / "digits"
    train(TrainConfig(dataset="digits", model=ModelConfig(latent_dim=4, hidden=(64,)), epochs=1, seed=0),
          path, progress=False)
    return path


def _linear_names(batch: int = 4) -> dict:
    """The names of the README's setup block ("Certifying and attacking (Python API)"), fewer inputs."""
    from robvae.models import LinearVAE

    model = LinearVAE.random(d=4, input_shape=(1, 4, 4), s=0.1)
    x = torch.full((batch, 1, 4, 4), 0.5, dtype=torch.float64)
    g = torch.Generator().manual_seed(1)
    xt = torch.rand(x.shape, generator=g, dtype=x.dtype)
    delta = 0.05 * torch.randn(x.shape, generator=g, dtype=x.dtype)
    cert = robvae.certify(model, x, r=0.25, n_samples=500, generator=torch.Generator().manual_seed(2))
    return {"model": model, "vae": model, "x": x, "xt": xt, "x_target": xt, "delta": delta, "r": 0.25,
            "eps": 0.5, "cert": cert, "gen": torch.Generator().manual_seed(0)}


def _digits_names(run_dir: Path) -> dict:
    """A trained digits VAE (it has log_likelihood) and 8 test digits."""
    run = robvae.load(run_dir)
    x = robvae.load_dataset("digits", "test").images[:8]
    delta = 0.05 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    delta = (x + delta).clamp(0, 1) - x
    return {"run": run, "model": run.model, "vae": run.model, "x": x, "delta": delta}


def _two_inputs(run_dir: Path) -> dict:
    """The margin searches: two inputs are enough to show the batch."""
    return _linear_names(batch=2)


def _image28_names(run_dir: Path) -> dict:
    return {"x": torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(0))}


def _lipschitz_names(run_dir: Path) -> dict:
    net = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 8))
    conv_net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 4, stride=2, padding=1), torch.nn.ReLU(),
                                   torch.nn.Conv2d(4, 8, 4, stride=2, padding=1))
    return {"net": net, "conv_net": conv_net}


def _threads_names(run_dir: Path) -> dict:
    return {"n_inputs": 100, "n_samples": 1000}


# heading -> extra names (replacing the prelude's)
SETUPS = {
    "Models and the model protocol": _image28_names,
    "Attacks": _two_inputs,
    "Empirical margin": _two_inputs,
    "Empirical margins that are never overstated": _two_inputs,
    "Damage metrics": _digits_names,
    "Rigorous Lipschitz constants": _lipschitz_names,
    "Perceptual damage (SSIM / MS-SSIM)": _digits_names,
    "Threads and workers": _threads_names,
}

# heading -> [(README text, what the test runs instead)]: sizes only, never the API shown. Each
# README text must be in the block (a changed README fails here, so this table is kept current).
SMALLER = {
    "Training and run folders": [("epochs=30", "epochs=2")],
    "robvae attack": [("images[:100]", "images[:10]")],
    "Evaluation (robvae.evaluate, EvalConfig)": [("EvalConfig(n=100", "EvalConfig(n=8")],
    # the "strong" preset alone takes ~30 s even on the 16-pixel linear VAE
    "Empirical margins that are never overstated": [('EnsembleAttack("strong")', 'EnsembleAttack("cheap")'),
                                                    ("n_samples=20000", "n_samples=2000")],
}

# heading -> reason: blocks skipped outright
SKIPS = {
    # the two five-line adapter examples are run verbatim, on a trained pythae model and a tiny
    # saved AutoencoderKL, by tests/test_adapters.py
    "Models trained elsewhere: pythae and diffusers":
        "run verbatim by tests/test_adapters.py (test_pythae_five_line_example / test_diffusers_five_line_example)",
}

# heading -> ("module:function" run dry, reason)
DRY = {
    "How each model of a study is evaluated":
        ("robvae.studies:beta_study", "trains 3 MNIST models for 10 epochs (minutes)"),
    "From Python":
        ("robvae.sweep:run_trials", "needs the ray extra and trains 4 models (minutes)"),
    "Sharded certification":
        ("robvae.sweep:certify_sharded",
         "needs the ray extra, an MNIST run folder and 8 Ray workers; the sharded path runs in tests/test_sweep.py"),
}


class _DrySkip(Exception):
    pass


def _dry(fn, reason):
    sig = inspect.signature(fn)

    @functools.wraps(fn)
    def stub(*args, **kwargs):
        sig.bind(*args, **kwargs)  # a wrong keyword or argument count fails the test here
        raise _DrySkip(f"{reason}; run dry: imports and the call's arguments checked")

    return stub


@pytest.mark.parametrize("block", BLOCKS, ids=[b["id"] for b in BLOCKS])
def test_readme_python_block(block, digits_run, tmp_path, monkeypatch):
    if block["not_run"]:
        pytest.skip(f"README marks it not-run: {block['not_run']}")
    code = compile(block["code"], f"README.md:{block['line']}", "exec")  # a syntax error fails first
    heading = block["heading"]
    if heading in SKIPS:
        pytest.skip(SKIPS[heading])
    if "from pythae" in block["code"]:
        pytest.importorskip("pythae", reason="pythae extra not installed (pip install -e '.[pythae]')")
    if "from diffusers" in block["code"]:
        pytest.importorskip("diffusers", reason="diffusers extra not installed (pip install -e '.[diffusers]')")
    src = block["code"]
    for old, new in SMALLER.get(heading, []):
        assert old in src, f"SMALLER[{heading!r}]: {old!r} is no longer in the README block"
        src = src.replace(old, new)
    code = compile(src, f"README.md:{block['line']}", "exec")
    if '"../shared/data/mnist-10k"' in src:  # relative to the repository root; the test runs elsewhere
        mnist = mnist10k_dir()
        if mnist is None:
            pytest.skip("needs the shared mnist-10k subset (../shared/data/mnist-10k)")
        code = compile(src.replace('"../shared/data/mnist-10k"', repr(str(mnist))), f"README.md:{block['line']}",
                       "exec")

    monkeypatch.chdir(tmp_path)
    shutil.copytree(digits_run, tmp_path / "runs" / "digits")
    names = {"__name__": "__readme__", "torch": torch, "robvae": robvae, **_linear_names()}
    if heading in SETUPS:
        names.update(SETUPS[heading](tmp_path / "runs" / "digits"))
    if heading in DRY:
        target, reason = DRY[heading]
        mod_name, fn_name = target.split(":")
        assert fn_name in src, f"DRY[{heading!r}]: the block no longer calls {fn_name}"
        mod = importlib.import_module(mod_name)
        monkeypatch.setattr(mod, fn_name, _dry(getattr(mod, fn_name), reason))
    try:
        exec(code, names)
    except _DrySkip as e:
        pytest.skip(str(e))
