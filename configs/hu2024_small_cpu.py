"""The hu2024 pipeline for the small CPU encoder of `moco_small_cpu`.

hu2024 Table 1 'Ours' evaluated as `configs/hu2024.py` does (the encoder's feature, PCA-whitened
on the gallery), at the sizes of the CPU proof run ('hu2024 Ours, small CPU encoder' in tmrjax's
tables): 64x64 input, the size `moco_small_cpu` trains and evaluates at, and PCA-whitening to 64
dims, since that encoder's feature has 128 (LAFF d = 512 x 16 / 64). With the export of that
run, `tmrjax eval` scores the same vectors as the trainer's own PCA-w evaluation.
"""

from .hu2024 import get_config as hu2024_config


def get_config():
    c = hu2024_config()
    c.name = 'hu2024_small_cpu'
    c.paper_row = 'hu2024 Ours, small CPU encoder'
    c.embed.resolutions = (64,)  # moco_small_cpu: augment.output_size
    c.embed.pca_whitening_dim = 64  # moco_small_cpu: eval.pca_whitening_dim
    return c
