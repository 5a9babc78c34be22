#!/usr/bin/env bash
# The demo: real Fashion-MNIST read offline, a narrow ResNet18 trained with the pixel-similarity
# regularizer and its unregularized twin, a noise-robustness sweep of both, one plot.
# A few minutes on 2 CPU cores. Re-running resumes (finished runs are not retrained).
# Extra arguments are config overrides for both runs, e.g.  bash launch/demo.sh --config.seed=1
source "$(dirname "$0")/common.sh"
OUT="${DEMO_DIR:-runs/demo}"

# Real data, offline: Debian's dataset-fashion-mnist (the original IDX files) or an imported copy.
ensure_fashion_mnist --or-imported || exit 1

echo "== 1/4 train the regularized model: python -m pixelreg_jax.main --config=configs/fashion_mnist.py"
python -m pixelreg_jax.main --config=configs/fashion_mnist.py --workdir="$OUT/regularized" "$@"
echo "== 2/4 train its unregularized twin (same seed and data order): --config.reg.alpha=0"
python -m pixelreg_jax.main --config=configs/fashion_mnist.py --workdir="$OUT/unregularized" --config.reg.alpha=0 "$@"
echo "== 3/4 noise robustness on 1000 test images (Gaussian, uniform, salt & pepper; 10 levels each)"
for m in unregularized regularized; do
  python -m pixelreg_jax.evaluate --workdir="$OUT/$m" --attacks=gaussian,uniform,salt_pepper --eval.num_images=1000
done
echo "== 4/4 plot"
python -m pixelreg_jax.report --workdirs="$OUT/unregularized,$OUT/regularized" --out="$OUT" \
  --title="Fashion-MNIST, narrow ResNet18 (demo)"
cat <<MSG

Demo finished. Outputs:
  checkpoints  $OUT/regularized/checkpoints/   $OUT/unregularized/checkpoints/
  metrics      $OUT/*/metrics.jsonl   results: $OUT/*/result.json   robustness: $OUT/*/robustness.json
  plot         $OUT/robustness.png    table: $OUT/robustness.md
MSG
