"""A small member of the hu2024 family that trains on 2 CPU cores in minutes.

Same method as ``moco_hu2024`` (MoCo v2, hard negatives, CO2, KoLeo, CAME, restarts, all
encoder modules) on a narrow ResNet (one bottleneck per stage, stem width 16) at 64x64, with a
1,024-key queue and batch 64, and a floor of 256 hard negatives (see below). Used for the CPU
proof run and the data-parallel tests; it shows whether the machinery trains, not what the full
recipe reaches (on logo_groups/small it has not yet beaten the untrained encoder's MAP@100).
"""

from . import moco_hu2024


def get_config():
    c = moco_hu2024.get_config()
    c.name = "moco_small_cpu"
    c.data.source = "tfds:logo_groups/small:queries+gallery"
    c.data.image_size = 80
    c.data.workers = 4
    c.augment.output_size = 64
    c.model.blocks_per_stage = (1, 1, 1, 1)
    c.model.width = 16
    c.model.dtype = "float32"
    # 16 global batches: well below the 5,492 marks of logo_groups/small, so that an anchor's own
    # key from the previous epoch is never in the queue (the trainer warns above half the data).
    c.moco.queue_size = 1024
    # Without hu2024's CosFace pre-training, a freshly initialised encoder spreads its keys
    # below the 0.4 cosine threshold within a few steps and InfoNCE loses every negative;
    # keeping at least the 256 hardest negatives keeps the signal (a documented deviation).
    c.moco.min_negatives = 256
    c.optim.learning_rate = 1e-3
    c.optim.warmup_epochs = 1
    c.optim.cycle_epochs = 2
    c.epochs = 4
    c.batch_size = 64
    c.log_every_steps = 10
    c.checkpoint_every_steps = 100
    c.eval.max_distractors = 1000
    c.eval.every_steps = 100
    c.eval.batch_size = 256
    c.eval.pca_whitening_dim = 64  # this encoder's features are 128-d (LAFF d = 512 x 16 / 64)
    return c
