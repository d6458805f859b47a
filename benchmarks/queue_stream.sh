#!/bin/bash
# Run stream methods one after another into one run folder (resumable: a method
# that was interrupted continues after its last finished case).
#
#   benchmarks/queue_stream.sh OUT "EXTRA ARGS" METHOD...
#   benchmarks/queue_stream.sh runs/paper "" ours ours_even proxy_even &
#   benchmarks/queue_stream.sh runs/paper "" online_full offline_full &   # a second process
#
# Each method runs in its own process with one torch thread, so two queues side by
# side use a 2-core machine fully; EXTRA ARGS go to `dilseg run` (e.g. "--set k=[3,2]").
cd "$(dirname "$0")/.." || exit 1
out=$1; shift; extra=$1; shift
echo "commit $(git rev-parse HEAD 2>/dev/null) $(date +%T)"
for m in "$@"; do
  echo "=== $m $(date +%T)"
  # shellcheck disable=SC2086
  .venv/bin/python -m engine.cli run --preset paper --methods "$m" --out "$out" --threads 1 --no-progress $extra \
    || echo "FAILED $m"
done
echo "=== all done $(date +%T)"
