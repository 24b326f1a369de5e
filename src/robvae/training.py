"""Training: the typed run config, the Adam loop, run folders (config, weights, metrics), resume.

A run folder holds
- ``config.json``        the full :class:`TrainConfig` (reproduces the run with its seed);
- ``checkpoint.safetensors`` model and optimiser state after the last finished epoch (resume);
- ``model.safetensors``  the final weights (written when training finishes);
- ``metrics.csv``        per epoch: train loss, train ELBO, held-out ELBO (nats per image), time;
- ``reconstructions.png`` held-out images above their reconstructions g(mu(x)), drawn by the
  caller (``robvae train`` and the sweep workers, :func:`robvae.report.figures.save_reconstructions`):
  training itself draws no figures.
Every file is written atomically. Epoch ``e`` shuffles and draws its noise from generators
seeded by ``(seed, e)``, so an interrupted run resumed from its checkpoint ends with the same
weights as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import json
import math
import warnings
import numbers
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import torch
from tqdm.auto import tqdm

from .config import ConfigMixin, short_repr
from .data import ImageDataset, load_dataset
from .data.registry import canonical_name
from .errors import CheckpointError, InputError
from .fileio import load_tensors, read_csv, read_json, remove_stale_temporaries, save_tensors, write_csv, write_json
from .attacks import MaxDamageAttack
from .models import VAE, ModelConfig
from .objectives import ObjectiveConfig, compute_objective
from .validation import check_count, check_positive

CONFIG_FILE = "config.json"
CHECKPOINT_FILE = "checkpoint.safetensors"
WEIGHTS_FILE = "model.safetensors"
METRICS_FILE = "metrics.csv"
RECON_FILE = "reconstructions.png"
AdversarialNorm = Literal["l2", "linf"]
ADVERSARIAL_NORMS: tuple[str, ...] = get_args(AdversarialNorm)
#: the largest seed (torch's generators take seeds below 2**63; --seed refuses the same)
MAX_SEED = 2**63 - 1


@dataclass
class TrainConfig(ConfigMixin):
    """A training run.

    dataset / data_dir: which data (see :func:`robvae.data.load_dataset`). n_train: use only the
    first n training images (None = all). model / objective: see ModelConfig, ObjectiveConfig
    (model.input_shape is set from the data set). epochs, batch_size, lr: Adam settings.
    seed: seeds initialisation, shuffling and reparameterisation noise. device: "cpu", "cuda", ...
    adversarial_eps: adversarial training (0 = off): each batch is replaced by x + delta, delta the
    maximum-damage attack (robvae.attacks, eta_samples 1) with budget adversarial_eps in the
    adversarial_norm ("l2" or "linf"), adversarial_steps PGD steps; the objective then encodes
    x + delta and scores the clean x (see :func:`batch_objective`).
    """

    dataset: str = "digits"
    data_dir: str | None = None
    n_train: int | None = None
    model: ModelConfig = field(default_factory=ModelConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    epochs: int = 20
    batch_size: int = 128
    lr: float = 1e-3
    seed: int = 0
    device: str = "cpu"
    adversarial_eps: float = 0.0
    adversarial_steps: int = 3
    adversarial_norm: AdversarialNorm = "l2"

    def __post_init__(self) -> None:
        if isinstance(self.model, dict):
            self.model = ModelConfig.from_dict(self.model)
        if isinstance(self.objective, dict):
            self.objective = ObjectiveConfig.from_dict(self.objective)
        if not isinstance(self.dataset, str):
            raise ValueError(f"dataset: expected a data set name, got {self.dataset!r}")
        try:
            canonical_name(self.dataset)
        except ValueError as e:
            raise ValueError(f"dataset: {e}") from None
        for name in ("epochs", "batch_size"):
            check_count(getattr(self, name), 1, name)
        if self.n_train is not None:
            check_count(self.n_train, 1, "n_train")
        if isinstance(self.seed, bool) or not isinstance(self.seed, numbers.Integral):  # any sign: runs of
            raise ValueError(f"seed must be an integer, got {short_repr(self.seed)}")  # old load; new: check_seed
        check_positive(self.lr, "lr")
        if isinstance(self.adversarial_eps, bool) or not isinstance(self.adversarial_eps, (int, float)) \
                or not (self.adversarial_eps >= 0 and math.isfinite(self.adversarial_eps)):
            raise ValueError(f"adversarial_eps must be a finite number >= 0, got {self.adversarial_eps!r}")
        if isinstance(self.adversarial_steps, bool) or not isinstance(self.adversarial_steps, int) \
                or self.adversarial_steps < 1:
            raise ValueError(f"adversarial_steps must be an integer >= 1, got {self.adversarial_steps!r}")
        if self.adversarial_norm not in ADVERSARIAL_NORMS:
            raise ValueError(f"unknown adversarial_norm {self.adversarial_norm!r}; choose one of "
                             f"{', '.join(ADVERSARIAL_NORMS)}")

    def training_fields(self) -> dict[str, Any]:
        """The fields that determine the weights (device excluded)."""
        d = self.to_dict()
        d.pop("device")
        return d


@dataclass
class Run:
    """A loaded run folder: its config, model, and metrics."""

    path: Path
    config: TrainConfig
    model: VAE
    metrics: list[dict[str, str]]


def check_seed(seed: int) -> None:
    """A new run's seed is in [0, 2^63 - 1], as ``--seed`` takes (a sweep's -1 trained, its 10^22
    failed inside the trial; audit h80). Runs trained before with another seed still load."""
    if not 0 <= seed <= MAX_SEED:
        raise InputError(f"seed must be an integer in [0, 2**63 - 1], got {short_repr(seed)}")


def check_new_run(config: TrainConfig, n_train: int) -> None:
    """The checks of a new run's settings against its data and model (InputError naming the
    problem; a warning for a short last batch): :func:`check_penalty_not_constant`,
    :func:`check_adversarial_budget`, and beta-TCVAE's minibatch (its total-correlation estimate
    is a constant on a batch of one input, so beta weighs nothing there)."""
    check_seed(config.seed)
    check_penalty_not_constant(config)
    check_adversarial_budget(config)
    if config.objective.name == "beta-tcvae":
        if min(config.batch_size, n_train) < 2:
            raise InputError(f"beta-tcvae estimates the total correlation across a minibatch: with batches of one "
                             f"input (batch_size {config.batch_size}, {n_train} training images) its TC term is a "
                             "constant and beta would weigh nothing; use batch_size >= 2")
        if n_train % config.batch_size == 1:
            warnings.warn(f"beta-tcvae: {n_train} training images in batches of {config.batch_size} leave a last batch "
                          "of one input each epoch, whose TC term is a constant (beta weighs nothing on it); another "
                          "batch_size or n_train avoids it", UserWarning, stacklevel=3)


def check_penalty_not_constant(config: TrainConfig) -> None:
    """InputError for a Jacobian penalty that cannot change anything: a lipschitz-mlp encoder whose
    widths never grow (D >= h_1 >= ... >= d) has weights with orthonormal rows times L^(1/k) and
    gradient-norm-preserving GroupSort activations, so J J^T = L^2 I and ||J||_F^2 = d L^2 for every
    input and every weight (the whitened penalty, ||diag(1/sigma) J||_F^2, still varies)."""
    m, o = config.model, config.objective
    if m.arch != "lipschitz-mlp" or not o.jacobian > 0 or o.jacobian_whitened:
        return
    widths = [math.prod(m.input_shape), *m.hidden, m.latent_dim]
    if all(b <= a for a, b in zip(widths, widths[1:])):
        raise InputError(
            f"the Jacobian penalty is a constant on this lipschitz-mlp (encoder widths {' -> '.join(map(str, widths))} "
            f"never grow, so ||J||_F^2 = d L^2 = {m.latent_dim * m.lipschitz ** 2:.4g} for every input and weight): "
            "it would change nothing; use the whitened penalty (jacobian_whitened, --jacobian-whitened), or a hidden "
            "width above the input's")


def check_adversarial_budget(config: TrainConfig) -> None:
    """InputError for an adversarial-training budget that reaches every image: at least the pixel
    box's diameter in its norm (sqrt(D) in L2, 1 in L-inf), the attack is no longer a perturbation."""
    eps = config.adversarial_eps
    if not eps > 0:
        return
    diameter = 1.0 if config.adversarial_norm == "linf" else math.sqrt(math.prod(config.model.input_shape))
    if eps >= diameter:
        raise InputError(f"adversarial_eps (--adversarial-eps) {eps:g} is at least the pixel box's diameter in {config.adversarial_norm} "
                         f"({diameter:.4g}): the attack could replace every image by any other; give a budget below it")


