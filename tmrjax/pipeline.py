"""The embedding pipeline: backbone + method config + fitted artefacts -> vectors per image.

Data flows one way (DESIGN.md):

    uint8 square image per resolution -> backbone tap (B, h, w, C)
      -> regions, spatial attention, pooling -> raw regional descriptors (B, R, D')   (`stages`)
      -> l2 -> PCA-whitening -> l2 (B, R, d) -> region weights (B, R)
      -> one vector per image: weighted sum over regions and resolutions, l2 -> (B, d)  (tursun2021 Eq. 2-4)
      or R vectors per image: the regions of every resolution -> (B, R, d)            (jeong2017 Eq. 7)

Each resolution has its own compiled function (jax.jit caches one executable per input
shape); the method is data (the config: one entry of each stage registry), never a branch on
its name.
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
from .data.salient_points import N_MAX, batch_points
from .fileio import Record, StoredFileError, load_npz, read_json, write_atomic
from .kernels import pooling
from .method_configs import MissingFieldError, PipelineError, load_config
from .models import architecture, build_backbone
from .stages import (
    POOLINGS,
    REGION_WEIGHTS,
    REGIONS,
    SALIENT_POINTS,
    SPATIAL_ATTENTIONS,
    DetectedPoints,
    aggregate,
    describe,
    first_order_regions,
    postprocess,
    region_vectors,
)
from .weights import load_backbone, random_variables

# /2: configs name every stage (embed.regions, spatial_attention, region_weights, output)
PIPELINE_FORMAT = "tmrjax-pipeline/2"
COMBINED_FORMAT = "tmrjax-combined-pipeline/2"
RANDOM_WEIGHTS_SEED = 0
RANDOM_WEIGHTS = "random"  # asked for explicitly: a config's backbone.weights or --weights random
NO_WEIGHTS = "none"  # an architecture without variables (the ink thumbnail)


# ----------------------------------------------------------------------------------------
# Configs


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
    e = config.embed
    local = getattr(POOLINGS.get(e.pooling), "local_projection", False)
    return e.pca_whitening_dim > 0 or e.region_weights != "uniform" or local


OUTPUTS = ("image", "regions")  # embed.output: one vector per image, or R vectors per image (`Output`)


# Bounds of the numeric fields of a retrieval config: far beyond any real use, tight enough that a
# damaged or hostile pipeline.json cannot ask for petabytes (a batch of 1e12 images) or a year of k-means.
CONFIG_BOUNDS: dict[str, tuple[float, float]] = {
    "batch_size": (1, 4096),
    "embed.region_levels": (0, 8),
    "embed.gem_p": (1e-3, 100),
    "embed.pca_whitening_dim": (0, 1 << 16),
    "embed.whitening_power": (0, 1),
    "embed.codebook_size": (1, 1 << 20),
    "embed.candidate_points": (1, 1 << 14),
    "embed.candidate_points_min": (1, 1 << 14),
    "embed.candidate_clusters": (1, 6),  # 2^L regions per image and resolution
    "embed.local_dim": (1, 1024),
    "embed.eigenvalue_floor": (0, 1),
    "search.query_expansion": (0, 1000),
    "search.qe_alpha": (0, 100),
    "search.database_augmentation": (0, 1000),
    "search.dba_alpha": (0, 100),
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
            raise MissingFieldError(f"{config.get('name', '?')}: field {name!r} is missing")
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
        for name, part in config.parts.items():
            validate_config(part)
            if part.embed.output != "image":
                raise PipelineError(f"{config.name}: part {name!r} gives {part.embed.output!r}; a combined "
                                    "pipeline concatenates one vector per image of each part")
        return
    _check_types(config, retrieval_config())
    for field, (low, high) in CONFIG_BOUNDS.items():
        section, _, key = field.rpartition(".")
        value = (config[section] if section else config)[key]
        if not low <= value <= high:
            raise PipelineError(f"{config.name}: {field}={value!r} is outside [{low}, {high}]")
    e = config.embed
    for field, registry in (("regions", REGIONS), ("salient_points", SALIENT_POINTS),
                            ("spatial_attention", SPATIAL_ATTENTIONS), ("pooling", POOLINGS),
                            ("region_weights", REGION_WEIGHTS), ("output", OUTPUTS)):
        if e[field] not in registry:
            raise PipelineError(f"{config.name}: embed.{field}={e[field]!r}; expected one of {sorted(registry)}")
    if SALIENT_POINTS[e.salient_points].detected:
        if e.regions != "candidates":
            raise PipelineError(f"{config.name}: embed.salient_points={e.salient_points!r} picks the points of "
                                f"candidate regions; regions={e.regions!r} has none (set it to 'alpha_peaks')")
        if not e.candidate_points_min <= e.candidate_points <= N_MAX:
            raise PipelineError(
                f"{config.name}: embed.candidate_points_min={e.candidate_points_min} (N_min) and candidate_points="
                f"{e.candidate_points} (N_max) must satisfy N_min <= N_max <= {N_MAX}, the detected points kept "
                "per image (tmrjax/data/salient_points.py)")
    spec = POOLINGS[e.pooling]
    if (e.regions == "rmac") != (e.region_levels > 0):
        raise PipelineError(f"{config.name}: embed.region_levels={e.region_levels} is the R-MAC grid's: "
                            f">= 1 with regions='rmac', 0 otherwise (regions={e.regions!r})")
    if not spec.regional(e.regions):
        raise PipelineError(f"{config.name}: pooling {e.pooling!r} does not pool regions={e.regions!r}; "
                            + ("set embed.regions='global'" if spec.whole else "it pools region masks"))
    if e.spatial_attention != "none" and e.pooling in ("identity", "flatten"):
        raise PipelineError(f"{config.name}: pooling {e.pooling!r} takes no spatial attention")
    if e.center_prior and (e.pooling != "spoc" or e.regions != "global"):
        raise PipelineError(f"{config.name}: embed.center_prior applies to global SPoC only")
    if e.region_weights == "idf" and e.pca_whitening_dim <= 0:
        raise PipelineError(
            f"{config.name}: URA (region_weights='idf') works on PCA-whitened regions; set pca_whitening_dim")
    if e.output == "regions" and e.region_weights != "uniform":
        raise PipelineError(f"{config.name}: region matching (output='regions') compares regions one by one; "
                            f"region_weights={e.region_weights!r} would weight a sum that is not made")
    if not 0 < len(e.resolutions) <= MAX_RESOLUTIONS or any(
            isinstance(r, bool) or not isinstance(r, int) or not 32 <= r <= MAX_RESOLUTION for r in e.resolutions):
        raise PipelineError(f"{config.name}: embed.resolutions={tuple(e.resolutions)}; expected 1 to "
                            f"{MAX_RESOLUTIONS} integer sizes, each in [32, {MAX_RESOLUTION}]")
    if e.pooling == "flatten" and len(e.resolutions) != 1:
        raise PipelineError(f"{config.name}: flatten pooling gives resolution-sized vectors; use one resolution")


# ----------------------------------------------------------------------------------------
# Learned artefacts


# The arrays of artefacts.npz: name -> (dtype kinds, ndim); each present only when the config fits it.
ARTEFACT_ARRAYS = {"local_projection": ("f", 2), "pca_mean": ("f", 1), "pca_projection": ("f", 2),
                   "centroids": ("f", 2), "idf": ("f", 1)}


@dataclasses.dataclass(frozen=True, eq=False)
class Artefacts:
    """What `tmrjax fit` learns: the PCA bases of local descriptors (jeong2017 Eq. 4), PCA-whitening
    and the URA codebook with its IDF table."""

    local_projection: np.ndarray | None = None  # (C, K')
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
    except MissingFieldError as e:
        raise StoredFileError(record.path, f"field 'config': {e}; fitted by an earlier tmrjax, whose configs did "
                                           "not have it: fit the pipeline again (tmrjax fit)") from None
    except PipelineError as e:
        raise StoredFileError(record.path, f"field 'config': {e}") from None
    if config_hash(config) != record.str("config_hash"):
        raise StoredFileError(
            record.path, "field 'config' does not match its recorded hash (config_hash): edited or damaged")
    return config


# ----------------------------------------------------------------------------------------
# The pipeline


class Output(enum.Enum):
    """What a pipeline gives per image (``embed.output``): one vector, or several (one per region, for
    region matching)."""

    IMAGE = "image"  # (B, d) unit vectors
    REGIONS = "regions"  # (B, R, d): unit vectors, or all zero for a region that is not there


@dataclasses.dataclass(frozen=True, eq=False)
class Pipeline:
    """Backbone + config + learned artefacts, a frozen value: `with_artefacts` makes a new one.

    Embedding is the pure function `embed_fn(artefacts, feature_maps, points)` composed from the
    config's stages (regions -> pooling -> post-processing -> region weights -> sum); the
    compiled functions are built on first use and belong to this value.
    """

    config: ConfigDict
    module: Any
    variables: Any
    backbone: dict  # identity of the weights: arch, layout, source file/sha256 or random seed
    artefacts: Artefacts = dataclasses.field(default_factory=Artefacts)
    path: Path | None = None  # the fitted pipeline directory, if any

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
        return jax.jit(lambda a, f, points: describe(f, embed, a, points))

    @functools.cached_property
    def _first_order_regions(self) -> Callable:
        embed = self.config.embed
        return jax.jit(lambda f, points: first_order_regions(f, embed, points))

    @functools.cached_property
    def _aggregate(self) -> Callable:
        embed = self.config.embed
        per_resolution = region_vectors if self.output is Output.REGIONS else aggregate
        return jax.jit(lambda a, f, points: per_resolution(f, embed, a, points))

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
        return self._descriptor_shapes[0][-1]

    @functools.cached_property
    def _descriptor_shapes(self) -> list[tuple[int, ...]]:
        """(1, R, D') of the raw regional descriptors at each resolution, traced (not computed) with
        stand-in artefacts of the fitted shapes."""
        tap, embed = self.config.backbone.tap, self.config.embed

        def raw(x):
            features = self.module.apply(self.variables, x)[tap]
            arts = {"local_projection": jnp.zeros((features.shape[-1], embed.local_dim))}
            return describe(features, embed, arts, DetectedPoints.none(1, x.shape[1]))[0]

        return [jax.eval_shape(raw, jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)).shape
                for size in self.resolutions]

    @property
    def dim(self) -> int:
        return self.config.embed.pca_whitening_dim or self.raw_dim

    @property
    def output(self) -> Output:
        return Output(self.config.embed.output)

    @property
    def vector_shape(self) -> tuple[int, ...]:
        """What one image embeds to: (d,) for `Output.IMAGE`, (R, d) for `Output.REGIONS`."""
        return (self.regions_per_image, self.dim) if self.output is Output.REGIONS else (self.dim,)

    @property
    def regions_per_image(self) -> int:
        """R of `Output.REGIONS`: the regions of every resolution (1 for `Output.IMAGE`)."""
        return sum(shape[1] for shape in self._descriptor_shapes) if self.output is Output.REGIONS else 1

    @functools.cached_property
    def whole_map_regions(self) -> tuple[int, ...]:
        """Where `Output.REGIONS` vectors hold the whole feature map: one index into their R axis per resolution
        (jeong2017's R_M, R-MAC's full-map region, the global region), found as the one region of a featureless
        map (no salient points, so no candidate hulls) that is valid and covers every cell. A query cropped to
        its object searches with these only (jeong2017 Sec. 5; `evaluation`)."""
        tap, embed = self.config.backbone.tap, self.config.embed
        found, offset = [], 0
        for size, (_, count, _) in zip(self.resolutions, self._descriptor_shapes):
            shape = jax.eval_shape(lambda x: self.module.apply(self.variables, x)[tap],
                                   jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)).shape
            regions = REGIONS[embed.regions](jnp.zeros(shape, jnp.float32), embed, DetectedPoints.none(1, size))
            covers = np.asarray(regions.as_masks(*shape[1:3])).reshape(count, -1).all(axis=1)
            whole = np.flatnonzero(covers & np.asarray(regions.valid)[0])
            if whole.size != 1:
                raise PipelineError(f"{self.name}: regions={embed.regions!r} at {size} px has {whole.size} regions "
                                    "covering the whole map; expected one")
            found.append(offset + int(whole[0]))
            offset += count
        return tuple(found)

    def describe_text(self) -> str:
        e = self.config.embed
        candidates = f"{2 ** e.candidate_clusters} candidate regions ({e.salient_points} points)"
        regions = {"global": "global", "rmac": f"R-MAC L={e.region_levels}", "candidates": candidates}[e.regions]
        attention = f" x {e.spatial_attention}" if e.spatial_attention != "none" else ""
        output = f", {self.regions_per_image} region vectors per image" if self.output is Output.REGIONS else ""
        return (
            f"{self.name} ({self.config.paper_row}): {self.backbone['arch']} {self.config.backbone.tap} "
            f"[{self.backbone['layout']}; weights: {self.backbone['weights']}], "
            f"resolutions {self.resolutions}, {regions} {e.pooling}{attention}, PCA-w {e.pca_whitening_dim or 'none'}, "
            f"region weights {e.region_weights}, dim {self.dim}{output}"
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
        if POOLINGS[e.pooling].local_projection:
            if arts.local_projection is None:
                raise PipelineError(f"{self.name}: needs the PCA bases of local descriptors; run `tmrjax fit` first")
            channels = self._first_order_shape[-1]
            if arts.local_projection.shape != (channels, e.local_dim):
                raise PipelineError(f"{self.name}: local projection is {arts.local_projection.shape}, "
                                    f"expected {(channels, e.local_dim)}")
        if e.pca_whitening_dim > 0:
            if arts.pca_projection is None:
                raise PipelineError(f"{self.name}: needs PCA-whitening; run `tmrjax fit` first")
            want = (self.raw_dim, e.pca_whitening_dim)
            if arts.pca_projection.shape != want:
                raise PipelineError(f"{self.name}: PCA projection is {arts.pca_projection.shape}, expected {want}")
        if e.region_weights == "idf":
            if arts.centroids is None or arts.idf is None:
                raise PipelineError(f"{self.name}: needs a URA codebook and IDF; run `tmrjax fit` first")
            want = (e.codebook_size, self.dim)
            if arts.centroids.shape != want or arts.idf.shape != (e.codebook_size,):
                raise PipelineError(
                    f"{self.name}: codebook {arts.centroids.shape} / idf {arts.idf.shape}, expected {want}"
                )

    # -- compute --------------------------------------------------------------------------

    def describe_features(
        self, features: jax.Array, points: DetectedPoints | None = None
    ) -> tuple[jax.Array, jax.Array]:
        """Raw regional descriptors (B, R, D') of one resolution's feature map (B, h, w, C), and their
        valid flags (B, R); `points`: that resolution's of `points_of`."""
        return self._describe_features(self.device_artefacts, features, points)

    def first_order_features(
        self, features: jax.Array, points: DetectedPoints | None = None
    ) -> tuple[jax.Array, jax.Array]:
        """First-order descriptors (B, R, C) of this pipeline's regions (jeong2017 Eq. 3) and their valid
        flags: what the PCA bases of local descriptors are fitted on (Eq. 4)."""
        return self._first_order_regions(features, points)

    @property
    def first_order_features_dim(self) -> int:
        """C: the length of a first-order descriptor (the tap's channels)."""
        return self._first_order_shape[-1]

    @functools.cached_property
    def _first_order_shape(self) -> tuple[int, ...]:
        tap, embed = self.config.backbone.tap, self.config.embed
        size = self.resolutions[0]
        traced = jax.eval_shape(lambda x: first_order_regions(self.module.apply(self.variables, x)[tap], embed,
                                                              DetectedPoints.none(1, size))[0],
                                jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32))
        return traced.shape

    def postprocess_batch(self, descriptors: jax.Array) -> jax.Array:
        return self._postprocess(descriptors, self.device_artefacts)

    @property
    def backbone_key(self) -> tuple:
        """Pipelines with equal keys compute identical feature maps (they can share them)."""
        return (self.backbone["arch"], self.backbone["layout"], self.backbone["weights"], self.config.backbone.tap)

    def features_batch(self, images: np.ndarray) -> jax.Array:
        """The backbone tap of one resolution's uint8 batch, (B, h, w, C)."""
        return self._features(self.variables, jnp.asarray(images))

    @property
    def point_sizes(self) -> tuple[int, ...]:
        """The resolutions whose images the host searches for salient points for this pipeline
        (`embed.salient_points`, jeong2017 Sec. 2): all of them, or none."""
        return self.resolutions if SALIENT_POINTS[self.config.embed.salient_points].detected else ()

    def points_of(self, detected: Mapping[int, tuple[np.ndarray, np.ndarray]]) -> list[DetectedPoints | None]:
        """Per resolution, the points `detected` at that image size (`Batch.points`, `batch_points`) as
        `DetectedPoints`, or None where this pipeline's regions take none (not a `point_sizes`)."""
        missing = [size for size in self.point_sizes if size not in detected]
        if missing:
            raise PipelineError(f"{self.name}: its candidate regions rank salient points detected in the images, "
                                f"but none came for sizes {missing} (iter_batches(point_sizes=...))")
        return [DetectedPoints(jnp.asarray(detected[size][0]), jnp.asarray(detected[size][1]), size)
                if size in self.point_sizes else None for size in self.resolutions]

    def embed_fn(
        self,
        artefacts: Mapping[str, jax.Array],
        features_per_resolution: Sequence[jax.Array],
        points_per_resolution: Sequence[DetectedPoints | None] | None = None,
    ) -> jax.Array:
        """The pipeline's function: feature maps (one per resolution), with their images' salient points
        when the regions need them (`points_of`) -> `Output.IMAGE`: (B, d), the l2-normalised sum over
        resolutions of the weighted regions (tursun2021 Eq. 2-4); or `Output.REGIONS`: (B, R, d), the
        regions of every resolution, invalid ones all zero."""
        points_per_resolution = points_per_resolution or [None] * len(features_per_resolution)
        if not len(features_per_resolution) == len(points_per_resolution) == len(self.resolutions):
            raise PipelineError(
                f"{self.name}: got {len(features_per_resolution)} resolutions of feature maps and "
                f"{len(points_per_resolution)} of points, expected {self.resolutions}"
            )
        parts = [self._aggregate(artefacts, features, points)
                 for features, points in zip(features_per_resolution, points_per_resolution)]
        if self.output is Output.REGIONS:
            return parts[0] if len(parts) == 1 else jnp.concatenate(parts, axis=1)
        total = parts[0]
        for part in parts[1:]:
            total = total + part
        return pooling.l2_normalize(total)

    def embed_features(
        self,
        features_per_resolution: Sequence[jax.Array],
        points_per_resolution: Sequence[DetectedPoints | None] | None = None,
    ) -> np.ndarray:
        """`embed_fn` with this pipeline's artefacts, as float32 host vectors ((B, d) or (B, R, d))."""
        self.check_artefacts()
        vectors = self.embed_fn(self.device_artefacts, features_per_resolution, points_per_resolution)
        return np.asarray(vectors, dtype=np.float32)

    def embed_batch(self, images_per_resolution: Sequence[np.ndarray]) -> np.ndarray:
        """(B, S, S, 3) uint8 per resolution -> (B, d) float32, l2-normalised (Eq. 3-4); salient points,
        when the regions need them, are detected here."""
        detected = {size: batch_points(images) for size, images in zip(self.resolutions, images_per_resolution)
                    if size in self.point_sizes}
        return self.embed_features([self.features_batch(images) for images in images_per_resolution],
                                   self.points_of(detected))


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

    output = Output.IMAGE  # the parts' vectors side by side: one per image
    regions_per_image = 1

    @property
    def vector_shape(self) -> tuple[int, ...]:
        return (self.dim,)

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
