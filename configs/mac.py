"""MAC.

tursun2019 Table 5 'MAC [25]' (512-d, VGG16 conv5_3; 21.5 MAP@100) and tursun2021 Table 1
'MAC'. Global max pooling, l2; no PCA-w (tursun2019 Sec. 4.4: PCAw hurts MAC).
"""

from .common import retrieval_config


def get_config():
    c = retrieval_config()
    c.name = 'mac'
    c.paper_row = 'MAC'
    c.backbone.arch = 'vgg16'
    c.backbone.tap = 'conv5_3'
    c.embed.resolutions = (300,)  # tursun2019 Sec. 4.1: marks padded to a white square, 300x300
    c.embed.pooling = 'mac'
    return c
