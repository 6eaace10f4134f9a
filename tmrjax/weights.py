"""Backbone checkpoints: orbax variables plus a meta.json that says what they are.

A converted checkpoint is a directory::

    NAME/meta.json      arch, layout, preprocessing, taps, source file + sha256, tmrjax version
    NAME/variables/     orbax checkpoint of {"params": ..., "batch_stats": ...}

Loading restores into the abstract tree of the module the meta names, so nothing is ever
unpickled and a checkpoint cannot silently change shape.

An encoder exported by `tmrjax train --export` (format ``tmrjax-encoder/1``: the hu2024 model
settings, the training run, the sha256 of its bfloat16 variables) is a backbone too:
:func:`read_meta` presents its meta.json in the same terms (arch ``hu2024-resnet50``, layout,
taps, ``source.sha256``) and :func:`load_backbone` loads it, so `tmrjax fit`/`eval`/`index` take
either with ``--weights``.

:func:`init_from_backbone` puts a converted ResNet50 into the trunk of a hu2024 encoder.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from ._version import __version__
from .models import ARCHITECTURES, BACKBONES, HU2024, available_taps, build_backbone, preprocessing_for
from .models.hu2024 import BACKBONE, encoder_from_settings

META_FORMAT = "tmrjax-backbone/1"
ENCODER_FORMAT = "tmrjax-encoder/1"
VariablePath = tuple[str, ...]


def variables_sha256(variables: Mapping) -> str:
    """sha256 over a variable tree's paths, dtypes, shapes and bytes: which weights these are."""
    h = hashlib.sha256()
    leaves = jax.tree_util.tree_flatten_with_path(variables)[0]
    for path, leaf in sorted(leaves, key=lambda p: jax.tree_util.keystr(p[0])):
        value = np.ascontiguousarray(np.asarray(leaf))
        h.update(f"{jax.tree_util.keystr(path)}:{value.dtype.name}:{value.shape};".encode())
        h.update(value.tobytes())
    return h.hexdigest()


