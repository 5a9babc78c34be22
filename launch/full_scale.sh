#!/usr/bin/env bash
# The full-scale Fashion-MNIST study (GPU): Fashion-MNIST regularized by Fashion-MNIST at the
# paper's scale, by the release's evaluation protocol. Resumable: re-running skips what is done.
#
#   bash launch/full_scale.sh                       (the protocol below; a GPU job)
#   EPOCHS=2 SEEDS=2 TRAIN_SUBSET=2000 WIDTH=8 EVAL_IMAGES=500 BOUNDARY_IMAGES=50 bash launch/full_scale.sh
#                                                   (a cut run: the outputs say so)
#
# The protocol (docs/method.md §4-8):
#  1. one program trains the population SETTINGS × SEEDS: α=0, α=10/Th=0.8 (the paper's setting
#     for other combinations), α=4/Th=0.8 (the reduced study's choice), 7 seeds each — ResNet18
#     width 64 on all 60 000 training images (1 % validation), 28×28, 20 epochs with the lr ×0.3
#     every 4 epochs, batch 64 + 16 pairs, 5000 regularization images; each setting becomes its
#     own run directory (<OUT>/population/a<α>_th<Th>);
#  2. an unregularized FGSM source model (seed 1000);
#  3. every attack of docs/method.md §7 on all 10 000 test images, Boundary by the release protocol
#     (1000 images, 5 repeats, 50 steps) — plus EXTRA_ATTACKS (e.g. "pgd,corruptions");
#  4. the Fig. 1 analysis of every setting; 5. the report (mean ± SEM over seeds).
# Everything small (JSON, PNG, markdown, logs) is copied to DOCS with run.json: the device, JAX
# version, wall times, the commands and the scale actually run (``"full_scale": false`` when any
# of the sizes was cut).
#
# Env: OUT (runs/full_scale), DOCS (docs/results/fashion_mnist_full), SETTINGS ("0:0,10:0.8,4:0.8"),
#      SEEDS (7), EPOCHS (20), TRAIN_SUBSET (0 = all), WIDTH (64), REG_IMAGES (5000), EVAL_IMAGES (0 = all),
#      BOUNDARY_IMAGES (1000), BOUNDARY_REPEATS (5), BOUNDARY_STEPS (50), EXTRA_ATTACKS (""),
#      DATA_DIR (imported datasets, e.g. /tmp/data on the GPU machine), EXTRA (more config overrides),
#      NO_VENV=1 (use the python on PATH, e.g. on a machine without network where the dependencies are
#      installed from wheels, the data imported with import_data, and DATA_DIR set).
if [ "${NO_VENV:-0}" = 1 ]; then
  set -euo pipefail
  cd "$(dirname "$0")/.."
  export PYTHONUNBUFFERED=1
else
  source "$(dirname "$0")/common.sh"
fi
OUT="${OUT:-runs/full_scale}"
DOCS="${DOCS:-docs/results/fashion_mnist_full}"
SETTINGS="${SETTINGS:-0:0,10:0.8,4:0.8}"
SEEDS="${SEEDS:-7}"; EPOCHS="${EPOCHS:-20}"; TRAIN_SUBSET="${TRAIN_SUBSET:-0}"; WIDTH="${WIDTH:-64}"
REG_IMAGES="${REG_IMAGES:-5000}"; EVAL_IMAGES="${EVAL_IMAGES:-0}"
BOUNDARY_IMAGES="${BOUNDARY_IMAGES:-1000}"; BOUNDARY_REPEATS="${BOUNDARY_REPEATS:-5}"; BOUNDARY_STEPS="${BOUNDARY_STEPS:-50}"
ATTACKS="gaussian,uniform,salt_pepper,fgsm,boundary${EXTRA_ATTACKS:+,$EXTRA_ATTACKS}"
CONFIG=pixelreg_jax/configs/fashion_mnist_by_fashion_mnist.py
COMMON=(--config.model.width="$WIDTH" --config.num_epochs="$EPOCHS" --config.train_subset="$TRAIN_SUBSET"
        --config.reg.num_images="$REG_IMAGES")
[ -n "${DATA_DIR:-}" ] && COMMON+=(--config.data_dir="$DATA_DIR" --config.download=False)
read -r -a EXTRA_ARGS <<< "${EXTRA:-}"
COMMON+=("${EXTRA_ARGS[@]}")
mkdir -p "$OUT" "$DOCS"
LOG="$OUT/full_scale.log"
start=$(date +%s)
stamp() { echo "[$(( $(date +%s) - start ))s] $*" | tee -a "$LOG"; }
declare -A WALL

