#!/usr/bin/env bash
# Install the Debian packages the test suite needs, when they are missing.
# As root with apt-get (CI, a fresh machine) it installs them; otherwise it says what to install.
set -euo pipefail
# `system_deps.sh grade`: only what grading needs. `system_deps.sh pdf`: only what `make pdf` needs.
mode=${1:-all}
needed=()
if [ "$mode" != pdf ]; then
  command -v bwrap >/dev/null 2>&1 || needed+=(bubblewrap)        # the grader's sandbox
fi
if [ "$mode" = all ]; then
  command -v chromium >/dev/null 2>&1 || needed+=(chromium)        # the site's browser tests
  command -v npm >/dev/null 2>&1 || needed+=(npm)                  # installs axe-core for them (Node)
fi
# make pdf and its test (tests/test_pdf.py): XeLaTeX, the LaTeX packages Sphinx and
# jupyterBook.cls load (each probed by one file it ships), fonts, pdftotext. About 118 MB
# to download, without recommends (which would add as much again, unused).
tex=()
if [ "$mode" != grade ]; then
  command -v xelatex >/dev/null 2>&1 || tex+=(texlive-xetex)
  command -v latexmk >/dev/null 2>&1 || tex+=(latexmk)
  kpsewhich polyglossia.sty >/dev/null 2>&1 || tex+=(texlive-latex-recommended)
  kpsewhich fncychap.sty >/dev/null 2>&1 || tex+=(texlive-latex-extra)       # with pgfplots (texlive-pictures)
  kpsewhich rsfs10.tfm >/dev/null 2>&1 || tex+=(texlive-fonts-recommended)   # mathrsfs, for jupyterBook.cls
  fc-list -q FreeSerif 2>/dev/null || tex+=(fonts-freefont-otf)              # Sphinx's XeLaTeX fonts
  fc-list -q "WenQuanYi Micro Hei Mono" 2>/dev/null || tex+=(fonts-wqy-microhei)  # CJK in chapter 2
  fc-list -q Symbola 2>/dev/null || tex+=(fonts-symbola)                      # emoji in chapter 2
  command -v pdftotext >/dev/null 2>&1 || tex+=(poppler-utils)
fi
[ $((${#needed[@]} + ${#tex[@]})) -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "Installing system packages: ${needed[*]} ${tex[*]}"
  apt-get update -qq
  export DEBIAN_FRONTEND=noninteractive
  [ ${#needed[@]} -eq 0 ] || apt-get install -y -qq "${needed[@]}" >/dev/null
  [ ${#tex[@]} -eq 0 ] || apt-get install -y -qq --no-install-recommends "${tex[@]}" >/dev/null
else
  echo "Missing system packages: ${needed[*]} ${tex[*]}. Install them (e.g. sudo apt-get install --no-install-recommends ${needed[*]} ${tex[*]}) and rerun." >&2
  exit 1
fi
