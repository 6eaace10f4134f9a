"""hu2024's self-supervised encoder as a retrieval pipeline (Sec. 4.2, evaluation phase).

hu2024 Table 1 'Ours' (256-d; NAR 0.025, MAP@100 37.4 on METU; 'hu2024 Ours' in tmrjax's
tables): marks at 160x160, the MoCo
projection head removed, "the output of the last layer of the encoder as the trademark feature
vector" (LAFF's 512-d fused feature, the encoder's "feature" tap), then PCA-whitening to 256
components learned on 20,000 randomly sampled images. The weights are an encoder exported by
`tmrjax train --export DIR` (`--weights DIR`; its meta.json carries the model settings, so a
small CPU encoder loads as well as the full ResNet50 one); without them the full encoder is
randomly initialised, like every other config's backbone.
"""

from .common import retrieval_config


def get_config():
    c = retrieval_config()
    c.name = 'hu2024'
    c.paper_row = 'hu2024 Ours'
    c.backbone.arch = 'hu2024-resnet50'
    c.backbone.tap = 'feature'
    c.embed.resolutions = (160,)  # hu2024 Sec. 4.2: images scaled to 160x160
    c.embed.pooling = 'identity'  # the tap is the encoder's global feature already
    c.embed.pca_whitening_dim = 256
    c.fit.num_images = 20000  # "20,000 randomly sampled images from METUv2 to learn PCA"
    return c
