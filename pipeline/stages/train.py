"""The paper's training recipes, with atomic checkpoints and exact resume.

    from pipeline.config import load_config
    from pipeline.stages.train import TrainConfig, train
    train(load_config("configs/train/digits-vgg8.yaml", TrainConfig), "runs/demo-vgg8")

A run folder holds ``config.yaml`` (resolved), ``noisy_indices.npy``, ``metrics.csv`` (one row
per epoch: train/val/test loss and error, learning rate, the stopping quantity) and
``checkpoints/``: ``init.pt`` (the initialisation), ``epoch-NNNN.pt`` (periodic), ``final.pt``
and ``LAST``, the name of the newest complete checkpoint, written last. A killed run resumes
from ``LAST`` and, because every epoch seeds its data order and augmentation from
``(seed, epoch)``, reaches the same weights as an uninterrupted run (deterministic CPU).

All randomness comes from generators seeded by the config: the initialisation from ``seed``
(drawn inside ``torch.random.fork_rng``, so the caller's CPU state is restored), data order and
augmentation from ``torch.Generator`` objects seeded by ``(seed, epoch)``, label noise and the
validation split from numpy generators (:mod:`pipeline.inputs.data`). ``train`` leaves torch's, numpy's
and Python's global random state as it found them: a notebook keeps its own.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from pipeline.config import ConfigError, identity_dict, save_config, to_dict, write_atomic
from pipeline.inputs.data import DataConfig, load
from pipeline.inputs.models import build

__all__ = ["ModelConfig", "TrainConfig", "RECIPES", "train", "load_checkpoint", "build_model"]


@dataclass(frozen=True)
class ModelConfig:
    name: str = "vgg8"
    k: int = 16  # ResNet18 base width (the paper's main ResNet18; 1..64 for double descent)
    widths: tuple[int, ...] = (6, 16, 64)  # VGG8 conv widths (paper); the 8x8 digits take (6, 16)
    pool: str = "avg"  # VGG8 pooling: the paper's average pooling keeps the function simply piecewise affine

    def __post_init__(self):
        from pipeline.inputs.models import MODELS

        if self.name.lower() not in MODELS:
            import difflib

            close = difflib.get_close_matches(self.name.lower(), MODELS, n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise ValueError(f"unknown model {self.name!r}.{hint} Known models: {', '.join(sorted(MODELS))}")
        if self.pool not in ("avg", "max"):
            raise ValueError(f"pool must be avg or max; got {self.pool!r}")
        if self.k < 1:
            raise ValueError(f"k (the ResNet18 base width) must be >= 1, got {self.k}")
        if not self.widths or any(isinstance(w, bool) or not isinstance(w, int) or w < 1 for w in self.widths):
            raise ValueError(f"widths must be a non-empty list of integers >= 1, got {list(self.widths)}")


@dataclass(frozen=True)
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    recipe: str = "vanilla"  # vanilla | augment | noisy | double_descent: documentation and a check
    seed: int = 0  # initialisation and data order
    optimizer: str = "sgd"  # sgd | adam
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 128  # the paper's
    schedule: str = "step"  # step (x gamma every step_epochs) | exponential (x gamma every epoch) | constant
    step_epochs: int = 50
    gamma: float = 0.1
    stop: str = "loss"  # loss: train cross-entropy < loss_threshold | fit: 100% train accuracy | epochs
    loss_threshold: float = 0.01
    max_epochs: int = 200  # a budget for every criterion
    checkpoint_every: int = 10

    def __post_init__(self):
        choices = {"recipe": RECIPES, "optimizer": ("sgd", "adam"), "schedule": ("step", "exponential", "constant"),
                   "stop": ("loss", "fit", "epochs")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {getattr(self, name)!r}")
        for name in ("max_epochs", "batch_size", "checkpoint_every", "step_epochs"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        # `not x > 0` is also true of NaN (`.nan` in YAML)
        for name in ("lr", "gamma", "loss_threshold"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {getattr(self, name)}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"weight_decay must be a finite number >= 0, got {self.weight_decay}")
        if self.recipe == "noisy" and self.stop != "fit":
            raise ValueError("the noisy-label recipe trains to 100% training accuracy: set stop: fit")
        if self.recipe == "augment" and not self.data.augment:
            raise ValueError("the augment recipe needs data.augment: true")


RECIPES = ("vanilla", "augment", "noisy", "double_descent")


def build_model(cfg: TrainConfig, num_classes: int, input_shape) -> torch.nn.Module:
    c, h, _ = input_shape
    m = cfg.model
    if m.name.lower() == "resnet18":
        return build("resnet18", num_classes=num_classes, in_channels=c, k=m.k, input_size=h)
    return build(m.name, num_classes=num_classes, in_channels=c, input_size=h, widths=tuple(m.widths), pool=m.pool)


def _atomic_save(obj, path: Path):
    import io

    buf = io.BytesIO()
    torch.save(obj, buf)
    write_atomic(path, buf.getbuffer())


def load_checkpoint(run_dir, which: str = "final", map_location="cpu"):
    """Load ``init``, ``final``, ``last`` or ``epoch-NNNN`` of a run: (model, checkpoint dict)."""
    ckpt_dir = Path(run_dir) / "checkpoints"
    name = (ckpt_dir / "LAST").read_text().strip() if which == "last" else f"{which}.pt"
    path = ckpt_dir / name
    if not path.is_file():
        have = sorted(p.stem for p in ckpt_dir.glob("*.pt")) if ckpt_dir.is_dir() else []
        which_exist = f"the run has {', '.join(have)}" if have else f"{ckpt_dir} holds no checkpoint"
        raise FileNotFoundError(f"no checkpoint {path}: {which_exist} (a run still training shows its progress in "
                                f"{Path(run_dir) / 'metrics.csv'})")
    ckpt = torch.load(path, map_location=map_location, weights_only=False)
    from pipeline.config import from_dict

    cfg = from_dict(TrainConfig, ckpt["config"])
    model = build_model(cfg, ckpt["num_classes"], tuple(ckpt["input_shape"]))
    model.load_state_dict(ckpt["model"])
    return model.eval(), ckpt


def _evaluate(model, dataset, device, batch: int = 1024):
    model.eval()
    loss, correct, n = 0.0, 0, 0
    # A generator of its own: without one, iterating a DataLoader draws its base seed from the global RNG.
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch, shuffle=False, generator=torch.Generator())
    with torch.no_grad():
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            out = model(x)
            loss += F.cross_entropy(out, y, reduction="sum").item()
            correct += (out.argmax(1) == y).sum().item()
            n += y.numel()
    return loss / n, 1.0 - correct / n


def _optimizer(cfg: TrainConfig, params):
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def _scheduler(cfg: TrainConfig, opt):
    if cfg.schedule == "step":
        return torch.optim.lr_scheduler.StepLR(opt, step_size=cfg.step_epochs, gamma=cfg.gamma)
    if cfg.schedule == "exponential":
        return torch.optim.lr_scheduler.ExponentialLR(opt, gamma=cfg.gamma)
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)


def _cpu(state: dict) -> dict:
    return {k: v.detach().cpu() for k, v in state.items()}


def _epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch) % (2**63)


def train(cfg: TrainConfig, run_dir, *, progress: bool = False, stop_after_epochs: int | None = None,
          device=None) -> pd.DataFrame:
    """Train (or resume) the run in ``run_dir``; returns the per-epoch metrics table.

    ``stop_after_epochs`` ends this call after that many epochs *of this call* (as a preemption
    would), leaving a resumable run. ``device`` defaults to CUDA when present (bit-exact resume
    is guaranteed on CPU only: GPU kernels need not be deterministic). Checkpoints are saved
    from CPU tensors either way.
    """
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    run_dir = Path(run_dir)
    ckpt_dir = run_dir / "checkpoints"
    saved = run_dir / "config.yaml"
    if saved.exists():
        from pipeline.config import load_config

        if identity_dict(load_config(saved, TrainConfig)) != identity_dict(cfg):
            raise ConfigError(f"{run_dir} holds a run with another config ({saved}); use a new folder "
                              "(runs are named by the hash of their config) or delete it")
    data = load(cfg.data)  # before anything is written: a missing dataset leaves no run folder behind
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    if not saved.exists():
        save_config(cfg, saved)
    np.save(run_dir / "noisy_indices.npy", data.noisy_indices)
    # nn.Module init draws from the global CPU generator: seed it for construction only. Seeding
    # the default CPU generator (not torch.manual_seed, which also reseeds every CUDA device)
    # gives the same weights torch.manual_seed(cfg.seed) did; fork_rng restores the caller's state.
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(cfg.seed)
        model = build_model(cfg, data.num_classes, data.input_shape)
    model = model.to(device)
    opt = _optimizer(cfg, model.parameters())
    sched = _scheduler(cfg, opt)
    meta = {"num_classes": data.num_classes, "input_shape": list(data.input_shape), "config": to_dict(cfg),
            "mean": list(data.mean), "std": list(data.std)}
    rows: list[dict] = []
    start = 0
    last = ckpt_dir / "LAST"
    if last.exists():
        ckpt = torch.load(ckpt_dir / last.read_text().strip(), map_location=device, weights_only=False)
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        rows = ckpt["metrics"]
        start = ckpt["epoch"]
        if ckpt.get("finished"):
            return pd.DataFrame(rows)
    else:
        _atomic_save({**meta, "model": _cpu(model.state_dict()), "epoch": 0}, ckpt_dir / "init.pt")

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.max_epochs, initial=start, unit="epoch", desc=f"train {run_dir.name}")
    done_here = 0
    finished = False
    for epoch in range(start, cfg.max_epochs):
        # Same seed as the global RNG had for augmentation before: the draws (and so the weights)
        # are those of earlier versions. No worker processes, so a dataset generator is safe.
        train_set = copy.copy(data.train)  # shares the image tensors
        train_set.generator = torch.Generator().manual_seed(_epoch_seed(cfg.seed, epoch))
        order = torch.Generator().manual_seed(_epoch_seed(cfg.seed, epoch))
        loader = torch.utils.data.DataLoader(train_set, batch_size=cfg.batch_size, shuffle=True, generator=order)
        model.train()
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            opt.step()
        lr = opt.param_groups[0]["lr"]
        sched.step()
        train_loss, train_err = _evaluate(model, data.train_eval, device)
        val_loss, val_err = _evaluate(model, data.val, device) if len(data.val) else (math.nan, math.nan)
        test_loss, test_err = _evaluate(model, data.test, device)
        rows.append({"epoch": epoch + 1, "lr": lr, "train_loss": train_loss, "train_error": train_err,
                     "val_loss": val_loss, "val_error": val_err, "test_loss": test_loss, "test_error": test_err})
        if cfg.stop == "loss":
            finished = train_loss < cfg.loss_threshold
        elif cfg.stop == "fit":
            finished = train_err == 0.0
        finished = finished or epoch + 1 == cfg.max_epochs
        rows[-1]["stop_criterion"] = {"loss": train_loss, "fit": train_err, "epochs": epoch + 1}[cfg.stop]
        done_here += 1
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{train_loss:.3g}", err=f"{train_err:.3f}", test_err=f"{test_err:.3f}")
        write_atomic(run_dir / "metrics.csv", pd.DataFrame(rows).to_csv(index=False))
        periodic = (epoch + 1) % cfg.checkpoint_every == 0
        preempted = stop_after_epochs is not None and done_here >= stop_after_epochs
        if finished or periodic or preempted:
            state = {**meta, "model": _cpu(model.state_dict()), "optimizer": opt.state_dict(),
                     "scheduler": sched.state_dict(), "epoch": epoch + 1, "metrics": rows, "finished": finished}
            name = "final.pt" if finished else f"epoch-{epoch + 1:04d}.pt"
            _atomic_save(state, ckpt_dir / name)
            write_atomic(last, name)  # the marker goes last: LAST always names a complete file
        if finished or preempted:
            break
    if bar is not None:
        bar.close()
    return pd.DataFrame(rows)
