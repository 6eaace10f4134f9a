"""The pixel baseline: a mark's ink as a 32x32 grey thumbnail, l2-normalised, no network.

Not a paper row: the pixel baseline, the trivial descriptor every evaluation table shows first. The mark is padded
to a white square and resized to 32x32 (bicubic), turned into ink (1 - grey / 255: 0 on white
paper, 1 on black ink) and flattened to 1,024 dims; similarity is the cosine of two thumbnails.
A learned descriptor that does not beat it has learned nothing about marks.
"""

from .common import retrieval_config


def get_config():
    c = retrieval_config()
    c.name = 'thumbnail'
    c.paper_row = 'pixel baseline'
    c.backbone.arch = 'ink-thumbnail'
    c.backbone.tap = 'ink'
    c.embed.resolutions = (32,)
    c.embed.pooling = 'flatten'
    c.batch_size = 64
    return c
