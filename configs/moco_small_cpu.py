"""A small member of the hu2024 family that trains on 2 CPU cores in minutes.

The hu2024 machinery (MoCo v2, CO2, KoLeo, CAME, warm-up + cosine restarts, ECA, CA, AWFF, LAFF)
on a narrow ResNet (one bottleneck per stage, stem width 16) at 64x64, batch 64, a 1,024-key
queue, 5 epochs of logo_groups/small (425 steps, ending where the first cosine cycle ends). Used
for the CPU proof run and the data-parallel tests.

Where it departs from ``moco_hu2024``, and why (each measured on logo_groups/small, all 492
queries + 1,000 distractors, against the untrained encoder's MAP@100 15.38 / NAR 0.3130):
- momentum 0.99 (MoCo's short-run value): at 0.999 the key encoder is still ~70% its random
  initialisation after 400 steps;
- temperature 0.5 and no hard-negative selection: at 0.2 with the 0.4-cosine selection the
  encoder learns the instances (contrastive accuracy 0.3) and loses the groups (MAP@100 12-13):
  a same-brand mark by another designer is the hardest negative there is;
- augmentation for marks rather than photographs: crop scale (0.8, 1), no blur (at 64 px a
  sigma-2 blur erases what tells two marks apart), and colour inversion with p = 0.5 (designers
  draw a brand dark-on-white and light-on-dark).
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
    c.moco.momentum = 0.99
    c.moco.temperature = 0.5
    c.moco.hard_negative_threshold = None  # hu2024 Fig. 6's "SSL" row: every queue key a negative
    c.augment.crop_scale = (0.8, 1.0)
    c.augment.blur_prob = 0.0
    c.augment.invert_prob = 0.5
    c.optim.learning_rate = 1e-3
    c.optim.warmup_epochs = 1
    c.optim.cycle_epochs = 2
    c.epochs = 5
    c.batch_size = 64
    c.log_every_steps = 10
    c.checkpoint_every_steps = 100
    c.eval.max_distractors = 1000
    c.eval.every_steps = 100
    c.eval.batch_size = 256
    c.eval.pca_whitening_dim = 64  # this encoder's features are 128-d (LAFF d = 512 x 16 / 64)
    return c
