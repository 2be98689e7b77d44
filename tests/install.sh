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
