"""The model protocol every estimator and attack in robvae relies on.

Any ``torch.nn.Module`` with

- ``encode(x) -> (mu, sigma)``: ``x`` of shape ``[B, *input_shape]``; ``mu`` and ``sigma`` of
  shape ``[B, d]`` with ``sigma > 0`` (the diagonal-Gaussian encoder q(z|x) = N(mu, diag(sigma^2)));
- ``decode(z) -> mean``: ``z`` of shape ``[N, d]``; the deterministic decoder mean g(z) of shape
  ``[N, *input_shape]``, on the images' scale [0, 1] (a decoder returning logits or [-1, 1]
  pixels gets a ``robvae.validation.DecoderRangeWarning``: distances would be between those),

is a robvae model. Optionally it may expose ``input_shape`` (a tuple) so inputs can be checked,
and ``log_likelihood(x, z) -> [B]`` (log p(x|z)) for the likelihood-degradation metric, and
``decodes_images = False`` when its outputs are not images on purpose (no range warning), and
``prior_is_standard_normal = False`` when its prior p(z) is not N(0, I) (the benchmark's ELBO,
which uses N(0, I), is then not reported). Bring your own VAE: nothing else is required.
"""

from __future__ import annotations

import importlib
import inspect
import sys
import sysconfig
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch

from ..errors import InputError


@runtime_checkable
class VAEProtocol(Protocol):
    """encode(x) -> (mu [B, d], sigma [B, d]); decode(z [N, d]) -> mean [N, *input_shape]."""

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...

    def decode(self, z: torch.Tensor) -> torch.Tensor: ...


#: Source files of users' own code: the modules :func:`import_spec` imported and the files defining
#: the classes of the models they gave (:func:`register_user_code`). The command line names an
#: exception raised in one of them as the user's, in one line; anything else keeps its traceback.
USER_CODE_FILES: set[str] = set()
#: robvae's own package folder (with its separator): its frames are never the user's
ROBVAE_DIR = str(Path(__file__).resolve().parents[1]) + "/"
_NOT_USER = (ROBVAE_DIR,
             *{str(Path(p).resolve()) + "/" for k in ("stdlib", "platstdlib") if (p := sysconfig.get_paths().get(k))})


def _user_file(path: str | None) -> str | None:
    """``path`` resolved, when it is a user's source file: not robvae's, the standard library's or
    an installed package's (site-packages, dist-packages)."""
    if not path or path.startswith("<"):
        return None
    resolved = str(Path(path).resolve())
    if resolved.startswith(_NOT_USER) or any(p in ("site-packages", "dist-packages") for p in Path(resolved).parts):
        return None
    return resolved


def register_user_code(obj: Any) -> None:
    """Record the user's source files behind ``obj`` in :data:`USER_CODE_FILES`: a module's file; for
    a ``torch.nn.Module``, the files defining the classes (and their bases) of it and of every
    submodule."""
    if inspect.ismodule(obj):
        files = [getattr(obj, "__file__", None)]
    else:
        mods = obj.modules() if isinstance(obj, torch.nn.Module) else [obj]
        classes = {c for m in mods for c in type(m).__mro__}
        files = [getattr(sys.modules.get(c.__module__), "__file__", None) for c in classes]
    USER_CODE_FILES.update(f for f in map(_user_file, files) if f)


def import_spec(spec: str, label: str, error: type[Exception] = InputError) -> Any:
    """The object named by ``"pkg.module:attr"`` (``attr`` may be dotted), importing ``pkg.module``
    with the current folder importable (as with ``python -m``, so a local ``my_models.py`` works).

    A malformed spec, a module that does not import and a missing attribute raise ``error`` with one
    line that starts with ``label`` (``robvae --model``, the benchmark's zoo files)."""
    mod_name, sep, attr = str(spec).partition(":")
    if not sep or not mod_name or not attr or ":" in attr:
        raise error(f"{label}: expected MODULE:CALLABLE, e.g. my_pkg.models:build")
    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, "")
    try:
        module = importlib.import_module(mod_name)
    except Exception as e:  # noqa: BLE001 - any import failure is the user's module, said in one line
        msg = str(e).splitlines()[0] if str(e) else ""
        raise error(f"{label}: module {mod_name!r} does not import ({type(e).__name__}: {msg})") from e
    except SystemExit as e:  # a script's sys.exit() at module level: it ended robvae without a word
        raise error(f"{label}: module {mod_name!r} does not import (it calls sys.exit({e.code!r}) when "
                    "imported)") from e
    register_user_code(module)
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise error(f"{label}: {obj.__name__ if obj is module else attr!r} has no attribute {part!r}")
        obj = getattr(obj, part)
    return obj


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of a model's first parameter or buffer (CPU for a model with neither)."""
    for t in (*model.parameters(), *model.buffers()):
        return t.device
    return torch.device("cpu")
