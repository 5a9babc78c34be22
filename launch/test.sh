#!/usr/bin/env bash
# The test suite: sets up .venv if needed, makes the real Fashion-MNIST available (Debian's
# dataset-fashion-mnist, as for the demo), then pytest. Extra arguments go to pytest.
# Slow tests (marked `slow`) are skipped here; run them with: bash launch/test.sh -m slow
# Without the data the real-data tests skip, except under CI=true, where that is an error.
# TEST_WORKERS pytest-xdist workers (default 2: XLA compiles on one thread, so two workers take
# the suite on 2 cores from 11 to 6 minutes; each worker holds its own JAX, ~2 GB).
source "$(dirname "$0")/common.sh"
if ! ensure_fashion_mnist; then
  if [ "${CI:-}" = true ]; then exit 1; fi
  echo "[data] continuing: the tests that read the real Fashion-MNIST will be skipped" >&2
fi
set +e
python -m pytest -q -n "${TEST_WORKERS:-2}" -m "not slow" "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "error: pytest collected no tests" >&2
  exit 1
fi
exit "$rc"
