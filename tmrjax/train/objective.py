"""What a training objective gives the trainer, and the data-parallel step built from it once.

An objective (`tmrjax.train.moco.MOCO`, `tmrjax.train.cosface.COSFACE`) is one `Objective`
value: how to create its state, its pure per-shard step, what it reads from the data and the
config, and its own config checks. The binding of a step to its encoder, optimiser and config,
the `shard_map` over the device mesh and the single-device `vmap` reference exist here only.

A batch is a tuple of the arrays that `shard_step` takes after the state: ``(images,)`` for
unlabelled marks, ``(images, labels)`` for labelled ones; every array is split over AXIS.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
from jax.sharding import PartitionSpec as P
from ml_collections import ConfigDict

from .augment import AugmentConfig

AXIS = "data"


def no_checks(config: ConfigDict, num_images: int, global_batch: int, log: Callable[[str], Any]) -> None:
    """For an objective whose config section needs nothing beyond what the trainer checks."""


@dataclasses.dataclass(frozen=True)
class Objective:
    """One training objective, as the trainer sees it.

    `create_state(encoder, tx, config, source, rng, variables)` returns a fresh state (with
    `step`, `params` and `batch_stats`); `variables`, when given, replaces the random init.
    `shard_step(state, *batch, rng, *, encoder, tx, config, augment)` is one pure step on this
    shard's batch, collectives over AXIS, returning the new state and a dict of scalar terms
    (at least "loss"). `check_config(config, num_images, global_batch, log)` raises on a config
    the step cannot run and logs warnings.
    """

    name: str
    section: str  # the config section only this objective reads
    labelled: bool  # batches are (images, labels) from a labelled source, else (images,)
    create_state: Callable[..., Any]
    shard_step: Callable[..., tuple[Any, dict[str, jax.Array]]]
    check_config: Callable[[ConfigDict, int, int, Callable[[str], Any]], None] = no_checks

    def _bind(self, encoder, tx, config: ConfigDict) -> Callable:
        augment = augment_config(config)
        return lambda state, batch, rng: self.shard_step(
            state, *batch, rng, encoder=encoder, tx=tx, config=config, augment=augment
        )

    def train_step(self, encoder, tx, config: ConfigDict, mesh: jax.sharding.Mesh) -> Callable:
        """The data-parallel step `(state, batch, rng)`: state replicated, batch sharded over AXIS."""
        step = jax.shard_map(
            self._bind(encoder, tx, config), mesh=mesh,
            in_specs=(P(), P(AXIS), P()), out_specs=(P(), P()), check_vma=False,
        )
        return jax.jit(step, donate_argnums=(0,))

    def reference_step(self, encoder, tx, config: ConfigDict, num_shards: int) -> Callable:
        """The same step on one device: the global batch split into `num_shards` groups under vmap.

        BatchNorm statistics are per shard (MoCo's shuffled BN relies on it), so the
        single-device reference groups the batch exactly as the devices would.
        """
        per_shard = jax.vmap(self._bind(encoder, tx, config), in_axes=(None, 0, None), out_axes=(0, 0),
                             axis_name=AXIS)

        def step(state, batch, rng):
            grouped = jax.tree.map(lambda x: x.reshape((num_shards, x.shape[0] // num_shards) + x.shape[1:]), batch)
            new_state, terms = per_shard(state, grouped, rng)
            return jax.tree.map(lambda x: x[0], (new_state, terms))

        return jax.jit(step)


def augment_config(config: ConfigDict) -> AugmentConfig:
    """The config's `augment` fields over hu2024's defaults (tuples restored from lists)."""
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in config.augment.to_dict().items()}
    return AugmentConfig(**fields)
