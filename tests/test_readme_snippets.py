"""Every ```python block of the documentation runs, so its examples stay true to the code.

The pages are README.md and every Markdown page under docs/ (the guide docs/GUIDE.md and the
command-line reference docs/CLI.md hold most blocks). Each block is one test, in page order, named
after its page and the nearest heading above it (``README-data``, ``GUIDE-attacks``,
``CLI-robvae-attack``). It runs with the current folder a fresh temporary one holding
``runs/digits`` (a small digits VAE trained for one epoch, shared by the whole file), in a
namespace prepared by a small prelude with the names the snippets assume without defining them,
as the guide's own setup block of "Certifying and attacking (Python API)" defines them: ``model``
(the linear VAE of that block), ``x``, ``gen``, ``r``, ``xt`` / ``x_target``, ``delta``, ``cert``,
... Some sections need other stand-ins (an image batch for a 28x28 VAE, a trained VAE with a
likelihood for the damage metrics, networks for the Lipschitz bound); ``SETUPS`` holds them, by
(page, heading). Imports are the snippets' own business (``torch`` and ``robvae`` aside, which the
setup block imports for its whole section). To keep the file fast, a few sizes a snippet spells
out (epochs, number of inputs, draws, the "strong" preset) are made smaller before it runs:
``SMALLER`` lists each replacement, and each replaced text must still be in the block. Every
(page, heading) these tables name must still hold a python block, so a moved or renamed section
fails here instead of silently running at full size or no longer being skipped.

Blocks that need an optional extra (pythae, diffusers, ray) or data a fresh machine lacks are
skipped with the reason; blocks another test runs verbatim are skipped only after checking that
the block is, character for character, in that test's file. Blocks that only make sense as
fragments carry the marker ``<!-- not-run: reason -->`` on the line above their fence and are
skipped with that reason. A block too slow for the test suite (minutes of training) runs in *dry*
mode: its imports and everything up to the slow call run for real, the slow call's arguments are
bound to the real function's signature (a wrong keyword fails the test), and the test is then
skipped.
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

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def pages() -> list[Path]:
    """The pages whose python blocks run: README.md and every Markdown page under docs/ (and below)."""
    return [README, *sorted((ROOT / "docs").rglob("*.md"))]


def _page_name(page: Path) -> str:
    """``README.md``, ``docs/GUIDE.md``: the page part of the keys of SETUPS, SMALLER, SKIPS and DRY."""
    return page.relative_to(ROOT).as_posix()


def _page_label(name: str) -> str:
    """The page's part of a test id: ``README``, ``GUIDE``, ``CLI`` (a subfolder stays: ``sub-PAGE``)."""
    stem = name[:-3] if name.endswith(".md") else name
    stem = stem[len("docs/"):] if stem.startswith("docs/") else stem
    return stem.replace("/", "-")

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


def page_blocks(name: str, text: str) -> list[dict]:
    """The python blocks of one page, each with its page name and an id prefixed by the page."""
    blocks = python_blocks(text)
    for b in blocks:
        b["page"] = name
        b["key"] = (name, b["heading"])
        b["id"] = f"{_page_label(name)}-{b['id']}"
    return blocks


BLOCKS = [b for page in pages() for b in page_blocks(_page_name(page), page.read_text(encoding="utf-8"))]


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
    tagged = page_blocks("docs/GUIDE.md", page)
    assert [b["id"] for b in tagged] == ["GUIDE-top", "GUIDE-two-x", "GUIDE-two-x-2"]
    assert tagged[1]["key"] == ("docs/GUIDE.md", "Two x") and tagged[1]["page"] == "docs/GUIDE.md"
    assert _page_label("README.md") == "README" and _page_label("docs/sub/X.md") == "sub-X"
    # the pages really were parsed: at least the 26 blocks the README held before it was split
    # into README.md, docs/GUIDE.md and docs/CLI.md, each of which still holds some
    assert len(BLOCKS) >= 26
    per_page = {name: sum(b["page"] == name for b in BLOCKS) for name in ("README.md", "docs/GUIDE.md", "docs/CLI.md")}
    assert all(per_page.values()), per_page
    assert len({b["id"] for b in BLOCKS}) == len(BLOCKS)  # test ids are unique across pages


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
    """The names of the guide's setup block ("Certifying and attacking (Python API)"), fewer inputs."""
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


README_MD, GUIDE, CLI = "README.md", "docs/GUIDE.md", "docs/CLI.md"

# (page, heading) -> extra names (replacing the prelude's)
SETUPS = {
    (README_MD, "Models and the model protocol"): _image28_names,
    (GUIDE, "Attacks"): _two_inputs,
    (GUIDE, "Empirical margin"): _two_inputs,
    (GUIDE, "Empirical margins that are never overstated"): _two_inputs,
    (GUIDE, "Damage metrics"): _digits_names,
    (GUIDE, "Rigorous Lipschitz constants"): _lipschitz_names,
    (GUIDE, "Perceptual damage (SSIM and MS-SSIM)"): _digits_names,
    (GUIDE, "Threads and workers"): _threads_names,
}

