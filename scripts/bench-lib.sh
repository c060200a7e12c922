# Shared by the benchmark scripts (sourced, not run): a work folder that is
# removed at exit unless KEEP=1, and the processes a script starts (their
# ids in PIDS), stopped by process id at exit.

# bench_work NAME: makes a new work folder WORK, empties PIDS and sets the
# exit trap.
bench_work() {
  WORK=$(mktemp -d "${TMPDIR:-/tmp}/healthgate-$1.XXXXXX")
  PIDS=()
  trap bench_cleanup EXIT
}

bench_cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [ "${KEEP:-0}" = 1 ]; then echo "results kept in $WORK" >&2; else rm -rf "$WORK"; fi
}
