"""Supervised pre-training with CosFace on labelled similarity groups (hu2024 Sec. 4.2).

hu2024 fine-tunes its encoder with the CosFace large-margin cosine loss on labelled groups of
similar marks before (or instead of) self-supervision; `tmrjax train --config cosface_hu2024`
runs it on any folder-per-class tree or a tfds split with group labels, and a MoCo run starts
from the exported encoder with ``init_encoder``.

One pure per-shard step, data-parallel as `tmrjax.train.moco`: one augmented view per image
(hu2024's augmentation), the encoder's retrieval feature (projection head unused), CosFace
against a learned l2-normalised weight per class, gradients and BatchNorm statistics averaged
over devices, CAME on the encoder and the class weights together.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax
from jax.sharding import PartitionSpec as P
from ml_collections import ConfigDict

from ..kernels.pooling import l2_normalize
from ..models.hu2024 import feature_dim
from . import losses
from .augment import AugmentConfig, augment_batch
from .moco import AXIS, augment_config


@flax.struct.dataclass
class SupervisedState:
    step: jax.Array
    params: Any  # the encoder's (exported, evaluated)
    batch_stats: Any
    class_weights: jax.Array  # (C, D), one row per labelled group
    opt_state: Any  # over {"encoder": params, "class_weights": class_weights}


def create_state(
    encoder, tx: optax.GradientTransformation, config: ConfigDict, num_classes: int, rng: jax.Array,
    variables: Any = None,
) -> SupervisedState:
    """Fresh state; `variables` (an ImageNet trunk or an exported encoder) replaces the random init."""
    init_key, weight_key = jax.random.split(rng)
    size = config.augment.output_size
    if variables is None:
        variables = encoder.init(init_key, jnp.zeros((2, size, size, 3)), train=False, project=True)
    dim = feature_dim(encoder, size)
    class_weights = l2_normalize(jax.random.normal(weight_key, (num_classes, dim), jnp.float32))
    params, batch_stats = variables["params"], variables.get("batch_stats", {})
    return SupervisedState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=batch_stats,
        class_weights=class_weights,
        opt_state=tx.init({"encoder": params, "class_weights": class_weights}),
    )


def shard_step(
    state: SupervisedState,
    images: jax.Array,
    labels: jax.Array,
    rng: jax.Array,
    *,
    encoder,
    tx: optax.GradientTransformation,
    config: ConfigDict,
    augment: AugmentConfig,
) -> tuple[SupervisedState, dict[str, jax.Array]]:
    """One CosFace step on this shard's uint8 images (b, S0, S0, 3) and int labels (b,)."""
    shard = jax.lax.axis_index(AXIS)
    views = augment_batch(jax.random.fold_in(jax.random.fold_in(rng, state.step), shard), images, augment)
    trainable = {"encoder": state.params, "class_weights": state.class_weights}

    def loss_fn(trainable):
        feature, new_vars = encoder.apply(
            {"params": trainable["encoder"], "batch_stats": state.batch_stats},
            views, train=True, project=False, mutable=["batch_stats"],
        )
        loss = losses.cosface(feature, labels, trainable["class_weights"],
                              scale=config.cosface.scale, margin=config.cosface.margin)
        cosines = l2_normalize(feature.astype(jnp.float32)) @ l2_normalize(trainable["class_weights"]).T
        accuracy = jnp.mean(jnp.argmax(cosines, axis=1) == labels)
        return loss, (accuracy, new_vars["batch_stats"])

    (loss, (accuracy, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(trainable)
    grads = jax.lax.pmean(grads, AXIS)
    terms = jax.lax.pmean({"loss": loss, "accuracy": accuracy.astype(jnp.float32)}, AXIS)
    batch_stats = jax.lax.pmean(batch_stats, AXIS)
    updates, opt_state = tx.update(grads, state.opt_state, trainable)
    trainable = optax.apply_updates(trainable, updates)
    terms["param_norm"] = optax.tree.norm(trainable)
    new_state = SupervisedState(
        step=state.step + 1,
        params=trainable["encoder"],
        batch_stats=batch_stats,
        class_weights=trainable["class_weights"],
        opt_state=opt_state,
    )
    return new_state, terms


def _bind(encoder, tx, config) -> Callable:
    augment = augment_config(config)
    return lambda state, images, labels, rng: shard_step(
        state, images, labels, rng, encoder=encoder, tx=tx, config=config, augment=augment
    )


def make_train_step(encoder, tx, config: ConfigDict, mesh: jax.sharding.Mesh) -> Callable:
    """The data-parallel step: state replicated, images and labels sharded over "data"."""
    step = jax.shard_map(
        _bind(encoder, tx, config), mesh=mesh,
        in_specs=(P(), P(AXIS), P(AXIS), P()), out_specs=(P(), P()), check_vma=False,
    )
    return jax.jit(step, donate_argnums=(0,))


def make_reference_step(encoder, tx, config: ConfigDict, num_shards: int) -> Callable:
    """The same step on one device, the global batch split into `num_shards` groups under vmap."""
    per_shard = jax.vmap(_bind(encoder, tx, config), in_axes=(None, 0, 0, None), out_axes=(0, 0), axis_name=AXIS)

    def step(state, images, labels, rng):
        grouped = images.reshape((num_shards, images.shape[0] // num_shards) + images.shape[1:])
        new_state, terms = per_shard(state, grouped, labels.reshape(num_shards, -1), rng)
        return jax.tree.map(lambda x: x[0], (new_state, terms))

    return jax.jit(step)
