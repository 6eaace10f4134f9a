"""Losses of the hu2024 MoCo v2 recipe and its CosFace pre-training (hu2024 Sec. 3.3-3.4, 4.2).

``moco_loss`` is Eq. 6: InfoNCE over the hard negatives of the queue (Eq. 2, Sec. 3.4)
plus ``lambda_a`` times the CO2 consistency term (Eq. 3-4) plus ``lambda_b`` times the
KoLeo regulariser (Eq. 5). ``cosface`` is the large-margin cosine loss of the supervised
pre-training phase (Sec. 4.2, Wang et al. CVPR 2018).

All functions are pure, take static shapes (selection is a boolean mask, never an index
list), compute in float32 whatever the input dtype, and return float32. Masked logits are
set to a large finite negative number, so a row whose negatives are all masked still gives
a finite loss and finite gradients.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from tmrjax.kernels import l2_normalize

# A masked logit: exp() of it underflows to exactly 0 in float32, yet it is finite, so
# sums, differences and gradients over a fully masked row stay finite.
_MASKED_LOGIT = -1e9
_HIGHEST = jax.lax.Precision.HIGHEST


# ----------------------------------------------------------------------------- checks


def _as_f32(x: jax.Array) -> jax.Array:
    return jnp.asarray(x).astype(jnp.float32)


def _check_matrix(where: str, name: str, x: jax.Array, dim: int | None = None) -> None:
    if x.ndim != 2 or (dim is not None and x.shape[1] != dim):
        want = "(N, D)" if dim is None else f"(N, {dim})"
        raise ValueError(
            f"tmrjax.train.losses.{where}: {name} must have shape {want}, got {x.shape}"
        )


def _check_pair(where: str, q: jax.Array, k: jax.Array) -> None:
    _check_matrix(where, "q", q)
    if k.shape != q.shape:
        raise ValueError(
            f"tmrjax.train.losses.{where}: k_pos must have the shape of q {q.shape}, got {k.shape}"
        )


def _check_mask(where: str, mask: jax.Array | None, shape: tuple[int, int]) -> None:
    if mask is not None and tuple(mask.shape) != shape:
        raise ValueError(
            f"tmrjax.train.losses.{where}: negative_mask must have shape (B, K) = {shape}, "
            f"got {tuple(mask.shape)}"
        )


def _check_temperature(where: str, name: str, value: float | jax.Array) -> None:
    if isinstance(value, (int, float)) and not value > 0:
        raise ValueError(f"tmrjax.train.losses.{where}: {name} must be > 0, got {value!r}")


def _similarities(a: jax.Array, b: jax.Array) -> jax.Array:
    """(N, D) x (M, D) -> (N, M) dot products in full float32 (no TF32 / bf16 passes)."""
    return jnp.einsum("nd,md->nm", a, b, precision=_HIGHEST)


def _mask_logits(logits: jax.Array, mask: jax.Array | None) -> jax.Array:
    return logits if mask is None else jnp.where(mask, logits, _MASKED_LOGIT)


# ------------------------------------------------------------------------- InfoNCE


def info_nce(
    q: jax.Array,
    k_pos: jax.Array,
    queue: jax.Array,
    temperature: float | jax.Array,
    negative_mask: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """MoCo v2 InfoNCE, hu2024 Eq. 2: ``-log exp(q.k+/tau) / sum_{i=0..K} exp(q.k_i/tau)``.

    ``q``, ``k_pos`` (B, D) and ``queue`` (K, D) must be l2-normalised by the caller
    (not checked at run time). The positive is logit 0, the queue gives logits 1..K.
    A negative with ``negative_mask[b, i] == False`` contributes nothing to the
    denominator; a row with every negative masked has loss ``-log 1 = 0``. The keys are
    constants (MoCo updates the key encoder by momentum, Eq. 1, not by gradient), so
    ``k_pos`` and ``queue`` get no gradient.

    Returns:
      the loss averaged over the B rows (float32 scalar), and the (B, 1 + K) float32
      logits the loss saw, already divided by ``temperature``, masked negatives set to
      -1e9 (so ``argmax == 0`` is the contrastive accuracy).
    """
    _check_pair("info_nce", q, k_pos)
    _check_matrix("info_nce", "queue", queue, q.shape[1])
    _check_mask("info_nce", negative_mask, (q.shape[0], queue.shape[0]))
    _check_temperature("info_nce", "temperature", temperature)
    q = _as_f32(q)
    k_pos = jax.lax.stop_gradient(_as_f32(k_pos))
    queue = jax.lax.stop_gradient(_as_f32(queue))

    positive = jnp.sum(q * k_pos, axis=1, keepdims=True) / temperature
    negatives = _mask_logits(_similarities(q, queue) / temperature, negative_mask)
    logits = jnp.concatenate([positive, negatives], axis=1)
    loss = jnp.mean(jax.nn.logsumexp(logits, axis=1) - logits[:, 0])
    return loss, logits


# ------------------------------------------------------------- hard negative mask


def hard_negative_mask(
    q: jax.Array,
    queue: jax.Array,
    threshold: float = 0.4,
    min_negatives: int = 0,
) -> jax.Array:
    """Hard negatives of the queue for each anchor, hu2024 Sec. 3.4.

    hu2024: "we calculate the cosine similarity between the anchor sample and negative
    samples, excluding negative samples with similarity below a specified threshold and
    retaining only the remaining negative samples ... we set the threshold to 0.4". So a
    queue entry is kept iff ``cos(q_b, queue_i) >= threshold``: exactly 0.4 is kept.

    The paper guarantees no minimum number of negatives (a row may keep none; the losses
    stay finite). ``min_negatives = n > 0`` is our addition, off by default: when fewer
    than n pass, the n most similar are kept as well (ties with the n-th may keep more).

    ``q`` (B, D) and ``queue`` (K, D) l2-normalised by the caller, so the dot product is
    the cosine. Returns a (B, K) bool mask, True = keep.
    """
    _check_matrix("hard_negative_mask", "q", q)
    _check_matrix("hard_negative_mask", "queue", queue, q.shape[1])
    num_queue = queue.shape[0]
    if (
        isinstance(min_negatives, bool)
        or not isinstance(min_negatives, int)
        or not 0 <= min_negatives <= num_queue
    ):
        raise ValueError(
            "tmrjax.train.losses.hard_negative_mask: min_negatives must be an int in "
            f"[0, K={num_queue}], got {min_negatives!r}"
        )
    sims = _similarities(_as_f32(q), _as_f32(queue))
    keep = sims >= threshold
    if min_negatives > 0:
        nth_largest = jax.lax.top_k(sims, min_negatives)[0][:, -1:]
        keep = keep | (sims >= nth_largest)
    return keep


# ----------------------------------------------------------------------------- CO2


def co2_consistency(
    q: jax.Array,
    k_pos: jax.Array,
    queue: jax.Array,
    temperature: float | jax.Array,
    negative_mask: jax.Array | None = None,
) -> jax.Array:
    """CO2 consistency term (Wei et al. ICLR 2021), hu2024 Eq. 3-4.

    ``L_con = (KL(P||Q) + KL(Q||P)) / 2`` with ``P(i) = softmax_i(p.n_i / tau_con)``
    and ``Q(i) = softmax_i(q.n_i / tau_con)`` over the negatives ``n_i`` (the queue)
    only: the positive is not part of either distribution. ``temperature`` is
    ``tau_con``, separate from the InfoNCE temperature.

    P is the pseudo label (CO2: the similarity of the positive crop to the negatives
    labels the query's); ``p = k_pos`` and the queue come from the momentum encoder and
    get no gradient, so only Q, through ``q``, is trained.

    ``negative_mask`` (B, K), True = keep, restricts both distributions of row b to
    the same kept negatives; a row with none contributes 0. Inputs l2-normalised by the
    caller. Returns the mean over the B rows (float32 scalar); the weight (hu2024:
    ``lambda_a = 0.02``) is applied by the caller.
    """
    _check_pair("co2_consistency", q, k_pos)
    _check_matrix("co2_consistency", "queue", queue, q.shape[1])
    _check_mask("co2_consistency", negative_mask, (q.shape[0], queue.shape[0]))
    _check_temperature("co2_consistency", "temperature", temperature)
    q = _as_f32(q)
    k_pos = jax.lax.stop_gradient(_as_f32(k_pos))
    queue = jax.lax.stop_gradient(_as_f32(queue))

    log_q = jax.nn.log_softmax(
        _mask_logits(_similarities(q, queue) / temperature, negative_mask), axis=1
    )
    log_p = jax.nn.log_softmax(
        _mask_logits(_similarities(k_pos, queue) / temperature, negative_mask), axis=1
    )
    # KL(P||Q) + KL(Q||P) = sum_i (P_i - Q_i)(log P_i - log Q_i); masked entries have
    # P_i = Q_i = 0 exactly and a finite log difference, so they add 0.
    symmetric_kl = jnp.sum((jnp.exp(log_p) - jnp.exp(log_q)) * (log_p - log_q), axis=1)
    return 0.5 * jnp.mean(symmetric_kl)


# --------------------------------------------------------------------------- KoLeo


def koleo(x: jax.Array, eps: float = 1e-8, axis_name: str | None = None) -> jax.Array:
    """Kozachenko-Leonenko entropy regulariser (Sablayrolles et al. ICLR 2019), hu2024 Eq. 5.

    ``L = -1/n sum_i log(rho_i + eps)``, ``rho_i = min_{j != i} ||x_i - x_j||`` the
    distance of sample i to its nearest neighbour in the batch. ``x`` (B, D) is
    l2-normalised here (the estimator is meant for points on the sphere); the sample
    itself is excluded by masking the diagonal. Gradients reach both x_i and its
    neighbour, which pushes nearest neighbours apart. Two identical points give
    ``-log(eps)`` and a zero (not NaN) gradient.

    ``axis_name``: inside ``pmap``/``shard_map`` over that axis, ``x`` is the local
    shard and the neighbours are searched in the whole (all-gathered) batch; the value
    is the mean over the local rows, so the mean over devices is the global KoLeo and
    averaging the per-device gradients gives its gradient. None: ``x`` is the batch.

    Returns a float32 scalar; the weight (hu2024: ``lambda_b = 0.05``) is applied by
    the caller.
    """
    _check_matrix("koleo", "x", x)
    x = l2_normalize(_as_f32(x), eps=0.0)
    rows = x.shape[0]
    if axis_name is None:
        batch, first_row = x, 0
    else:
        batch = jax.lax.all_gather(x, axis_name, tiled=True)
        first_row = jax.lax.axis_index(axis_name) * rows
    if batch.shape[0] < 2:
        raise ValueError(
            f"tmrjax.train.losses.koleo: needs a batch of at least 2 samples, got x {x.shape}"
        )
    is_self = (jnp.arange(rows)[:, None] + first_row) == jnp.arange(batch.shape[0])[None, :]
    # On the sphere the nearest neighbour is the most similar; the index carries no gradient.
    nearest = jnp.argmax(jnp.where(is_self, -jnp.inf, _similarities(x, batch)), axis=1)
    squared = jnp.sum(jnp.square(x - batch[nearest]), axis=1)
    nonzero = squared > 0
    distance = jnp.where(nonzero, jnp.sqrt(jnp.where(nonzero, squared, 1.0)), 0.0)
    return -jnp.mean(jnp.log(distance + eps))


# ------------------------------------------------------------------------- CosFace


def cosface(
    embeddings: jax.Array,
    labels: jax.Array,
    class_weights: jax.Array,
    scale: float = 64.0,
    margin: float = 0.35,
) -> jax.Array:
    """CosFace large-margin cosine loss (Wang et al. CVPR 2018), hu2024 Sec. 4.2 pre-training.

    ``L = -1/B sum_b log e^{s(cos theta_{y_b} - m)} / (e^{s(cos theta_{y_b} - m)}
    + sum_{j != y_b} e^{s cos theta_j})`` with ``cos theta_j`` the cosine between
    embedding b and the weight of class j; both are l2-normalised here.

    ``embeddings`` (B, D), ``labels`` (B,) int in ``[0, C)`` (not checked at run time),
    ``class_weights`` (C, D). Returns a float32 scalar.
    """
    _check_matrix("cosface", "embeddings", embeddings)
    _check_matrix("cosface", "class_weights", class_weights, embeddings.shape[1])
    if labels.shape != (embeddings.shape[0],):
        raise ValueError(
            "tmrjax.train.losses.cosface: labels must have shape "
            f"({embeddings.shape[0]},), got {labels.shape}"
        )
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise ValueError(
            f"tmrjax.train.losses.cosface: labels must be integers, got {labels.dtype}"
        )
    cosines = _similarities(
        l2_normalize(_as_f32(embeddings), eps=0.0), l2_normalize(_as_f32(class_weights), eps=0.0)
    )
    target = jax.nn.one_hot(labels, class_weights.shape[0], dtype=jnp.float32)
    logits = scale * (cosines - margin * target)
    return -jnp.mean(jnp.sum(target * jax.nn.log_softmax(logits, axis=1), axis=1))


# ---------------------------------------------------------------- the hu2024 objective


def moco_loss(
    q: jax.Array,
    k: jax.Array,
    queue: jax.Array,
    *,
    temperature: float | jax.Array,
    co2_temperature: float | jax.Array,
    threshold: float | None = 0.4,
    min_negatives: int = 0,
    co2_weight: float = 0.02,
    koleo_weight: float = 0.05,
    axis_name: str | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """hu2024 Eq. 6: ``L_NCE + lambda_a L_con + lambda_b L_KoLeo`` for one step.

    ``q`` (B, D): encoder (query) outputs of this shard; ``k`` (B, D): momentum-encoder
    (positive key) outputs of the same images; ``queue`` (K, D): the replicated
    dictionary of past keys. All l2-normalised by the caller. Keys and queue get no
    gradient.

    The hard-negative mask (Sec. 3.4, ``threshold``; None turns the selection off, the
    "SSL" row of the ablation) restricts the negatives of both InfoNCE and CO2: the
    paper retains "only the remaining negative samples for subsequent optimization".
    KoLeo is applied to ``q``, the l2-normalised projection the loss trains; with
    ``axis_name`` its nearest neighbours are searched across all shards (see
    ``koleo``). InfoNCE and CO2 are per-sample means over the shard, so inside
    ``pmap``/``shard_map`` the mean over devices of ``total`` (and of its gradients) is
    the loss of the global batch.

    ``temperature`` (InfoNCE tau) and ``co2_temperature`` (tau_con) have no default:
    hu2024 gives neither, so the config states them.

    Returns:
      ``total`` (float32 scalar) and a dict of float32 scalars for logging:
      ``info_nce``, ``co2``, ``koleo`` (unweighted), ``accuracy`` (fraction of rows
      whose positive beats every kept negative) and ``hard_negatives`` (mean number
      of kept negatives per anchor).
    """
    mask = (
        None
        if threshold is None
        else hard_negative_mask(q, queue, threshold=threshold, min_negatives=min_negatives)
    )
    nce, logits = info_nce(q, k, queue, temperature, mask)
    con = co2_consistency(q, k, queue, co2_temperature, mask)
    kl = koleo(q, axis_name=axis_name)
    total = nce + co2_weight * con + koleo_weight * kl
    kept = (
        jnp.full((), queue.shape[0], jnp.float32)
        if mask is None
        else jnp.mean(jnp.sum(mask, axis=1, dtype=jnp.float32))
    )
    terms = {
        "info_nce": nce,
        "co2": con,
        "koleo": kl,
        "accuracy": jnp.mean((jnp.argmax(logits, axis=1) == 0).astype(jnp.float32)),
        "hard_negatives": kept,
    }
    return total, terms
