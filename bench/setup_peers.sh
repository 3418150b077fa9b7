#!/usr/bin/env bash
# Builds .venv-peer: PaddleOCR 2.10's own pipeline, the peer that bench/engine.py and
# bench/paddleocr_reference.py compare ppocr-server with. Heavy (~1.6 GB), so it lives outside the
# runtime and test environments. Pinned and idempotent: a second run only checks the stamp.
#
#   bash bench/setup_peers.sh            (or: make peers)
#   PYTHON=python3.11 PEER_VENV=/tmp/peer bash bench/setup_peers.sh
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
PEER_VENV=${PEER_VENV:-.venv-peer}
STAMP="$PEER_VENV/.installed-peers"
# Bump when a pin below changes, so the stamp no longer matches and the venv is refreshed.
PINS="paddleocr==2.10.0 paddlepaddle==3.3.1 opencv==4.14.0.94 numpy<2.5"

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$PINS" ]]; then
    echo "$PEER_VENV is up to date ($PINS)"
    exit 0
fi

"$PYTHON" -m venv "$PEER_VENV"
PIP=("$PEER_VENV/bin/python" -m pip install --quiet --disable-pip-version-check)
"${PIP[@]}" "paddleocr==2.10.0" "paddlepaddle==3.3.1" "numpy<2.5"
# paddleocr pulls OpenCV 5.x (opencv-python and opencv-contrib-python). A different OpenCV changes
# the output of resize and warpPerspective, hence the crops and sometimes the text, so the peer
# gets the very OpenCV build the engine runs on (requirements.txt), in all three flavours that
# share the cv2 package directory.
"${PIP[@]}" --force-reinstall --no-deps \
    "opencv-python==4.14.0.94" "opencv-contrib-python==4.14.0.94" \
    "opencv-python-headless==4.14.0.94"
"$PEER_VENV/bin/python" - <<'EOF'
import cv2, numpy, paddle, paddleocr
assert cv2.__version__ == "4.14.0", cv2.__version__
assert paddleocr.__version__ == "2.10.0", paddleocr.__version__
assert paddle.__version__ == "3.3.1", paddle.__version__
print(f"peer venv ok: paddleocr {paddleocr.__version__}, paddlepaddle {paddle.__version__}, "
      f"opencv {cv2.__version__}, numpy {numpy.__version__}")
EOF
echo "$PINS" > "$STAMP"
