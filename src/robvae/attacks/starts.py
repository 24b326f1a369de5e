"""Start points for the attacks: the top right-singular direction of the Jacobian of x -> g(mu(x)).

For a perturbation delta of norm eps, ||g(mu(x + delta)) - g(mu(x))|| ~ ||J delta|| to first
order, J = d g(mu(x)) / dx [D x D_in]; the first-order worst delta is eps * v_1, v_1 the top right
singular vector of J. It is found by power iteration on J^T J with forward-mode (torch.func.jvp)
and reverse-mode (torch.func.vjp) products, every input of the batch at once (each input's rows
of g(mu(.)) depend on that input only). At delta = 0 the damage is at its minimum and its
gradient is 0, so this start is what moves an attack that does not start at random.
"""

from __future__ import annotations

import torch
from torch.func import vjp

from ..autodiff import jv_function, model_derivatives
from ..models.fast_decode import flat_decode
from ..rng import randn
from ..validation import check_count
from .pgd import unit_rows


def top_singular_direction(
    model: torch.nn.Module, x: torch.Tensor, *, iters: int = 10, generator: torch.Generator | None = None,
    counter=None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Power iteration for each input: -> (v [B, *shape] unit rows, sigma [B] = ||J v|| ~ sigma_max(J)).

    The start vector is random (``generator``; a fixed seed when None, so the result is
    deterministic). ``counter`` (a RowCounter) counts decoder rows (two per input per iteration).
    """
    check_count(iters, 1, "iters")  # 0 or negative returned the random start as the top direction
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    with torch.inference_mode(False), torch.enable_grad():
        x0 = x.detach().clone()

        def f(xx: torch.Tensor) -> torch.Tensor:
            with model_derivatives("model.encode / model.decode"):
                return flat_decode(model, model.encode(xx)[0])

        v = unit_rows(randn(x0.shape, x0, generator))
        out, pullback = vjp(f, x0)
        jv_fn = jv_function(f, x0, pullback, out)  # forward mode, or a second reverse pass where it fails
        sigma = torch.zeros(x0.shape[0], dtype=x0.dtype, device=x0.device)
        for _ in range(max(int(iters), 1)):
            jv = jv_fn(v)
            sigma = jv.norm(dim=1)
            (w,) = pullback(jv)
            v = unit_rows(w).detach()
            if counter is not None:
                counter.add(2 * x0.shape[0])
    return v.detach(), sigma.detach()
