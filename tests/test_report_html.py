"""The HTML report: one self-contained page (embedded PNGs), checked by parsing and in Chromium."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import zlib
from html.parser import HTMLParser

import pytest

from robvae.report.html import render_report
from robvae.studies import Theorem2Config, theorem2_study

PNG = b"\x89PNG\r\n\x1a\n"


def _valid_png(data: bytes) -> bool:
    """Signature, then well-formed chunks whose CRCs match, IHDR first and IEND last."""
    if not data.startswith(PNG):
        return False
    i, names = 8, []
    while i < len(data):
        n = int.from_bytes(data[i:i + 4], "big")
        kind = data[i + 4:i + 8]
        body = data[i + 8:i + 8 + n]
        crc = int.from_bytes(data[i + 8 + n:i + 12 + n], "big")
        if len(body) != n or zlib.crc32(kind + body) != crc:
            return False
        names.append(kind)
        i += 12 + n
    return bool(names) and names[0] == b"IHDR" and names[-1] == b"IEND"


class _Imgs(HTMLParser):
    def __init__(self):
        super().__init__()
        self.srcs: list[str] = []
        self.external: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.srcs.append(a.get("src", ""))
        for key in ("src", "href"):
            v = a.get(key)
            if v and tag in ("script", "link", "img", "iframe") and not v.startswith("data:"):
                self.external.append(v)


@pytest.fixture(scope="module")
def two_studies(tmp_path_factory):
    a = tmp_path_factory.mktemp("t2a")
    b = tmp_path_factory.mktemp("t2b")
    cfg = Theorem2Config(column_norms=(1.0, 2.0), data_dim=4, n_data=50, steps=10)
    theorem2_study([1, 4], a, cfg)
    theorem2_study([2, 8], b, cfg)
    # a second figure in one folder, to have more than one image per study
    shutil.copy(a / "theorem2.png", a / "copy.png")
    meta = json.loads((a / "study.json").read_text())
    meta["figures"].append("copy.png")
    (a / "study.json").write_text(json.dumps(meta))
    return a, b


def test_page_is_self_contained(two_studies, tmp_path):
    a, b = two_studies
    page = render_report([a, b], tmp_path / "r.html")
    text = page.read_text()
    p = _Imgs()
    p.feed(text)
    assert len(p.srcs) == 3 and not p.external
    for src in p.srcs:
        assert src.startswith("data:image/png;base64,")
        assert _valid_png(base64.b64decode(src.split(",", 1)[1], validate=True))
    # the commands and configs that produced the studies are on the page
    for folder in (a, b):
        cmd = json.loads((folder / "study.json").read_text())["command"]
        assert cmd.split(" --out")[0] in text and str(folder) in text
    assert "--betas 1,4" in text and "--betas 2,8" in text


def test_png_check_catches_corruption(two_studies):
    data = (two_studies[0] / "theorem2.png").read_bytes()
    assert _valid_png(data)
    bad = bytearray(data)
    bad[40] ^= 0xFF
    assert not _valid_png(bytes(bad))
    assert not _valid_png(data[:-12])


def test_missing_study_json(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a study folder"):
        render_report([tmp_path])


def test_cli_report(two_studies, tmp_path):
    from robvae.cli import main

    assert main(["report", str(two_studies[0]), "--html", str(tmp_path / "c.html")]) == 0
    assert (tmp_path / "c.html").read_text().count("<img") == 2
    assert main(["report", str(tmp_path)]) == 2  # not a study folder: one-line error


def test_cli_report_says_when_a_folder_is_still_being_written(two_studies, tmp_path, capsys):
    """Audit h60: the report rendered a folder another command was still writing, without a word."""
    from robvae.cli import main
    from robvae.fileio import folder_lock

    with folder_lock(two_studies[0], "robvae study beta"):
        assert main(["report", str(two_studies[0]), "--html", str(tmp_path / "c.html")]) == 0
    err = capsys.readouterr().err
    assert f"{two_studies[0]} is still being written by robvae study beta (pid {os.getpid()})" in err
    assert main(["report", str(two_studies[0]), "--html", str(tmp_path / "d.html")]) == 0  # released: no note
    assert "still being written" not in capsys.readouterr().err


_CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(_CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium)")
def test_figures_load_in_headless_chromium(two_studies, tmp_path):
    page = render_report(list(two_studies), tmp_path / "r.html")
    # a copy with a probe script that marks each image after load (the report itself has no script)
    probe = ("<script>window.addEventListener('load',function(){document.querySelectorAll('img').forEach("
             "function(i){i.setAttribute('data-loaded',(i.complete&&i.naturalWidth>0)?'yes':'no')});"
             "document.body.setAttribute('data-probe','done')});</script>")
    checked = tmp_path / "probe.html"
    checked.write_text(page.read_text().replace("</body>", probe + "</body>"))
    cmd = [_CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
           "--virtual-time-budget=5000", "--dump-dom", checked.as_uri()]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env={**os.environ, "HOME": str(tmp_path)})
    dom = out.stdout
    assert 'data-probe="done"' in dom, out.stderr[-2000:]
    assert dom.count('data-loaded="yes"') == 3 and 'data-loaded="no"' not in dom


def test_run_folder_report_shows_rigorous_radius_and_preset(tmp_path, capsys):
    """A plain run folder after certify / attack / margin: the page shows the rigorous radii, the
    attack preset and both damages as headline numbers, with the values the commands wrote."""
    from robvae.cli import main
    from robvae.models import ModelConfig
    from robvae.training import TrainConfig, train

    run = tmp_path / "run"
    train(TrainConfig(model=ModelConfig(latent_dim=3, hidden=(32,)), epochs=2, batch_size=64, n_train=300), run,
          progress=False)
    assert main(["certify", str(run), "--n", "6", "--r-relative", "1.5", "--samples", "200", "--quiet"]) == 0
    assert main(["attack", str(run), "--n", "4", "--eps", "0.5", "--preset", "cheap", "--quiet"]) == 0
    page = render_report([run], tmp_path / "r.html").read_text()
    cert = json.loads((run / "certify-test.json").read_text())["summary"]
    assert "median rigorous radius (mean-only)" in page and "median rigorous radius (full)" in page
    assert f"{cert['median_radius_rigorous_full']:.4g}" in page
    assert "<dt>attack preset</dt><dd>cheap</dd>" in page
    assert "attack damage (expected, eq. 5), median" in page
    assert "margin search attack preset" not in page  # no margin run: nothing invented


def test_an_infinite_median_radius_is_inf_in_the_json_and_the_report(tmp_path):
    """Found by an audit: certify printed inf, stored null (strict JSON) and the report showed
    "undefined", as for a NaN. Result files now store +-inf as "inf" / "-inf"."""
    from robvae.cli import main
    from robvae.models import ModelConfig
    from robvae.training import TrainConfig, train

    run = tmp_path / "run"
    train(TrainConfig(model=ModelConfig(latent_dim=3, hidden=(32,)), epochs=1, batch_size=64, n_train=200), run,
          progress=False)
    assert main(["certify", str(run), "--n", "4", "--r", "100", "--samples", "100", "--quiet"]) == 0  # p = 1
    cert = json.loads((run / "certify-test.json").read_text())["summary"]
    assert cert["median_radius"] == "inf" and cert["n_infinite_radius"] == 4
    page = render_report([run], tmp_path / "r.html").read_text()
    assert "<dt>median Theorem 1 radius</dt><dd>inf</dd>" in page and "undefined" not in page


def test_damaged_study_folders_are_reported_not_hidden(tmp_path):
    """Found by the studies audit: a study.json holding a list crashed with an AttributeError, a
    missing table was left out silently, a truncated PNG was embedded broken, a seed of 1234567
    showed as 1.235e+06 and an undefined (NaN) headline vanished."""
    from robvae.errors import RobvaeError

    cfg = Theorem2Config(column_norms=(1.0, 2.0), data_dim=4, n_data=50, steps=10)
    a = tmp_path / "a"
    theorem2_study([1, 4], a, cfg)
    meta = json.loads((a / "study.json").read_text())
    meta["tables"].append("gone.csv")
    (a / "study.json").write_text(json.dumps(meta))
    png = (a / "theorem2.png").read_bytes()
    (a / "theorem2.png").write_bytes(png[: len(png) // 2])  # starts like a PNG, cut short
    (a / "theorem2.csv").write_text("beta,seed\n1,1234567\n")
    summary = json.loads((a / "summary.json").read_text())
    summary["max_rel_error_sigma"] = None  # NaN, as strict JSON stores it
    (a / "summary.json").write_text(json.dumps(summary))
    text = render_report([a], tmp_path / "r.html").read_text()
    assert "missing table gone.csv" in text
    assert "theorem2.png is not a whole PNG file" in text and "data:image/png" not in text
    assert "1234567" in text and "1.235e+06" not in text
    assert "undefined" in text
    (a / "study.json").write_text("[1, 2]")
    with pytest.raises(RobvaeError, match="not a study description"):
        render_report([a], tmp_path / "r2.html")


def test_an_evaluation_folder_renders_with_its_own_numbers(tmp_path):
    """`robvae report demo/eval` (the folder robvae demo prints as its per-input results) was refused
    as neither a study, a run nor a results folder; it renders now, headline numbers read from
    its summary.json and its per-input table shown."""
    from robvae.evaluation import EvalConfig, evaluate
    from robvae.models import ModelConfig
    from robvae.report.html import _fmt
    from robvae.training import TrainConfig, train

    run = tmp_path / "run"
    train(TrainConfig(model=ModelConfig(latent_dim=3, hidden=(32,)), epochs=2, batch_size=64, n_train=300), run,
          progress=False)
    evaluate(run, EvalConfig(n=6, n_samples=200), out_dir=tmp_path / "eval", progress=False)
    page = render_report([tmp_path / "eval"], tmp_path / "r.html").read_text()
    s = json.loads((tmp_path / "eval" / "summary.json").read_text())
    for label, value in [("inputs", s["n"]), ("radius r", s["r"]), ("Theorem 1 radius, median", s["radius"]["median"]),
                         ("empirical margin, median", s["margin"]["median"]),
                         ("Theorem 1 bounds above the margin", s["bounds"]["theorem1"]["n_violations"])]:
        assert f"<dt>{label}</dt><dd>{_fmt(value)}</dd>" in page, label
    assert "per_input.csv" in page
