"""tmrjax/train/moco.py: the data-parallel MoCo step on 8 CPU devices.

The 8-device step (`moco.MOCO.train_step`, shard_map) is checked against the single-device
reference (`moco.MOCO.reference_step`, vmap) on a tiny Hu2024Encoder, and the queue, the
shuffled BatchNorm and the un-shuffling are checked with a probe encoder whose output
is the id written into each image's pixels and which records, per device, which images
the query and the key encoder see.

The tiny config (`tiny_config`) is kept identical to the one in test_trainer.py, so the
persistent compilation cache of tests/conftest.py compiles the real step only once.
"""

from __future__ import annotations

import threading

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from tmrjax.pipeline import load_config
from tmrjax.train import moco, trainer

DEVICES = 8
GLOBAL_BATCH = 16  # 2 per device
STEPS_PER_EPOCH = 2  # test_trainer.py trains on 40 images: 40 // 16


def tiny_config():
    """moco_small_cpu on a one-block-per-stage, width-8 trunk at 64 x 64 (compiles in ~1 min).

    64 px rather than 32: at 32 px the last stage is 1 x 1, so a BatchNorm over a shard of 2
    images sees 2 numbers and turns float noise into O(1) differences (and CAME turns a noise
    gradient into a full-size step), which no data-parallel comparison survives. The hu2024
    modules are off: they add BatchNorms of the same kind, double the compile time, and their
    convolution biases feed BatchNorms (zero gradient in exact arithmetic), which CAME's
    normalised steps turn into full-size steps of float noise that two implementations take
    in opposite directions.
    """
    c = load_config("moco_small_cpu")
    c.data.image_size = 72
    c.augment.output_size = 64
    c.model.blocks_per_stage = (1, 1, 1, 1)
    c.model.width = 8
    c.model.projection_dim = 16
    c.model.eca = c.model.coordinate_attention = c.model.awff = c.model.laff = False
    c.moco.queue_size = 64
    c.moco.hard_negative_threshold = 0.4  # moco_small_cpu turns the selection off; test it here
    c.moco.min_negatives = 8
    c.batch_size = GLOBAL_BATCH
    return c


def random_batches(count, size, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (GLOBAL_BATCH, size, size, 3), dtype=np.uint8) for _ in range(count)]


def host_copy(tree):
    return jax.tree.map(lambda x: np.array(x, copy=True), jax.device_get(tree))


def sharded_step_on(step_fn, mesh, state, images, rng):
    """One step with state and images placed as trainer.train places them; host copies out."""
    replicated, sharded = NamedSharding(mesh, P()), NamedSharding(mesh, P(moco.AXIS))
    state, terms = step_fn(jax.device_put(host_copy(state), replicated), (jax.device_put(images, sharded),), rng)
    return host_copy(state), host_copy(terms)


def reference_step_on(step_fn, state, images, rng):
    state, terms = step_fn(jax.tree.map(jnp.asarray, host_copy(state)), (jnp.asarray(images),), rng)
    return host_copy(state), host_copy(terms)


def test_eight_cpu_devices():
    assert jax.device_count() == DEVICES, "tests/conftest.py must force 8 host devices via XLA_FLAGS"


# ------------------------------------------------------- data parallel == single-device reference


