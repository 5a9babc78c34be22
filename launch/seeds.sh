#!/usr/bin/env bash
# A multi-seed experiment, the paper's protocol: N seeds (default 7) of the unregularized and of
# the regularized model of one config, an independent unregularized source model for transferred
# FGSM, every attack on every seed, and the mean ± SEM report (Fig. 2/3 style).
#
#   bash launch/seeds.sh CONFIG OUT [config overrides for both models…]
#   SEEDS=7 ATTACKS=gaussian,uniform,salt_pepper,fgsm,boundary EVAL_ARGS="--eval.num_images=2000" \
#     bash launch/seeds.sh configs/mnist_by_mnist.py runs/mnist
#
# The N seeds of a model train together in one program (--config.num_seeds=N; vmapped on a GPU,
# where it fills the device at batch 64, looped on CPU: seed_parallelism=auto); SEPARATE=1 trains
# one process per seed instead. Re-running resumes.
source "$(dirname "$0")/common.sh"
CONFIG="${1:?usage: bash launch/seeds.sh CONFIG OUT [overrides…]}"
OUT="${2:?usage: bash launch/seeds.sh CONFIG OUT [overrides…]}"
shift 2
SEEDS="${SEEDS:-7}"
ATTACKS="${ATTACKS:-gaussian,uniform,salt_pepper,fgsm,boundary}"
SOURCE_SEED="${SOURCE_SEED:-1000}"
read -r -a EVAL <<< "${EVAL_ARGS:-}"

train() {   # train NAME [overrides…]: all seeds of one model into $OUT/NAME (or NAME_s<k>); later overrides win
  local name="$1"; shift
  if [ "${SEPARATE:-0}" = 1 ]; then
    for ((k = 0; k < SEEDS; k++)); do
      python -m pixelreg_jax.main --config="$CONFIG" --workdir="$OUT/${name}_s$k" "$@" --config.seed="$k"
    done
  else
    python -m pixelreg_jax.main --config="$CONFIG" --workdir="$OUT/$name" "$@" --config.num_seeds="$SEEDS"
  fi
}
workdirs() {   # workdirs NAME: the run directories of one model
  if [ "${SEPARATE:-0}" = 1 ]; then
    for ((k = 0; k < SEEDS; k++)); do printf '%s\n' "$OUT/${1}_s$k"; done
  else
    printf '%s\n' "$OUT/$1"
  fi
}

echo "== source model for transferred FGSM (unregularized, seed $SOURCE_SEED)"
python -m pixelreg_jax.main --config="$CONFIG" --workdir="$OUT/source" "$@" --config.reg.alpha=0 \
  --config.seed="$SOURCE_SEED"
echo "== $SEEDS seeds, unregularized"
train unregularized "$@" --config.reg.alpha=0
echo "== $SEEDS seeds, regularized"
train regularized "$@"
echo "== attacks: $ATTACKS"
all=()
for name in unregularized regularized; do
  while read -r wd; do
    python -m pixelreg_jax.evaluate --workdir="$wd" --source_workdir="$OUT/source" --attacks="$ATTACKS" "${EVAL[@]}"
    all+=("$wd")
  done < <(workdirs "$name")
done
echo "== report"
python -m pixelreg_jax.report --workdirs="$(IFS=,; echo "${all[*]}")" --out="$OUT" \
  --title="$(basename "$CONFIG" .py), $SEEDS seeds per model"
echo "report: $OUT/robustness.png  $OUT/robustness.md"