def _epoch_generator(seed: int, epoch: int, salt: int) -> torch.Generator:
    """A CPU generator (robvae.rng moves its draws), so a seed trains on the same noise on any device."""
    g = torch.Generator()
    g.manual_seed((seed * 1_000_003 + epoch * 7919 + salt) % (2**63))
    return g


def evaluate_elbo(model: VAE, data: ImageDataset, batch_size: int = 512, seed: int = 0) -> float:
    """Mean ELBO (analytic KL, one reparameterised draw, fixed seed) in nats per image."""
    device = next(model.parameters()).device
    g = _epoch_generator(seed, 0, 99)
    total = 0.0
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        for i in range(0, len(data), batch_size):
            x = data.images[i : i + batch_size].to(device)
            out = compute_objective(model, x, ObjectiveConfig("elbo"), len(data), generator=g)
            total += float(out["elbo"]) * x.shape[0]
    model.train(was_training)
    return total / len(data)


def batch_objective(
    model: torch.nn.Module, x: torch.Tensor, config: TrainConfig, dataset_size: int,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """The training objective of one batch (see :func:`robvae.objectives.compute_objective`).

    With ``config.adversarial_eps > 0`` the inputs are first perturbed by the maximum-damage attack
    (budget adversarial_eps, adversarial_steps steps, one restart, one eta draw per step, drawn from
    ``generator``); the objective then encodes x + delta and scores the clean x.
    """
    if config.adversarial_eps > 0:
        attack = MaxDamageAttack(model, float(config.adversarial_eps), norm=config.adversarial_norm,
                                 steps=config.adversarial_steps, restarts=1, eta_samples=1, generator=generator)
        delta = attack(x).detach()
        return compute_objective(model, x + delta, config.objective, dataset_size, generator=generator, target=x)
    return compute_objective(model, x, config.objective, dataset_size, generator=generator)


def _optimizer_state(opt: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    flat: dict[str, torch.Tensor] = {}
    for idx, st in opt.state_dict()["state"].items():
        for k, v in st.items():
            flat[f"optim.{idx}.{k}"] = v if torch.is_tensor(v) else torch.tensor(v)
    return flat


def _load_optimizer_state(opt: torch.optim.Optimizer, flat: dict[str, torch.Tensor], path: Path) -> None:
    """Adam's state from a checkpoint, checked: one entry (step, exp_avg, exp_avg_sq) per trained
    parameter, moments of the parameter's shape and dtype, all finite. Anything else is a
    CheckpointError naming the file (a wrong shape failed inside Adam's step with a traceback; a
    missing state continued from a fresh Adam, no longer the uninterrupted run)."""
    sd = opt.state_dict()
    params = [p for group in opt.param_groups for p in group["params"]]
    bad = f"checkpoint {path} holds a corrupt optimizer state"
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, v in flat.items():
        parts = key.split(".", 2)
        if len(parts) != 3 or not parts[1].isdigit() or int(parts[1]) >= len(params):
            raise CheckpointError(f"{bad} (entry {key!r}); restore it or start a new folder")
        state.setdefault(int(parts[1]), {})[parts[2]] = v
    for i, p in enumerate(params):
        st = state.get(i)
        if st is None or set(st) != {"step", "exp_avg", "exp_avg_sq"}:
            raise CheckpointError(f"{bad} (parameter {i}: {sorted(st or {}) or 'no entries'}); restore it or start "
                                  "a new folder")
        for k in ("exp_avg", "exp_avg_sq"):
            if st[k].shape != p.shape or st[k].dtype != p.dtype or not bool(torch.isfinite(st[k]).all()):
                raise CheckpointError(f"{bad} (parameter {i} {k}: {tuple(st[k].shape)} {st[k].dtype}, the parameter "
                                      f"{tuple(p.shape)} {p.dtype}, or not finite); restore it or start a new folder")
        if st["step"].numel() != 1 or not bool(torch.isfinite(st["step"]).all()) or float(st["step"]) < 1:
            raise CheckpointError(f"{bad} (parameter {i} step {st['step'].tolist()}); restore it or start a new folder")
    sd["state"] = state
    opt.load_state_dict(sd)


def _checkpoint_epoch(meta: dict[str, str], config: TrainConfig, path: Path) -> int:
    """The epochs a checkpoint holds, checked: its metadata names the config it was trained under,
    which must be ``config`` but for the number of epochs (and where the data and the model live),
    and an epoch in 1..that config's epochs. Anything else is a CheckpointError naming the file:
    an edited or deleted config.json let a checkpoint of another config be continued (or renamed as
    one) without a word."""
    if "config" not in meta or "epoch" not in meta:
        raise CheckpointError(f"checkpoint {path} carries no training config or epoch (written by another tool?); "
                              "restore it or start a new folder")
    try:
        stored = TrainConfig.from_dict(json.loads(meta["config"]))
    except (TypeError, ValueError):
        raise CheckpointError(f"checkpoint {path} holds a corrupt training config in its metadata") from None
    diff = _stored_differences(stored.to_dict(), config, ("epochs",))
    if diff:
        k, was, asked = diff[0]
        raise CheckpointError(f"checkpoint {path} does not match this training's config (config.json edited or "
                              f"replaced?): it was trained with {k} = {was!r}, this training asks for {asked!r}"
                              + _more_fields(diff))
    epoch = meta["epoch"]
    if not (epoch.isdigit() and 1 <= int(epoch) <= stored.epochs):
        raise CheckpointError(f"checkpoint {path} holds epoch {epoch!r}, not one of 1..{stored.epochs}; restore it "
                              "or start a new folder")
    return int(epoch)



def _differences(a: dict, b: dict, prefix: str = "") -> list[str]:
    """The keys whose values differ, sorted; nested configs by their dotted field (model.latent_dim)."""
    out = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += _differences(va, vb, f"{prefix}{k}.")
        elif va != vb:
            out.append(f"{prefix}{k}")
    return out

def check_same_config(run_dir: Path, config: TrainConfig) -> bool:
    """Refuse a run folder trained under another config; True when ``config`` only asks for more
    epochs than the folder's (the run is then continued: epoch e's shuffling and noise depend only
    on the seed and e, so the weights equal those of a run trained that long from the start)."""
    saved = TrainConfig.from_dict(read_json(run_dir / CONFIG_FILE, "config"))
    a, b = saved.training_fields(), config.training_fields()
    more = config.epochs > saved.epochs
    a.pop("epochs")
    b.pop("epochs")
    if a != b or config.epochs < saved.epochs:
        diff = _differences(a, b)
        if config.epochs < saved.epochs:
            diff.append(f"epochs ({config.epochs} < the run's {saved.epochs}; more epochs continue a run)")
        hint = "choose a new output folder"
        if diff == ["data_dir"]:  # the data moved: the epochs to come must see the run's own data
            hint = (f"the run was trained from {a['data_dir']}; to continue it, make that folder hold its data "
                    "again (or a link to it), or choose a new output folder")
        raise CheckpointError(f"run folder {run_dir} holds a different config (differs in: {', '.join(diff)}); {hint}")
    return more


def train(
    config: TrainConfig,
    run_dir: str | Path,
    *,
    progress: bool = True,
    callback: Callable[[int, dict[str, float]], None] | None = None,
    data: tuple[ImageDataset, ImageDataset] | None = None,
) -> Run:
    """Train a VAE into ``run_dir``; resumes from its checkpoint if the folder holds the same config.

    ``callback(epoch, metrics)`` runs after each finished epoch (after the checkpoint is saved).
    ``data`` = (train, test) overrides loading ``config.dataset``. Returns the loaded :class:`Run`.
    """
    run_dir = Path(run_dir)
    if config.data_dir is not None:  # stored absolute: the run folder is usable from any folder
        config = dataclasses.replace(config, data_dir=str(Path(config.data_dir).expanduser().resolve()))
    device = torch.device(config.device)
    if data is None:
        data = tuple(load_dataset(config.dataset, split, config.data_dir) for split in ("train", "test"))
    train_set, test_set = data
    train_set = train_set.subset(config.n_train)
    if tuple(config.model.input_shape) != tuple(train_set.shape):
        config.model = ModelConfig.from_dict({**config.model.to_dict(), "input_shape": tuple(train_set.shape)})
    if not (run_dir / CONFIG_FILE).exists():  # a new run (one trained before these checks can still be extended)
        check_new_run(config, len(train_set))

    extend = (run_dir / CONFIG_FILE).exists() and check_same_config(run_dir, config)
    remove_stale_temporaries(run_dir, (CONFIG_FILE, CHECKPOINT_FILE, METRICS_FILE, WEIGHTS_FILE))  # a killed run's

    torch.manual_seed(config.seed)
    model = VAE(config.model).to(device)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=config.lr)
    metrics: list[dict[str, Any]] = []
    start_epoch = 0
    # everything read back is checked before anything in the folder changes: a corrupt checkpoint
    # or metrics file must not cost the finished run its config or final weights
    if (run_dir / CHECKPOINT_FILE).exists():
        if not (run_dir / CONFIG_FILE).exists():
            raise CheckpointError(f"run folder {run_dir} holds a checkpoint but no {CONFIG_FILE}; restore it or start a "
                                  "new folder")
        tensors, meta = load_tensors(run_dir / CHECKPOINT_FILE, device)
        start_epoch = _checkpoint_epoch(meta, config, run_dir / CHECKPOINT_FILE)
        _load_state(model, {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}, run_dir / CHECKPOINT_FILE)
        _load_optimizer_state(opt, {k: v for k, v in tensors.items() if k.startswith("optim.")},
                              run_dir / CHECKPOINT_FILE)
        metrics = _read_metrics(run_dir / METRICS_FILE, start_epoch)
    if extend:
        # more epochs than a finished run: continue from its checkpoint; the final weights of the
        # shorter run (equal to the checkpoint's) make way for the longer run's
        (run_dir / WEIGHTS_FILE).unlink(missing_ok=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(run_dir / CONFIG_FILE, config.to_dict())

    n = len(train_set)
    trivial = _trivial_nelbo(model, test_set)
    bar = tqdm(range(start_epoch, config.epochs), desc=f"train {config.dataset}", unit="epoch",
               disable=not progress, initial=start_epoch, total=config.epochs)
    for epoch in bar:
        t0 = time.perf_counter()
        model.train()
        g_shuffle = _epoch_generator(config.seed, epoch, 1)
        g_noise = _epoch_generator(config.seed, epoch, 2)
        perm = torch.randperm(n, generator=g_shuffle)
        tot_loss = tot_elbo = 0.0
        for i in range(0, n, config.batch_size):
            x = train_set.images[perm[i : i + config.batch_size]].to(device, non_blocking=True)
            out = batch_objective(model, x, config, n, generator=g_noise)
            opt.zero_grad(set_to_none=True)
            out["loss"].backward()
            opt.step()
            tot_loss += float(out["loss"].detach()) * x.shape[0]
            tot_elbo += float(out["elbo"].detach()) * x.shape[0]
        row = {
            "epoch": epoch + 1,
            "train_loss": tot_loss / n,
            "train_elbo": tot_elbo / n,
            "test_elbo": evaluate_elbo(model, test_set, seed=config.seed),
            "seconds": time.perf_counter() - t0,
        }
        if not all(math.isfinite(row[k]) for k in ("train_loss", "test_elbo")):
            raise FloatingPointError(f"training diverged at epoch {epoch + 1} (loss {row['train_loss']}); lower the learning rate")
        if -row["test_elbo"] > trivial + DIVERGED * (abs(trivial) + test_set.images[0].numel()):
            raise FloatingPointError(
                f"training diverged at epoch {epoch + 1}: held-out negative ELBO {-row['test_elbo']:.4g} nats, over "
                f"{DIVERGED:g} times that of predicting 0.5 for every pixel ({trivial:.4g}); lower the learning rate")
        metrics.append(row)
        ckpt = {f"model.{k}": v for k, v in model.state_dict().items()}
        ckpt.update(_optimizer_state(opt))
        # metrics first: a run killed between the two writes has one row more than its checkpoint's
        # epochs, which a resume drops (and recomputes); the other order lost the run (a row short)
        write_csv(run_dir / METRICS_FILE, metrics, fieldnames=list(METRIC_COLUMNS))
        save_tensors(run_dir / CHECKPOINT_FILE, ckpt, {"epoch": str(epoch + 1), "config": json.dumps(config.to_dict())})
        bar.set_postfix(loss=f"{row['train_loss']:.2f}", test_nelbo=f"{-row['test_elbo']:.2f}")
        if callback is not None:
            callback(epoch + 1, {k: float(v) for k, v in row.items()})

    if metrics:  # the checked rows only (a finished run's file may have gained others since)
        write_csv(run_dir / METRICS_FILE, metrics, fieldnames=list(METRIC_COLUMNS))
    save_tensors(run_dir / WEIGHTS_FILE, model.state_dict(), {"config": json.dumps(config.to_dict())})
    return load(run_dir, device=config.device)


#: A training whose held-out negative ELBO exceeds that of the trivial model (every pixel 0.5, no KL)
#: by more than DIVERGED x (|its value| + D) has diverged (a learning rate of 10 on digits reached
#: 1.5e8 nats against 44 and exited 0: only a non-finite number was caught).
DIVERGED = 100.0


def _trivial_nelbo(model: VAE, data: ImageDataset, n: int = 512) -> float:
    """The negative log-likelihood, per image, of predicting 0.5 for every pixel (decoder output 0)
    under ``model``'s likelihood, on the first ``n`` images of ``data``: the divergence yardstick."""
    x = data.images[:n].to(next(model.parameters()).device)
    with torch.inference_mode():
        return float(-model.likelihood.log_prob(x, torch.zeros_like(x)).double().mean())


#: The columns of metrics.csv, in order.
METRIC_COLUMNS = ("epoch", "train_loss", "train_elbo", "test_elbo", "seconds")


def _read_metrics(path: Path, epochs: int) -> list[dict[str, Any]]:
    """The first ``epochs`` rows of a run's metrics file, checked: rows 1..epochs in order, every
    cell a finite number. A truncated, garbled or short file raises CheckpointError naming it (its
    numbers would otherwise be reported as the run's, or the resumed file would skip epochs)."""
    if epochs == 0:
        return []
    hint = f"metrics file {path}"
    if not path.is_file():
        raise CheckpointError(f"{hint} is missing but the checkpoint is at epoch {epochs}; restore it or start a new folder")
    rows = read_csv(path)[:epochs]
    try:
        out = [{k: (int(r[k]) if k == "epoch" else float(r[k])) for k in METRIC_COLUMNS} for r in rows]
    except (KeyError, TypeError, ValueError):
        out = None
    if out is None or [r["epoch"] for r in out] != list(range(1, epochs + 1)) or not all(
            math.isfinite(v) for r in out for v in r.values()):
        raise CheckpointError(f"{hint} is corrupt or does not match the checkpoint (epochs 1..{epochs} expected); "
                              "restore it or start a new folder")
    return out


def _load_state(model: torch.nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"weights file {path} does not match the config's architecture "
            f"(missing {missing[:3]}{'...' if len(missing) > 3 else ''}, unexpected {unexpected[:3]}{'...' if len(unexpected) > 3 else ''})"
        )
    for k, v in state.items():
        if v.shape != expected[k].shape:
            raise CheckpointError(
                f"weights file {path} does not match the config's architecture ({k}: {tuple(v.shape)} vs {tuple(expected[k].shape)})"
            )
        if v.dtype != expected[k].dtype:  # an int32 tensor was accepted and truncated into the weights
            raise CheckpointError(f"weights file {path} does not match the config's architecture ({k}: {v.dtype} vs "
                                  f"{expected[k].dtype})")
        if v.is_floating_point() and not torch.isfinite(v).all():
            raise CheckpointError(f"weights file {path} holds NaN or inf values ({k}: {int((~torch.isfinite(v)).sum())} "
                                  "of them); the model is broken, retrain it")
    model.load_state_dict(state)


#: Fields of the config that may differ between config.json and the config stored in the weights
#: file: where the data and the model live, not what was trained.
_UNCHECKED_FIELDS = ("device", "data_dir")


def _check_weights_config(path: Path, meta: dict[str, str], config: TrainConfig) -> None:
    """The weights file carries the config it was trained under (safetensors metadata "config"):
    refuse a config.json that differs from it in any field (naming the field), and a weights file
    without it (its metadata stripped, or a config holding no model such as {} or null: config.json
    could then say anything, e.g. another tau). Fields a stored config lacks (written before robvae
    had them) are compared at their defaults, as they were trained."""
    try:
        stored = json.loads(meta["config"]) if "config" in meta else None
    except json.JSONDecodeError:
        raise CheckpointError(f"weights file {path} holds a corrupt training config in its metadata") from None
    if not (isinstance(stored, dict) and isinstance(stored.get("model"), dict) and stored["model"]):
        raise CheckpointError(f"weights file {path} carries no training config (written by another tool, or its "
                              "metadata stripped or replaced); retrain the run")
    try:
        stored = TrainConfig.from_dict(stored).to_dict()
    except (TypeError, ValueError):
        raise CheckpointError(f"weights file {path} holds a corrupt training config in its metadata") from None
    diff = _stored_differences(stored, config)
    if diff:
        k, was, says = diff[0]
        raise CheckpointError(f"weights file {path} does not match its config.json (edited by hand?): the weights were "
                              f"trained with {k} = {was!r}, config.json says {says!r}" + _more_fields(diff))


def _stored_differences(stored: Any, config: TrainConfig, also: tuple[str, ...] = ()) -> list[tuple[str, Any, Any]]:
    """(field, stored value, ``config``'s value) for every dotted field of the config a file stored
    that ``config`` does not share, sorted; :data:`_UNCHECKED_FIELDS` and ``also`` aside."""
    def flat(d: Any, prefix: str = "") -> dict[str, Any]:
        if isinstance(d, dict):
            return {k: v for key, val in d.items() for k, v in flat(val, f"{prefix}{key}.").items()}
        return {prefix[:-1]: d}

    skip = (*_UNCHECKED_FIELDS, *also)
    a = {k: v for k, v in flat(stored).items() if k not in skip}
    b = flat(config.to_dict())
    return [(k, a[k], b.get(k)) for k in sorted(a) if a[k] != b.get(k)]


def _more_fields(diff: list) -> str:
    return f" (and {len(diff) - 1} more fields differ: {', '.join(k for k, _, _ in diff[1:])})" if len(diff) > 1 else ""


def load(run_dir: str | Path, device: str | torch.device = "cpu", *, checkpoint: bool = False) -> Run:
    """Load a trained run folder: its config, the VAE (eval mode) and metrics.

    With ``checkpoint=True`` the last epoch's checkpoint of an unfinished run is loaded instead
    of the final weights. Missing, corrupt or mismatched files raise CheckpointError naming them.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"run folder {run_dir} does not exist")
    if not (run_dir / CONFIG_FILE).exists():  # e.g. `robvae demo`'s output folder, whose run is demo/run
        inner = sorted(p.parent for p in run_dir.glob(f"*/{CONFIG_FILE}"))
        if inner:
            raise CheckpointError(f"{run_dir} is not a run folder (no {CONFIG_FILE}); the run folder{'s' if len(inner) > 1 else ''} "
                                  f"inside: {', '.join(map(str, inner[:3]))}{' ...' if len(inner) > 3 else ''}")
    try:
        config = TrainConfig.from_dict(read_json(run_dir / CONFIG_FILE, "config"))
    except (TypeError, ValueError) as e:
        if isinstance(e, CheckpointError):
            raise
        raise CheckpointError(f"config {run_dir / CONFIG_FILE} is invalid: {e}") from None
    model = VAE(config.model)
    path = run_dir / (CHECKPOINT_FILE if checkpoint else WEIGHTS_FILE)
    if not checkpoint and not path.exists() and (run_dir / CHECKPOINT_FILE).exists():
        raise CheckpointError(f"weights file {path} is missing: training has not finished (rerun train to resume)")
    state, meta = load_tensors(path, device)
    _check_weights_config(path, meta, config)
    if checkpoint:  # the model's tensors, without the optimiser's
        state = {k[6:]: v for k, v in state.items() if k.startswith("model.")}
    model = model.to(device)
    _load_state(model, state, path)
    model.eval()
    metrics = read_csv(run_dir / METRICS_FILE) if (run_dir / METRICS_FILE).exists() else []
    config.device = str(device)
    return Run(run_dir, config, model, metrics)
