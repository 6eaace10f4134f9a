"""tmrjax/train/trainer.py and `tmrjax train`: resume, divergence, config pass-through, export.

Every run trains a tiny Hu2024Encoder on 40 synthetic marks (2 steps per epoch of 16) on
the 8 CPU devices. All runs of the real encoder use one config (`TINY`), so the persistent
compilation cache of tests/conftest.py compiles their step once; the `tmrjax train` test
passes the same values as ``--set`` options. Divergence is simulated outside the compiled
step (a wrapper around it), so it needs no compilation of its own.
"""

from __future__ import annotations

import json
import math
import re
import shlex
import shutil

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from tmrjax import cli
from tmrjax.pipeline import load_config
from tmrjax.train import moco, trainer
from tmrjax.train.objective import Objective, augment_config
from tmrjax.train.trainer import TrainingDiverged, train

NUM_MARKS = 40
# moco_small_cpu shrunk (see tiny_config in test_moco.py): the same values there.
TINY = {
    "data.image_size": 72,
    "augment.output_size": 64,
    "model.blocks_per_stage": (1, 1, 1, 1),
    "model.width": 8,
    "model.projection_dim": 16,
    "model.eca": False,
    "model.coordinate_attention": False,
    "model.awff": False,
    "model.laff": False,
    "moco.queue_size": 64,
    "moco.hard_negative_threshold": 0.4,  # the config turns the selection off; the tests keep it
    "moco.min_negatives": 8,
    "batch_size": 16,
    # Not in the compiled step:
    "data.workers": 2,
    "eval.every_steps": 0,
    "checkpoint_every_steps": 2,
    "log_every_steps": 1,
}
TERMS = ("loss", "info_nce", "co2", "koleo", "accuracy", "hard_negatives")


def tiny_config(source, **changes):
    config = load_config("moco_small_cpu")
    for key, value in {**TINY, "data.source": str(source), **changes}.items():
        cli.set_config_field(config, key, value)  # as `tmrjax train --set` does
    return config


@pytest.fixture(scope="module")
def marks(tmp_path_factory, mark_factory):
    _, write_marks = mark_factory
    root = tmp_path_factory.mktemp("train_marks")
    write_marks(root, count=NUM_MARKS)
    return root


def quiet_train(*args, **kwargs):
    lines = []
    result = train(*args, log=lines.append, **kwargs)
    return result, lines


def log_records(workdir):
    return [json.loads(line) for line in (workdir / "log.jsonl").read_text().splitlines()]


def checkpoint_steps(workdir):
    return sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())


def without_timing(record):
    return {k: v for k, v in record.items() if k != "images_per_s_per_device"}


def assert_same_state(a, b):
    """Bit for bit: the same compiled step on the same inputs."""
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)):
        x, y = np.asarray(x), np.asarray(y)
        assert x.shape == y.shape and x.dtype == y.dtype, jax.tree_util.keystr(path)
        np.testing.assert_array_equal(x, y, err_msg=jax.tree_util.keystr(path))


def test_eight_cpu_devices():
    assert jax.device_count() == 8, "tests/conftest.py must force 8 host devices via XLA_FLAGS"


# ------------------------------------------------------------------------------------- resume


@pytest.fixture(scope="module")
def straight(marks, tmp_path_factory):
    """6 uninterrupted steps."""
    workdir = tmp_path_factory.mktemp("straight")
    result, lines = quiet_train(tiny_config(marks), workdir, max_steps=6)
    return workdir, result, lines


def test_uninterrupted_run_logs_every_step(straight):
    workdir, result, _ = straight
    assert result.steps == 6 and int(result.state.step) == 6
    assert [r["step"] for r in result.history] == [1, 2, 3, 4, 5, 6]
    assert [r["step"] for r in log_records(workdir)] == [1, 2, 3, 4, 5, 6]
    for record in result.history:
        assert all(math.isfinite(record[name]) for name in TERMS)
        assert record["epoch"] == record["step"] / 2
    assert checkpoint_steps(workdir) == [2, 4, 6]
    assert json.loads((workdir / "config.json").read_text())["moco"]["queue_size"] == 64


def test_a_queue_larger_than_half_the_data_is_warned_about(straight):
    *_, lines = straight  # 64 keys, 40 marks: last epoch's key of the anchor is in the queue
    [warning] = [line for line in lines if line.startswith("warning")]
    assert "moco.queue_size=64" in warning and "40 training images" in warning


