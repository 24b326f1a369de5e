"""bf16 decoding with exact counts (issue 11 item 4): the same draws must give exactly the float32
counts (an independent computation: r_robustness in float32), and the bounds e_b (bf16 route) and
e_f (the float32 route) must really bound the errors on every row (checked against the float64
decoder), on random and on trained-like (scaled-up) weights."""

from __future__ import annotations

import inspect
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robvae.data import load_dataset
from robvae.models import VAE, ModelConfig
from robvae.objectives import ObjectiveConfig
from robvae.training import TrainConfig, load, train
from robvae.models.fast_decode import decoder_plan, flat_decode
from robvae.robustness import bf16 as bf16_module
from robvae.robustness import delta_norms, r_robustness
from robvae.robustness.bf16 import U, V, decode_bf16, r_robustness_bf16
from robvae.robustness.lipschitz import conv_periodic_bound

from test_fast_decode_user import _archs


def _robvae(arch, shape=(1, 28, 28)):
    torch.manual_seed(0)
    return VAE(ModelConfig(input_shape=shape, arch=arch, latent_dim=6)).eval()


def _scaled(model, factor=2.5):
    """Trained-like weights: larger than at initialisation, so activations grow through the
    layers and the sigmoid saturates on most pixels (as on trained MNIST models)."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
                m.weight.mul_(factor)
    return model


MODELS = {"robvae mlp": lambda: _robvae("mlp"), "robvae conv": lambda: _robvae("conv"),
          "user conv": lambda: _archs()["conv implicit reshape"].eval(),
          "user mlp tanh": lambda: _archs()["mlp tanh, nested, identity out"].eval()}

BOUND_MODELS = {**MODELS, **{f"user {k}": (lambda k=k: _archs()[k].eval()) for k in _archs()},
                "robvae mlp scaled": lambda: _scaled(_robvae("mlp")),
                "robvae conv scaled": lambda: _scaled(_robvae("conv"), 2.0),
                "user conv scaled": lambda: _scaled(_archs()["conv unflatten thin deconv"].eval())}


def _x(model, n=4, seed=5):
    return torch.rand(n, *model.input_shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", list(MODELS))
def test_counts_equal_float32(name):
    model = MODELS[name]()
    x = _x(model)
    with torch.inference_mode():
        norms = delta_norms(model, x, n_samples=300, generator=torch.Generator().manual_seed(9))
    r = norms.median(dim=1).values  # half the draws on each side: many draws near r
    stats = []
    got = r_robustness_bf16(model, x, r, n_samples=300, generator=torch.Generator().manual_seed(9), stats=stats)
    want = r_robustness(model, x, r, n_samples=300, generator=torch.Generator().manual_seed(9))
    assert torch.equal(got.n_within, want.n_within)
    assert torch.equal(got.p, want.p) and torch.equal(got.p_lower, want.p_lower)
    assert stats and 0 < stats[0].recomputed <= stats[0].draws  # draws near r were recomputed in float32


def test_early_abstention_gives_float32s_estimate_field_by_field():
    """With ``abstain_alpha`` the bfloat16 route stops the same inputs after the same draws as
    float32, and a stopped input's p_upper is 1/2 (the bound the sequential test settled), not
    the Clopper-Pearson bound of the few draws made (which can fall below the true p)."""
    model = MODELS["robvae mlp"]()
    x = _x(model, n=6)
    with torch.inference_mode():
        norms = delta_norms(model, x, n_samples=400, generator=torch.Generator().manual_seed(9))
    r = norms.quantile(0.02, dim=1)
    r[3:] = norms[3:].quantile(0.9, dim=1)  # three inputs stop early, three draw on
    stats = []
    got = r_robustness_bf16(model, x, r, n_samples=400, generator=torch.Generator().manual_seed(9),
                            abstain_alpha=0.05, stats=stats)
    want = r_robustness(model, x, r, n_samples=400, generator=torch.Generator().manual_seed(9), abstain_alpha=0.05)
    assert stats  # the bfloat16 route ran
    assert (got.n_samples[:3] < 400).all() and (got.n_samples[3:] == 400).all()
    assert bool((got.p_upper[:3] == 0.5).all())
    for field in ("n_within", "n_samples", "p", "p_lower", "p_upper"):
        assert torch.equal(getattr(got, field), getattr(want, field)), field


@pytest.mark.parametrize("edit", ["replace twice", "through .data"])
def test_edited_heavy_weights_never_hit_a_stale_analysis(edit):
    """The bfloat16 analysis (bf16 copies of the heavy layer's weights, their norms) is cached per
    weights and checked against their numbers: replacing the heavy layer's weight twice between
    calls (the second new tensor could take the freed cached address with the same version 0),
    or editing it through ``.data`` (the version stays), still gives float32's counts every round."""
    model = _robvae("mlp", shape=(1, 8, 8))
    heavy = model.decoder.net[2]  # 128 -> 256: the layer run in bfloat16 (the 64-pixel output layer is smaller)
    x = _x(model, n=3)
    with torch.inference_mode():
        r = delta_norms(model, x, n_samples=64, generator=torch.Generator().manual_seed(0)).median(dim=1).values
    for i in range(20 if edit == "replace twice" else 4):
        got = r_robustness_bf16(model, x, r, n_samples=64, generator=torch.Generator().manual_seed(i))
        want = r_robustness(model, x, r, n_samples=64, generator=torch.Generator().manual_seed(i))
        assert torch.equal(got.n_within, want.n_within)
        if edit == "replace twice":
            for _ in range(2):
                heavy.weight = nn.Parameter(torch.randn_like(heavy.weight) * 0.2)
        else:
            heavy.weight.data.mul_(3.0 if i % 2 == 0 else -0.5)


@pytest.mark.parametrize("name", ["robvae mlp scaled", "robvae conv scaled"])
def test_counts_equal_at_several_radii_trained_like(name):
    model = BOUND_MODELS[name]()
    x = _x(model, n=3, seed=2)
    with torch.inference_mode():
        norms = delta_norms(model, x, n_samples=200, generator=torch.Generator().manual_seed(3))
    for q in (0.05, 0.3, 0.5, 0.8, 0.97):
        r = norms.quantile(q, dim=1)
        got = r_robustness_bf16(model, x, r, n_samples=200, generator=torch.Generator().manual_seed(3))
        want = r_robustness(model, x, r, n_samples=200, generator=torch.Generator().manual_seed(3))
        assert torch.equal(got.n_within, want.n_within), q
    # and at a radius exactly equal to some float32 distances (ties decide "within")
    r = norms[:, 17]
    got = r_robustness_bf16(model, x, r, n_samples=200, generator=torch.Generator().manual_seed(3))
    want = r_robustness(model, x, r, n_samples=200, generator=torch.Generator().manual_seed(3))
    assert torch.equal(got.n_within, want.n_within)


@pytest.mark.parametrize("name", list(BOUND_MODELS))
def test_bounds_hold(name):
    model = BOUND_MODELS[name]()
    d = 6
    z = 2.0 * torch.randn(96, d, generator=torch.Generator().manual_seed(4))
    with torch.inference_mode():
        plan = decoder_plan(model, z)
        assert plan is not None
        g, eb, ef = decode_bf16(plan, z)
        g32 = flat_decode(model, z)
        exact = model.double().decode(z.double()).flatten(1)
    err_b = (g.double() - exact).norm(dim=1)
    err_f = (g32.double() - exact).norm(dim=1)
    assert bool((err_b <= eb).all()), float((err_b / eb).max())
    assert bool((err_f <= ef).all()), float((err_f / ef).max())
    assert bool((ef < eb).all())  # the float32 route is the more precise one
    assert float((eb / exact.norm(dim=1)).median()) < 0.1  # and it is not vacuous
    assert float((err_b / eb).max()) > 1e-3


def test_bf16_matmul_accumulates_in_float32():
    """The assumption behind the bound: a bf16 matrix product sums its products in float32 and
    rounds once to bf16. Sums that cancel would show partial sums rounded to bf16."""
    g = torch.Generator().manual_seed(0)
    K = 512
    w = torch.randn(300, K, generator=g).to(torch.bfloat16)
    h = torch.randn(200, K, generator=g)
    h[:, K // 2:] = -h[:, :K // 2] * (1 + 2.0 ** -7)  # large partial sums that nearly cancel
    w[:, K // 2:] = w[:, :K // 2]
    hb = h.to(torch.bfloat16)
    y = F.linear(hb, w)
    exact = hb.double() @ w.double().T
    acc = K * V / (1 - K * V) * (hb.double().abs() @ w.double().abs().T)
    allowed = U / (1 - U) * y.double().abs() + acc + 1e-30
    assert bool(((y.double() - exact).abs() <= allowed).all())


MNIST = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist-10k"


@pytest.mark.skipif(not MNIST.is_dir(), reason="MNIST not at ../shared/data/mnist-10k")
@pytest.mark.parametrize("arch,most", [("mlp", 0.15), ("conv", 0.3)])
def test_trained_model_recomputes_few_draws(tmp_path, arch, most):
    """On a briefly trained MNIST model most draws are decided in bf16 (the bound is tight enough
    to pay); this fails if the bound grows loose (the old layer-by-layer bound recomputed 84-100%;
    at r = the median distance, where draws are densest near r, measured: MLP 4.5%, conv 23%; the
    bounds before the periodic conv norms and the path-split sigmoid bound gave 4.8% and 25%)."""
    cfg = TrainConfig(dataset="mnist", data_dir=str(MNIST), n_train=1000,
                      model=ModelConfig(input_shape=(1, 28, 28), arch=arch, latent_dim=10),
                      objective=ObjectiveConfig("elbo", 1.0), epochs=1, batch_size=128, lr=1e-3, seed=0, device="cpu")
    train(cfg, tmp_path / "run", progress=False)
    model = load(tmp_path / "run").model
    x = load_dataset("mnist", "test", str(MNIST)).subset(6).images
    with torch.inference_mode():
        norms = delta_norms(model, x, n_samples=400, generator=torch.Generator().manual_seed(1))
    r = norms.median(dim=1).values
    stats = []
    got = r_robustness_bf16(model, x, r, n_samples=400, generator=torch.Generator().manual_seed(1), stats=stats)
    want = r_robustness(model, x, r, n_samples=400, generator=torch.Generator().manual_seed(1))
    assert torch.equal(got.n_within, want.n_within)
    assert stats[0].fraction < most, stats[0].fraction


def test_device_not_hard_coded():
    """The route follows z's device (CUDA runs bf16 matrix products too): nothing in the module
    names the CPU, and with CUDA present the counts there equal float32's."""
    src = inspect.getsource(bf16_module).replace(inspect.getsource(bf16_module.native_bf16), "")
    assert '"cpu"' not in src and "'cpu'" not in src  # (only the CPU feature probe names the CPU)
    if not torch.cuda.is_available():
        return
    model = _robvae("mlp").cuda()
    x = _x(model).cuda()
    got = r_robustness_bf16(model, x, 8.0, n_samples=200, generator=torch.Generator("cuda").manual_seed(1))
    want = r_robustness(model, x, 8.0, n_samples=200, generator=torch.Generator("cuda").manual_seed(1))
    assert torch.equal(got.n_within, want.n_within)


def test_unsupported_model_runs_float32():
    class Odd(nn.Module):
        def forward(self, h):
            return h * 2
    torch.manual_seed(0)
    model = _archs()["mlp relu sigmoid"]
    model.decoder.append(Odd())
    model.eval()
    x = torch.rand(2, 1, 28, 28)
    got = r_robustness_bf16(model, x, 5.0, n_samples=50, generator=torch.Generator().manual_seed(1))
    want = r_robustness(model, x, 5.0, n_samples=50, generator=torch.Generator().manual_seed(1))
    assert torch.equal(got.n_within, want.n_within)
    assert math.isfinite(float(got.p.sum()))


@pytest.mark.parametrize("layer,shape", [
    (nn.ConvTranspose2d(8, 4, 4, 2, 1), (8, 6, 6)), (nn.ConvTranspose2d(16, 1, 4, 2, 1), (16, 7, 7)),
    (nn.ConvTranspose2d(5, 3, 3, 2, 1), (5, 5, 5)), (nn.ConvTranspose2d(3, 2, 5, 3, 2), (3, 4, 4)),
    (nn.ConvTranspose2d(4, 6, 3, 1, 1), (4, 6, 5)), (nn.Conv2d(3, 5, 3, 2, 1), (3, 9, 9)),
    (nn.Conv2d(4, 6, 5, 1, 2), (4, 6, 6)), (nn.Conv2d(2, 3, 4, 2, 1), (2, 8, 8)),
    (nn.Conv2d(3, 4, (3, 5), (1, 2), (1, 0)), (3, 7, 9)),
])
def test_periodic_conv_norm_bounds_the_exact_norm(layer, shape, monkeypatch):
    """The periodic-extension bound (setup in milliseconds) against the exact norm at the input
    shape (the dense operator's Gram matrix, an independent computation): never below it, and
    within 50% (measured 0-32%, the most for |W| of a 5x5 kernel on a 6x6 input) so the bf16
    bound stays useful; also for |W| and for the bf16 weight-rounding residual, whose norms the
    bound uses."""
    monkeypatch.setattr(bf16_module, "DENSE_GRAM_LIMIT", 10_000)
    for w in (layer.weight.detach(), layer.weight.detach().abs(),
              layer.weight.detach().to(torch.bfloat16).double() - layer.weight.detach().double()):
        probe = bf16_module.copy.deepcopy(layer).double()
        with torch.no_grad():
            probe.weight.copy_(w)
        exact = bf16_module._conv_exact(probe, shape)
        got = conv_periodic_bound(w, layer, shape)
        assert exact is not None and got is not None
        assert got >= exact * (1 - 1e-12), (got, exact)
        assert got <= 1.5 * exact, (got, exact)


def test_periodic_conv_norm_declines_unsupported_layers():
    assert conv_periodic_bound(torch.ones(4, 2, 3, 3), nn.Conv2d(4, 4, 3, groups=2), (4, 6, 6)) is None
    assert conv_periodic_bound(torch.ones(4, 4, 3, 3), nn.Conv2d(4, 4, 3, dilation=2), (4, 8, 8)) is None


# --------------------------------------------------------------------------------------------
# precision= in certify and r_robustness_bf16: "auto" takes the bf16 route only where it pays
# --------------------------------------------------------------------------------------------

@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("name,pays", [("robvae mlp scaled", True), ("robvae conv scaled", False),
                                       ("user mlp tanh", True), ("user conv", False)])
def test_auto_takes_bf16_for_mlp_decoders_at_one_thread(name, pays, monkeypatch, one_thread):
    """With native bf16 products (forced here, so the test does not depend on this machine's CPU)
    and one thread, "auto" runs the bf16 route for MLP decoders (measured 1.18-1.25x) and float32
    for convolutional ones (0.87-0.97x); at two threads float32 for both (0.91x / 0.75x). The
    counts are float32's either way."""
    monkeypatch.setattr(bf16_module, "native_bf16", lambda device: True)
    model = BOUND_MODELS[name]()
    x = _x(model, n=3)
    with torch.inference_mode():
        r = delta_norms(model, x, n_samples=100, generator=torch.Generator().manual_seed(2)).median(dim=1).values
    want = r_robustness(model, x, r, n_samples=100, generator=torch.Generator().manual_seed(2))
    for threads, expect in ((1, pays), (2, False)):
        torch.set_num_threads(threads)
        stats = []
        got = r_robustness_bf16(model, x, r, n_samples=100, generator=torch.Generator().manual_seed(2), stats=stats,
                                precision="auto")
        assert bool(stats) == expect, threads
        assert torch.equal(got.n_within, want.n_within)
    stats = []  # "bfloat16" takes the route whatever the threads and layers
    r_robustness_bf16(model, x, r, n_samples=100, generator=torch.Generator().manual_seed(2), stats=stats,
                      precision="bfloat16")
    assert stats
    monkeypatch.setattr(bf16_module, "native_bf16", lambda device: False)  # no native bf16: never auto
    torch.set_num_threads(1)
    stats = []
    r_robustness_bf16(model, x, r, n_samples=100, generator=torch.Generator().manual_seed(2), stats=stats,
                      precision="auto")
    assert not stats


def test_native_bf16_probe():
    """torch's probe against the kernel's own CPU flags (Linux): avx512_bf16 or amx_bf16."""
    assert bf16_module.native_bf16("meta") is False  # only CPUs are probed
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.is_file():
        pytest.skip("no /proc/cpuinfo to compare the probe with")
    flags = set()
    for line in cpuinfo.read_text().splitlines():
        if line.startswith("flags"):
            flags |= set(line.split(":", 1)[1].split())
    assert bf16_module.native_bf16("cpu") == bool(flags & {"avx512_bf16", "amx_bf16"})


@pytest.mark.parametrize("name", ["robvae mlp scaled", "robvae conv scaled"])
def test_certify_is_the_same_in_every_precision(name, monkeypatch, one_thread):
    """robvae.certify(precision=...): float32, bfloat16 and auto (forced to take the bf16 route
    where it would) give identical certificates, field by field."""
    from robvae.robustness import certify

    monkeypatch.setattr(bf16_module, "native_bf16", lambda device: True)
    model = BOUND_MODELS[name]()
    x = _x(model, n=5, seed=8)
    with torch.inference_mode():
        r = float(delta_norms(model, x, n_samples=100, generator=torch.Generator().manual_seed(1)).median())
    certs = {p: certify(model, x, r, n_samples=200, precision=p, generator=torch.Generator().manual_seed(4),
                        norms=("frobenius",)) for p in ("float32", "bfloat16", "auto")}
    base = certs["float32"]
    assert 0.2 < float(base.p.mean()) < 0.8  # r near the median: many draws near r, most of them decided in bf16
    for p, cert in certs.items():
        for f in ("p", "p_lower", "radius", "radius_sound"):
            assert torch.equal(getattr(cert, f), getattr(base, f)), (p, f)


def test_bad_precision_is_one_line():
    from robvae.errors import InputError
    from robvae.robustness import certify

    model = MODELS["robvae mlp"]()
    with pytest.raises(InputError, match="precision must be one of auto, float32, bfloat16, got 'fp16'"):
        certify(model, _x(model, n=1), 1.0, n_samples=10, precision="fp16")
    with pytest.raises(InputError, match="precision must be one of"):
        r_robustness_bf16(model, _x(model, n=1), 1.0, n_samples=10, precision="half")


def _auto_counts(monkeypatch, precision, max_redone, probe=1):
    """r_robustness_bf16 at ``precision`` with bf16_pays forced (any CPU), 4 calls of 4 x 50 draws."""
    monkeypatch.setattr(bf16_module, "bf16_pays", lambda plan, z: True)
    monkeypatch.setattr(bf16_module, "AUTO_MAX_REDONE", max_redone)
    monkeypatch.setattr(bf16_module, "AUTO_PROBE_DRAWS", probe)
    model = MODELS["robvae mlp"]()
    x = _x(model)
    with torch.inference_mode():
        norms = delta_norms(model, x, n_samples=200, generator=torch.Generator().manual_seed(9))
    r = norms.median(dim=1).values  # many draws near r: some recomputed in every call
    stats = []
    got = r_robustness_bf16(model, x, r, n_samples=200, chunk_size=50, generator=torch.Generator().manual_seed(9),
                            stats=stats, precision=precision)
    want = r_robustness(model, x, r, n_samples=200, chunk_size=50, generator=torch.Generator().manual_seed(9))
    assert torch.equal(got.n_within, want.n_within) and torch.equal(got.p_lower, want.p_lower)
    return stats[0]


def test_auto_gives_the_route_up_once_too_many_draws_are_redone(monkeypatch):
    """precision="auto" goes over to float32 after the first decoder call whose share of draws
    decoded again exceeds AUTO_MAX_REDONE (the route is then slower than float32), with the same
    counts; below the share, and at precision="bfloat16", it keeps the route to the end."""
    st = _auto_counts(monkeypatch, "auto", max_redone=0.0)
    assert st.recomputed > 0 and st.gave_up
    assert (st.draws, st.float32_draws) == (4 * 50, 3 * 4 * 50)  # one call by bfloat16, three by float32
    st = _auto_counts(monkeypatch, "auto", max_redone=0.0, probe=2 * 4 * 50)  # looks after 400 draws only
    assert (st.draws, st.float32_draws) == (2 * 4 * 50, 2 * 4 * 50)
    st = _auto_counts(monkeypatch, "auto", max_redone=1.0)
    assert (st.draws, st.float32_draws, st.gave_up) == (4 * 200, 0, False)
    st = _auto_counts(monkeypatch, "bfloat16", max_redone=0.0)
    assert (st.draws, st.float32_draws) == (4 * 200, 0)
