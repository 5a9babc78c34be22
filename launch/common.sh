# Sourced by the launch scripts: go to the repository root and make sure .venv has the package
# installed (editable) with the tested releases of its dependencies:
#   pip install -c constraints.txt -e ".[$EXTRAS]"
# It is created when missing and reinstalled when pyproject.toml, constraints.txt or EXTRAS change.
# EXTRAS: 'test' (default: CPU, with the test tools), 'gpu,test' for NVIDIA GPUs (jax[cuda12]).
# VENV: the environment's folder (default .venv).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="${VENV:-$ROOT/.venv}"
EXTRAS="${EXTRAS:-test}"
if [ -n "${REQUIREMENTS:-}" ]; then
  echo "error: REQUIREMENTS is no longer read; the dependencies are in pyproject.toml (GPU: EXTRAS=gpu,test)" >&2
  exit 2
fi
want="$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1) extras=$EXTRAS"
stamp="$VENV/.setup-stamp"
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "[setup] installing pixelreg_jax[$EXTRAS] into $VENV with constraints.txt (first run only; ~2 minutes)"
  "${PYTHON:-python3}" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  "$VENV/bin/python" -m pip install -qq -c constraints.txt -e ".[$EXTRAS]"   # -qq: no build chatter
  echo "$want" > "$stamp"
fi
export PATH="$VENV/bin:$PATH"
export PYTHONUNBUFFERED=1
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"

FASHION_MNIST_IDX=/usr/share/datasets/fashion-mnist

# ensure_fashion_mnist [--or-imported]: makes the real Fashion-MNIST readable offline. Debian's
# dataset-fashion-mnist ships the original IDX files in $FASHION_MNIST_IDX; when they are missing
# it is installed with apt-get if this runs as root. With --or-imported, a copy imported with
# pixelreg_jax.import_data (under $TFDS_DATA_DIR or ~/tensorflow_datasets) is enough too.
# Returns 1 with one line on stderr saying how to get the data when neither is there.
ensure_fashion_mnist() {
  local imported="${TFDS_DATA_DIR:-$HOME/tensorflow_datasets}/imported/fashion_mnist/train.npz"
  local idx="$FASHION_MNIST_IDX/train-images-idx3-ubyte.gz"
  if [ -f "$idx" ] || { [ "${1:-}" = --or-imported ] && [ -f "$imported" ]; }; then
    return 0
  fi
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "[data] installing Debian's dataset-fashion-mnist (the original IDX files, offline)"
    apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 \
      || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1; } \
      || true
  fi
  if [ ! -f "$idx" ]; then
    echo "error: Fashion-MNIST not found in $FASHION_MNIST_IDX. Install it with 'sudo apt-get install" \
         "dataset-fashion-mnist', or import the official IDX files: python -m pixelreg_jax.import_data" \
         "--dataset=fashion_mnist --source=DIR" >&2
    return 1
  fi
}