@pytest.fixture(scope="module")
def stopped(marks, tmp_path_factory):
    """A run stopped after 3 steps (max_steps=3 saves step 3 as well as step 2)."""
    workdir = tmp_path_factory.mktemp("stopped")
    result, _ = quiet_train(tiny_config(marks), workdir, max_steps=3)
    return workdir, result


@pytest.mark.parametrize("killed", [False, True], ids=["stopped", "killed"])
def test_resume_gives_the_same_losses_and_state_as_an_uninterrupted_run(marks, straight, stopped, tmp_path,
                                                                        killed):
    """Resumed to 6 steps after a stop at step 3, or after a kill between step 3 and its
    checkpoint (the last checkpoint is then step 2)."""
    _, whole, _ = straight
    first_dir, first = stopped
    assert checkpoint_steps(first_dir) == [2, 3]
    workdir = tmp_path / "run"
    shutil.copytree(first_dir, workdir)
    if killed:
        shutil.rmtree(workdir / "checkpoints" / "3")
    start = 2 if killed else 3
    second, lines = quiet_train(tiny_config(marks), workdir, resume=True, max_steps=6)
    assert any(line.startswith(f"resume     from step {start} ") for line in lines)
    assert [r["step"] for r in first.history] == [1, 2, 3]
    assert [r["step"] for r in second.history] == list(range(start + 1, 7))
    resumed = [without_timing(r) for r in first.history[:start] + second.history]
    assert resumed == [without_timing(r) for r in whole.history]  # bit for bit
    assert_same_state(second.state, whole.state)


def test_a_workdir_with_checkpoints_needs_resume(marks, straight):
    workdir, _, _ = straight
    saved = (workdir / "config.json").read_text()
    with pytest.raises(ValueError, match="has checkpoints; pass resume=True"):
        quiet_train(tiny_config(marks, batch_size=8), workdir, max_steps=6)
    assert (workdir / "config.json").read_text() == saved  # the run's record is not overwritten


def test_resume_refuses_a_config_that_changes_the_run(marks, stopped, tmp_path):
    first_dir, _ = stopped
    workdir = tmp_path / "run"
    shutil.copytree(first_dir, workdir)
    saved = (workdir / "config.json").read_text()
    changed = tiny_config(marks, batch_size=8, **{"optim.learning_rate": 2e-3, "log_every_steps": 3})
    with pytest.raises(ValueError, match=r"in batch_size: 16 -> 8; optim\.learning_rate: 0\.001 -> 0\.002\. ") as e:
        quiet_train(changed, workdir, resume=True, max_steps=6)
    assert "log_every_steps" not in str(e.value).split("free to change")[0]
    assert (workdir / "config.json").read_text() == saved


def test_resume_may_change_what_is_not_trained(marks, stopped, tmp_path):
    first_dir, _ = stopped
    workdir = tmp_path / "run"
    shutil.copytree(first_dir, workdir)
    changed = tiny_config(marks, **{"log_every_steps": 3, "data.workers": 1, "eval.batch_size": 64,
                                    "init_encoder": str(tmp_path / "not-read-on-resume")})
    result, lines = quiet_train(changed, workdir, resume=True, max_steps=4)
    assert any(line.startswith("resume     from step 3 ") for line in lines)
    assert [r["step"] for r in result.history] == [4]
    assert json.loads((workdir / "config.json").read_text())["log_every_steps"] == 3


# ---------------------------------------------------------------------------------- divergence


def poisoned_step_factory(at_step, part):
    """`Objective.train_step` whose step from state.step == at_step returns NaN loss terms
    (part="terms"), or finite terms and NaN parameters (part="params": an overflowing update)."""
    real = Objective.train_step

    def make(self, encoder, tx, config, mesh):
        step_fn = real(self, encoder, tx, config, mesh)

        def step(state, batch, rng):
            current = int(state.step)
            state, terms = step_fn(state, batch, rng)
            if current == at_step and part == "terms":
                terms = {name: value * jnp.nan for name, value in terms.items()}
            if current == at_step and part == "params":
                state = state.replace(params=jax.tree.map(lambda p: p * jnp.nan, state.params))
            return state, terms

        return step

    return make


def diverge(marks, workdir, at_step, part):
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Objective, "train_step", poisoned_step_factory(at_step, part))
        with pytest.raises(TrainingDiverged) as info:
            quiet_train(tiny_config(marks), workdir, max_steps=6)
    return str(info.value)


@pytest.fixture(scope="module")
def nan_loss(marks, tmp_path_factory):
    """A run whose 4th step (state.step 3 -> 4) has a NaN loss; checkpoints every 2 steps."""
    workdir = tmp_path_factory.mktemp("nan_loss")
    return workdir, diverge(marks, workdir, at_step=3, part="terms")


