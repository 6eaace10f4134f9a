"""The training run: devices, data, checkpoints, logs, evaluation (`tmrjax train`).

`config.objective` names one of `OBJECTIVES` (`tmrjax.train.objective.Objective`): "moco"
(hu2024's self-supervised MoCo v2, unlabelled marks) or "cosface" (hu2024 Sec. 4.2's supervised
pre-training on labelled groups). The loop is the same for every objective.

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

from .._version import __version__
from ..models import HU2024, build_backbone
from ..models.hu2024 import Hu2024Encoder, encoder_from_settings, feature_dim
from ..weights import ENCODER_FORMAT, WeightsError, read_meta, restore_encoder_variables, variables_sha256
from . import cosface, moco
from .data import BatchLoader, open_training_images
from .objective import AXIS, Objective
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
    return jax.make_mesh((jax.device_count(),), (AXIS,), axis_types=(AxisType.Auto,))


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


OBJECTIVES: dict[str, Objective] = {objective.name: objective for objective in (moco.MOCO, cosface.COSFACE)}


def objective_of(config: ConfigDict) -> Objective:
    """The registered objective that `config.objective` names; its config section must be there."""
    name = config.get("objective", "moco")
    if name not in OBJECTIVES:
        raise ValueError(f"{config.name}: objective={name!r}; expected one of {', '.join(map(repr, OBJECTIVES))}")
    objective = OBJECTIVES[name]
    if objective.section not in config:
        raise ValueError(f"{config.name}: objective={name!r} reads the config section "
                         f"{objective.section!r}, which the config does not have")
    return objective


@dataclasses.dataclass
class RunResult:
    workdir: Path
    steps: int
    history: list[dict]
    evaluations: list[dict]
    state: Any  # the objective's state: step, params, batch_stats and what else it trains


def train(
    config: ConfigDict,
    workdir: str | os.PathLike,
    resume: bool = False,
    max_steps: int | None = None,
    distributed: bool = False,
    log=print,
) -> RunResult:
    """Train (or resume) an encoder with the objective `config.objective` names; returns the
    logged history.

    `max_steps` stops early (the schedule still spans `config.epochs`), e.g. to simulate a
    kill in tests.
    """
    objective = objective_of(config)
    if distributed:
        jax.distributed.initialize()
    workdir = Path(workdir)
    checkpoints = _open_workdir(workdir, config, resume)
    source, steps_per_epoch = _training_data(config, objective, log)
    total_steps = config.epochs * steps_per_epoch
    end = min(total_steps, max_steps) if max_steps else total_steps
    encoder = build_encoder(config)
    tx, schedule = build_optimizer(config, steps_per_epoch)
    rng = jax.random.key(config.seed)
    state, start = _initial_state(config, objective, encoder, tx, source, rng, checkpoints, log)

    mesh = make_mesh()
    # Distinct buffers per leaf (the optimiser state shares constants), so the step can donate them.
    state = jax.device_put(jax.tree.map(lambda x: np.array(x, copy=True), state), NamedSharding(mesh, P()))
    step_fn = objective.train_step(encoder, tx, config, mesh)
    loader = BatchLoader(
        source, config.batch_size, config.seed, jax.process_index(), jax.process_count(),
        workers=config.data.workers,
    )
    evaluate = _Evaluations(config, encoder, workdir, log) if config.eval.every_steps else None
    step_log = _StepLog(config, workdir, schedule, steps_per_epoch, end, checkpoints, log)
    classes = getattr(source, "class_names", None)
    in_classes = f" in {len(classes)} classes" if classes else ""
    log(f"train      {config.name} ({objective.name}): {len(source)} images{in_classes}, {steps_per_epoch} "
        f"steps/epoch, {total_steps} steps, global batch {config.batch_size} on {jax.device_count()} "
        f"{jax.default_backend()} device(s)")
    try:
        if evaluate and start == 0:  # the untrained encoder: the baseline the run must beat
            evaluate(state, 0)
        state = _run_steps(config, step_fn, state, jax.random.fold_in(rng, 3), loader.iterate(start, end), end,
                           NamedSharding(mesh, P(AXIS)), step_log, checkpoints, evaluate)
    finally:
        checkpoints.close()
        if len(loader.failures):
            loader.failures.print_summary()
            loader.failures.write_json(workdir / "skipped_images.json")
    return RunResult(workdir, end, step_log.history, evaluate.records if evaluate else [], jax.device_get(state))


class _Checkpoints:
    """The run's orbax checkpoints (workdir/checkpoints) and the last one known to be good."""

    def __init__(self, workdir: Path, config: ConfigDict):
        self.dir = workdir / "checkpoints"
        self.manager = _checkpoint_manager(workdir, config)
        self.resume_from = self.last_good = self.manager.latest_step()

    def restore(self, like: Any) -> Any:
        """The latest checkpoint, as a state of the structure of `like`."""
        import orbax.checkpoint as ocp

        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
        return self.manager.restore(self.resume_from, args=ocp.args.StandardRestore(abstract))

    def save(self, step: int, state: Any) -> None:
        """Save and wait: the caller has checked the state's terms, so it is the last good one."""
        import orbax.checkpoint as ocp

        self.manager.save(step, args=ocp.args.StandardSave(state))
        self.manager.wait_until_finished()
        self.last_good = step

    def drop_from(self, step: int) -> str:
        """After a non-finite loss in step `step`: that step started from checkpoint `step`'s
        parameters, so it and any later one are not good; names the last good one left."""
        if self.last_good is not None and self.last_good >= step:
            self.manager.wait_until_finished()
            for bad in [s for s in self.manager.all_steps() if s >= step]:
                self.manager.delete(bad)
            earlier = [s for s in self.manager.all_steps() if s < step]
            self.last_good = max(earlier) if earlier else None
        return "none" if self.last_good is None else f"step {self.last_good} in {self.dir}"

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def _open_workdir(workdir: Path, config: ConfigDict, resume: bool) -> _Checkpoints:
    """The workdir's checkpoints; a run with checkpoints continues only when asked to, and
    under the config it was started with. Records the config as config.json."""
    workdir.mkdir(parents=True, exist_ok=True)
    checkpoints = _Checkpoints(workdir, config)
    resuming = checkpoints.resume_from is not None  # the checkpoint replaces any starting point
    if resuming and not resume:
        raise ValueError(f"{workdir}: has checkpoints; pass resume=True (--resume) or use a new workdir")
    if resuming and (workdir / "config.json").exists():
        check_resume_config(workdir / "config.json", config)
    (workdir / "config.json").write_text(config.to_json(indent=2))
    return checkpoints


