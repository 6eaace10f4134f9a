"""tmrjax/train/cosface.py and the trainer's "cosface" objective: hu2024 Sec. 4.2 pre-training.

The 8-device step is checked against the single-device reference (vmap over the same shards),
labelled folders against their class folders, and a MoCo run is started from the exported
pre-trained encoder.
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from tmrjax import cli
from tmrjax.data.sources import FolderSource
from tmrjax.pipeline import load_config
from tmrjax.train import cosface, trainer
from tmrjax.train.data import BatchLoader, TrainingImages
from tmrjax.train.objective import AXIS
from tmrjax.train.trainer import train

DEVICES = 8
GLOBAL_BATCH = 16
CLASSES = 4


def tiny_config(**changes):
    """cosface_hu2024 on test_moco.py's tiny trunk (one block per stage, width 8, 64 px, no hu2024 modules)."""
    c = load_config("cosface_hu2024")
    c.data.image_size = 72
    c.data.workers = 2
    c.augment.output_size = 64
    c.model.blocks_per_stage = (1, 1, 1, 1)
    c.model.width = 8
    c.model.projection_dim = 16
    c.model.dtype = "float32"
    c.model.eca = c.model.coordinate_attention = c.model.awff = c.model.laff = False
    c.batch_size = GLOBAL_BATCH
    c.optim.warmup_epochs, c.optim.cycle_epochs, c.epochs = 1, 1, 2
    c.eval.every_steps = 0
    c.checkpoint_every_steps = 2
    c.log_every_steps = 1
    for key, value in changes.items():
        cli.set_config_field(c, key, value)
    return c


def host_copy(tree):
    return jax.tree.map(lambda x: np.array(x, copy=True), jax.device_get(tree))


def relative_error(a, b):
    pairs = list(zip(jax.tree.leaves(a), jax.tree.leaves(b)))
    diff = sum(np.sum((np.asarray(x, np.float64) - np.asarray(y, np.float64)) ** 2) for x, y in pairs)
    norm = sum(np.sum(np.asarray(y, np.float64) ** 2) for _, y in pairs)
    return float(np.sqrt(diff / max(norm, 1e-30)))


def test_sharded_step_equals_reference_step():
    config = tiny_config()
    encoder = trainer.build_encoder(config)
    tx, _ = trainer.build_optimizer(config, steps_per_epoch=2)
    mesh = trainer.make_mesh()
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (GLOBAL_BATCH, 72, 72, 3), dtype=np.uint8)
    labels = rng.integers(0, CLASSES, GLOBAL_BATCH).astype(np.int32)
    key = jax.random.key(3)
    state = host_copy(cosface.create_state(encoder, tx, config, CLASSES, jax.random.key(1)))
    sharded_step = cosface.COSFACE.train_step(encoder, tx, config, mesh)
    reference_step = cosface.COSFACE.reference_step(encoder, tx, config, DEVICES)
    replicated, sharded = NamedSharding(mesh, P()), NamedSharding(mesh, P(AXIS))
    for step in range(2):  # step 0 has learning rate 0 (warm-up); step 1 moves the parameters
        out, terms = host_copy(sharded_step(jax.device_put(host_copy(state), replicated),
                                            (jax.device_put(images, sharded), jax.device_put(labels, sharded)), key))
        ref, ref_terms = host_copy(reference_step(jax.tree.map(jnp.asarray, state),
                                                  (jnp.asarray(images), jnp.asarray(labels)), key))
        assert sorted(terms) == ["accuracy", "loss", "param_norm"]
        for name in terms:
            np.testing.assert_allclose(terms[name], ref_terms[name], rtol=1e-5, atol=1e-6, err_msg=name)
        assert np.isfinite(terms["loss"]) and 0 <= terms["accuracy"] <= 1
        for field in ("params", "batch_stats", "class_weights", "opt_state"):
            assert relative_error(getattr(out, field), getattr(ref, field)) <= 1e-5, f"step {step}: {field}"
        assert int(out.step) == step + 1
        state = out
    assert relative_error(state.class_weights, host_copy(cosface.create_state(
        encoder, tx, config, CLASSES, jax.random.key(1))).class_weights) > 0, "class weights never moved"


# ------------------------------------------------------------------------------ labelled data


