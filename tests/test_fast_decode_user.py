"""The fast decode route for users' own models (issue 11 item 2): rewritten decoders must give
model.decode's numbers, and anything not understood must fall back to model.decode.

Every check compares against ``model.decode`` itself (an independent computation: plain eager
torch in NCHW), so a wrong rewrite (weights permuted the wrong way, a missed bias, the wrong
overlap-add tap, a forgotten sigmoid) shows up as a mismatch.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from robvae.models import VAE, ModelConfig
from robvae.models.fast_decode import _PLANS, flat_decode, has_fast_route
from robvae.robustness import r_robustness


class UserVAE(nn.Module):
    """A protocol-only VAE (not a subclass of robvae's VAE) around any decoder."""

    def __init__(self, decoder: nn.Module, d: int, shape, sigmoid: bool = True):
        super().__init__()
        self.input_shape = tuple(shape)
        D = int(torch.tensor(shape).prod())
        self.enc = nn.Linear(D, 2 * d)
        self.decoder = decoder
        self.sigmoid = sigmoid

    def encode(self, x):
        h = self.enc(x.flatten(1))
        mu, s = h.chunk(2, dim=1)
        return mu, nn.functional.softplus(s) + 1e-3

    def decode(self, z):
        out = self.decoder(z).view(z.shape[0], *self.input_shape)
        return torch.sigmoid(out) if self.sigmoid else out


class ReshapeDecoder(nn.Module):
    """Linear, then an implicit reshape in forward (no Unflatten module), then convolutions."""

    def __init__(self, d):
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(d, 64), nn.ELU(), nn.Linear(64, 16 * 7 * 7))
        self.act = nn.LeakyReLU(0.2)
        self.up = nn.Sequential(nn.ConvTranspose2d(16, 8, 4, 2, 1), nn.GELU(), nn.ConvTranspose2d(8, 1, 4, 2, 1))

    def forward(self, z):
        return self.up(self.act(self.fc(z)).view(z.shape[0], 16, 7, 7))


def _archs(d=6):
    torch.manual_seed(0)
    return {
        "mlp relu sigmoid": UserVAE(nn.Sequential(nn.Linear(d, 32), nn.ReLU(), nn.Linear(32, 64), nn.ReLU(),
                                                  nn.Linear(64, 784)), d, (1, 28, 28)),
        "mlp tanh, nested, identity out": UserVAE(nn.Sequential(nn.Sequential(nn.Linear(d, 40), nn.Tanh()),
                                                                nn.Sequential(nn.Linear(40, 64), nn.Sigmoid()),
                                                                nn.Linear(64, 64)), d, (1, 8, 8), sigmoid=False),
        "conv unflatten thin deconv": UserVAE(nn.Sequential(
            nn.Linear(d, 64), nn.ReLU(), nn.Linear(64, 32 * 7 * 7), nn.ReLU(), nn.Unflatten(1, (32, 7, 7)),
            nn.ConvTranspose2d(32, 16, 4, 2, 1), nn.ReLU(), nn.ConvTranspose2d(16, 1, 4, 2, 1)), d, (1, 28, 28)),
        "conv implicit reshape": UserVAE(ReshapeDecoder(d), d, (1, 28, 28)),
        "conv k3 and conv2d": UserVAE(nn.Sequential(
            nn.Linear(d, 8 * 4 * 4), nn.Unflatten(1, (8, 4, 4)), nn.ConvTranspose2d(8, 8, 3, 2, 1, output_padding=1),
            nn.ReLU(), nn.Conv2d(8, 3, 3, padding=1)), d, (3, 8, 8)),
        "conv then flatten linear": UserVAE(nn.Sequential(
            nn.Linear(d, 4 * 4 * 4), nn.Unflatten(1, (4, 4, 4)), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
            nn.Flatten(), nn.Linear(64, 49)), d, (1, 7, 7)),
    }


@pytest.mark.parametrize("name", list(_archs()))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_rewritten_decoder_equals_model_decode(name, dtype):
    model = _archs()[name].eval().to(dtype)
    z = 1.5 * torch.randn(37, 6, dtype=dtype, generator=torch.Generator().manual_seed(1))
    z_before = z.clone()
    with torch.inference_mode():
        assert has_fast_route(model, z), name
        fast = flat_decode(model, z)
        ref = model.decode(z).flatten(1)
    assert torch.equal(z, z_before)  # the caller's latents are never written in place
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(fast, ref, rtol=tol, atol=tol)


