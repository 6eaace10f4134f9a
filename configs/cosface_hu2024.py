"""hu2024 Sec. 4.2 pre-training phase: the encoder fine-tuned with CosFace on labelled groups.

Same encoder as ``moco_hu2024`` (ResNet50 + ECA + CA + AWFF + LAFF); CosFace (Wang et al. 2018)
on the retrieval feature against one learned weight per group; CAME, lr 4e-4, 40 epochs, batch
64, 160 x 160, 5 warm-up epochs then one cosine annealing (no restarts in this phase), as
hu2024 Sec. 4.2 gives them. hu2024 trains on the labelled CNT dataset; give any folder-per-class
tree (``<root>/<group>/<image>``) or a tfds split whose records carry a group id >= 0 as
``data.source``, then start MoCo from the export: ``--set init_encoder=<export dir>``. CosFace's
scale and margin are not in hu2024: the CosFace paper's s = 64, m = 0.35. Evaluating on
logo_groups/small while training on its own queries would measure memorisation: train on
other groups.
"""

from ml_collections import ConfigDict

from .moco_hu2024 import hu2024_training


def get_config():
    c = hu2024_training("cosface_hu2024", objective="cosface")
    c.data.source = ""  # required: a labelled folder-per-class tree or tfds split
    c.cosface = ConfigDict()
    c.cosface.scale = 64.0
    c.cosface.margin = 0.35
    c.optim.learning_rate = 4e-4
    c.optim.warmup_epochs = 5
    c.optim.cycle_epochs = 35  # one cosine annealing after the warm-up
    c.epochs = 40
    c.batch_size = 64
    return c