def test_nan_loss_stops_the_run_before_its_checkpoint(nan_loss):
    workdir, message = nan_loss
    assert "non-finite loss" in message and "nan" in message
    assert f"last good checkpoint: step 2 in {workdir / 'checkpoints'}" in message
    assert checkpoint_steps(workdir) == [2]  # the checkpoint after the bad step is never written
    assert [r["step"] for r in log_records(workdir)] == [1, 2, 3]


def test_nan_loss_message_numbers_steps_as_the_log_does(nan_loss):
    """log.jsonl's "step" counts steps done (the 4th step logs step 4), and checkpoints are
    named the same way; the message must name the failed step in that numbering."""
    workdir, message = nan_loss
    assert [r["step"] for r in log_records(workdir)] == [1, 2, 3]  # steps 1..3 were fine
    assert "non-finite loss or parameters at step 4 " in message


def test_no_checkpoint_holds_a_diverged_state(marks, tmp_path):
    """The update of the 4th step overflows (its loss, computed before the update, is finite),
    so the 5th step, the first from that state, has a NaN loss. The state after 4 steps is not
    good: it must not be left as checkpoint 4, nor named as the last good checkpoint.
    (The same happens for real with optim.learning_rate=1e30: checkpoint 2 holds params of
    ~1e31 and the 3rd step's loss is NaN.)"""
    message = diverge(marks, tmp_path, at_step=3, part="params")
    assert "non-finite" in message
    saved = checkpoint_steps(tmp_path)
    with ocp.CheckpointManager((tmp_path / "checkpoints").absolute()) as manager:
        for step in saved:
            params = manager.restore(step, args=ocp.args.StandardRestore())["params"]
            assert all(np.isfinite(x).all() for x in jax.tree.leaves(params)), (
                f"checkpoint {step} holds non-finite params; the error says: {message}")
    assert saved == [2]
    assert f"last good checkpoint: step 2 in {tmp_path / 'checkpoints'}" in message


# ---------------------------------------------------------------------- config pass-through


class PooledEncoder(nn.Module):
    """A tiny stand-in encoder (colour means and spreads -> BatchNorm -> Dense), compiled in seconds."""

    projection_dim: int

    @nn.compact
    def __call__(self, images, train=False, project=False):
        feature = jnp.concatenate([jnp.mean(images, axis=(1, 2)), jnp.std(images, axis=(1, 2))], axis=-1)
        feature = nn.BatchNorm(use_running_average=not train, name="bn")(feature / 255.0)
        projection = nn.Dense(self.projection_dim, name="head")(feature)
        return (feature, projection) if project else feature


def test_loss_settings_reach_the_logged_terms(marks, tmp_path, monkeypatch):
    """A threshold above every cosine with no floor keeps no negative: InfoNCE and CO2 are 0
    and the loss is KoLeo times its weight, as the config says."""
    monkeypatch.setattr(trainer, "build_encoder", lambda config: PooledEncoder(config.model.projection_dim))
    config = tiny_config(marks, **{"moco.hard_negative_threshold": 1.01, "moco.min_negatives": 0,
                                   "moco.koleo_weight": 0.25})
    result, _ = quiet_train(config, tmp_path, max_steps=2)
    assert [r["step"] for r in result.history] == [1, 2]
    for record in log_records(tmp_path):
        assert record["hard_negatives"] == 0.0
        # Up to float rounding: InfoNCE is -log(e^{s+} / e^{s+}), CO2 compares two uniform
        # distributions over the (all masked) negatives.
        assert abs(record["info_nce"]) < 1e-6 and abs(record["co2"]) < 1e-6
        assert record["koleo"] > 0.0
        assert record["loss"] == pytest.approx(0.25 * record["koleo"], rel=1e-6)


def test_min_negatives_larger_than_the_queue_is_a_config_error(marks, tmp_path):
    """A floor of 256 negatives with a 64-key queue is a wrong config, and train()
    must name the field (as it does for moco.queue_size), not fail inside the traced loss."""
    config = tiny_config(marks, **{"moco.min_negatives": 256})
    with pytest.raises(ValueError, match=r"moco\.min_negatives"):
        quiet_train(config, tmp_path, max_steps=1)


# ------------------------------------------------------------------------- tmrjax train + export


