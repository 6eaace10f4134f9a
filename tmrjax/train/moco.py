"""MoCo v2 with hu2024's changes, data-parallel over every device.

One pure per-shard step (`shard_step`) holds the whole method; `MOCO` is the trainer's
"moco" objective, whose step runs under `jax.shard_map` over the mesh axis "data" (one shard
per device) or, for the single-device reference, under `jax.vmap` with the same axis name
(`tmrjax.train.objective`). Per step:

  two augmented views of the local batch (on device)
  key encoder (momentum weights) on the key views, with shuffled BatchNorm: the key
    views of all devices are gathered, permuted by a shared random permutation, and each
    device encodes one slice, so BN statistics do not leak which key belongs to a query
  query encoder on the query views -> InfoNCE over the queue with hard-negative
    selection (cos >= 0.4), + CO2 consistency + KoLeo (hu2024 Sec. 3.3-3.4)
  gradients averaged over devices, optimiser step (CAME), momentum update of the key
    encoder, keys of all devices enqueued.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax
from ml_collections import ConfigDict

from ..kernels.pooling import l2_normalize
from . import losses
from .augment import AugmentConfig, two_views
from .objective import AXIS, Objective


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    batch_stats: Any
    params_k: Any
    batch_stats_k: Any
    opt_state: Any
    queue: jax.Array  # (K, D) l2-normalised keys, oldest overwritten first
    queue_ptr: jax.Array  # int32: where the next global batch of keys goes


def create_state(
    encoder, tx: optax.GradientTransformation, config: ConfigDict, rng: jax.Array, variables: Any = None
) -> TrainState:
    """Fresh state; `variables` (e.g. with an ImageNet trunk copied in) replaces the random init."""
    init_key, queue_key = jax.random.split(rng)
    size = config.augment.output_size
    if variables is None:
        variables = encoder.init(init_key, jnp.zeros((2, size, size, 3)), train=False, project=True)
    dim = config.model.projection_dim
    queue = l2_normalize(jax.random.normal(queue_key, (config.moco.queue_size, dim), jnp.float32))
    params, batch_stats = variables["params"], variables.get("batch_stats", {})
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=batch_stats,
        params_k=jax.tree.map(jnp.copy, params),
        batch_stats_k=jax.tree.map(jnp.copy, batch_stats),
        opt_state=tx.init(params),
        queue=queue,
        queue_ptr=jnp.zeros((), jnp.int32),
    )


def shard_step(
    state: TrainState,
    images: jax.Array,
    rng: jax.Array,
    *,
    encoder,
    tx: optax.GradientTransformation,
    config: ConfigDict,
    augment: AugmentConfig,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One MoCo step on this shard's uint8 images (b, S0, S0, 3); collectives over AXIS."""
    b = images.shape[0]
    shard = jax.lax.axis_index(AXIS)
    num_shards = jax.lax.psum(1, AXIS)
    augment_key, shuffle_key = jax.random.split(jax.random.fold_in(rng, state.step))
    view_q, view_k = two_views(jax.random.fold_in(augment_key, shard), images, augment)

    # Key encoder with shuffled BN (shared permutation: the key depends on the step only).
    all_views_k = jax.lax.all_gather(view_k, AXIS, tiled=True)
    perm = jax.random.permutation(shuffle_key, b * num_shards)
    mine = jax.lax.dynamic_slice_in_dim(all_views_k[perm], shard * b, b)
    (_, k_shuffled), new_k_vars = encoder.apply(
        {"params": state.params_k, "batch_stats": state.batch_stats_k},
        mine, train=True, project=True, mutable=["batch_stats"],
    )
    k_global = jax.lax.all_gather(l2_normalize(k_shuffled.astype(jnp.float32)), AXIS, tiled=True)
    k_global = jax.lax.stop_gradient(k_global[jnp.argsort(perm)])  # back to global batch order
    k_local = jax.lax.dynamic_slice_in_dim(k_global, shard * b, b)

    def loss_fn(params):
        (_, q), new_vars = encoder.apply(
            {"params": params, "batch_stats": state.batch_stats},
            view_q, train=True, project=True, mutable=["batch_stats"],
        )
        q = l2_normalize(q.astype(jnp.float32))
        total, terms = losses.moco_loss(
            q, k_local, state.queue,
            temperature=config.moco.temperature,
            co2_temperature=config.moco.co2_temperature,
            threshold=config.moco.hard_negative_threshold,
            min_negatives=config.moco.min_negatives,
            co2_weight=config.moco.co2_weight,
            koleo_weight=config.moco.koleo_weight,
            axis_name=AXIS,  # KoLeo's nearest neighbours over the global batch
        )
        return total, (terms, new_vars["batch_stats"])

    (loss, (terms, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    grads = jax.lax.pmean(grads, AXIS)
    terms = jax.lax.pmean(dict(terms, loss=loss), AXIS)
    # Running BN statistics of every replica kept identical: the mean over shards.
    batch_stats = jax.lax.pmean(batch_stats, AXIS)
    batch_stats_k = jax.lax.pmean(new_k_vars["batch_stats"], AXIS)

    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    m = config.moco.momentum
    params_k = jax.tree.map(lambda k, q: m * k + (1.0 - m) * q, state.params_k, params)
    # Logged and checked for finiteness before any checkpoint of these parameters is saved.
    terms["param_norm"] = optax.tree.norm(params)

    global_batch = b * num_shards
    queue = jax.lax.dynamic_update_slice_in_dim(state.queue, k_global, state.queue_ptr, axis=0)
    queue_ptr = (state.queue_ptr + global_batch) % state.queue.shape[0]
    new_state = TrainState(
        step=state.step + 1,
        params=params,
        batch_stats=batch_stats,
        params_k=params_k,
        batch_stats_k=batch_stats_k,
        opt_state=opt_state,
        queue=queue,
        queue_ptr=queue_ptr,
    )
    return new_state, terms


def check_queue(config: ConfigDict, global_batch: int) -> None:
    """The queue must hold a whole number of global batches (keys enqueue without wrapping)."""
    if config.moco.queue_size % global_batch:
        raise ValueError(
            f"moco.queue_size={config.moco.queue_size} is not divisible by the global batch "
            f"{global_batch}; pick a queue length that is a multiple of it"
        )
    if not 0 <= config.moco.min_negatives <= config.moco.queue_size:
        raise ValueError(
            f"moco.min_negatives={config.moco.min_negatives} must lie in [0, moco.queue_size="
            f"{config.moco.queue_size}]"
        )


def check_config(config: ConfigDict, num_images: int, global_batch: int, log: Callable[[str], Any]) -> None:
    """The queue checks, and a warning when the queue is large against the data."""
    check_queue(config, global_batch)
    if config.moco.queue_size > num_images // 2:
        log(f"warning    moco.queue_size={config.moco.queue_size} holds keys of more than half of the "
            f"{num_images} training images: an anchor's own key from the previous epoch can sit in the "
            f"queue as a negative, and hard-negative selection picks it first; use a queue well below "
            f"the dataset size")


def encode(encoder, variables: Any, images: jax.Array) -> jax.Array:
    """Retrieval features (projection head removed, hu2024 Sec. 4.2), l2-normalised."""
    feature = encoder.apply(variables, images, train=False, project=False)
    return l2_normalize(feature.astype(jnp.float32))


def _state_for_source(encoder, tx, config: ConfigDict, source, rng: jax.Array, variables: Any) -> TrainState:
    """`create_state` as the trainer calls it; the data does not shape MoCo's state."""
    return create_state(encoder, tx, config, rng, variables)


MOCO = Objective(
    name="moco", section="moco", labelled=False,
    create_state=_state_for_source, shard_step=shard_step, check_config=check_config,
)