def _training_data(config: ConfigDict, objective: Objective, log) -> tuple[Any, int]:
    """The training source (labelled if the objective needs labels) and its steps per epoch,
    after the batch, data and objective checks."""
    global_batch = config.batch_size
    if global_batch % jax.device_count():
        raise ValueError(f"batch_size={global_batch} not divisible by {jax.device_count()} devices")
    if not config.data.source:
        raise ValueError(f"{config.name}: data.source is empty; set it to an image folder or tfds:NAME:SPLITS"
                         + (" with group labels (folder per class)" if objective.labelled else ""))
    source = open_training_images(config.data.source, config.data.image_size, labelled=objective.labelled)
    steps_per_epoch = len(source) // global_batch
    if steps_per_epoch == 0:
        raise ValueError(f"{config.data.source}: {len(source)} images < one global batch of {global_batch}")
    objective.check_config(config, len(source), global_batch, log)
    return source, steps_per_epoch


def _initial_state(config: ConfigDict, objective: Objective, encoder, tx, source, rng: jax.Array,
                   checkpoints: _Checkpoints, log) -> tuple[Any, int]:
    """The state and step the run starts from: the latest checkpoint's, else a fresh state from
    the config's starting point (init_weights, init_encoder or a random init)."""
    if config.init_weights and config.get("init_encoder"):
        raise ValueError("init_weights and init_encoder both set; give one starting point")
    resuming = checkpoints.resume_from is not None
    variables = None
    if config.init_weights and not resuming:
        from ..weights import init_from_backbone, load_backbone

        _, backbone_vars, meta = load_backbone(config.init_weights, arch="resnet50", layout=config.model.layout)
        size = config.augment.output_size
        fresh = encoder.init(jax.random.fold_in(rng, 1), jnp.zeros((2, size, size, 3)), train=False, project=True)
        variables = init_from_backbone(backbone_vars, fresh)
        log(f"init       ResNet50 trunk from {config.init_weights} ({meta['source'].get('file')})")
    if config.get("init_encoder") and not resuming:
        variables = load_encoder(config.init_encoder, config)
        log(f"init       encoder from {config.init_encoder}")
    state = objective.create_state(encoder, tx, config, source, jax.random.fold_in(rng, 2), variables)
    if not resuming:
        return state, 0
    state = checkpoints.restore(state)
    log(f"resume     from step {int(state.step)} ({checkpoints.dir})")
    return state, int(state.step)


