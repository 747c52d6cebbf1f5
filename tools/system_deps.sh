#!/usr/bin/env bash
# Install the Debian packages the test suite needs, when they are missing.
# As root with apt-get (CI, a fresh machine) it installs them; otherwise it says what to install.
set -euo pipefail
# `system_deps.sh grade`: only what grading needs.
needed=()
command -v bwrap >/dev/null 2>&1 || needed+=(bubblewrap)          # the grader's sandbox
if [ "${1:-all}" != grade ]; then
  command -v chromium >/dev/null 2>&1 || needed+=(chromium)        # the site's browser tests
  command -v npm >/dev/null 2>&1 || needed+=(npm)                  # installs axe-core for them (Node)
fi
[ ${#needed[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "Installing system packages: ${needed[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${needed[@]}" >/dev/null
else
  echo "Missing system packages: ${needed[*]}. Install them (e.g. sudo apt-get install ${needed[*]}) and rerun." >&2
  exit 1
fi