@pytest.fixture(scope="module")
def cli_run(marks, tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    settings = {**TINY, "data.source": str(marks)}
    argv = ["train", "--config", "moco_small_cpu", "--workdir", str(root / "run"), "--max-steps", "2",
            "--export", str(root / "encoder")]
    for key, value in settings.items():
        argv += ["--set", f"{key}={value}"]
    return root, argv, cli.main(argv)


def test_cli_train_exports_the_encoder(cli_run):
    root, _, code = cli_run
    assert code == 0
    meta = json.loads((root / "encoder" / "meta.json").read_text())
    assert meta["format"] == "tmrjax-encoder/1"
    assert meta["trained_with"] == "moco_small_cpu"
    assert meta["steps"] == 2
    assert meta["model"]["width"] == 8 and list(meta["model"]["blocks_per_stage"]) == [1, 1, 1, 1]
    assert checkpoint_steps(root / "run") == [2]
    # The exported variables are the trained query encoder's, in bfloat16.
    with ocp.StandardCheckpointer() as checkpointer:
        exported = checkpointer.restore((root / "encoder" / "variables").absolute())
    with ocp.CheckpointManager((root / "run" / "checkpoints").absolute()) as manager:
        trained = manager.restore(2, args=ocp.args.StandardRestore())
    for name in ("params", "batch_stats"):
        leaves = jax.tree.leaves(exported[name])
        assert leaves and all(np.asarray(x).dtype == jnp.bfloat16 for x in leaves)
        for x, y in zip(leaves, jax.tree.leaves(trained[name])):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y).astype(jnp.bfloat16))


def test_cli_export_records_the_train_command(cli_run):
    """meta.json's "command" is the command that trained the encoder (the argv given to main)."""
    root, argv, _ = cli_run
    meta = json.loads((root / "encoder" / "meta.json").read_text())
    assert meta["command"] == "tmrjax " + shlex.join(argv)


def _square_marks(marks, size):
    """uint8 (N, size, size, 3) squares of the training marks: no padding or resizing differs
    between the pipeline's input path and a direct call of the encoder."""
    from PIL import Image

    paths = sorted(p for p in marks.rglob("*") if p.suffix in (".png", ".jpg"))[:5]
    return np.stack([np.asarray(Image.open(p).convert("RGB").resize((size, size))) for p in paths])


def test_exported_encoder_is_a_retrieval_backbone(cli_run, marks):
    """`--weights EXPORT` with the hu2024 config embeds with the trained encoder: the same
    vectors as the trainer's own retrieval encoding of the exported variables."""
    import tmrjax
    from tmrjax.evaluation import weights_by_arch, weights_tag
    from tmrjax.models import HU2024
    from tmrjax.pipeline import Pipeline

    root, _, _ = cli_run
    export = root / "encoder"
    meta = json.loads((export / "meta.json").read_text())
    config = load_config("hu2024")
    config.embed.resolutions = (64,)
    config.embed.pca_whitening_dim = 0
    pipeline = Pipeline.create(config, weights=export)
    assert pipeline.backbone["arch"] == HU2024
    assert pipeline.backbone["source_sha256"] == meta["variables_sha256"]
    assert pipeline.dim == 4 * 512 * 8 // 64  # TINY: no AWFF/LAFF, GAP of conv5 at width 8
    images = _square_marks(marks, 64)
    got = tmrjax.embed(list(images), pipeline)
    encoder = trainer.build_encoder(tiny_config(marks))
    variables = trainer.load_encoder(export, tiny_config(marks))
    expected = np.asarray(moco.encode(encoder, variables, jnp.asarray(images)))
    np.testing.assert_allclose(got, expected, atol=1e-5)
    # `tmrjax eval --weights EXPORT` gives it to the hu2024-resnet50 pipelines, tagged by its sha256.
    assert weights_by_arch([export]) == {HU2024: str(export)}
    assert weights_tag(str(export)) == f"encoder-{meta['variables_sha256'][:8]}"