# (page, heading) -> [(the page's text, what the test runs instead)]: sizes only, never the API
# shown. Each text must be in the block (a changed page fails here, so this table is kept current).
SMALLER = {
    (GUIDE, "Training and run folders"): [("epochs=30", "epochs=2")],
    (CLI, "robvae attack"): [("images[:100]", "images[:10]")],
    (GUIDE, "Evaluation (robvae.evaluate, EvalConfig)"): [("EvalConfig(n=100", "EvalConfig(n=8")],
    # the "strong" preset alone takes ~30 s even on the 16-pixel linear VAE
    (GUIDE, "Empirical margins that are never overstated"): [('EnsembleAttack("strong")', 'EnsembleAttack("cheap")'),
                                                             ("n_samples=20000", "n_samples=2000")],
}

# (page, heading) -> reason: blocks skipped outright
_ADAPTERS = ("run verbatim by tests/test_adapters.py "
             "(test_pythae_five_line_example / test_diffusers_five_line_example)")
SKIPS = {
    # the two five-line adapter examples are run verbatim, on a trained pythae model and a tiny
    # saved AutoencoderKL, by tests/test_adapters.py (the README shows them, the guide too)
    (README_MD, "Models trained elsewhere: pythae and diffusers"): _ADAPTERS,
    (GUIDE, "Models trained elsewhere: pythae and diffusers"): _ADAPTERS,
}

# (page, heading) -> the test file that runs those blocks verbatim: a skipped block must be in it,
# character for character, so the copy a page shows is the copy that runs
RUN_ELSEWHERE = {
    (README_MD, "Models trained elsewhere: pythae and diffusers"): "tests/test_adapters.py",
    (GUIDE, "Models trained elsewhere: pythae and diffusers"): "tests/test_adapters.py",
}

# (page, heading) -> ("module:function" run dry, reason)
DRY = {
    (CLI, "How each model of a study is evaluated"):
        ("robvae.studies:beta_study", "trains 3 MNIST models for 10 epochs (minutes)"),
    (GUIDE, "From Python"):
        ("robvae.sweep:run_trials", "needs the ray extra and trains 4 models (minutes)"),
    (GUIDE, "Sharded certification"):
        ("robvae.sweep:certify_sharded",
         "needs the ray extra, an MNIST run folder and 8 Ray workers; the sharded path runs in tests/test_sweep.py"),
}


@pytest.mark.parametrize("table", ["SETUPS", "SMALLER", "SKIPS", "RUN_ELSEWHERE", "DRY"])
def test_every_table_entry_names_a_block(table):
    """A section moved to another page or renamed must take its entry along."""
    keys = {b["key"] for b in BLOCKS}
    stale = sorted(set(globals()[table]) - keys)
    assert not stale, f"{table} names (page, heading) pairs without a python block: {stale}"
    assert set(RUN_ELSEWHERE) <= set(SKIPS)


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
def test_python_block(block, digits_run, tmp_path, monkeypatch):
    where = f"{block['page']}:{block['line']}"
    if block["not_run"]:
        pytest.skip(f"{block['page']} marks it not-run: {block['not_run']}")
    code = compile(block["code"], where, "exec")  # a syntax error fails first
    key = block["key"]
    if key in RUN_ELSEWHERE:
        runner = (ROOT / RUN_ELSEWHERE[key]).read_text(encoding="utf-8")
        assert block["code"] in runner, f"{where}: this block is not, verbatim, the one {RUN_ELSEWHERE[key]} runs"
    if key in SKIPS:
        pytest.skip(SKIPS[key])
    if "from pythae" in block["code"]:
        pytest.importorskip("pythae", reason="pythae extra not installed (pip install -e '.[pythae]')")
    if "from diffusers" in block["code"]:
        pytest.importorskip("diffusers", reason="diffusers extra not installed (pip install -e '.[diffusers]')")
    src = block["code"]
    for old, new in SMALLER.get(key, []):
        assert old in src, f"SMALLER[{key!r}]: {old!r} is no longer in the block at {where}"
        src = src.replace(old, new)
    code = compile(src, where, "exec")
    if '"../shared/data/mnist-10k"' in src:  # relative to the repository root; the test runs elsewhere
        mnist = mnist10k_dir()
        if mnist is None:
            pytest.skip("needs the shared mnist-10k subset (../shared/data/mnist-10k)")
        code = compile(src.replace('"../shared/data/mnist-10k"', repr(str(mnist))), where, "exec")

    monkeypatch.chdir(tmp_path)
    shutil.copytree(digits_run, tmp_path / "runs" / "digits")
    names = {"__name__": "__readme__", "torch": torch, "robvae": robvae, **_linear_names()}
    if key in SETUPS:
        names.update(SETUPS[key](tmp_path / "runs" / "digits"))
    if key in DRY:
        target, reason = DRY[key]
        mod_name, fn_name = target.split(":")
        assert fn_name in src, f"DRY[{key!r}]: the block no longer calls {fn_name}"
        mod = importlib.import_module(mod_name)
        monkeypatch.setattr(mod, fn_name, _dry(getattr(mod, fn_name), reason))
    try:
        exec(code, names)
    except _DrySkip as e:
        pytest.skip(str(e))
