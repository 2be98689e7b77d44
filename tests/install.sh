#!/usr/bin/env bash
# Installs what the test suite needs into the current Python environment, from scratch.
# The metric packages hpsv2 and image-reward pin pytest 7, timm 0.6 and protobuf < 4 and
# cannot resolve next to open_clip 3 / transformers 5: they are installed without their
# dependencies, only for the tests that compare our scorers with their code paths
# (sinkattn/metrics/INSTALL.txt).
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q torch torchvision
python -m pip install -q -e ".[test,metrics]"
python -m pip install -q --no-deps "hpsv2==1.2.0" "image-reward==1.5"
# The HTML report's browser test (tests/experiment/test_html_report.py) drives Debian's Chromium
# through its chromedriver; installed when missing and we are root (CI), else that test skips.
if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; } \
      || echo "tests/install.sh: chromium could not be installed; the HTML report's browser test will skip" >&2
  else
    echo "tests/install.sh: chromium/chromedriver missing (apt-get install chromium chromium-driver); the HTML report's browser test will skip" >&2
  fi
fi