def test_exported_encoder_refuses_other_settings_and_changed_variables(cli_run, tmp_path):
    from tmrjax.pipeline import Pipeline
    from tmrjax.weights import WeightsError, load_backbone

    root, _, _ = cli_run
    config = load_config("hu2024")
    widened = shutil.copytree(root / "encoder", tmp_path / "widened")
    meta = json.loads((widened / "meta.json").read_text())
    meta["model"]["width"] = 16
    (widened / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(WeightsError, match=r"do not fit the encoder its meta.json describes: shape mismatches: "
                                           r".*params/backbone/conv1/kernel: "
                                           r"expected \(7, 7, 3, 16\), got \(7, 7, 3, 8\)"):
        Pipeline.create(config, weights=widened)
    other = shutil.copytree(root / "encoder", tmp_path / "other")
    meta = json.loads((other / "meta.json").read_text())
    meta["variables_sha256"] = "0" * 64
    (other / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(WeightsError, match="sha256 differs from meta.json's variables_sha256"):
        load_backbone(other)
    with pytest.raises(WeightsError, match="checkpoint is arch='hu2024-resnet50', but 'resnet50' was requested"):
        load_backbone(root / "encoder", arch="resnet50")


@pytest.mark.parametrize("key, message", [
    ("moco.momentun", "no field 'momentun' there; fields: .*momentum"),
    ("mocco.momentum", "the config has no field 'mocco'"),
    ("augment.blur_sigmaa", "no field 'blur_sigmaa' there; fields: .*blur_sigma"),
])
def test_cli_train_refuses_a_misspelt_config_field(key, message, tmp_path, capsys):
    code = cli.main(["train", "--config", "moco_small_cpu", "--workdir", str(tmp_path / "run"), "--set", f"{key}=1"])
    assert code == 2
    assert re.search(f"--set {re.escape(key)}: {message}", capsys.readouterr().err)
    assert not (tmp_path / "run").exists()


def test_set_config_field_accepts_any_augmentation_field():
    config = load_config("moco_small_cpu")
    cli.set_config_field(config, "augment.blur_sigma", (0.1, 0.6))
    cli.set_config_field(config, "moco.momentum", 0.99)
    assert tuple(config.augment.blur_sigma) == (0.1, 0.6) and config.moco.momentum == 0.99
    assert augment_config(config).blur_sigma == (0.1, 0.6)


# ----------------------------------------------------------------------------------------
# Periodic retrieval evaluation (raw and, as hu2024 Sec. 4.2 evaluates, PCA-whitened)


def test_evaluation_reports_raw_and_pca_whitened_retrieval(monkeypatch, mark_factory, marks, tmp_path):
    import tmrjax.data.sources
    from tmrjax.data.sources import Benchmark

    draw_mark = mark_factory[0]
    queries = [{"image": np.asarray(draw_mark(g, size).convert("RGB")), "id": f"g{g}-{m}".encode(), "group": g}
               for g in range(3) for m, size in enumerate([(96, 96), (128, 80)])]
    gallery = [{"image": np.asarray(draw_mark(100 + i).convert("RGB")), "id": f"d{i}".encode(), "group": -1}
               for i in range(24)]
    bench = Benchmark.from_records("tiny/bench", queries, gallery)
    monkeypatch.setattr(tmrjax.data.sources, "open_benchmark", lambda *a, **k: bench)
    config = tiny_config(marks, **{"eval.every_steps": 1, "eval.batch_size": 8, "eval.pca_whitening_dim": 4})
    encoder = trainer.build_encoder(config)
    variables = encoder.init(jax.random.key(0), jnp.zeros((2, 64, 64, 3)), train=False, project=True)
    state = moco.TrainState(step=0, params=variables["params"], batch_stats=variables["batch_stats"],
                            params_k=None, batch_stats_k=None, opt_state=None, queue=None, queue_ptr=None)
    lines = []
    record = trainer.Evaluator(config, encoder, tmp_path / "eval", lines.append)(state, 7)
    assert record["step"] == 7 and record["protocol"] == "metu-official"
    assert 0 <= record["NAR"] <= 1 and 0 < record["MAP@100"] <= 1
    white = record["pca_whitened"]
    assert white["dim"] == 4 and 0 <= white["NAR"] <= 1 and 0 < white["MAP@100"] <= 1
    [line] = lines
    assert "NAR" in line and "PCA-w 4: NAR" in line
    # PCA-w is fitted by `tmrjax fit`'s code on the gallery only, never on a query
    [fitted] = (tmp_path / "eval" / "step-7").glob("*/pipeline.json")
    data = json.loads(fitted.read_text())["data"]
    assert data["images"].startswith("tiny/bench:gallery") and data["images_used"] == 24

    config.eval.pca_whitening_dim = 257  # the tiny encoder's feature: GAP of its 256-channel end map
    with pytest.raises(ValueError, match="eval.pca_whitening_dim=257 exceeds the encoder's 256-d features"):
        trainer.Evaluator(config, encoder, tmp_path / "eval", lines.append)
    config.eval.pca_whitening_dim = 24  # 24 gallery marks cannot give 24 whitened dimensions
    with pytest.raises(ValueError, match="eval.pca_whitening_dim=24 needs more than 24 gallery images"):
        trainer.Evaluator(config, encoder, tmp_path / "eval", lines.append)