def flatten_variables(tree: Mapping) -> dict[VariablePath, Any]:
    """{('params'|'batch_stats', module..., name): leaf} of a nested variable tree."""
    return {tuple(k.key for k in path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


class WeightsError(ValueError):
    """A checkpoint that cannot be converted or loaded; the message names file and keys."""


def _check_arch_layout(arch: str, layout: str) -> None:
    if arch not in ARCHITECTURES:
        raise WeightsError(f"unknown architecture {arch!r}; expected one of {ARCHITECTURES}")
    if layout not in BACKBONES[arch].layouts:
        raise WeightsError(f"{arch} has no weight layout {layout!r}; expected one of {BACKBONES[arch].layouts}")


def full_backbone(arch: str, layout: str, dtype: Any = jnp.float32) -> nn.Module:
    """The module with its deepest tap, i.e. every layer that owns variables."""
    return build_backbone(arch, layout, taps=(available_taps(arch)[-1],), dtype=dtype)


def expected_variables(arch: str, layout: str) -> dict[VariablePath, tuple[int, ...]]:
    """Flat {('params'|'batch_stats', module..., name): shape} of a complete backbone."""
    _check_arch_layout(arch, layout)
    module = full_backbone(arch, layout)
    abstract = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
    return {k: tuple(leaf.shape) for k, leaf in flatten_variables(abstract).items()}


def key_problems(
    expected: Mapping[VariablePath, tuple[int, ...]],
    arrays: Mapping[VariablePath, Any],
    missing: str = "missing keys",
    unexpected: str = "unexpected keys",
    shape_words: tuple[str, str] = ("expected", "got"),
) -> list[str]:
    """What keeps `arrays` from filling `expected` (path -> shape): every missing key, every
    unexpected key and every shape mismatch, one message part each; [] when they fit.

    The labels name the two sides in the caller's terms (a checkpoint, an encoder trunk).
    """
    absent = sorted("/".join(k) for k in expected if k not in arrays)
    extra = sorted("/".join(k) for k in arrays if k not in expected)
    ours, theirs = shape_words
    mismatched = [
        f"{'/'.join(k)}: {ours} {tuple(expected[k])}, {theirs} {tuple(np.shape(v))}"
        for k, v in arrays.items()
        if k in expected and tuple(np.shape(v)) != tuple(expected[k])
    ]
    problems = []
    if absent:
        problems.append(f"{missing} ({len(absent)}): " + ", ".join(absent))
    if extra:
        problems.append(f"{unexpected} ({len(extra)}): " + ", ".join(extra))
    if mismatched:
        problems.append("shape mismatches: " + "; ".join(mismatched))
    return problems


def assemble_variables(
    arch: str, layout: str, flat: Mapping[VariablePath, np.ndarray], source: str
) -> dict:
    """Check converted arrays against the backbone and nest them into Flax variables.

    Raises WeightsError listing every missing key, every unexpected key and every shape
    mismatch (key, expected, got) at once, naming `source`.
    """
    problems = key_problems(expected_variables(arch, layout), flat)
    if problems:
        raise WeightsError(f"{source}: not a {arch} ({layout}) checkpoint: " + " | ".join(problems))
    nested: dict = {}
    for key, value in flat.items():
        node = nested
        for part in key[:-1]:
            node = node.setdefault(part, {})
        node[key[-1]] = np.asarray(value, dtype=np.float32)
    return nested


def backbone_meta(arch: str, layout: str, source: Mapping[str, Any]) -> dict:
    return {
        "format": META_FORMAT,
        "arch": arch,
        "layout": layout,
        "preprocessing": preprocessing_for(layout).to_json(),
        "taps": list(available_taps(arch)),
        "source": dict(source),
        "tmrjax_version": __version__,
    }


def save_backbone(
    out_dir: str | os.PathLike, arch: str, layout: str, variables: Mapping, source: Mapping[str, Any]
) -> Path:
    """Write `variables` and meta.json to `out_dir`, replacing it only once fully written."""
    import orbax.checkpoint as ocp

    _check_arch_layout(arch, layout)
    out_dir = Path(out_dir).absolute()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        tree = jax.tree.map(np.asarray, dict(variables))
        with ocp.StandardCheckpointer() as checkpointer:
            checkpointer.save(tmp / "variables", tree)
            checkpointer.wait_until_finished()
        meta = backbone_meta(arch, layout, source)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        if out_dir.exists():
            old = out_dir.with_name(out_dir.name + ".old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(out_dir, old)
            os.replace(tmp, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def read_meta(path: str | os.PathLike) -> dict:
    """A checkpoint's meta.json: a converted backbone's as written, an exported encoder's in the
    same terms (arch, layout, taps, ``source`` with its sha256; the encoder settings in ``model``)."""
    meta_path = Path(path) / "meta.json"
    if not meta_path.is_file():
        raise WeightsError(
            f"{path}: no meta.json; not a tmrjax backbone checkpoint (see `tmrjax convert`) "
            "or an encoder exported by `tmrjax train --export`"
        )
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as e:
        raise WeightsError(f"{meta_path}: unreadable JSON ({e})") from e
    if meta.get("format") == ENCODER_FORMAT:
        model = meta.get("model")
        if not isinstance(model, dict) or "layout" not in model:
            raise WeightsError(f"{meta_path}: encoder meta without its model settings ('model' with a 'layout')")
        return {
            **meta,
            "arch": HU2024,
            "layout": model["layout"],
            "taps": list(available_taps(HU2024)),
            "source": {
                "sha256": meta.get("variables_sha256"),
                "trained_with": meta.get("trained_with"),
                "steps": meta.get("steps"),
            },
        }
    if meta.get("format") != META_FORMAT:
        raise WeightsError(
            f"{meta_path}: format {meta.get('format')!r}, expected {META_FORMAT!r} or {ENCODER_FORMAT!r}"
        )
    return meta


def load_backbone(
    path: str | os.PathLike,
    arch: str | None = None,
    layout: str | None = None,
    taps: tuple[str, ...] | None = None,
    dtype: Any = jnp.float32,
) -> tuple[nn.Module, dict, dict]:
    """Load a converted backbone or an exported encoder: returns (module, variables, meta).

    `arch`/`layout`, when given, must match the checkpoint's meta (a VGG16 checkpoint is never
    loaded as a ResNet50). `taps` defaults to all of the architecture's taps. Variables are
    float32 whatever they were stored as; `dtype` is the compute dtype.
    """
    import orbax.checkpoint as ocp

    path = Path(path).absolute()
    meta = read_meta(path)
    for field, wanted in (("arch", arch), ("layout", layout)):
        if wanted is not None and meta[field] != wanted:
            raise WeightsError(f"{path}: checkpoint is {field}={meta[field]!r}, but {wanted!r} was requested")
    taps = tuple(taps) if taps is not None else tuple(meta["taps"])
    if meta["arch"] == HU2024:
        variables = restore_encoder_variables(path, meta)
        return build_backbone(HU2024, meta["layout"], taps, dtype=dtype, model=meta["model"]), variables, meta
    _check_arch_layout(meta["arch"], meta["layout"])
    module = full_backbone(meta["arch"], meta["layout"])
    abstract = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
    target = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, jnp.float32), abstract)
    try:
        with ocp.StandardCheckpointer() as checkpointer:
            variables = checkpointer.restore(path / "variables", target)
    except Exception as e:  # orbax raises many types; name the file and the cause
        raise WeightsError(f"{path / 'variables'}: cannot restore {meta['arch']} variables: {e}") from e
    return build_backbone(meta["arch"], meta["layout"], taps, dtype=dtype), variables, meta


def restore_encoder_variables(path: str | os.PathLike, meta: Mapping) -> dict:
    """The float32 variables of an encoder exported by `tmrjax train --export` (`meta`: its
    :func:`read_meta`), checked against the model settings of its meta.json (every key and
    shape) and against the recorded sha256."""
    import orbax.checkpoint as ocp

    path = Path(path).absolute()
    try:
        full = encoder_from_settings(meta["model"], dtype=jnp.float32)
        head = full.projection_dim > 0
        abstract = jax.eval_shape(
            lambda x: full.init(jax.random.key(0), x, project=head), jnp.zeros((1, 64, 64, 3))
        )
    except (TypeError, ValueError) as e:
        raise WeightsError(f"{path / 'meta.json'}: unusable encoder settings {meta['model']}: {e}") from e
    try:
        with ocp.StandardCheckpointer() as checkpointer:
            stored = checkpointer.restore(path / "variables")
    except Exception as e:  # orbax raises many types; name the file and the cause
        raise WeightsError(f"{path / 'variables'}: cannot restore the encoder's variables: {e}") from e
    expected = {k: v.shape for k, v in flatten_variables(abstract).items()}
    problems = key_problems(expected, flatten_variables(stored), missing="missing in the checkpoint",
                            unexpected="not in an encoder of these settings")
    if problems:
        raise WeightsError(f"{path}: variables do not fit the encoder its meta.json describes: " + " | ".join(problems))
    recorded = meta["source"]["sha256"]
    if recorded is not None and variables_sha256(stored) != recorded:
        raise WeightsError(
            f"{path / 'variables'}: the variables' sha256 differs from meta.json's variables_sha256 "
            "(a partial copy, or meta.json of another export)"
        )
    return jax.tree.map(lambda x: np.asarray(x, np.float32), stored)


def init_from_backbone(backbone_variables: Mapping, variables: Mapping) -> dict:
    """``variables`` (a Hu2024Encoder's) with its trunk replaced by ResNet50 ``backbone_variables``.

    ``backbone_variables`` is what ``tmrjax.load_backbone`` (or ``ResNet50.init``) returns for a
    resnet50 of the encoder's layout; every one of its arrays must land on an encoder trunk
    array of the same shape and every trunk array must be covered, else WeightsError names the
    keys. New modules (ECA, CA, AWFF, LAFF, head) keep their values; arrays take the encoder's
    dtypes.
    """
    source = flatten_variables(backbone_variables)
    target = flatten_variables(variables)
    trunk = {k: v for k, v in target.items() if len(k) > 1 and k[1] == BACKBONE}
    wanted = {(k[0],) + k[2:]: k for k in trunk}
    problems = key_problems(
        {k: trunk[dest].shape for k, dest in wanted.items()}, source, missing="missing in backbone",
        unexpected="not in the encoder trunk", shape_words=("encoder has", "backbone has"),
    )
    if problems:
        raise WeightsError("init_from_backbone: backbone variables do not fit the Hu2024Encoder "
                           "trunk: " + " | ".join(problems))
    flat = dict(target)
    for key, dest in wanted.items():
        flat[dest] = jnp.asarray(source[key], dtype=trunk[dest].dtype)
    return traverse_util.unflatten_dict(flat)


def random_variables(arch: str, layout: str, seed: int = 0) -> dict:
    """Randomly initialised variables (Flax defaults: LeCun-normal convs, identity BN) for tests and demos."""
    module = full_backbone(arch, layout)
    return jax.jit(module.init)(jax.random.key(seed), jnp.zeros((1, 64, 64, 3)))