def _device_batch(sharded: NamedSharding, local: Any) -> tuple[jax.Array, ...]:
    """This process's part of a global batch as global arrays. The loader gives images, or
    (images, labels) from a labelled source; a step takes the tuple of them either way."""
    arrays = local if isinstance(local, tuple) else (local,)
    return tuple(jax.make_array_from_process_local_data(sharded, x) for x in arrays)


def _run_steps(config: ConfigDict, step_fn, state: Any, step_rng: jax.Array, batches, end: int,
               sharded: NamedSharding, step_log: _StepLog, checkpoints: _Checkpoints, evaluate) -> Any:
    """The step loop over `batches` ((step, local batch) up to `end`). A step's terms are checked
    while the next step runs, and every step's before a checkpoint is saved, so no checkpoint
    holds a state that gave a non-finite loss."""
    pending = None
    for step, local in batches:
        state, terms = step_fn(state, _device_batch(sharded, local), step_rng)
        if pending is not None:  # check the previous step while this one runs
            step_log(*pending)
        pending = (step, terms)
        done = step + 1
        if done % config.checkpoint_every_steps == 0 or done == end:
            step_log(*pending)
            pending = None
            checkpoints.save(done, state)
        if evaluate and (done % config.eval.every_steps == 0 or done == end):
            evaluate(state, done)
    if pending is not None:
        step_log(*pending)
    return state


class _StepLog:
    """Each step's terms, checked for finiteness; every `log_every_steps`-th step (and the last)
    goes to `history`, log.jsonl and `log`, with the learning rate and the throughput."""

    def __init__(self, config: ConfigDict, workdir: Path, schedule, steps_per_epoch: int, end: int,
                 checkpoints: _Checkpoints, log):
        self.config, self.schedule, self.steps_per_epoch, self.end = config, schedule, steps_per_epoch, end
        self.checkpoints, self.log = checkpoints, log
        self.path = workdir / "log.jsonl"
        self.history: list[dict] = []
        self._window_start, self._window_images = time.time(), 0

    def __call__(self, step: int, terms: dict) -> None:
        values = {k: float(v) for k, v in jax.device_get(terms).items()}
        self._window_images += self.config.batch_size
        if not all(math.isfinite(v) for v in values.values()):
            good = self.checkpoints.drop_from(step)
            raise TrainingDiverged(
                f"non-finite loss or parameters at step {step + 1} ({values}); last good checkpoint: {good}")
        if (step + 1) % self.config.log_every_steps and step + 1 != self.end:
            return
        elapsed = time.time() - self._window_start
        record = dict(
            step=step + 1, epoch=(step + 1) / self.steps_per_epoch, lr=float(self.schedule(step)),
            images_per_s_per_device=self._window_images / max(elapsed, 1e-9) / jax.device_count(), **values,
        )
        self.history.append(record)
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        line = "step {step:6d}  loss {loss:.4f}  lr {lr:.2e}  {images_per_s_per_device:.1f} img/s/dev".format(**record)
        self.log(line + "".join(f"  {k} {v:.4f}" for k, v in values.items() if k != "loss"))
        self._window_start, self._window_images = time.time(), 0


class _Evaluations:
    """The retrieval evaluation of the encoder at a step, kept in `records` and eval.jsonl; the
    fits it makes (PCA-w on the gallery) are kept under eval/step-N/."""

    def __init__(self, config: ConfigDict, encoder, workdir: Path, log):
        self.evaluator = Evaluator(config, encoder, workdir / "eval", log)
        self.path = workdir / "eval.jsonl"
        self.records: list[dict] = []

    def __call__(self, state: Any, step: int) -> None:
        self.records.append(self.evaluator(state, step))
        with open(self.path, "a") as f:
            f.write(json.dumps(self.records[-1]) + "\n")