stamp "1/5 population $SETTINGS × $SEEDS seeds, $EPOCHS epochs, width $WIDTH"
t0=$(date +%s)
python -m pixelreg_jax.main --config="$CONFIG" --workdir="$OUT/population" "${COMMON[@]}" \
  --config.population="$SETTINGS" --config.num_seeds="$SEEDS" 2>&1 | tee -a "$LOG"
WALL[train]=$(( $(date +%s) - t0 ))
mapfile -t RUNS < <(python -c "import json; print('\n'.join(json.load(open('$OUT/population/result.json'))['settings']))")

stamp "2/5 FGSM source (unregularized, seed 1000)"
t0=$(date +%s)
python -m pixelreg_jax.main --config="$CONFIG" --workdir="$OUT/source" "${COMMON[@]}" \
  --config.reg.alpha=0 --config.seed=1000 2>&1 | tee -a "$LOG"
WALL[source]=$(( $(date +%s) - t0 ))

stamp "3/5 attacks: $ATTACKS"
t0=$(date +%s)
for wd in "${RUNS[@]}"; do
  [ -f "$wd/robustness.json" ] || python -m pixelreg_jax.evaluate --workdir="$wd" --source_workdir="$OUT/source" \
    --attacks="$ATTACKS" --eval.num_images="$EVAL_IMAGES" --eval.boundary.images="$BOUNDARY_IMAGES" \
    --eval.boundary.repeats="$BOUNDARY_REPEATS" --eval.boundary.steps="$BOUNDARY_STEPS" 2>&1 | tee -a "$LOG" | tail -n 1
done
WALL[evaluate]=$(( $(date +%s) - t0 ))

stamp "4/5 Fig. 1 analysis"
t0=$(date +%s)
for wd in "${RUNS[@]}"; do
  name=$(basename "$wd")
  [ -f "$DOCS/analysis_$name/analysis.json" ] || python -m pixelreg_jax.analysis --workdir="$wd" \
    --out="$DOCS/analysis_$name" 2>&1 | tee -a "$LOG" | tail -n 1
done
WALL[analysis]=$(( $(date +%s) - t0 ))

stamp "5/5 report"
python -m pixelreg_jax.report --workdirs="$(IFS=,; echo "${RUNS[*]}")" --out="$DOCS" \
  --title="Fashion-MNIST by Fashion-MNIST, ResNet18 w$WIDTH, $EPOCHS epochs, $SEEDS seeds" 2>&1 | tee -a "$LOG" | tail -n 1
for wd in "${RUNS[@]}"; do
  name=$(basename "$wd")
  cp "$wd/result.json" "$DOCS/result_$name.json"
  cp "$wd/robustness.json" "$DOCS/robustness_$name.json"
done
cp "$OUT/source/result.json" "$DOCS/result_source.json"
cp "$OUT/population/metrics.jsonl" "$DOCS/metrics_population.jsonl"
cp "$LOG" "$DOCS/full_scale.log"

# run.json: what was run, where, how long; full_scale is true only for the whole protocol.
WALL_JSON=$(for k in "${!WALL[@]}"; do printf '"%s": %s,' "$k" "${WALL[$k]}"; done)
python - "$DOCS/run.json" <<EOF
import json, sys, jax
sizes = {'settings': '$SETTINGS', 'seeds': $SEEDS, 'epochs': $EPOCHS, 'train_subset': $TRAIN_SUBSET,
         'width': $WIDTH, 'reg_images': $REG_IMAGES, 'eval_images': $EVAL_IMAGES,
         'boundary_images': $BOUNDARY_IMAGES, 'boundary_repeats': $BOUNDARY_REPEATS,
         'boundary_steps': $BOUNDARY_STEPS, 'attacks': '$ATTACKS'}
protocol = {'seeds': 7, 'epochs': 20, 'train_subset': 0, 'width': 64, 'reg_images': 5000, 'eval_images': 0,
            'boundary_images': 1000, 'boundary_repeats': 5, 'boundary_steps': 50}
cut = {k: (sizes[k], v) for k, v in protocol.items() if sizes[k] != v}
d = jax.devices()[0]
json.dump({**sizes, 'full_scale': not cut, 'cut': {k: {'run': a, 'protocol': b} for k, (a, b) in cut.items()},
           'device': d.device_kind, 'platform': d.platform, 'jax': jax.__version__,
           'wall_seconds': {${WALL_JSON%,}, 'total': $(( $(date +%s) - start ))},
           'commands': 'bash launch/full_scale.sh (see full_scale.log)'}, open(sys.argv[1], 'w'), indent=2)
EOF
stamp "done: $DOCS"