def test_plan_follows_weight_changes():
    model = _archs()["conv unflatten thin deconv"].eval()
    z = torch.randn(5, 6)
    with torch.inference_mode():
        flat_decode(model, z)
    with torch.no_grad():
        model.decoder[-1].weight.mul_(-2.0)  # in place: the cached derived weights must be rebuilt
        model.decoder[0].bias.add_(0.3)
    with torch.inference_mode():
        torch.testing.assert_close(flat_decode(model, z), model.decode(z).flatten(1), rtol=1e-5, atol=1e-5)


def test_replaced_weights_never_hit_a_stale_cache_entry():
    """The caches key weights by (version, address). Replacing a weight twice between two decodes
    frees the cached tensor before the second new one is allocated, which can then land at the
    cached address with the same version (0): without the kept storages that decoded with the old
    weights in about half the rounds here. The entries keep the cached storages alive, so every
    round matches model.decode."""
    model = _archs()["conv unflatten thin deconv"].eval()
    z = torch.randn(5, 6)
    for layer in (model.decoder[-1], model.decoder[0]):
        for _ in range(30):
            with torch.inference_mode():
                flat_decode(model, z)
            for _ in range(2):
                layer.weight = nn.Parameter(torch.randn_like(layer.weight))
            with torch.inference_mode():
                torch.testing.assert_close(flat_decode(model, z), model.decode(z).flatten(1), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["conv unflatten thin deconv", "robvae conv"])
def test_weights_edited_through_data_are_seen(name):
    """An edit through ``.data`` (weight clipping, hand-written optimisers) leaves the tensor's
    version alone, so a cache keyed by versions kept decoding with the old weights (a rigorous
    radius of 1.26 for an input whose true margin is 0). The cached derived weights are checked
    against the live numbers on every call."""
    if name == "robvae conv":
        torch.manual_seed(0)
        model = VAE(ModelConfig(input_shape=(1, 28, 28), arch="conv", latent_dim=6)).eval()
    else:
        model = _archs()[name].eval()
    z = torch.randn(5, 6)
    layers = [m for m in model.decoder.modules() if isinstance(m, (nn.Linear, nn.ConvTranspose2d))]
    for step, layer in enumerate(layers * 2):
        with torch.inference_mode():
            flat_decode(model, z)
        layer.weight.data.mul_(-1.5 if step % 2 else 3.0)
        if layer.bias is not None:
            layer.bias.data.add_(0.25)
        with torch.inference_mode():
            torch.testing.assert_close(flat_decode(model, z), model.decode(z).flatten(1), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["robvae mlp", "robvae conv", "mlp tanh, nested, identity out",
                                  "conv unflatten thin deconv"])
def test_a_row_decodes_to_the_same_bits_in_any_subset(name):
    """Counts decided again on a subset of a chunk's rows (the bfloat16 route's undecided draws,
    the inputs still drawing under early abstention) must see the chunk's bits. Matrix-product
    kernels handle a remainder of rows with other code (37 of 1,024 rows of the MLP decoder came out
    different in the last bits); flat_decode pads to a multiple of ROW_ALIGN, and every subset size
    from 1 to 130 (and a few larger) then gives exactly the rows of the whole chunk."""
    if name.startswith("robvae"):
        torch.manual_seed(0)
        model = VAE(ModelConfig(input_shape=(1, 28, 28), arch=name.split()[1], latent_dim=10)).eval()
    else:
        model = _archs()[name].eval()
    d = 10 if name.startswith("robvae") else 6  # _archs() uses d = 6
    z = torch.randn(1024, d, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        whole = flat_decode(model, z)
        for n in [*range(1, 131), 200, 333, 517]:
            idx = torch.randperm(1024, generator=torch.Generator().manual_seed(n))[:n]
            assert torch.equal(flat_decode(model, z[idx]), whole[idx]), n


def test_no_padding_in_training_mode():
    """A batch norm in training mode normalises with the batch's statistics: extra rows would change
    every output, so flat_decode does not pad there."""
    torch.manual_seed(0)
    model = UserVAE(nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16)), 6, (1, 4, 4)).train()
    z = torch.randn(9, 6)
    with torch.no_grad():
        torch.testing.assert_close(flat_decode(model, z), model.decode(z).flatten(1), rtol=0, atol=0)


