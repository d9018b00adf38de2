#!/usr/bin/env bash
# The peers of bench/peer_speed.py and bench/peer_accuracy.py, each in its own venv beside .venv (git-ignored), CPU only:
# - .venv-taps: TAPS (PyPI lavlab-taps 1.1.2, MIT) with --no-deps (its declared onnxruntime-gpu pulls
#   CUDA), then onnxruntime, the CPU torch wheel, monai, nibabel, SimpleITK;
# - .venv-nnunet: nnU-Net v2 with torch pinned to the CPU wheel (a plain install pulls a CUDA build).
# Usage: bash bench/setup_peers.sh   (a few minutes; reruns skip what exists)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
if [ ! -x .venv-taps/bin/taps ]; then
    $PY -m venv .venv-taps
    .venv-taps/bin/pip install -q --upgrade pip
    .venv-taps/bin/pip install -q torch==2.13.0
    .venv-taps/bin/pip install -q onnxruntime monai nibabel scipy SimpleITK
    .venv-taps/bin/pip install -q --no-deps lavlab-taps==1.1.2
fi
if [ ! -x .venv-nnunet/bin/nnUNetv2_plan_experiment ]; then
    $PY -m venv .venv-nnunet
    .venv-nnunet/bin/pip install -q --upgrade pip
    .venv-nnunet/bin/pip install -q torch==2.13.0
    # A plain `pip install nnunetv2` replaces that torch with a CUDA build: pin it for every dependency.
    echo "torch==2.13.0" > .venv-nnunet/torch-pin.txt
    .venv-nnunet/bin/pip install -q nnunetv2 -c .venv-nnunet/torch-pin.txt
    .venv-nnunet/bin/python -c "import torch; assert not torch.cuda.is_available() and '+cu' not in torch.__version__, torch.__version__"
fi
echo "peers ready: .venv-taps/bin/taps, .venv-nnunet/bin/nnUNetv2_plan_experiment"
