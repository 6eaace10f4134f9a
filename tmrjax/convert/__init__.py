"""Convert official torchvision / Keras ImageNet checkpoints into tmrjax backbones.

Each source module provides ``read_checkpoint(path, arch) -> (flat, dropped)`` where `flat`
maps Flax variable paths (("params", "conv4_block1", "conv1", "kernel"), ...) to numpy
arrays and `dropped` lists the source keys of the ImageNet classifier head that tmrjax does
not use, and ``OFFICIAL[arch]``: the publisher's files, the first being the default download.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..fileio import file_sha256
from ..weights import WeightsError, assemble_variables, save_backbone
from . import keras, torchvision
from .download import OfficialFile, fetch

SOURCES = {"torchvision": torchvision, "keras": keras}


def official_file(source: str, arch: str) -> OfficialFile:
    """The default official checkpoint of `arch` from `source`."""
    module = _source(source)
    if arch not in module.OFFICIAL:
        raise WeightsError(f"{source} publishes no {arch} checkpoint; available: {sorted(module.OFFICIAL)}")
    return module.OFFICIAL[arch][0]


def convert_checkpoint(
    source: str, arch: str, input_path: str | os.PathLike, output_dir: str | os.PathLike
) -> Path:
    """Read an official checkpoint, check it against the Flax backbone, write orbax + meta.json."""
    module = _source(source)
    input_path = Path(input_path)
    if not input_path.is_file():
        raise WeightsError(f"{input_path}: no such file")
    flat, dropped = module.read_checkpoint(input_path, arch)
    variables = assemble_variables(arch, module.LAYOUT, flat, source=str(input_path))
    return save_backbone(
        output_dir,
        arch,
        module.LAYOUT,
        variables,
        source={
            "framework": source,
            "file": input_path.name,
            "sha256": file_sha256(input_path),
            "dropped_head_keys": sorted(dropped),
        },
    )


def _source(source: str):
    if source not in SOURCES:
        raise WeightsError(f"unknown weight source {source!r}; expected one of {sorted(SOURCES)}")
    return SOURCES[source]


__all__ = ["SOURCES", "OfficialFile", "convert_checkpoint", "fetch", "official_file"]