class ScaledDecode(UserVAE):
    def decode(self, z):  # not sigmoid(decoder(z)) nor decoder(z): the check must refuse the rewrite
        return 0.5 * super().decode(z)


class Odd(nn.Module):
    def forward(self, h):
        return h * 2


def test_fallbacks_give_model_decode():
    d = 6
    torch.manual_seed(0)
    cases = {
        "decode is not decoder(z) or sigmoid(decoder(z))": ScaledDecode(nn.Sequential(nn.Linear(d, 16)), d, (1, 4, 4)),
        "unknown layer": UserVAE(nn.Sequential(nn.Linear(d, 16), Odd()), d, (1, 4, 4)),
        "batch norm": UserVAE(nn.Sequential(nn.Linear(d, 16), nn.BatchNorm1d(16)), d, (1, 4, 4)),
    }
    hooked = UserVAE(nn.Sequential(nn.Linear(d, 16), nn.ReLU(), nn.Linear(16, 16)), d, (1, 4, 4))
    calls = []
    hooked.decoder[2].register_forward_hook(lambda m, a, out: calls.append(1))
    cases["forward hook"] = hooked
    no_decoder = UserVAE(nn.Sequential(nn.Linear(d, 16)), d, (1, 4, 4))
    no_decoder.net = no_decoder.decoder
    del no_decoder.decoder
    no_decoder.decode = lambda z: torch.sigmoid(no_decoder.net(z)).view(-1, 1, 4, 4)
    cases["no decoder attribute"] = no_decoder
    z = torch.randn(9, d)
    for name, model in cases.items():
        model.eval()
        with torch.inference_mode():
            assert not has_fast_route(model, z), name
            # to rounding: flat_decode decodes the 9 rows padded to ROW_ALIGN
            torch.testing.assert_close(flat_decode(model, z), model.decode(z).flatten(1), rtol=1e-6, atol=1e-7)
    assert calls  # the hook ran: the model's own decode was used


def test_training_mode_gradients_use_model_decode():
    model = _archs()["mlp relu sigmoid"]
    z = torch.randn(3, 6, requires_grad=True)
    out = flat_decode(model, z)  # gradients recorded: always model.decode
    out.sum().backward()
    assert z.grad is not None and model not in _PLANS  # no plan was even built


def test_counts_identical_with_and_without_rewrite():
    """r_robustness on a user model: the same draws give the same counts through the rewrite
    and through model.decode (the latter forced by a no-op forward hook)."""
    model = _archs()["conv unflatten thin deconv"].eval()
    x = torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        norms = (flat_decode(model, torch.randn(200, 6)) - 0.5).norm(dim=1)
    r = float(norms.median())
    fast = r_robustness(model, x, r, n_samples=300, generator=torch.Generator().manual_seed(3))
    h = model.decoder[0].register_forward_hook(lambda m, a, out: None)
    try:
        slow = r_robustness(model, x, r, n_samples=300, generator=torch.Generator().manual_seed(3))
    finally:
        h.remove()
    # counts may differ only for draws within float rounding of r; with 900 draws none is expected
    assert torch.equal(fast.n_within, slow.n_within)


@pytest.mark.parametrize("head", ["flatten", "unflatten"])
def test_a_leading_reshape_never_writes_into_the_callers_z(head):
    """A decoder that starts with Flatten (or a one-channel Unflatten, a view of z) and then an
    activation: the in-place activation must not overwrite the caller's latent draws."""
    d = 16
    torch.manual_seed(0)
    if head == "flatten":
        dec = nn.Sequential(nn.Flatten(), nn.ReLU(), nn.Linear(d, 64))
        shape = (1, 8, 8)
    else:
        dec = nn.Sequential(nn.Unflatten(1, (1, 4, 4)), nn.ReLU(), nn.ConvTranspose2d(1, 1, 4, 2, 1), nn.Flatten())
        shape = (1, 8, 8)
    model = UserVAE(dec, d, shape).eval()
    z = torch.randn(32, d)
    z_before = z.clone()
    with torch.inference_mode():
        got = flat_decode(model, z)
    assert torch.equal(z, z_before), "flat_decode changed its input z"
    torch.testing.assert_close(got, model.decode(z_before).flatten(1), rtol=1e-5, atol=1e-6)