def relative_error(actual, expected):
    """||a - b|| / ||b|| over all leaves of two trees (float64)."""
    pairs = list(zip(jax.tree.leaves(actual), jax.tree.leaves(expected)))
    assert pairs and len(pairs) == len(jax.tree.leaves(actual))
    diff = sum(np.sum((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2) for a, b in pairs)
    norm = sum(np.sum(np.asarray(b, np.float64) ** 2) for _, b in pairs)
    return float(np.sqrt(diff / max(norm, 1e-30)))


def update(new, old):
    return jax.tree.map(lambda a, b: np.asarray(a, np.float64) - np.asarray(b, np.float64), new, old)


@pytest.fixture(scope="module")
def real():
    """Tiny config, encoder, CAME as the trainer builds it, the state after one step (step 0
    has learning rate 0 in the warm-up), 4 batches, the step rng, the compiled 8-device step."""
    assert jax.device_count() == DEVICES
    config = tiny_config()
    encoder = trainer.build_encoder(config)
    tx, _ = trainer.build_optimizer(config, STEPS_PER_EPOCH)
    mesh = trainer.make_mesh()
    sharded_step = moco.MOCO.train_step(encoder, tx, config, mesh)
    batches = random_batches(4, config.data.image_size)
    rng = jax.random.key(11)
    state = moco.create_state(encoder, tx, config, jax.random.key(7))
    state, _ = sharded_step_on(sharded_step, mesh, state, batches[0], rng)
    return config, encoder, tx, state, batches[1:], rng, (sharded_step, mesh)


@pytest.fixture(scope="module")
def step_pairs(real):
    """Steps 1, 2, 3 of the data-parallel run; at each, the reference step from the same state.

    Each step starts both from one state because two trajectories drift apart whichever
    implementation is right: a float difference of 1e-6 after one step is amplified by orders
    of magnitude in the next (BatchNorm over 2-image shards, the top-k choice of negatives).
    """
    config, encoder, tx, state, batches, rng, (sharded_step, mesh) = real
    reference_step = moco.MOCO.reference_step(encoder, tx, config, DEVICES)
    pairs = []
    for images in batches:
        out, terms = sharded_step_on(sharded_step, mesh, state, images, rng)
        ref, ref_terms = reference_step_on(reference_step, state, images, rng)
        pairs.append((state, (out, terms), (ref, ref_terms)))
        state = out
    return pairs


def test_sharded_step_equals_reference_step(step_pairs):
    assert len(step_pairs) == 3
    for before, (state, terms), (ref, ref_terms) in step_pairs:
        step = int(before.step)
        assert sorted(terms) == sorted(ref_terms) == [
            "accuracy", "co2", "hard_negatives", "info_nce", "koleo", "loss", "param_norm"]
        for name in terms:
            assert terms[name].shape == () and terms[name].dtype == np.float32
            np.testing.assert_allclose(terms[name], ref_terms[name], rtol=1e-5, atol=1e-6,
                                       err_msg=f"step {step}: {name}")
        assert int(state.step) == int(ref.step) == step + 1
        assert int(state.queue_ptr) == int(ref.queue_ptr) == (step + 1) * GLOBAL_BATCH % 64
        # Relative to the whole field (a per-leaf ratio is float noise on leaves whose gradient
        # is a near-cancelling sum, e.g. BatchNorm scales). The parameters by their update,
        # what the step computed; the momentum encoder's moves by 1e-3 of that, below float32
        # resolution of its weights, so by value.
        moved = update(state.params, before.params)
        error = relative_error(moved, update(ref.params, before.params))
        assert error <= 1e-5, f"step {step}: the params update differs by {error:.2e}"
        assert relative_error(moved, jax.tree.map(np.zeros_like, moved)) > 0, f"step {step}: no update"
        for field in ("params_k", "batch_stats", "batch_stats_k", "queue", "opt_state"):
            a, b = getattr(state, field), getattr(ref, field)
            assert jax.tree.structure(a) == jax.tree.structure(b)
            error = relative_error(a, b)
            assert error <= 1e-5, f"step {step}: {field} differs by {error:.2e}"


def test_reference_with_another_grouping_differs(real, step_pairs):
    """Grouping the same global batch into 4 shards of 4 changes the BatchNorm statistics of
    both encoders, and the comparison above notices: it can fail."""
    config, encoder, tx, _, batches, rng, _ = real
    before, (state, terms), _ = step_pairs[0]
    other, other_terms = reference_step_on(moco.MOCO.reference_step(encoder, tx, config, 4),
                                           before, batches[0], rng)
    assert abs(float(other_terms["loss"]) - float(terms["loss"])) > 1e-3 * abs(float(terms["loss"]))
    assert relative_error(other.queue, state.queue) > 1e-2
    assert relative_error(other.batch_stats_k, state.batch_stats_k) > 1e-3
    assert relative_error(update(other.params, before.params), update(state.params, before.params)) > 1e-2


# ----------------------------------------------------------------------- probe encoder


class Probe(nn.Module):
    """Stands in for the encoder: the projection of an image is one_hot(id - 1), where the id
    is the value of its centre pixel, so a key names its image exactly.

    Every call reports (tag, device, ids seen, in order) to `record`; `tag` is a parameter
    set to 0 in `params` and 1 in `params_k`, so calls of the query and the key encoder
    can be told apart. A dummy batch_stats entry stands in for BatchNorm's.
    """

    dim: int
    record: object = None

    @nn.compact
    def __call__(self, images, train=False, project=False):
        tag = self.param("tag", nn.initializers.zeros, ())
        self.variable("batch_stats", "unused", lambda: jnp.zeros((), jnp.float32))
        centre = images.shape[1] // 2
        ids = jnp.round(images[:, centre, centre, 0]).astype(jnp.int32)
        if self.record is not None and not self.is_initializing():
            jax.debug.callback(self.record, tag, jax.lax.axis_index(moco.AXIS), ids)
        projection = jax.nn.one_hot(ids - 1, self.dim) * (1.0 + 0.0 * tag)
        return projection, projection


class Recorder:
    """Thread-safe list of (tag, device, ids) from the probe's debug callbacks."""

    def __init__(self):
        self.calls = []
        self._lock = threading.Lock()

    def __call__(self, tag, device, ids):
        with self._lock:
            self.calls.append((round(float(tag)), int(device), tuple(int(i) for i in np.asarray(ids))))

    def take(self):
        jax.effects_barrier()
        with self._lock:
            calls, self.calls = self.calls, []
        return calls


def probe_config():
    """An identity augmentation (full crop, nothing random applied) at 16 px, InfoNCE over the
    whole queue (no hard-negative selection), a key encoder that keeps its own weights."""
    c = tiny_config()
    c.data.image_size = 16
    c.augment.output_size = 16
    c.augment.crop_scale = (1.0, 1.0)
    c.augment.crop_ratio = (1.0, 1.0)
    for name in ("rotation_prob", "flip_prob", "jitter_prob", "grayscale_prob", "blur_prob", "invert_prob"):
        c.augment[name] = 0.0
    c.moco.hard_negative_threshold = None
    c.moco.momentum = 1.0
    return c


def id_images(ids, size=16):
    """uint8 images, image i filled with the value ids[i]."""
    ids = np.asarray(ids, np.uint8)
    return np.broadcast_to(ids[:, None, None, None], (len(ids), size, size, 3)).copy()


@pytest.fixture(scope="module")
def probe():
    """(compiled 8-device step, initial state with tag 0 / 1, recorder, mesh)."""
    config = probe_config()
    recorder = Recorder()
    encoder = Probe(dim=config.model.projection_dim, record=recorder)
    tx = optax.sgd(1e-3)
    state = moco.create_state(encoder, tx, config, jax.random.key(3))
    state = state.replace(params_k=jax.tree.map(jnp.ones_like, state.params_k))
    mesh = trainer.make_mesh()
    return moco.MOCO.train_step(encoder, tx, config, mesh), host_copy(state), recorder, mesh


@pytest.fixture(scope="module")
def probe_run(probe):
    """Five steps (one more than the queue holds) on batches of ids 1..16 in a new order each."""
    step_fn, state, recorder, mesh = probe
    recorder.take()
    order = np.random.default_rng(5)
    ids = [order.permutation(GLOBAL_BATCH) + 1 for _ in range(5)]
    runs, calls = [], []
    for step_ids in ids:
        runs.append(sharded_step_on(step_fn, mesh, runs[-1][0] if runs else state, id_images(step_ids),
                                    jax.random.key(0)))
        calls.append(recorder.take())
    return state, ids, runs, calls


def queue_ids(queue):
    """The id each queue row names (0: not a one-hot row)."""
    queue = np.asarray(queue)
    is_one_hot = np.isclose(queue.max(axis=1), 1.0, atol=1e-6) & np.isclose(np.abs(queue).sum(axis=1), 1.0, atol=1e-5)
    return np.where(is_one_hot, queue.argmax(axis=1) + 1, 0)


def test_queue_rows_are_the_global_batch_keys_in_order(probe_run):
    state0, ids, runs, _ = probe_run
    queue0 = np.asarray(state0.queue)
    assert queue0.shape == (64, 16) and queue0.dtype == np.float32
    assert not queue_ids(queue0).any()
    previous = queue0
    for step, ((state, _), step_ids) in enumerate(zip(runs, ids)):
        ptr = step * GLOBAL_BATCH % 64
        assert int(state.queue_ptr) == (ptr + GLOBAL_BATCH) % 64
        assert state.queue.dtype == np.float32
        rows = slice(ptr, ptr + GLOBAL_BATCH)
        np.testing.assert_array_equal(queue_ids(state.queue[rows]), step_ids, err_msg=f"step {step}")
        np.testing.assert_allclose(np.linalg.norm(state.queue[rows], axis=1), 1.0, rtol=1e-6)
        untouched = np.ones(64, bool)
        untouched[rows] = False
        np.testing.assert_array_equal(state.queue[untouched], previous[untouched], err_msg=f"step {step}")
        previous = state.queue
    # After 5 steps of 16 into 64 rows the pointer wrapped once: rows 0..15 hold step 4's keys.
    final = queue_ids(runs[-1][0].queue)
    np.testing.assert_array_equal(final, np.concatenate([ids[4], ids[1], ids[2], ids[3]]))


def test_keys_are_encoded_shuffled_and_queries_locally(probe_run):
    _, ids, _, calls = probe_run
    groups_per_step = []
    for step, (step_ids, step_calls) in enumerate(zip(ids, calls)):
        query = {device: seen for tag, device, seen in step_calls if tag == 0}
        key = {device: seen for tag, device, seen in step_calls if tag == 1}
        assert len(step_calls) == 2 * DEVICES and sorted(query) == sorted(key) == list(range(DEVICES))
        local = {d: tuple(int(i) for i in step_ids[2 * d : 2 * d + 2]) for d in range(DEVICES)}
        # The query encoder sees its own shard, in order: its BN statistics are local.
        assert query == local, f"step {step}"
        # The key encoder of each device sees a slice of a permutation of the global batch, so
        # the key batches are another partition of it than the query batches. The permutation
        # is uniform (as MoCo's), so now and then one device draws its own shard (with 2 images
        # per device, 1 in 120): here device 1 at step 4, and never more than one at a time.
        assert sorted(i for seen in key.values() for i in seen) == list(range(1, GLOBAL_BATCH + 1))
        key_groups = {frozenset(seen) for seen in key.values()}
        assert key_groups != {frozenset(seen) for seen in local.values()}, f"step {step}: not shuffled"
        own = [d for d in range(DEVICES) if set(key[d]) == set(local[d])]
        assert len(own) <= 1, f"step {step}: devices {own} encoded their own shard"
        groups_per_step.append(key_groups)
    # The permutation depends on the step.
    assert len({frozenset(g) for g in groups_per_step}) == len(groups_per_step)


def test_positive_key_of_each_query_is_its_own(probe_run):
    """With one-hot probes, a query's positive logit is 1 / tau only if the un-shuffled key is
    the key of the same image; InfoNCE over the (known) previous queue then has one value."""
    config = probe_config()
    tau = config.moco.temperature
    state0, ids, runs, _ = probe_run
    queue = np.asarray(state0.queue, np.float64)
    for step, ((state, terms), step_ids) in enumerate(zip(runs, ids)):
        q = np.eye(16)[step_ids - 1]
        logits = np.concatenate([np.ones((16, 1)), q @ queue.T], axis=1) / tau
        top = logits.max(axis=1, keepdims=True)
        expected = np.mean(np.log(np.exp(logits - top).sum(axis=1)) + top[:, 0] - logits[:, 0])
        np.testing.assert_allclose(terms["info_nce"], expected, rtol=1e-5, err_msg=f"step {step}")
        np.testing.assert_allclose(terms["accuracy"], 1.0)
        np.testing.assert_allclose(terms["hard_negatives"], config.moco.queue_size)
        queue = np.asarray(state.queue, np.float64)


def test_check_queue_needs_whole_global_batches():
    config = tiny_config()
    moco.check_queue(config, GLOBAL_BATCH)  # 64 = 4 x 16
    config.moco.queue_size = 40
    with pytest.raises(ValueError, match=r"moco\.queue_size=40 .*global batch 16"):
        moco.check_queue(config, GLOBAL_BATCH)
