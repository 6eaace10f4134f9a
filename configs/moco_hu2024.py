"""MoCo v2 self-supervised trademark encoder, the full hu2024 recipe (Sec. 3-4.2, Fig. 6 'Ours').

ResNet50 + ECA + Coordinate Attention + AWFF + LAFF (d=512), projection head to 128 dims;
queue 65,536, hard negatives cos >= 0.4, CO2 (0.02) + KoLeo (0.05); CAME, lr 2.5e-4, 30 epochs,
5 warm-up epochs then cosine cycles of 10 epochs restarting at 0.9x; batch 256 at 160x160; bf16.
hu2024 gives neither temperature: MoCo v2's tau = 0.2 and m = 0.999 are used for InfoNCE and
for CO2. Trained on every mark of logo_groups/full (unlabelled) by default; set data.source to
``tfds:metu_trademark:queries+gallery`` or an image folder.
"""

from ml_collections import ConfigDict


def get_config() -> ConfigDict:
    c = hu2024_training("moco_hu2024", objective="moco")
    c.moco = ConfigDict()
    c.moco.queue_size = 65536
    c.moco.momentum = 0.999
    c.moco.temperature = 0.2
    c.moco.co2_temperature = 0.2
    c.moco.hard_negative_threshold = 0.4
    c.moco.min_negatives = 0  # the paper sets no floor
    c.moco.co2_weight = 0.02
    c.moco.koleo_weight = 0.05
    return c


def hu2024_training(name: str, objective: str) -> ConfigDict:
    """What every hu2024 training run sets, whatever its objective: data, augmentation, encoder,
    optimiser and schedule, checkpoints and evaluation. The objective's own section is added by
    its config (``moco`` here, ``cosface`` in cosface_hu2024)."""
    c = ConfigDict()
    c.name = name
    c.objective = objective  # tmrjax.train.trainer.OBJECTIVES
    c.seed = 0

    c.data = ConfigDict()
    c.data.source = "tfds:logo_groups/full:queries+gallery"  # or a folder of images
    c.data.image_size = 224  # marks padded to a white square and resized before augmentation
    c.data.workers = 8

    c.augment = ConfigDict()  # tmrjax.train.augment.AugmentConfig; defaults = hu2024 Sec. 3.2
    c.augment.output_size = 160

    c.model = ConfigDict()
    c.model.layout = "torchvision"  # of the ImageNet weights in init_weights
    c.model.eca = True
    c.model.coordinate_attention = True
    c.model.awff = True
    c.model.laff = True
    c.model.projection_dim = 128
    c.model.blocks_per_stage = (3, 4, 6, 3)  # ResNet50
    c.model.width = 64
    c.model.dtype = "bfloat16"  # compute dtype; parameters stay float32
    c.init_weights = ""  # converted ImageNet ResNet50 (tmrjax convert), or "" for random init
    # or an encoder exported by `tmrjax train --export`, e.g. the CosFace pre-training
    # (configs/cosface_hu2024.py) that hu2024 Sec. 4.2 runs before MoCo
    c.init_encoder = ""

    c.optim = ConfigDict()
    c.optim.learning_rate = 2.5e-4
    c.optim.weight_decay = 0.0
    c.optim.warmup_epochs = 5
    c.optim.cycle_epochs = 10
    c.optim.restart_decay = 0.9

    c.epochs = 30
    c.batch_size = 256  # global, over all devices
    c.log_every_steps = 50
    c.checkpoint_every_steps = 1000
    c.keep_checkpoints = 3

    c.eval = ConfigDict()
    c.eval.dataset = "logo_groups/small"
    c.eval.max_distractors = None
    c.eval.every_steps = 2000
    c.eval.batch_size = 128
    # hu2024 Sec. 4.2 evaluates with PCA-whitening to 256 (learned on unlabelled marks): each
    # evaluation reports the raw features and, beside them, whitened on the benchmark's gallery.
    c.eval.pca_whitening_dim = 256
    return c