@pytest.fixture(scope="module")
def labelled(tmp_path_factory, mark_factory):
    """4 class folders of 5 marks each (a mark drawn at several sizes: one group)."""
    draw_mark, _ = mark_factory
    root = tmp_path_factory.mktemp("labelled")
    for c in range(CLASSES):
        (root / f"brand{c}" / "sub").mkdir(parents=True)
        for i, size in enumerate([(60, 60), (80, 50), (50, 90), (70, 70), (64, 40)]):
            where = root / f"brand{c}" / ("sub" if i == 4 else "")
            draw_mark(c, size).convert("RGB").save(where / f"{i}.png")
    return root


def test_folder_classes_are_the_top_level_subfolders(labelled):
    source = TrainingImages(FolderSource(labelled), 32, labelled=True)
    assert source.class_names == ["brand0", "brand1", "brand2", "brand3"]
    assert len(source) == 20
    for i, label in enumerate(source.labels):
        assert source.name(i).split("/")[0] == source.class_names[label]
    assert TrainingImages(FolderSource(labelled), 32).labels is None


def test_images_outside_a_class_folder_are_refused(labelled, tmp_path):
    import shutil

    shutil.copytree(labelled, tmp_path / "data")
    shutil.copy(labelled / "brand0" / "0.png", tmp_path / "data" / "stray.png")
    with pytest.raises(ValueError, match=r"1 images \(e.g. stray.png\) lie outside a class folder"):
        TrainingImages(FolderSource(tmp_path / "data"), 32, labelled=True)


def test_a_replaced_unreadable_image_brings_its_own_label(labelled, tmp_path):
    import shutil

    shutil.copytree(labelled, tmp_path / "data")
    (tmp_path / "data" / "brand1" / "0.png").write_bytes(b"not a png")
    source = TrainingImages(FolderSource(tmp_path / "data"), 32, labelled=True)
    loader = BatchLoader(source, global_batch=20, seed=0, workers=2)
    [(_, (images, labels))] = list(loader.iterate(0, 1))
    assert images.shape == (20, 32, 32, 3) and labels.dtype == np.int32
    bad = [source.name(i) for i in range(len(source))].index("brand1/0.png")
    assert [p for p, _ in loader.failures.failures] == ["brand1/0.png"]
    # the next item stands in for it, with that item's label
    assert sorted(labels.tolist()) == sorted(np.delete(source.labels, bad).tolist() + [source.labels[bad + 1]])


# --------------------------------------------------------------------- the trainer's objective


@pytest.fixture(scope="module")
def pretrained(labelled, tmp_path_factory):
    root = tmp_path_factory.mktemp("cosface")
    lines = []
    result = train(tiny_config(**{"data.source": str(labelled)}), root / "run", log=lines.append)
    export = trainer.export_encoder(result.state, tiny_config(), root / "encoder", "test")
    return result, export, lines


def test_cosface_run_trains_checkpoints_and_exports(pretrained):
    result, export, lines = pretrained
    assert result.steps == 2 and [r["step"] for r in result.history] == [1, 2]
    assert all(np.isfinite(r["loss"]) for r in result.history)
    assert "(cosface): 20 images in 4 classes" in lines[0]
    assert json.loads((export / "meta.json").read_text())["format"] == "tmrjax-encoder/1"


def test_moco_starts_from_the_pretrained_encoder(pretrained, labelled, tmp_path):
    _, export, _ = pretrained
    config = load_config("moco_small_cpu")
    for key in ("data", "augment", "model"):
        config[key] = tiny_config()[key]
    config.data.source = str(labelled)
    config.moco.queue_size, config.moco.min_negatives, config.batch_size = 16, 8, GLOBAL_BATCH
    config.init_encoder = str(export)
    config.eval.every_steps = 0
    lines = []
    result = train(config, tmp_path / "moco", max_steps=1, log=lines.append)
    assert any(line.startswith("init       encoder from") for line in lines)
    loaded = trainer.load_encoder(export, config)
    # step 0 has learning rate 0: the key encoder is still the loaded encoder
    for a, b in zip(jax.tree.leaves(result.state.params_k), jax.tree.leaves(loaded["params"])):
        np.testing.assert_allclose(np.asarray(a), b, atol=1e-6)


def test_an_encoder_of_another_model_is_refused(pretrained):
    _, export, _ = pretrained
    config = tiny_config()
    config.model.width = 16
    with pytest.raises(ValueError, match="model.width 8 there, 16 here"):
        trainer.load_encoder(export, config)


def test_cosface_needs_a_data_source(tmp_path):
    with pytest.raises(ValueError, match="data.source is empty; .* with group labels"):
        train(tiny_config(), tmp_path / "run")
