"""Supervised pre-training with CosFace on labelled similarity groups (hu2024 Sec. 4.2).

hu2024 fine-tunes its encoder with the CosFace large-margin cosine loss on labelled groups of
similar marks before (or instead of) self-supervision; `tmrjax train --config cosface_hu2024`
runs it on any folder-per-class tree or a tfds split with group labels, and a MoCo run starts
from the exported encoder with ``init_encoder``.

One pure per-shard step, the trainer's "cosface" objective (`COSFACE`, data-parallel as every
objective is: `tmrjax.train.objective`): one augmented view per image (hu2024's augmentation),
the encoder's retrieval feature (projection head unused), CosFace against a learned
l2-normalised weight per class, gradients and BatchNorm statistics averaged over devices, CAME
on the encoder and the class weights together.
"""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax
from ml_collections import ConfigDict

from ..kernels.pooling import l2_normalize
from ..models.hu2024 import feature_dim
from . import losses
from .augment import AugmentConfig, augment_batch
from .objective import AXIS, Objective


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


def _state_for_source(encoder, tx, config: ConfigDict, source, rng: jax.Array, variables: Any) -> SupervisedState:
    """`create_state` as the trainer calls it: one class weight per class of the labelled source."""
    return create_state(encoder, tx, config, len(source.class_names), rng, variables)


COSFACE = Objective(
    name="cosface", section="cosface", labelled=True, create_state=_state_for_source, shard_step=shard_step,
)
