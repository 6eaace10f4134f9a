"""The training run: devices, data, checkpoints, logs, evaluation (`tmrjax train`).

`config.objective` picks the step: "moco" (hu2024's self-supervised MoCo v2, unlabelled
marks) or "cosface" (hu2024 Sec. 4.2's supervised pre-training on labelled groups).

Runs data-parallel over every device JAX sees: GPUs/TPUs, or CPU devices forced with
``XLA_FLAGS=--xla_force_host_platform_device_count=8``. Multi-host: call with
``distributed=True`` (``jax.distributed.initialize()``); each process loads its own slice of
every global batch.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P
from ml_collections import ConfigDict

from .. import __version__
from ..models import HU2024
from ..models.hu2024 import Hu2024Encoder, encoder_from_settings, feature_dim, init_from_backbone
from ..weights import ENCODER_FORMAT, WeightsError, read_meta, restore_encoder_variables, variables_sha256
from . import cosface, moco
from .data import BatchLoader, open_source
from .optim import came, decay_mask, warmup_cosine_restarts


class TrainingDiverged(RuntimeError):
    """A non-finite loss: the run stops and names the step and the last good checkpoint."""


def build_encoder(config: ConfigDict) -> Hu2024Encoder:
    return encoder_from_settings(config.model.to_dict())


def build_optimizer(config: ConfigDict, steps_per_epoch: int) -> tuple[optax.GradientTransformation, Any]:
    o = config.optim
    total = config.epochs * steps_per_epoch
    schedule = warmup_cosine_restarts(
        peak_value=o.learning_rate,
        warmup_steps=o.warmup_epochs * steps_per_epoch,
        cycle_steps=o.cycle_epochs * steps_per_epoch,
        total_steps=total,
        restart_decay=o.restart_decay,
    )
    # No weight decay on BatchNorm scales/biases and conv/linear biases (ndim < 2).
    tx = came(schedule, weight_decay=o.weight_decay, mask=decay_mask)
    return tx, schedule


def make_mesh() -> jax.sharding.Mesh:
    return jax.make_mesh((jax.device_count(),), (moco.AXIS,), axis_types=(AxisType.Auto,))


def _checkpoint_manager(workdir: Path, config: ConfigDict):
    import orbax.checkpoint as ocp

    options = ocp.CheckpointManagerOptions(max_to_keep=config.keep_checkpoints, create=True)
    return ocp.CheckpointManager((workdir / "checkpoints").absolute(), options=options)


# Config fields that a resumed run may change: none of them is in the compiled step, the data
# order or the schedule (the init_* starting points are replaced by the checkpoint), so the
# resumed run still continues the checkpointed one bit for bit.
RESUMABLE_FIELDS = (
    "data.workers", "log_every_steps", "checkpoint_every_steps", "keep_checkpoints", "eval.*",
    "init_weights", "init_encoder",
)


def check_resume_config(path: Path, config: ConfigDict) -> None:
    """Refuse to resume the run saved beside `path` (its config.json) under a config that
    changes what is trained: a different schedule, batch, model or data would splice two
    runs into one checkpoint history."""
    try:
        saved = traverse_util.flatten_dict(json.loads(path.read_text()), sep=".")
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: cannot read the config of the run to resume ({e})") from e
    given = traverse_util.flatten_dict(json.loads(config.to_json()), sep=".")

    def shown(fields, key):
        return repr(fields[key]) if key in fields else "(absent)"

    changed = [
        f"{key}: {shown(saved, key)} -> {shown(given, key)}"
        for key in sorted(saved.keys() | given.keys())
        if shown(saved, key) != shown(given, key)
        and not any(fnmatch.fnmatchcase(key, pattern) for pattern in RESUMABLE_FIELDS)
    ]
    if changed:
        raise ValueError(
            f"{path.parent}: --resume with a config that differs from the run's {path.name} in "
            f"{'; '.join(changed)}. Resume with the same config, or start a new workdir "
            f"(free to change: {', '.join(RESUMABLE_FIELDS)})"
        )


@dataclasses.dataclass
class RunResult:
    workdir: Path
    steps: int
    history: list[dict]
    evaluations: list[dict]
    state: moco.TrainState


def train(
    config: ConfigDict,
    workdir: str | os.PathLike,
    resume: bool = False,
    max_steps: int | None = None,
    distributed: bool = False,
    log=print,
) -> RunResult:
    """Train (or resume) a MoCo encoder; returns the logged history.

    `max_steps` stops early (the schedule still spans `config.epochs`), e.g. to simulate a
    kill in tests.
    """
    import orbax.checkpoint as ocp

    if distributed:
        jax.distributed.initialize()
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    manager = _checkpoint_manager(workdir, config)
    resuming = manager.latest_step() is not None  # the checkpoint replaces any starting point
    if resuming and not resume:
        raise ValueError(f"{workdir}: has checkpoints; pass resume=True (--resume) or use a new workdir")
    if resuming and (workdir / "config.json").exists():
        check_resume_config(workdir / "config.json", config)
    (workdir / "config.json").write_text(config.to_json(indent=2))

    mesh = make_mesh()
    global_batch = config.batch_size
    if global_batch % jax.device_count():
        raise ValueError(f"batch_size={global_batch} not divisible by {jax.device_count()} devices")
    objective = config.get("objective", "moco")
    if objective not in ("moco", "cosface"):
        raise ValueError(f"objective={objective!r}; expected 'moco' or 'cosface'")
    supervised = objective == "cosface"
    if not config.data.source:
        raise ValueError(f"{config.name}: data.source is empty; set it to an image folder or tfds:NAME:SPLITS"
                         + (" with group labels (folder per class)" if supervised else ""))
    if not supervised:
        moco.check_queue(config, global_batch)

    source = open_source(config.data.source, config.data.image_size, labelled=supervised)
    steps_per_epoch = len(source) // global_batch
    if steps_per_epoch == 0:
        raise ValueError(f"{config.data.source}: {len(source)} images < one global batch of {global_batch}")
    total_steps = config.epochs * steps_per_epoch
    if not supervised and config.moco.queue_size > len(source) // 2:
        log(f"warning    moco.queue_size={config.moco.queue_size} holds keys of more than half of the "
            f"{len(source)} training images: an anchor's own key from the previous epoch can sit in the "
            f"queue as a negative, and hard-negative selection picks it first; use a queue well below "
            f"the dataset size")
    encoder = build_encoder(config)
    tx, schedule = build_optimizer(config, steps_per_epoch)
    rng = jax.random.key(config.seed)

    variables = None
    if config.init_weights and config.get("init_encoder"):
        raise ValueError("init_weights and init_encoder both set; give one starting point")
    if config.init_weights and not resuming:
        from ..weights import load_backbone

        _, backbone_vars, meta = load_backbone(config.init_weights, arch="resnet50", layout=config.model.layout)
        size = config.augment.output_size
        fresh = encoder.init(jax.random.fold_in(rng, 1), jnp.zeros((2, size, size, 3)), train=False, project=True)
        variables = init_from_backbone(backbone_vars, fresh)
        log(f"init       ResNet50 trunk from {config.init_weights} ({meta['source'].get('file')})")
    if config.get("init_encoder") and not resuming:
        variables = load_encoder(config.init_encoder, config)
        log(f"init       encoder from {config.init_encoder}")
    if supervised:
        state = cosface.create_state(encoder, tx, config, len(source.class_names), jax.random.fold_in(rng, 2),
                                     variables)
    else:
        state = moco.create_state(encoder, tx, config, jax.random.fold_in(rng, 2), variables)

    start = 0
    if resuming:
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
        state = manager.restore(manager.latest_step(), args=ocp.args.StandardRestore(abstract))
        start = int(state.step)
        log(f"resume     from step {start} ({workdir / 'checkpoints'})")

    replicated = NamedSharding(mesh, P())
    sharded = NamedSharding(mesh, P(moco.AXIS))
    # Distinct buffers per leaf (the optimiser state shares constants), so the step can donate them.
    state = jax.device_put(jax.tree.map(lambda x: np.array(x, copy=True), state), replicated)
    step_fn = (cosface if supervised else moco).make_train_step(encoder, tx, config, mesh)
    step_rng = jax.random.fold_in(rng, 3)

    loader = BatchLoader(
        source, global_batch, config.seed, jax.process_index(), jax.process_count(),
        workers=config.data.workers,
    )
    evaluator = _Evaluator(config, encoder, log) if config.eval.every_steps else None
    history: list[dict] = []
    evaluations: list[dict] = []
    log_path = workdir / "log.jsonl"
    end = min(total_steps, max_steps) if max_steps else total_steps
    last_good = manager.latest_step()
    pending_terms = None
    window_start, window_images = time.time(), 0
    classes = f" in {len(source.class_names)} classes" if supervised else ""
    log(f"train      {config.name} ({objective}): {len(source)} images{classes}, {steps_per_epoch} steps/epoch, "
        f"{total_steps} steps, global batch {global_batch} on {jax.device_count()} {jax.default_backend()} device(s)")

    def finish_step(step: int, terms) -> None:
        nonlocal window_start, window_images, last_good
        values = {k: float(v) for k, v in jax.device_get(terms).items()}
        window_images += global_batch
        if not all(math.isfinite(v) for v in values.values()):
            if last_good is not None and last_good >= step:
                # Step `step` started from the parameters saved as checkpoint `step`: they
                # already gave a non-finite loss, so that checkpoint is not good.
                manager.wait_until_finished()
                for bad in [s for s in manager.all_steps() if s >= step]:
                    manager.delete(bad)
                earlier = [s for s in manager.all_steps() if s < step]
                last_good = max(earlier) if earlier else None
            good = "none" if last_good is None else f"step {last_good} in {workdir / 'checkpoints'}"
            raise TrainingDiverged(
                f"non-finite loss or parameters at step {step + 1} ({values}); last good checkpoint: {good}")
        if (step + 1) % config.log_every_steps == 0 or step + 1 == end:
            elapsed = time.time() - window_start
            record = dict(
                step=step + 1, epoch=(step + 1) / steps_per_epoch, lr=float(schedule(step)),
                images_per_s_per_device=window_images / max(elapsed, 1e-9) / jax.device_count(), **values,
            )
            history.append(record)
            with open(log_path, "a") as f:
                f.write(json.dumps(record) + "\n")
            log("step {step:6d}  loss {loss:.4f}  lr {lr:.2e}  {images_per_s_per_device:.1f} img/s/dev".format(**record)
                + "".join(f"  {k} {v:.4f}" for k, v in values.items() if k != "loss"))
            window_start, window_images = time.time(), 0

    if evaluator and start == 0:  # the untrained encoder: the baseline the run must beat
        evaluations.append(evaluator(state, 0))
        with open(workdir / "eval.jsonl", "a") as f:
            f.write(json.dumps(evaluations[-1]) + "\n")
    try:
        for step, local in loader.iterate(start, end):
            if supervised:
                images, labels = (jax.make_array_from_process_local_data(sharded, x) for x in local)
                state, terms = step_fn(state, images, labels, step_rng)
            else:
                state, terms = step_fn(state, jax.make_array_from_process_local_data(sharded, local), step_rng)
            if pending_terms is not None:  # check the previous step while this one runs
                finish_step(*pending_terms)
            pending_terms = (step, terms)
            done = step + 1
            if done % config.checkpoint_every_steps == 0 or done == end:
                finish_step(*pending_terms)
                pending_terms = None
                manager.save(done, args=ocp.args.StandardSave(state))
                manager.wait_until_finished()
                last_good = done
            if evaluator and (done % config.eval.every_steps == 0 or done == end):
                result = evaluator(state, done)
                evaluations.append(result)
                with open(workdir / "eval.jsonl", "a") as f:
                    f.write(json.dumps(result) + "\n")
        if pending_terms is not None:
            finish_step(*pending_terms)
    finally:
        loader.close()
        manager.wait_until_finished()
        manager.close()
        if len(loader.failures):
            loader.failures.print_summary()
            loader.failures.write_json(workdir / "skipped_images.json")
    return RunResult(workdir, end, history, evaluations, jax.device_get(state))


class _Evaluator:
    """Retrieval quality of the current encoder on a labelled benchmark (logo_groups/small)."""

    def __init__(self, config: ConfigDict, encoder, log):
        from ..evaluation import load_benchmark

        self.config = config
        self.encoder = encoder
        self.log = log
        self.benchmark = load_benchmark(config.eval.dataset, max_distractors=config.eval.max_distractors)
        self.pca_dim = int(config.eval.get("pca_whitening_dim", 0))
        size = config.augment.output_size
        self.images = self.benchmark.images_at(size)
        self._encode = jax.jit(lambda v, x: moco.encode(encoder, v, x))
        if self.pca_dim:
            dim = feature_dim(encoder, size)
            if self.pca_dim > dim:
                raise ValueError(f"eval.pca_whitening_dim={self.pca_dim} exceeds the encoder's {dim}-d features")
        gallery = len(self.benchmark.gallery_rows)
        if self.pca_dim and gallery <= self.pca_dim:
            raise ValueError(
                f"eval.pca_whitening_dim={self.pca_dim} needs more than {self.pca_dim} gallery images to "
                f"learn from; {config.eval.dataset} with eval.max_distractors={config.eval.max_distractors} "
                f"has {gallery}"
            )

    def __call__(self, state: moco.TrainState, step: int) -> dict:
        from ..metrics import evaluate

        variables = {"params": state.params, "batch_stats": state.batch_stats}
        batch = self.config.eval.batch_size
        parts = []
        for i in range(0, len(self.images), batch):
            chunk = self.images[i : i + batch]
            padded = np.concatenate([chunk, np.full((batch - len(chunk),) + chunk.shape[1:], 255, np.uint8)])
            parts.append(np.asarray(self._encode(variables, jnp.asarray(padded)))[: len(chunk)])
        vectors = np.concatenate(parts)
        result = evaluate(vectors, self.benchmark.query_rows, self.benchmark.relevant, k=100)
        record = {"step": step, "dataset": self.config.eval.dataset, "protocol": result.protocol,
                  "NAR": result.nar, "MAP@100": result.map_at_k, "MAP": result.map}
        line = (f"eval  {step:6d}  {self.config.eval.dataset}: NAR {result.nar:.4f}  "
                f"MAP@100 {100 * result.map_at_k:.2f}  MAP {100 * result.map:.2f}")
        if self.pca_dim:
            white = whiten_on_gallery(vectors, self.benchmark.num_queries, self.pca_dim)
            result = evaluate(white, self.benchmark.query_rows, self.benchmark.relevant, k=100)
            record["pca_whitened"] = {"dim": self.pca_dim, "NAR": result.nar, "MAP@100": result.map_at_k,
                                      "MAP": result.map}
            line += (f"  | PCA-w {self.pca_dim}: NAR {result.nar:.4f}  MAP@100 {100 * result.map_at_k:.2f}  "
                     f"MAP {100 * result.map:.2f}")
        self.log(f"{line}  ({result.protocol})")
        return record


def whiten_on_gallery(vectors: np.ndarray, num_queries: int, dim: int) -> np.ndarray:
    """hu2024 Sec. 4.2's evaluation: PCA-whitening to `dim` learned on the unlabelled gallery
    (database rows after the queries, no query or group member), applied to all, l2-normalised."""
    from ..kernels.whitening import apply_pca_whitening, learn_pca_whitening

    mean, projection = learn_pca_whitening(jnp.asarray(vectors[num_queries:]), dim)
    white = np.asarray(apply_pca_whitening(jnp.asarray(vectors), mean, projection), np.float32)
    return white / np.maximum(np.linalg.norm(white, axis=1, keepdims=True), 1e-12)


def load_encoder(path: str | os.PathLike, config: ConfigDict) -> dict:
    """Variables of an encoder exported by `tmrjax train --export` (float32), checked against
    the config's model, then against its own meta.json (`tmrjax.weights.restore_encoder_variables`):
    a MoCo run starting from a CosFace pre-training, or the reverse."""
    path = Path(path).absolute()
    meta = read_meta(path)
    if meta["format"] != ENCODER_FORMAT:
        raise WeightsError(f"{path}: a {meta['arch']} backbone, not an encoder exported by `tmrjax train --export`; "
                           "start from it with init_weights")
    mine = json.loads(json.dumps(config.model.to_dict(), default=list))
    theirs = {k: meta["model"].get(k) for k in mine}
    different = {k: (theirs[k], mine[k]) for k in mine if theirs[k] != mine[k] and k != "dtype"}
    if different:
        raise ValueError(f"{path}: encoder trained with other model settings than this config: "
                         + ", ".join(f"model.{k} {a!r} there, {b!r} here" for k, (a, b) in different.items()))
    return restore_encoder_variables(path, meta)


def export_encoder(state: moco.TrainState, config: ConfigDict, out_dir: str | os.PathLike, command: str) -> Path:
    """Write the query encoder (projection head kept, unused at retrieval) as bfloat16 + meta.json.

    The directory is a retrieval backbone too (arch ``hu2024-resnet50``, `tmrjax.weights`):
    ``tmrjax eval --pipelines hu2024 --weights DIR`` scores it like any converted backbone.
    """
    import orbax.checkpoint as ocp

    out = Path(out_dir).absolute()
    out.mkdir(parents=True, exist_ok=True)
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    variables = jax.tree.map(lambda x: np.asarray(x, dtype=jnp.bfloat16), jax.device_get(variables))
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(out / "variables", variables, force=True)
    meta = {
        "format": ENCODER_FORMAT,
        "arch": HU2024,
        "variables_sha256": variables_sha256(variables),
        "model": config.model.to_dict(),
        "trained_with": config.name,
        "steps": int(state.step),
        "command": command,
        "tmrjax_version": __version__,
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=2, default=list) + "\n")
    return out
