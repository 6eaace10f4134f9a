#!/usr/bin/env bash
# Install what building the `logo_groups` benchmark needs, offline from package registries only:
#   * the pinned npm package @iconify/json (the brand-logo icon sets) into ${TMRJAX_CACHE:-~/.cache/tmrjax}/iconify
#   * the Debian font packages and word list used for the text-only distractor marks
#   * resvg-py (SVG rasteriser, no system libraries)
# Idempotent: anything already present is left as it is. Set SKIP_APT=1 / SKIP_NPM=1 / SKIP_PIP=1 to skip a part.
set -euo pipefail

ICONIFY_VERSION="2.2.535"  # keep equal to tmrjax.data.iconify.ICONIFY_VERSION
CACHE="${TMRJAX_CACHE:-$HOME/.cache/tmrjax}"
ICONIFY_DIR="$CACHE/iconify"

# the packages of tmrjax.data.logo_marks.FONT_FILES (text-only marks) and its WORDS_FILE (wamerican)
FONT_PACKAGES=(
  fonts-dejavu fonts-dejavu-extra fonts-liberation fonts-noto-core fonts-urw-base35 fonts-freefont-ttf
  fonts-open-sans fonts-roboto fonts-lato fonts-cantarell fonts-crosextra-carlito fonts-crosextra-caladea
  fonts-linuxlibertine fonts-ebgaramond fonts-comic-neue fonts-texgyre
)
WORD_PACKAGES=(wamerican)

if [[ "${SKIP_APT:-0}" != 1 ]]; then
  missing=()
  for p in "${FONT_PACKAGES[@]}" "${WORD_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if ((${#missing[@]})); then
    SUDO=""; [[ $(id -u) != 0 ]] && SUDO="sudo"
    $SUDO apt-get update
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y --no-install-recommends "${missing[@]}"
  fi
  echo "fonts and word list: ok"
fi

if [[ "${SKIP_PIP:-0}" != 1 ]]; then
  python -c "import resvg_py" 2>/dev/null || python -m pip install "resvg-py>=0.5"
  echo "resvg-py: ok"
fi

if [[ "${SKIP_NPM:-0}" != 1 ]]; then
  pkg="$ICONIFY_DIR/node_modules/@iconify/json/package.json"
  have=""
  [[ -f "$pkg" ]] && have=$(node -p "require('$pkg').version" 2>/dev/null || true)
  if [[ "$have" != "$ICONIFY_VERSION" ]]; then
    mkdir -p "$ICONIFY_DIR"
    npm install --prefix "$ICONIFY_DIR" --no-audit --no-fund --save-exact "@iconify/json@$ICONIFY_VERSION"
  fi
  echo "@iconify/json $ICONIFY_VERSION: $ICONIFY_DIR/node_modules/@iconify/json"
fi
