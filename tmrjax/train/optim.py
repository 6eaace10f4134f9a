"""CAME optimiser and the warm-up + cosine-with-restarts schedule of hu2024 Sec. 4.2.

CAME: Luo et al., "CAME: Confidence-guided Adaptive Memory Efficient Optimization",
ACL 2023, Algorithm 1, checked against the authors' reference implementation
(github.com/yangluo7/CAME, ``came_pytorch/CAME.py``, the package hu2024 trained with).
Where the two differ, or the paper is silent, this module follows the reference:

* Factored statistics. Algorithm 1 keeps row/column *sums* and approximates
  ``v = r c^T / (1^T r)``; the reference keeps row/column *means* and uses
  ``(r / mean(r)) c^T``. The two give the same ``v`` (the EMAs are linear and start at
  zero); we keep means, as the reference does.
* Which axes are factored. Every array with ndim >= 2 is factored over its last two
  axes, the leading axes being a batch of independent matrices (the reference's rule,
  also Adafactor's). For Flax layouts that is (in, out) of a Dense kernel and, for an
  HWIO conv kernel, the (I, O) matrix of each spatial tap, with statistics r of shape
  (H, W, I) and c of shape (H, W, O). No reshape to (H*W*I, O) is done. This is *not*
  what came_pytorch does to the same layer in PyTorch's OIHW layout, where the last two
  axes are (H, W): there a 1x1 conv is effectively unfactored and a 3x3 conv is factored
  per (O, I) pair over its 3x3 taps. Converted PyTorch runs therefore do not match ours
  bit for bit on conv kernels; Dense kernels (torch (out, in) vs ours (in, out)) give
  the same v up to the transpose.
* Vectors and scalars (ndim < 2). Algorithm 1 only states the matrix case. The
  reference keeps an unfactored ``v = EMA_b2(g^2 + eps1)``, clips and averages the
  update as for matrices, and returns ``m`` *without* the confidence step (no
  instability statistics at all). We do the same, so biases and BatchNorm scales take
  steps of size ~lr * m, not lr * m / sqrt(S).
* No bias correction and no relative step size, in both. The reference also tracks
  RMS(param) and a step counter (Adafactor leftovers it never reads); we drop them.
* Weight decay is absent from Algorithm 1; the reference applies decoupled decay
  ``p -= lr * weight_decay * p`` (AdamW-style, its docstring calls it an L2 penalty)
  to every parameter. We apply the same decay, optionally restricted by ``mask``.
* Defaults (b1, b2, b3) = (0.9, 0.999, 0.9999), (eps1, eps2) = (1e-30, 1e-16),
  clip threshold d = 1.0 are those of the paper's experiments and of the reference.

Gradients of any float dtype (bf16 included) are upcast; all state is float32 and the
returned updates have the gradients' dtype. RMS clipping is over the whole array, so
each device must see whole parameters (data-parallel pmap/shard_map, gradients
averaged before ``update``), which is hu2024's setup.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax


class ScaleByCameState(NamedTuple):
    """CAME statistics, each field a pytree shaped like the params.

    Fields that a leaf does not use (``v`` for matrices; ``v_row``, ``v_col``,
    ``s_row``, ``s_col`` for vectors and scalars) hold a float32 zero of shape (1,).
    """

    mu: optax.Updates  # m: EMA (b1) of the clipped update u_hat
    v_row: optax.Updates  # r: EMA (b2) of row means of g^2 + eps1, shape (..., n)
    v_col: optax.Updates  # c: EMA (b2) of column means of g^2 + eps1, shape (..., m)
    v: optax.Updates  # unfactored EMA (b2) of g^2 + eps1, vectors/scalars only
    s_row: optax.Updates  # R: EMA (b3) of row means of the instability U + eps2
    s_col: optax.Updates  # C: EMA (b3) of column means of U + eps2


def _is_factored(shape: tuple[int, ...]) -> bool:
    return len(shape) >= 2


def _unused() -> jax.Array:
    return jnp.zeros((1,), jnp.float32)


def _ema(old: jax.Array, new: jax.Array, decay: float) -> jax.Array:
    return decay * old + (1.0 - decay) * new


def _factored_rsqrt(row: jax.Array, col: jax.Array) -> jax.Array:
    """``1 / sqrt(v_hat)`` with ``v_hat = (row / mean(row)) col^T`` (Algorithm 1, line 7)."""
    row_factor = jax.lax.rsqrt(row / jnp.mean(row, axis=-1, keepdims=True))
    return row_factor[..., :, None] * jax.lax.rsqrt(col)[..., None, :]


def _rms(x: jax.Array) -> jax.Array:
    return jnp.sqrt(jnp.mean(jnp.square(x)))


def scale_by_came(
    b1: float = 0.9,
    b2: float = 0.999,
    b3: float = 0.9999,
    eps1: float = 1e-30,
    eps2: float = 1e-16,
    clip_threshold: float = 1.0,
) -> optax.GradientTransformation:
    """CAME's confidence-scaled direction ``m / sqrt(S)`` (Luo et al. 2023, Algorithm 1).

    No learning rate and no weight decay: ``came`` chains those on. See the module
    docstring for where this follows the reference implementation over the paper.
    """
    for name, value in (("b1", b1), ("b2", b2), ("b3", b3)):
        if not 0.0 <= value < 1.0:
            raise ValueError(
                f"tmrjax.train.optim.came: {name} must be in [0, 1), got {value}"
            )
    for name, value in (
        ("eps1", eps1),
        ("eps2", eps2),
        ("clip_threshold", clip_threshold),
    ):
        if not value > 0.0:
            raise ValueError(
                f"tmrjax.train.optim.came: {name} must be > 0, got {value}"
            )

    def init_fn(params: optax.Params) -> ScaleByCameState:
        def leaf_state(p):
            shape = jnp.shape(p)
            mu = jnp.zeros(shape, jnp.float32)
            if _is_factored(shape):
                row = jnp.zeros(shape[:-1], jnp.float32)
                col = jnp.zeros(shape[:-2] + shape[-1:], jnp.float32)
                return mu, row, col, _unused(), row, col
            return (
                mu,
                _unused(),
                _unused(),
                jnp.zeros(shape, jnp.float32),
                _unused(),
                _unused(),
            )

        leaves, treedef = jax.tree.flatten(params)
        fields = zip(*(leaf_state(p) for p in leaves)) if leaves else [[]] * 6
        return ScaleByCameState(*(treedef.unflatten(list(f)) for f in fields))

    def leaf_update(g, mu, v_row, v_col, v, s_row, s_col):
        grad = jnp.asarray(g).astype(jnp.float32)
        sq = jnp.square(grad) + eps1
        factored = _is_factored(grad.shape)
        if factored:
            v_row = _ema(v_row, jnp.mean(sq, axis=-1), b2)
            v_col = _ema(v_col, jnp.mean(sq, axis=-2), b2)
            u = grad * _factored_rsqrt(v_row, v_col)
        else:
            v = _ema(v, sq, b2)
            u = grad * jax.lax.rsqrt(v)
        u = u / jnp.maximum(1.0, _rms(u) / clip_threshold)
        mu = _ema(mu, u, b1)
        if factored:
            instability = jnp.square(u - mu) + eps2
            s_row = _ema(s_row, jnp.mean(instability, axis=-1), b3)
            s_col = _ema(s_col, jnp.mean(instability, axis=-2), b3)
            direction = mu * _factored_rsqrt(s_row, s_col)
        else:
            direction = mu
        return direction.astype(jnp.asarray(g).dtype), mu, v_row, v_col, v, s_row, s_col

    def update_fn(updates, state, params=None):
        del params
        leaves, treedef = jax.tree.flatten(updates)
        state_leaves = [treedef.flatten_up_to(field) for field in state]
        outs = [leaf_update(g, *s) for g, *s in zip(leaves, *state_leaves)]
        fields = zip(*outs) if outs else [[]] * 7
        new_updates, *new_state = (treedef.unflatten(list(f)) for f in fields)
        return new_updates, ScaleByCameState(*new_state)

    return optax.GradientTransformation(init_fn, update_fn)


def decay_mask(params: optax.Params) -> Any:
    """True for leaves with ndim >= 2 (kernels), False for biases and BatchNorm scales/offsets.

    Pass as ``came(..., mask=decay_mask)`` to keep weight decay off 1-D parameters.
    """
    return jax.tree.map(lambda p: jnp.ndim(p) >= 2, params)


def came(
    learning_rate: float | optax.Schedule,
    b1: float = 0.9,
    b2: float = 0.999,
    b3: float = 0.9999,
    eps1: float = 1e-30,
    eps2: float = 1e-16,
    clip_threshold: float = 1.0,
    weight_decay: float = 0.0,
    mask: Any | Callable[[optax.Params], Any] | None = None,
) -> optax.GradientTransformation:
    """CAME (Luo et al., ACL 2023) with decoupled weight decay, as an optax transformation.

    The parameter step is ``-lr_t * (m / sqrt(S) + weight_decay * mask * param)`` with
    ``lr_t = learning_rate(count)`` for a schedule (count starts at 0). ``mask`` is a
    pytree of bools or a callable on params (e.g. ``decay_mask``); None decays every
    leaf, as the reference implementation does. ``update`` needs ``params``.
    """
    if not callable(learning_rate) and not learning_rate > 0:
        raise ValueError(
            f"tmrjax.train.optim.came: learning_rate must be > 0 or a schedule, got {learning_rate}"
        )
    if not weight_decay >= 0:
        raise ValueError(
            f"tmrjax.train.optim.came: weight_decay must be >= 0, got {weight_decay}"
        )
    return optax.chain(
        scale_by_came(b1, b2, b3, eps1, eps2, clip_threshold),
        optax.add_decayed_weights(weight_decay, mask),
        optax.scale_by_learning_rate(learning_rate),
    )


def warmup_cosine_restarts(
    peak_value: float,
    warmup_steps: int,
    cycle_steps: int,
    total_steps: int,
    restart_decay: float = 0.9,
    end_value: float = 0.0,
) -> optax.Schedule:
    """Linear warm-up then cosine annealing with warm restarts (hu2024 Sec. 4.2, SGDR).

    Steps [0, warmup_steps] rise linearly from 0 to ``peak_value``; then cycle k
    (k = 0, 1, ...) of ``cycle_steps`` steps anneals from ``peak_value * restart_decay**k``
    to ``end_value`` along half a cosine, so the first step of each cycle is a restart.
    The cycles start after the warm-up (they do not overlap it), the last one is cut at
    ``total_steps`` rather than compressed to fit, and from ``total_steps`` on the value is
    ``end_value``. One cycle without restarts: ``cycle_steps = total_steps - warmup_steps``.
    hu2024 (per epoch): warm-up 5, cycles of 10, decay 0.9. ``step`` may be traced.
    """
    checks = (
        ("peak_value", peak_value, peak_value > 0),
        ("warmup_steps", warmup_steps, warmup_steps >= 0),
        ("cycle_steps", cycle_steps, cycle_steps > 0),
        ("total_steps", total_steps, total_steps > warmup_steps),
        ("restart_decay", restart_decay, 0 < restart_decay <= 1),
        ("end_value", end_value, 0 <= end_value <= peak_value),
    )
    for name, value, ok in checks:
        if not ok:
            raise ValueError(
                f"tmrjax.train.optim.warmup_cosine_restarts: bad {name}={value} "
                f"(peak_value > 0, warmup_steps >= 0, cycle_steps > 0, "
                f"total_steps > warmup_steps, 0 < restart_decay <= 1, 0 <= end_value <= peak_value)"
            )

    def schedule(step):
        step = jnp.asarray(step, jnp.float32)
        warm = peak_value * step / max(warmup_steps, 1)
        since_warmup = jnp.maximum(step - warmup_steps, 0.0)
        cycle = jnp.floor(since_warmup / cycle_steps)
        phase = (since_warmup - cycle * cycle_steps) / cycle_steps
        cycle_peak = peak_value * jnp.power(restart_decay, cycle)
        # (1 + cos(pi x)) / 2 written as cos^2(pi x / 2): no cancellation near x = 1.
        annealed = end_value + (cycle_peak - end_value) * jnp.square(
            jnp.cos(0.5 * jnp.pi * phase)
        )
        value = jnp.where(step < warmup_steps, warm, annealed)
        return jnp.where(step >= total_steps, end_value, value)

    return schedule