class Evaluator:
    """Retrieval quality of the encoder being trained on a labelled benchmark, through the same
    code as `tmrjax eval` (`evaluation.fit_and_embed`, `metrics.evaluate`): the `hu2024`
    retrieval pipeline on the encoder's current variables, raw and, with
    ``eval.pca_whitening_dim``, PCA-whitened on the benchmark's gallery (hu2024 Sec. 4.2)."""

    def __init__(self, config: ConfigDict, encoder: Hu2024Encoder, fit_root: Path, log):
        from ..data.sources import open_benchmark
        from ..pipeline import load_config

        self.config = config
        self.fit_root = Path(fit_root)
        self.log = log
        self.benchmark = open_benchmark(config.eval.dataset, max_distractors=config.eval.max_distractors)
        self.pca_dim = int(config.eval.get("pca_whitening_dim", 0))
        dtype = jnp.bfloat16 if config.model.get("dtype") == "bfloat16" else jnp.float32
        self.module = build_backbone(HU2024, config.model.layout, ("feature",), dtype=dtype,
                                     model=config.model.to_dict())
        size = config.augment.output_size
        if self.pca_dim:
            dim = feature_dim(encoder, size)
            if self.pca_dim > dim:
                raise ValueError(f"eval.pca_whitening_dim={self.pca_dim} exceeds the encoder's {dim}-d features")
        gallery = self.benchmark.num_distractors
        if self.pca_dim and gallery <= self.pca_dim:
            raise ValueError(
                f"eval.pca_whitening_dim={self.pca_dim} needs more than {self.pca_dim} gallery images to "
                f"learn from; {config.eval.dataset} with eval.max_distractors={config.eval.max_distractors} "
                f"has {gallery}"
            )
        self.configs = []
        for dim in [0] + ([self.pca_dim] if self.pca_dim else []):
            c = load_config("hu2024")
            c.name = f"{config.name}-eval" + (f"-pcaw{dim}" if dim else "")
            c.embed.resolutions = (size,)
            c.embed.pca_whitening_dim = dim
            c.batch_size = config.eval.batch_size
            c.fit.num_images = max(gallery, 1)  # the whole gallery, as hu2024 learns PCA-w
            self.configs.append(c)

    def pipelines(self, state: Any, step: int) -> list:
        from ..pipeline import Pipeline

        variables = {"params": state.params, "batch_stats": state.batch_stats}
        backbone = {"arch": HU2024, "layout": self.config.model.layout,
                    "weights": f"{self.config.name} training, step {step}"}
        return [Pipeline(config=c, module=self.module, variables=variables, backbone=backbone) for c in self.configs]

    def __call__(self, state: Any, step: int) -> dict:
        from ..evaluation import fit_and_embed
        from ..metrics import evaluate

        pipelines = self.pipelines(state, step)
        fit_dirs = [self.fit_root / f"step-{step}" / p.name if p.config.embed.pca_whitening_dim else None
                    for p in pipelines]
        _, vectors = fit_and_embed(self.benchmark, pipelines, fit_dirs, progress=False, log=lambda *_: None)
        results = [evaluate(v, self.benchmark.query_rows, self.benchmark.relevant, k=100) for v in vectors]
        raw = results[0]
        record = {"step": step, "dataset": self.config.eval.dataset, "protocol": raw.protocol,
                  "NAR": raw.nar, "MAP@100": raw.map_at_k, "MAP": raw.map}
        line = (f"eval  {step:6d}  {self.config.eval.dataset}: NAR {raw.nar:.4f}  "
                f"MAP@100 {100 * raw.map_at_k:.2f}  MAP {100 * raw.map:.2f}")
        if self.pca_dim:
            white = results[1]
            record["pca_whitened"] = {"dim": self.pca_dim, "NAR": white.nar, "MAP@100": white.map_at_k,
                                      "MAP": white.map}
            line += (f"  | PCA-w {self.pca_dim}: NAR {white.nar:.4f}  MAP@100 {100 * white.map_at_k:.2f}  "
                     f"MAP {100 * white.map:.2f}")
        self.log(f"{line}  ({raw.protocol})")
        return record


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


def export_encoder(state: Any, config: ConfigDict, out_dir: str | os.PathLike, command: str) -> Path:
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
