"""The optimizer from a config: AdamW with linear warm-up, cosine decay and global-norm clipping."""

import math

import optax


def _require(cond: bool, name: str, expected: str, value) -> None:
    if not cond:
        raise ValueError(f"optim.{name} must be {expected}, got {value!r}")


def make_schedule(*, learning_rate: float, warmup_steps: int, total_steps: int,
                  final_lr_fraction: float = 0.1) -> optax.Schedule:
    """Linear warm-up from 0 to ``learning_rate`` then cosine decay to ``final_lr_fraction`` of it."""
    _require(isinstance(learning_rate, (int, float)) and math.isfinite(learning_rate)
             and learning_rate >= 0, "learning_rate", "a non-negative float", learning_rate)
    _require(isinstance(total_steps, int) and total_steps >= 1, "total_steps",
             "a positive int (the training steps)", total_steps)
    _require(isinstance(warmup_steps, int) and 0 <= warmup_steps <= total_steps, "warmup_steps",
             f"an int in [0, total_steps={total_steps}]", warmup_steps)
    _require(0.0 <= final_lr_fraction <= 1.0, "final_lr_fraction", "a float in [0, 1]",
             final_lr_fraction)
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=learning_rate, warmup_steps=warmup_steps,
        decay_steps=total_steps, end_value=learning_rate * final_lr_fraction)


def make_optimizer(optim_cfg, *, total_steps: int) -> optax.GradientTransformation:
    """``optax.chain(clip_by_global_norm, adamw(schedule))`` from an ``optim`` config block.

    Expected fields: ``learning_rate``, ``warmup_steps``, ``final_lr_fraction``, ``b1``,
    ``b2``, ``eps``, ``weight_decay``, ``grad_clip_norm`` (0 disables clipping).
    """
    schedule = make_schedule(
        learning_rate=optim_cfg.learning_rate, warmup_steps=optim_cfg.warmup_steps,
        total_steps=total_steps, final_lr_fraction=optim_cfg.final_lr_fraction)
    _require(0.0 <= optim_cfg.b1 < 1.0, "b1", "a float in [0, 1)", optim_cfg.b1)
    _require(0.0 <= optim_cfg.b2 < 1.0, "b2", "a float in [0, 1)", optim_cfg.b2)
    _require(optim_cfg.eps > 0, "eps", "a positive float", optim_cfg.eps)
    _require(optim_cfg.weight_decay >= 0, "weight_decay", "a non-negative float",
             optim_cfg.weight_decay)
    _require(optim_cfg.grad_clip_norm >= 0, "grad_clip_norm", "a non-negative float",
             optim_cfg.grad_clip_norm)
    adamw = optax.adamw(schedule, b1=optim_cfg.b1, b2=optim_cfg.b2, eps=optim_cfg.eps,
                        weight_decay=optim_cfg.weight_decay)
    if optim_cfg.grad_clip_norm:
        return optax.chain(optax.clip_by_global_norm(optim_cfg.grad_clip_norm), adamw)
    return adamw