class _Conv1x1VAE(nn.Module):
    """Linear -> Unflatten -> ReLU -> Conv2d(16, 1, 1): torch runs a 1x1 convolution of few images
    with another kernel than of many, so a row's last bits depend on its batch."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.enc = nn.Linear(49, 16)
        self.decoder = nn.Sequential(nn.Linear(8, 16 * 7 * 7), nn.Unflatten(1, (16, 7, 7)), nn.ReLU(), nn.Conv2d(16, 1, 1))

    def encode(self, x):
        h = self.enc(x.flatten(1))
        return h[:, :8], 3.0 + 0 * h[:, 8:]

    def decode(self, z):
        return torch.sigmoid(self.decoder(z))


def test_counts_stay_exact_where_a_rows_bits_depend_on_its_batch():
    """Two cases found by an audit (one thread, this CPU): the bfloat16 route's float32 redo of one
    undecided draw, and early abstention decoding the one input still drawing, each decoded a few
    rows where the chunk had many, and a draw exactly at r changed side (a certificate went from
    radius 0.072 to abstaining). rows_independent now decides whether subsets may be decoded; the
    counts equal the plain float32 route's."""
    from robvae.robustness import r_robustness
    from robvae.robustness.bf16 import r_robustness_bf16
    from robvae.robustness.sampling import delta_norms

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        m = _Conv1x1VAE().eval()
        x = torch.rand(1, 1, 7, 7)  # drawn right after the model's weights
        gen = lambda s: torch.Generator().manual_seed(s)  # noqa: E731
        d = delta_norms(m, x, None, 64, generator=gen(13))
        r = float(d.sort(1).values[0, 32])  # a draw exactly at r
        plain = r_robustness(m, x, r, n_samples=64, generator=gen(13))
        assert torch.equal(r_robustness_bf16(m, x, r, n_samples=64, generator=gen(13), precision="bfloat16").n_within,
                           plain.n_within)
        m = _Conv1x1VAE().eval()
        x = torch.rand(64, 1, 7, 7)
        d = delta_norms(m, x, None, 200, generator=gen(41))
        r = d.amin(1) * 0.5  # inputs 0..62 stop early
        r[-1] = d[-1].sort().values[100]  # input 63 draws on, with a draw exactly at r
        plain = r_robustness(m, x, r, n_samples=200, generator=gen(41))
        early = r_robustness(m, x, r, n_samples=200, generator=gen(41), abstain_alpha=0.05)
        assert (early.n_samples[:63] < 200).all() and int(early.n_samples[63]) == 200
        assert int(early.n_within[63]) == int(plain.n_within[63])
    finally:
        torch.set_num_threads(before)


def test_a_module_placed_twice_in_a_sequential_runs_twice():
    """One activation instance shared by several positions of a Sequential (common in users'
    code) is applied at each of them by ``seq(h)``; ``children()`` lists it once, and the fast
    route of robvae's own MLP VAE, which walked it, decoded without the second activation (off
    by 0.09). Both routes keep every position now."""
    torch.manual_seed(0)
    model = VAE(ModelConfig(input_shape=(1, 28, 28), arch="mlp", latent_dim=6)).eval()
    shared = nn.LeakyReLU(0.3)
    model.decoder.net[1] = shared
    model.decoder.net[3] = shared
    act = nn.Tanh()
    user = UserVAE(nn.Sequential(nn.Linear(6, 32), act, nn.Linear(32, 48), act, nn.Linear(48, 784)), 6, (1, 28, 28)).eval()
    z = torch.randn(5, 6)
    for m in (model, user):
        assert has_fast_route(m, z)
        with torch.inference_mode():
            torch.testing.assert_close(flat_decode(m, z), m.decode(z).flatten(1), rtol=1e-5, atol=1e-6)


class ClampDecoder(nn.Module):
    """Standard layers, but forward clamps the latents first: invisible to latents within +-c."""

    def __init__(self, d, c):
        super().__init__()
        self.c = c
        self.net = nn.Sequential(nn.Linear(d, 32), nn.ReLU(), nn.Linear(32, 16))

    def forward(self, z):
        return self.net(z.clamp(-self.c, self.c))


