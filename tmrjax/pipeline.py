"""The embedding pipeline: backbone + method config + fitted artefacts -> one vector per image.

Data flows one way (DESIGN.md):

    uint8 square image per resolution -> backbone tap (B, h, w, C)
      -> regional descriptors (B, R, D')           `describe`      (pooling kernels)
      -> l2 -> PCA-whitening -> l2 (B, R, d)      `postprocess`   (whitening kernel)
      -> regional weights (B, R)                  `region_weights` (IDF kernel, or 1)
      -> weighted sum over regions               (tursun2021 Eq. 2-4)
    summed over resolutions (Eq. 3), l2 -> (B, d)

Each resolution has its own compiled function (jax.jit caches one executable per input
shape); the method is data (the config), never a branch on its name.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import hashlib
import json
import os
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import ConfigDict

from ._version import __version__
from .fileio import Record, StoredFileError, load_npz, read_json, write_atomic
from .kernels import crow, idf, pooling, regions, whitening
from .models import architecture, build_backbone
from .weights import load_backbone, random_variables

PIPELINE_FORMAT = "tmrjax-pipeline/1"
COMBINED_FORMAT = "tmrjax-combined-pipeline/1"
RANDOM_WEIGHTS_SEED = 0
RANDOM_WEIGHTS = "random"  # asked for explicitly: a config's backbone.weights or --weights random
NO_WEIGHTS = "none"  # an architecture without variables (the ink thumbnail)


class PipelineError(ValueError):
    """A pipeline that cannot be built or does not match its artefacts."""


# ----------------------------------------------------------------------------------------
# Configs


def load_config(name_or_path: str) -> ConfigDict:
    """A method config by name (``mr_rsmac_ura``) or by path to a ``get_config()`` file."""
    import importlib
    import importlib.util

    path = Path(name_or_path)
    if path.suffix == ".py" and path.is_file():
        spec = importlib.util.spec_from_file_location(f"tmrjax_user_config_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)  # type: ignore[union-attr]
    else:
        try:
            module = importlib.import_module(f"tmrjax.configs.{name_or_path}")
        except ModuleNotFoundError:
            raise PipelineError(
                f"unknown pipeline {name_or_path!r}: not a config in tmrjax/configs "
                f"({', '.join(available_configs())}), a .py config file, or a fitted pipeline directory"
            ) from None
    if not hasattr(module, "get_config"):
        raise PipelineError(f"{name_or_path}: config module has no get_config()")
    return module.get_config()


def available_configs() -> list[str]:
    """Names of the retrieval (embedding) configs in tmrjax/configs; training recipes excluded."""
    from . import configs

    folder = Path(configs.__file__).parent
    # common.py and shipped.py hold helpers of the configs, not configs
    names = sorted(p.stem for p in folder.glob("*.py") if p.stem not in ("__init__", "common", "shipped"))
    return [n for n in names if "embed" in (config := load_config(n)) or "parts" in config]


def config_hash(config: ConfigDict) -> str:
    """Hash of what defines the vectors given the weights (backbone + embed); 16 hex digits.

    ``backbone.weights`` is left out: it only names a default, and the weights actually used
    are identified by their own digest (`Pipeline.info`).
    """
    if is_combined(config):
        semantic = {"parts": {name: config_hash(part) for name, part in config.parts.items()},
                    "part_weights": config.part_weights.to_dict()}
    else:
        backbone = {k: v for k, v in config.backbone.to_dict().items() if k != "weights"}
        semantic = {"backbone": backbone, "embed": config.embed.to_dict()}
    text = json.dumps(semantic, sort_keys=True, default=list)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def backbone_weights(config: ConfigDict, weights: str | os.PathLike | None = None) -> str:
    """The weights a pipeline of `config` runs on: ``"random"``, ``"none"`` or a backbone directory.

    `weights` (``--weights``) wins over the config's ``backbone.weights``; either may be a
    shipped backbone's name (``efficientnet_lite0``, ``hed_vgg16``: converted from its pip
    package on first use), a converted backbone or exported encoder directory, or ``"random"``
    (random initialisation, only when asked for). An architecture without variables needs none.
    """
    from .convert import SHIPPED, shipped_backbone

    if not architecture(config.backbone.arch).has_weights:
        return NO_WEIGHTS
    spec = str(weights) if weights is not None else str(config.backbone.get("weights", ""))
    if spec == RANDOM_WEIGHTS:
        return RANDOM_WEIGHTS
    if not spec:
        raise PipelineError(
            f"{config.name}: no default weights for its {config.backbone.arch} backbone; pass converted "
            f"ones (--weights DIR, see `tmrjax convert`) or --weights random; the shipped backbones "
            f"({', '.join(sorted(SHIPPED))}) have configs of their own (`tmrjax eval --help`)"
        )
    if spec in SHIPPED:
        return str(shipped_backbone(spec))
    return spec


def weights_of(backbone: Mapping[str, Any]) -> str | None:
    """The `backbone_weights` spec that rebuilds a recorded backbone identity (pipeline.json, index
    meta); None for a combined pipeline, whose parts record their own."""
    if "parts" in backbone:
        return None
    recorded = str(backbone.get("weights", ""))
    return RANDOM_WEIGHTS if recorded.startswith("random-init") else recorded


def is_combined(config: ConfigDict) -> bool:
    """A config that concatenates the vectors of several pipelines (`CombinedPipeline`)."""
    return "parts" in config


def needs_fit(config: ConfigDict) -> bool:
    if is_combined(config):
        return any(needs_fit(part) for part in config.parts.values())
    return config.embed.pca_whitening_dim > 0 or config.embed.attention != "none"


# ----------------------------------------------------------------------------------------
# Regional pooling: one entry per pooling name; global (one region) and regional forms.


@dataclasses.dataclass(frozen=True)
class Pooling:
    global_fn: Callable[[jax.Array, ConfigDict], jax.Array]  # (B,h,w,C) -> (B,D')
    regional_fn: Callable[[jax.Array, np.ndarray, ConfigDict], jax.Array] | None  # -> (B,R,D')


POOLINGS: dict[str, Pooling] = {
    "mac": Pooling(lambda x, e: pooling.mac(x), lambda x, b, e: pooling.regional_mac(x, b)),
    "spoc": Pooling(
        lambda x, e: pooling.spoc(x, center_prior=e.center_prior),
        lambda x, b, e: pooling.regional_spoc(x, b),
    ),
    "gem": Pooling(
        lambda x, e: pooling.gem(x, p=e.gem_p), lambda x, b, e: pooling.regional_gem(x, b, p=e.gem_p)
    ),
    "smac": Pooling(lambda x, e: pooling.smac(x), lambda x, b, e: pooling.regional_smac(x, b)),
    "crow": Pooling(lambda x, e: crow.crow(x), None),
    # The tap is a global vector already (a 1 x 1 map), e.g. the hu2024 encoder's "feature".
    "identity": Pooling(lambda x, e: _single_position(x), None),
    # Every cell of the map, in order: the pixel baseline (the ink thumbnail).
    "flatten": Pooling(lambda x, e: x.reshape(x.shape[0], -1), None),
}


def _single_position(features: jax.Array) -> jax.Array:
    """(B, 1, 1, D) -> (B, D); any other map is an error (it would need a real pooling)."""
    if features.shape[1:3] != (1, 1):
        raise PipelineError(
            f"pooling 'identity' takes a global vector (a 1 x 1 tap such as hu2024's 'feature'), "
            f"got a {features.shape[1]} x {features.shape[2]} map; pool it with mac, spoc, gem, smac or crow"
        )
    return features[:, 0, 0, :]
ATTENTIONS = ("none", "idf")

# Bounds of the numeric fields of a retrieval config: far beyond any real use, tight enough that a
# damaged or hostile pipeline.json cannot ask for petabytes (a batch of 1e12 images) or a year of k-means.
CONFIG_BOUNDS: dict[str, tuple[float, float]] = {
    "batch_size": (1, 4096),
    "embed.region_levels": (0, 8),
    "embed.gem_p": (1e-3, 100),
    "embed.pca_whitening_dim": (0, 1 << 16),
    "embed.whitening_power": (0, 1),
    "embed.codebook_size": (1, 1 << 20),
    "fit.num_images": (1, 10**8),
    "fit.max_descriptors": (1, 10**8),
    "fit.kmeans_iterations": (1, 10**4),
    "fit.seed": (0, 2**32 - 1),
}
MAX_RESOLUTION = 4096  # px; a 4096 x 4096 input is already ~50 MB per image
MAX_RESOLUTIONS = 8
PART_NAME = r"[A-Za-z0-9_\-]{1,64}"  # a combined pipeline's part names are folder names under parts/


def _check_types(config: ConfigDict, schema: ConfigDict, where: str = "") -> None:
    """Every field of `schema` (the defaults) is present in `config` with a value of its type."""
    for key, default in schema.items():
        name = f"{where}{key}"
        if key not in config:
            raise PipelineError(f"{config.get('name', '?')}: field {name!r} is missing")
        value = config[key]
        if isinstance(default, ConfigDict):
            if not isinstance(value, ConfigDict):
                raise PipelineError(f"field {name!r} is {value!r}, expected a section like {default.to_dict()}")
            _check_types(value, default, f"{name}.")
            continue
        kind = (int,) if isinstance(default, int) and not isinstance(default, bool) else type(default)
        if isinstance(default, float):
            kind = (int, float)
        if isinstance(default, (tuple, list)):
            kind = (tuple, list)
        if isinstance(value, bool) != isinstance(default, bool) or not isinstance(value, kind):
            raise PipelineError(f"field {name!r} is {value!r} ({type(value).__name__}), "
                                f"expected a {type(default).__name__} like {default!r}")


def validate_config(config: ConfigDict) -> None:
    """Reject configs that cannot work, naming the field and the value: missing fields, wrong
    types, values outside `CONFIG_BOUNDS`, and combinations no pipeline can embed."""
    from .configs.common import retrieval_config

    if is_combined(config):
        for name in config.parts:
            if not re.fullmatch(PART_NAME, name):
                raise PipelineError(f"{config.name}: part name {name!r} must match {PART_NAME}")
        if not config.parts or set(config.parts) != set(config.part_weights):
            raise PipelineError(f"{config.name}: parts {sorted(config.parts)} and part_weights "
                                f"{sorted(config.part_weights)} must name the same, non-empty set")
        if any(not w > 0 for w in config.part_weights.values()):
            raise PipelineError(f"{config.name}: part_weights {config.part_weights.to_dict()} must be > 0")
        for part in config.parts.values():
            validate_config(part)
        return
    _check_types(config, retrieval_config())
    for field, (low, high) in CONFIG_BOUNDS.items():
        section, _, key = field.rpartition(".")
        value = (config[section] if section else config)[key]
        if not low <= value <= high:
            raise PipelineError(f"{config.name}: {field}={value!r} is outside [{low}, {high}]")
    e = config.embed
    if e.pooling not in POOLINGS:
        raise PipelineError(f"{config.name}: embed.pooling={e.pooling!r}; expected one of {sorted(POOLINGS)}")
    if e.region_levels < 0:
        raise PipelineError(f"{config.name}: embed.region_levels={e.region_levels} must be >= 0")
    if e.region_levels > 0 and POOLINGS[e.pooling].regional_fn is None:
        raise PipelineError(f"{config.name}: pooling {e.pooling!r} is global only; set embed.region_levels=0")
    if e.center_prior and (e.pooling != "spoc" or e.region_levels > 0):
        raise PipelineError(f"{config.name}: embed.center_prior applies to global SPoC only")
    if e.attention not in ATTENTIONS:
        raise PipelineError(f"{config.name}: embed.attention={e.attention!r}; expected one of {ATTENTIONS}")
    if e.attention == "idf" and e.pca_whitening_dim <= 0:
        raise PipelineError(
            f"{config.name}: URA (attention='idf') works on PCA-whitened regions; set pca_whitening_dim")
    if not 0 < len(e.resolutions) <= MAX_RESOLUTIONS or any(
            isinstance(r, bool) or not isinstance(r, int) or not 32 <= r <= MAX_RESOLUTION for r in e.resolutions):
        raise PipelineError(f"{config.name}: embed.resolutions={tuple(e.resolutions)}; expected 1 to "
                            f"{MAX_RESOLUTIONS} integer sizes, each in [32, {MAX_RESOLUTION}]")
    if e.pooling == "flatten" and len(e.resolutions) != 1:
        raise PipelineError(f"{config.name}: flatten pooling gives resolution-sized vectors; use one resolution")


def region_boxes(h: int, w: int, embed: ConfigDict) -> np.ndarray:
    """The regions pooled on an h x w map: the whole map, or the R-MAC grid."""
    if embed.region_levels == 0:
        return np.array([[0, 0, h, w]], dtype=np.int32)
    return regions.rmac_regions(h, w, levels=embed.region_levels, include_full_map=embed.include_full_map)


def describe(features: jax.Array, embed: ConfigDict) -> jax.Array:
    """Regional descriptors of a feature map: (B, h, w, C) -> (B, R, D') float32."""
    spec = POOLINGS[embed.pooling]
    if embed.region_levels == 0:
        return spec.global_fn(features, embed)[:, None, :].astype(jnp.float32)
    boxes = region_boxes(features.shape[1], features.shape[2], embed)
    return spec.regional_fn(features, boxes, embed).astype(jnp.float32)


# ----------------------------------------------------------------------------------------
# Learned artefacts


# The arrays of artefacts.npz: name -> (dtype kinds, ndim); each present only when the config fits it.
ARTEFACT_ARRAYS = {"pca_mean": ("f", 1), "pca_projection": ("f", 2), "centroids": ("f", 2), "idf": ("f", 1)}


@dataclasses.dataclass(frozen=True, eq=False)
class Artefacts:
    """What `tmrjax fit` learns: PCA-whitening and the URA codebook with its IDF table."""

    pca_mean: np.ndarray | None = None  # (D',)
    pca_projection: np.ndarray | None = None  # (D', d)
    centroids: np.ndarray | None = None  # (K, d)
    idf: np.ndarray | None = None  # (K,)

    def arrays(self) -> dict[str, np.ndarray]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    def digest(self) -> str:
        """sha256 of the arrays (names, shapes, dtypes, bytes): which fit these are."""
        h = hashlib.sha256()
        for name, value in sorted(self.arrays().items()):
            value = np.ascontiguousarray(value)
            h.update(f"{name}:{value.dtype.str}:{value.shape};".encode())
            h.update(value.tobytes())
        return h.hexdigest()

    def save(self, path: Path) -> None:
        write_atomic(path, lambda f: np.savez(f, **self.arrays()))

    @classmethod
    def load(cls, path: Path) -> Artefacts:
        """artefacts.npz as written by `save`; damaged or foreign arrays are a StoredFileError."""
        return cls(**load_npz(path, ARTEFACT_ARRAYS, optional=set(ARTEFACT_ARRAYS)))


def postprocess(descriptors: jax.Array, arts: Mapping[str, jax.Array]) -> jax.Array:
    """Per region: l2 -> PCA-whitening -> l2 when fitted, else l2 (tursun2021 '^')."""
    x = pooling.l2_normalize(descriptors)
    if "pca_projection" in arts:
        x = pooling.l2_normalize(whitening.apply_pca_whitening(x, arts["pca_mean"], arts["pca_projection"]))
    return x


def region_weights(post: jax.Array, arts: Mapping[str, jax.Array]) -> jax.Array:
    """URA weight of every region (IDF of its visual word, Eq. 4), or 1 without attention."""
    if "idf" in arts:
        return idf.idf_weights(post, arts["centroids"], arts["idf"])
    return jnp.ones(post.shape[:-1], post.dtype)


def aggregate_resolution(features: jax.Array, embed: ConfigDict, arts: Mapping[str, jax.Array]) -> jax.Array:
    """One resolution's feature map -> unnormalised sum of its weighted regions, (B, d) (Eq. 2, 4)."""
    post = postprocess(describe(features, embed), arts)
    return jnp.einsum("brd,br->bd", post, region_weights(post, arts))


def read_pipeline_json(path: Path, expected_format: str | None = None) -> Record:
    """A pipeline folder's pipeline.json, of `expected_format` or either format."""
    if not path.is_dir():
        raise PipelineError(f"{path}: not a pipeline folder")
    file = path / "pipeline.json"
    if not file.is_file():
        raise PipelineError(f"{path}: no pipeline.json; not a fitted pipeline (see `tmrjax fit`)")
    record = read_json(file)
    formats = (expected_format,) if expected_format else (PIPELINE_FORMAT, COMBINED_FORMAT)
    record.str("format", choices=formats)
    return record


def config_from_record(record: Record) -> ConfigDict:
    """The config stored in a pipeline.json, checked against its recorded hash and `validate_config`."""
    config = ConfigDict(record.record("config").doc)
    try:
        validate_config(config)
    except (AttributeError, KeyError, TypeError) as e:
        raise StoredFileError(record.path, f"field 'config' is not a complete retrieval config ({e})") from None
    except PipelineError as e:
        raise StoredFileError(record.path, f"field 'config': {e}") from None
    if config_hash(config) != record.str("config_hash"):
        raise StoredFileError(
            record.path, "field 'config' does not match its recorded hash (config_hash): edited or damaged")
    return config


# ----------------------------------------------------------------------------------------
# The pipeline


class Output(enum.Enum):
    """What a pipeline gives per image: one vector, or several (one per region, for region matching)."""

    IMAGE = "one vector per image"  # (B, d)
    REGIONS = "R vectors per image"  # (B, R, d) with a (B, R) valid mask


@dataclasses.dataclass(frozen=True, eq=False)
class Pipeline:
    """Backbone + config + learned artefacts, a frozen value: `with_artefacts` makes a new one.

    Embedding is the pure function `embed_fn(artefacts, feature_maps)` composed from the
    config's stages (regions -> pooling -> post-processing -> region weights -> sum); the
    compiled functions are built on first use and belong to this value.
    """

    config: ConfigDict
    module: Any
    variables: Any
    backbone: dict  # identity of the weights: arch, layout, source file/sha256 or random seed
    artefacts: Artefacts = dataclasses.field(default_factory=Artefacts)
    path: Path | None = None  # the fitted pipeline directory, if any
    output = Output.IMAGE

    def __post_init__(self) -> None:
        validate_config(self.config)

    def with_artefacts(self, artefacts: Artefacts, path: Path | None = None) -> Pipeline:
        """This pipeline with other fitted artefacts (saved at `path`, if given); `check_artefacts`
        says whether they are all the config needs."""
        return dataclasses.replace(self, artefacts=artefacts, path=path)

    @functools.cached_property
    def _features(self) -> Callable:
        tap, module = self.config.backbone.tap, self.module
        return jax.jit(lambda v, x: module.apply(v, x)[tap])

    @functools.cached_property
    def _describe_features(self) -> Callable:
        embed = self.config.embed
        return jax.jit(lambda f: describe(f, embed))

    @functools.cached_property
    def _aggregate(self) -> Callable:
        embed = self.config.embed
        return jax.jit(lambda a, f: aggregate_resolution(f, embed, a))

    @functools.cached_property
    def _postprocess(self) -> Callable:
        return jax.jit(postprocess)

    @functools.cached_property
    def device_artefacts(self) -> dict[str, jax.Array]:
        return {k: jnp.asarray(v) for k, v in self.artefacts.arrays().items()}

    # -- construction ---------------------------------------------------------------------

    @classmethod
    def create(
        cls, config: ConfigDict | str, weights: str | os.PathLike | None = None, dtype: Any = jnp.float32
    ) -> Pipeline | CombinedPipeline:
        """An unfitted pipeline from a config and backbone weights (see `backbone_weights`).

        A combined config gives a `CombinedPipeline`, whose parts take their own configs' weights.
        """
        if isinstance(config, str):
            config = load_config(config)
        validate_config(config)
        if is_combined(config):
            if weights is not None:
                raise PipelineError(f"{config.name}: a combined pipeline's parts name their own weights; "
                                    f"got weights={weights!r}")
            return CombinedPipeline.create(config, dtype=dtype)
        arch, tap = config.backbone.arch, config.backbone.tap
        resolved = backbone_weights(config, weights)
        if resolved in (NO_WEIGHTS, RANDOM_WEIGHTS):
            layout = architecture(arch).layouts[0]
            module = build_backbone(arch, layout, (tap,), dtype=dtype)
            if resolved == NO_WEIGHTS:
                variables, identity = {}, NO_WEIGHTS
            else:
                variables = random_variables(arch, layout, seed=RANDOM_WEIGHTS_SEED)
                identity = f"random-init(seed={RANDOM_WEIGHTS_SEED})"
            backbone = {"arch": arch, "layout": layout, "weights": identity}
        else:
            module, variables, meta = load_backbone(resolved, arch=arch, taps=(tap,), dtype=dtype)
            backbone = {
                "arch": arch,
                "layout": meta["layout"],
                "weights": str(Path(resolved).absolute()),
                "source_sha256": meta["source"].get("sha256"),
                **{k: meta["source"][k] for k in ("package", "package_version", "licence") if k in meta["source"]},
            }
        pipeline = cls(config=config, module=module, variables=variables, backbone=backbone)
        if config.embed.pca_whitening_dim > pipeline.raw_dim:
            raise PipelineError(
                f"{config.name}: embed.pca_whitening_dim={config.embed.pca_whitening_dim} exceeds the "
                f"{pipeline.raw_dim}-d descriptors of {arch} {tap} (weights: {backbone['weights']})"
            )
        return pipeline

    @classmethod
    def load(
        cls, pipeline: str | os.PathLike, weights: str | os.PathLike | None = None
    ) -> Pipeline | CombinedPipeline:
        """What a user names: a fitted pipeline folder (from `tmrjax fit`), or a config (a name
        in tmrjax/configs or a ``.py`` file, which runs) that needs no fitting."""
        path = Path(pipeline)
        if path.is_dir():
            return cls.load_folder(path, weights=weights)
        config = load_config(str(pipeline))
        if needs_fit(config):
            raise PipelineError(
                f"pipeline {config.name!r} needs fitted PCA-whitening/codebook: "
                f"run `tmrjax fit IMAGES --pipeline {pipeline} --out DIR` and pass DIR"
            )
        return cls.create(config, weights=weights)

    @classmethod
    def load_folder(
        cls, path: str | os.PathLike, weights: str | os.PathLike | None = None
    ) -> Pipeline | CombinedPipeline:
        """A pipeline folder (pipeline.json + artefacts.npz, or a combined one's parts/), read as
        data only: nothing in it is executed, every field is checked where it enters, and the
        artefacts must be the ones pipeline.json records."""
        path = Path(path)
        record = read_pipeline_json(path)
        if record.get("format") == COMBINED_FORMAT:
            if weights is not None:
                raise PipelineError(f"{path}: a combined pipeline's parts name their own weights; "
                                    f"got weights={weights!r}")
            return CombinedPipeline.load(path)
        config = config_from_record(record)
        backbone = record.record("backbone")
        weights = weights if weights is not None else weights_of(backbone.doc)
        pipe = cls.create(config, weights=weights)
        if pipe.backbone.get("source_sha256") != backbone.get("source_sha256"):
            raise PipelineError(
                f"{path}: artefacts were fitted with backbone weights {backbone.doc}, "
                f"but {pipe.backbone} were given"
            )
        artefacts = Artefacts.load(path / "artefacts.npz") if needs_fit(config) else Artefacts()
        if artefacts.digest() != record.str("artefacts_sha256"):
            raise PipelineError(
                f"{path / 'artefacts.npz'}: does not match the fit recorded in pipeline.json "
                "(artefacts of another fit?); run `tmrjax fit` again"
            )
        pipe = pipe.with_artefacts(artefacts, path)
        pipe.check_artefacts()
        return pipe

    def save(self, path: str | os.PathLike, data: Mapping[str, Any]) -> Pipeline:
        """Write pipeline.json (config, hash, backbone, data provenance) and artefacts.npz; returns
        this pipeline as saved there."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        if needs_fit(self.config):
            self.artefacts.save(path / "artefacts.npz")
        info = {
            "format": PIPELINE_FORMAT,
            "name": self.config.name,
            "config_hash": config_hash(self.config),
            "config": json.loads(self.config.to_json()),
            "backbone": self.backbone,
            "artefacts_sha256": self.artefacts.digest(),
            "data": dict(data),
            "dim": self.dim,
            "tmrjax_version": __version__,
        }
        write_atomic(path / "pipeline.json", lambda f: f.write(json.dumps(info, indent=2).encode() + b"\n"))
        return dataclasses.replace(self, path=path)

    # -- properties -----------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def resolutions(self) -> tuple[int, ...]:
        return tuple(int(r) for r in self.config.embed.resolutions)

    @functools.cached_property
    def raw_dim(self) -> int:
        """D': the length of one regional descriptor (the tap's channels for MAC, twice that for
        SMAC, the whole map for flatten); traced at the first resolution once, then cached."""
        size, tap, embed = self.resolutions[0], self.config.backbone.tap, self.config.embed
        descriptors = jax.eval_shape(
            lambda x: describe(self.module.apply(self.variables, x)[tap], embed),
            jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32),
        )
        return descriptors.shape[-1]

    @property
    def dim(self) -> int:
        return self.config.embed.pca_whitening_dim or self.raw_dim

    def describe_text(self) -> str:
        e = self.config.embed
        return (
            f"{self.name} ({self.config.paper_row}): {self.backbone['arch']} {self.config.backbone.tap} "
            f"[{self.backbone['layout']}; weights: {self.backbone['weights']}], "
            f"resolutions {self.resolutions}, {'global' if e.region_levels == 0 else f'R-MAC L={e.region_levels}'} "
            f"{e.pooling}, PCA-w {e.pca_whitening_dim or 'none'}, attention {e.attention}, dim {self.dim}"
        )

    def info(self) -> dict:
        """What identifies the vectors this pipeline makes (stored with indexes).

        `vectors_hash` covers the config, the fitted artefacts and the backbone weights: two
        pipelines with equal hashes embed every image identically. `config` lets an index
        made with an unfitted config file be searched without that file.
        """
        artefacts = self.artefacts.digest()
        weights = self.backbone.get("source_sha256") or self.backbone["weights"]
        identity = json.dumps([config_hash(self.config), artefacts, weights])
        return {
            "name": self.name,
            "vectors_hash": hashlib.sha256(identity.encode()).hexdigest()[:16],
            "config_hash": config_hash(self.config),
            "artefacts_sha256": artefacts,
            "backbone": self.backbone,
            "path": str(self.path.absolute()) if self.path else None,
            "config": json.loads(self.config.to_json()),
            "dim": self.dim,
        }

    def check_artefacts(self) -> None:
        """Refuse to embed without the artefacts the config needs, or with wrong shapes."""
        e, arts = self.config.embed, self.artefacts
        if e.pca_whitening_dim > 0:
            if arts.pca_projection is None:
                raise PipelineError(f"{self.name}: needs PCA-whitening; run `tmrjax fit` first")
            want = (self.raw_dim, e.pca_whitening_dim)
            if arts.pca_projection.shape != want:
                raise PipelineError(f"{self.name}: PCA projection is {arts.pca_projection.shape}, expected {want}")
        if e.attention == "idf":
            if arts.centroids is None or arts.idf is None:
                raise PipelineError(f"{self.name}: needs a URA codebook and IDF; run `tmrjax fit` first")
            want = (e.codebook_size, self.dim)
            if arts.centroids.shape != want or arts.idf.shape != (e.codebook_size,):
                raise PipelineError(
                    f"{self.name}: codebook {arts.centroids.shape} / idf {arts.idf.shape}, expected {want}"
                )

    # -- compute --------------------------------------------------------------------------

    def describe_batch(self, images: np.ndarray) -> jax.Array:
        """Raw regional descriptors (B, R, D') of one resolution's uint8 batch."""
        return self.describe_features(self.features_batch(images))

    def describe_features(self, features: jax.Array) -> jax.Array:
        """Raw regional descriptors (B, R, D') of one resolution's feature map (B, h, w, C)."""
        return self._describe_features(features)

    def postprocess_batch(self, descriptors: jax.Array) -> jax.Array:
        return self._postprocess(descriptors, self.device_artefacts)

    @property
    def backbone_key(self) -> tuple:
        """Pipelines with equal keys compute identical feature maps (they can share them)."""
        return (self.backbone["arch"], self.backbone["layout"], self.backbone["weights"], self.config.backbone.tap)

    def features_batch(self, images: np.ndarray) -> jax.Array:
        """The backbone tap of one resolution's uint8 batch, (B, h, w, C)."""
        return self._features(self.variables, jnp.asarray(images))

    def embed_fn(self, artefacts: Mapping[str, jax.Array], features_per_resolution: Sequence[jax.Array]) -> jax.Array:
        """The pipeline's function: feature maps (one per resolution) -> (B, d), l2-normalised
        sum over resolutions of the weighted regions (tursun2021 Eq. 2-4)."""
        if len(features_per_resolution) != len(self.resolutions):
            raise PipelineError(
                f"{self.name}: got {len(features_per_resolution)} resolutions, expected {self.resolutions}"
            )
        total = None
        for features in features_per_resolution:
            part = self._aggregate(artefacts, features)
            total = part if total is None else total + part
        return pooling.l2_normalize(total)

    def embed_features(self, features_per_resolution: Sequence[jax.Array]) -> np.ndarray:
        """`embed_fn` with this pipeline's artefacts, as float32 host vectors (B, d)."""
        self.check_artefacts()
        return np.asarray(self.embed_fn(self.device_artefacts, features_per_resolution), dtype=np.float32)

    def embed_batch(self, images_per_resolution: Sequence[np.ndarray]) -> np.ndarray:
        """(B, S, S, 3) uint8 per resolution -> (B, d) float32, l2-normalised (Eq. 3-4)."""
        return self.embed_features([self.features_batch(images) for images in images_per_resolution])


# ----------------------------------------------------------------------------------------
# Several pipelines side by side


@dataclasses.dataclass(frozen=True, eq=False)
class CombinedPipeline:
    """The vectors of several pipelines (e.g. two backbones) side by side in one descriptor.

    Each part's vector is l2-normalised already; it is scaled by sqrt(w / sum(w)) and the parts
    are concatenated, so the combined vector has unit norm and the cosine of two marks is the
    w-weighted mean of their parts' cosines. The parts share one image decode (the union of
    their resolutions); each is fitted on its own.
    """

    config: ConfigDict
    parts: dict[str, Pipeline]  # in the order of config.parts
    path: Path | None = None
    output = Output.IMAGE

    def with_parts(self, parts: Mapping[str, Pipeline], path: Path | None = None) -> CombinedPipeline:
        """This combination with other (e.g. fitted) parts of the same configs."""
        for name, part in parts.items():
            if config_hash(part.config) != config_hash(self.config.parts[name]):
                raise PipelineError(f"{self.name}: {part.name!r} is not its part {name!r}")
        return dataclasses.replace(self, parts={name: parts.get(name, p) for name, p in self.parts.items()}, path=path)

    @classmethod
    def create(cls, config: ConfigDict, dtype: Any = jnp.float32) -> CombinedPipeline:
        validate_config(config)
        return cls(config, {name: Pipeline.create(part, dtype=dtype) for name, part in config.parts.items()})

    @classmethod
    def load(cls, path: str | os.PathLike) -> CombinedPipeline:
        """A combined pipeline folder: pipeline.json and each part's pipeline folder under parts/."""
        path = Path(path)
        config = config_from_record(read_pipeline_json(path, COMBINED_FORMAT))
        parts = {}
        for name, part_config in config.parts.items():
            part = Pipeline.load_folder(path / "parts" / name)
            if config_hash(part.config) != config_hash(part_config):
                raise PipelineError(f"{path / 'parts' / name}: not the part {name!r} of {config.name!r}")
            parts[name] = part
        return cls(config, parts, path)

    def save(self, path: str | os.PathLike, data: Mapping[str, Any]) -> CombinedPipeline:
        """pipeline.json plus parts/<name>/ for every part (fitted or not); returns this combination
        as saved there."""
        path = Path(path)
        parts = {}
        for name, part in self.parts.items():
            if part.path is None or Path(part.path).absolute() != (path / "parts" / name).absolute():
                part = part.save(path / "parts" / name, data)  # parts fitted in place are saved already
            parts[name] = part
        info = {"format": COMBINED_FORMAT, "name": self.name, "config_hash": config_hash(self.config),
                "config": json.loads(self.config.to_json()), "parts": list(self.parts), "data": dict(data),
                "dim": self.dim, "tmrjax_version": __version__}
        write_atomic(path / "pipeline.json", lambda f: f.write(json.dumps(info, indent=2).encode() + b"\n"))
        return dataclasses.replace(self, parts=parts, path=path)

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def resolutions(self) -> tuple[int, ...]:
        return tuple(sorted({r for part in self.parts.values() for r in part.resolutions}))

    @property
    def dim(self) -> int:
        return sum(part.dim for part in self.parts.values())

    @property
    def backbone(self) -> dict:
        """The parts' backbone identities; ``weights`` joins theirs for one-line summaries."""
        return {"parts": {name: part.backbone for name, part in self.parts.items()},
                "weights": " + ".join(part.backbone["weights"] for part in self.parts.values())}

    def part_scales(self) -> dict[str, float]:
        total = sum(self.config.part_weights.values())
        return {name: float(np.sqrt(self.config.part_weights[name] / total)) for name in self.parts}

    def combine(self, part_vectors: Mapping[str, np.ndarray]) -> np.ndarray:
        """Each part's (B, d_part) unit vectors -> (B, dim) unit vectors, in the parts' order."""
        scales = self.part_scales()
        return np.concatenate([part_vectors[name] * scales[name] for name in self.parts], axis=1)

    def describe_text(self) -> str:
        weights = self.config.part_weights
        return f"{self.name} ({self.config.paper_row}): " + " + ".join(
            f"[{weights[name]:g} x {part.describe_text()}]" for name, part in self.parts.items())

    def info(self) -> dict:
        """As `Pipeline.info`, over the parts: equal `vectors_hash`, equal vectors."""
        parts = {name: part.info() for name, part in self.parts.items()}
        identity = json.dumps([config_hash(self.config), [p["vectors_hash"] for p in parts.values()]])
        return {
            "name": self.name,
            "vectors_hash": hashlib.sha256(identity.encode()).hexdigest()[:16],
            "config_hash": config_hash(self.config),
            "artefacts_sha256": hashlib.sha256(
                "".join(p["artefacts_sha256"] for p in parts.values()).encode()).hexdigest(),
            "backbone": self.backbone,
            "path": str(self.path.absolute()) if self.path else None,
            "config": json.loads(self.config.to_json()),
            "dim": self.dim,
        }

    def check_artefacts(self) -> None:
        for part in self.parts.values():
            part.check_artefacts()

    def embed_batch(self, images_per_resolution: Sequence[np.ndarray]) -> np.ndarray:
        """(B, S, S, 3) uint8 per resolution of `resolutions` -> (B, dim) float32, l2-normalised."""
        by_size = dict(zip(self.resolutions, images_per_resolution))
        return self.combine({name: part.embed_batch([by_size[r] for r in part.resolutions])
                             for name, part in self.parts.items()})
