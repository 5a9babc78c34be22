#!/usr/bin/env bash
# The test suite: sets up .venv if needed, then pytest. Extra arguments go to pytest.
# Slow tests (marked `slow`) are skipped here; run them with: bash launch/test.sh -m slow
source "$(dirname "$0")/common.sh"
set +e
python -m pytest -q -m "not slow" "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "error: pytest collected no tests" >&2
  exit 1
fi
exit "$rc"