def test_changes_that_are_not_tensors_rebuild_the_rewrite():
    """A layer replaced or appended, or a flag the model's decode reads, after a first call: the
    rewrite follows model.decode (a cache keyed by tensors only kept the old function)."""
    d = 6
    torch.manual_seed(0)
    z = torch.randn(40, d)
    model = UserVAE(nn.Sequential(nn.Linear(d, 32), nn.ReLU(), nn.Linear(32, 16)), d, (1, 4, 4)).eval()
    edits = [lambda m: m.decoder.__setitem__(1, nn.Tanh()),
             lambda m: m.decoder.append(nn.Sigmoid()),
             lambda m: setattr(m, "sigmoid", False),
             lambda m: setattr(m.decoder[1], "alpha", 3.0) if isinstance(m.decoder[1], nn.ELU) else
             m.decoder.__setitem__(1, nn.ELU(alpha=0.5))]
    for edit in edits:
        with torch.inference_mode():
            flat_decode(model, z)  # builds (or reuses) the rewrite
        edit(model)
        with torch.inference_mode():
            torch.testing.assert_close(flat_decode(model, z), model.decode(z).flatten(1), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("c", [3.0, 6.0, 40.0])
def test_a_decoder_that_differs_far_out_is_never_used_where_it_differs(c):
    """A clamp in the decoder's forward at +-c: the rewrite (which skips it) must not be used on
    latents beyond it, whether the first check sees them (c = 3, 6) or only later calls do (c =
    40: caught by the per-call check on the farthest row, with a warning)."""
    import warnings

    d = 4
    torch.manual_seed(1)
    model = UserVAE(ClampDecoder(d, c), d, (1, 4, 4)).eval()
    g = torch.Generator().manual_seed(0)
    near = torch.randn(64, d, generator=g)
    far = torch.randn(64, d, generator=g) * 2 + torch.tensor([50.0, 0, 0, 0])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with torch.inference_mode():
            for z in (near, far, near):
                torch.testing.assert_close(flat_decode(model, z), model.decode(z).flatten(1), rtol=1e-5, atol=1e-6)
    if c == 40.0:
        assert any("disagreed with model.decode" in str(w.message) for w in caught)


def test_no_rewrite_in_half_precision():
    """In float16 / bfloat16 the rewrite's rounding cannot be told from a different function
    (0.01 + 0.98 sigmoid passed a 3e-2 tolerance): model.decode is used."""
    d = 6
    torch.manual_seed(0)
    model = UserVAE(nn.Sequential(nn.Linear(d, 32), nn.ReLU(), nn.Linear(32, 16)), d, (1, 4, 4)).eval()
    for dtype in (torch.float16, torch.bfloat16):
        m = model.to(dtype)
        z = torch.randn(20, d, dtype=dtype)
        with torch.inference_mode():
            assert not has_fast_route(m, z)
            assert torch.equal(flat_decode(m, z)[:20], m.decode(z).flatten(1))


class _OffsetVAE(UserVAE):
    """decode reads a plain tensor attribute (not a parameter or buffer) and a near-origin bump."""

    def __init__(self, d, bump_radius=0.0):
        super().__init__(nn.Sequential(nn.Linear(d, 32), nn.ReLU(), nn.Linear(32, 16)), d, (1, 4, 4), sigmoid=False)
        self.offset = torch.zeros(16)
        self.bump_radius = bump_radius

    def decode(self, z):
        h = self.decoder(z) + self.offset
        near = (z.norm(dim=1, keepdim=True) < self.bump_radius).to(h.dtype)
        return (h + 0.3 * near).view(z.shape[0], 1, 4, 4)


def test_state_the_key_cannot_see_is_caught_by_the_per_call_check():
    """Found by an audit: a plain tensor attribute (or a global, a lambda) that decode reads,
    changed after the first call, kept the old rewrite in use; and a decoder that differs only
    near the data's latents passed the first check. Every call now checks one row (the farthest
    out, or one moving through the batch), and the first check includes rows of the first call."""
    import warnings

    torch.manual_seed(0)
    d = 4
    model = _OffsetVAE(d).eval()
    z = torch.randn(256, d, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        assert has_fast_route(model, z)
        torch.testing.assert_close(flat_decode(model, z), model.decode(z).flatten(1), rtol=1e-5, atol=1e-6)
        model.offset += 0.5  # not a parameter, not a buffer, not a plain setting
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.testing.assert_close(flat_decode(model, z), model.decode(z).flatten(1), rtol=1e-5, atol=1e-6)
        assert any("disagreed with model.decode" in str(w.message) for w in caught)
        near = _OffsetVAE(d, bump_radius=2.2).eval()  # differs on most of z's rows, not on the fixed ones
        assert not has_fast_route(near, z)
        torch.testing.assert_close(flat_decode(near, z), near.decode(z).flatten(1), rtol=1e-5, atol=1e-6)


class _Residual(nn.Sequential):
    """A residual block written as an nn.Sequential subclass with its own forward."""

    def forward(self, h):
        return h + super().forward(h)


@pytest.mark.parametrize("arch", ["mlp", "conv"])
def test_robvaes_own_vae_with_a_sequential_subclass_decodes_as_model_decode(arch):
    """robvae's own VAE whose decoder a user edited to hold an nn.Sequential subclass with its own
    forward: the unchecked own-VAE route flattened it into its layers and skipped the residual
    add (up to 0.13 off model.decode, p 0.98 where decode gives 0.45); now such a decoder takes
    the checked route (here: model.decode)."""
    torch.manual_seed(0)
    model = VAE(ModelConfig(input_shape=(1, 8, 8), arch=arch, latent_dim=4)).eval()
    seq = model.decoder.net if arch == "mlp" else model.decoder.deconv
    layers = list(seq)
    if arch == "mlp":
        w = layers[0].out_features
        layers.insert(2, _Residual(nn.Linear(w, w), nn.Tanh()))
    else:
        c = layers[0].out_channels
        layers.insert(2, _Residual(nn.Conv2d(c, c, 3, padding=1), nn.Tanh()))
    new = nn.Sequential(*layers)
    if arch == "mlp":
        model.decoder.net = new
    else:
        model.decoder.deconv = new
    with torch.no_grad():
        for p in model.decoder.parameters():
            p.mul_(3)
    z = torch.randn(64, 4, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        ref = model.decode(z).flatten(1)
        assert float((ref - torch.sigmoid(_plain_chain(model, z))).abs().max()) > 1e-3  # the residual matters
        torch.testing.assert_close(flat_decode(model, z), ref, rtol=1e-5, atol=1e-6)


def _plain_chain(model, z):
    """What the old route computed: every Sequential flattened into its layers."""
    def leaves(m):
        return [x for c in m for x in leaves(c)] if isinstance(m, nn.Sequential) else [m]
    dec = model.decoder
    if hasattr(dec, "net"):
        h = z
        for layer in leaves(dec.net):
            h = layer(h)
        return h.flatten(1)
    h = dec.head(z).view(z.shape[0], *dec.grid)
    for layer in leaves(dec.deconv):
        h = layer(h)
    return h.flatten(1)


class _SnapDecode(UserVAE):
    """decode snaps z[:, 0] to 1 within +-0.15 of 1, editing its argument in place."""

    def decode(self, z):
        z[:, 0].masked_fill_((z[:, 0] - 1.0).abs() < 0.15, 1.0)
        return super().decode(z)


def test_a_decode_that_edits_its_latent_in_place_is_not_rewritten():
    """The first check ran model.decode on its check rows and then the rewrite on the same,
    already edited rows, so a rewrite without the edit passed it (10 of 16 counts off, no
    warning); a decode that changes its argument now keeps model.decode."""
    d = 4
    torch.manual_seed(0)
    model = _SnapDecode(nn.Sequential(nn.Linear(d, 64), nn.ReLU(), nn.Linear(64, 64)), d, (1, 8, 8)).eval()
    with torch.no_grad():
        for p in model.decoder.parameters():
            p.mul_(3)
    z = torch.randn(512, d, generator=torch.Generator().manual_seed(0)) * 0.5 + torch.tensor([1.0, 0, 0, 0])
    assert not has_fast_route(model, z)
    with torch.inference_mode():
        got = flat_decode(model, z.clone())
        torch.testing.assert_close(got, model.decode(z.clone()).flatten(1), rtol=1e-5, atol=1e-6)
