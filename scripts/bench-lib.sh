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

# thread_ticks PID: the CPU time (clock ticks, user + system) of each of the
# process's threads, summed by thread name, as sorted "name ticks" lines
# (for `join`). The name closes the second field of /proc/PID/task/TID/stat,
# in parentheses; the times are the 12th and 13th fields after it. The
# gateway's threads are named for what they do (request-workers, verifier,
# log-writer, index, admin); other names are kept as they are.
thread_ticks() {
  for t in /proc/"$1"/task/*; do
    sed 's/^.*) //' "$t/stat" 2>/dev/null | awk -v n="$(cat "$t/comm" 2>/dev/null)" '{ print n, $12 + $13 }'
  done | awk '{
      n = $1
      if (n == "tokio-rt-worker") n = "request-workers"; else if (n ~ /^healthgate-veri/) n = "verifier"
      else if (n == "healthgate-wal") n = "log-writer"; else if (n ~ /^healthgate-inde/) n = "index"
      else if (n ~ /^healthgate-admi/) n = "admin"
      c[n] += $2 }
    END { for (n in c) print n, c[n] }' | sort
}

# log_tail ADMIN_URL: the log's tail from the gateway's histograms, one
# line: records committed, of them how many waited over 5 ms and over 10 ms
# from append to durable; fsyncs (write + fdatasync), of them how many took
# over 5 ms and over 10 ms. Two such lines, before and after a run, go to
# log_tail_delta.
log_tail() {
  curl -s "$1/metrics" | awk '
    /^healthgate_log_commit_wait_seconds_count/ { w = $2 }
    /^healthgate_log_commit_wait_seconds_bucket\{le="0.005"\}/ { w5 = $2 }
    /^healthgate_log_commit_wait_seconds_bucket\{le="0.01"\}/ { w10 = $2 }
    /^healthgate_log_fsync_duration_seconds_count/ { f = $2 }
    /^healthgate_log_fsync_duration_seconds_bucket\{le="0.005"\}/ { f5 = $2 }
    /^healthgate_log_fsync_duration_seconds_bucket\{le="0.01"\}/ { f10 = $2 }
    END { print w + 0, w - w5, w - w10, f + 0, f - f5, f - f10 }'
}

# log_tail_delta BEFORE AFTER: what the log did between two log_tail lines,
# in words.
log_tail_delta() {
  paste "$1" "$2" | awk '{
    w = $7 - $1; f = $10 - $4
    printf "%d records, %d (%.2f %%) waited > 5 ms, %d (%.2f %%) > 10 ms; %d fsyncs, %d > 5 ms, %d > 10 ms\n",
      w, $8 - $2, (w > 0) ? 100 * ($8 - $2) / w : 0, $9 - $3, (w > 0) ? 100 * ($9 - $3) / w : 0, f, $11 - $5, $12 - $6 }'
}

# ticks PID: the process's CPU time so far (user + system, clock ticks).
ticks() { sed 's/^.*) //' "/proc/$1/stat" | awk '{ print $12 + $13 }'; }
TCK=$(getconf CLK_TCK)

# demo_up DIR ARGS...: runs `$BIN/healthgate demo --dir DIR --size $SIZE`
# with ARGS on free ports (its output appended to DIR.log) until it serves;
# sets DEMO to its pid and adds it to PIDS. A resumed demo rewrites its
# env.json once it serves, so ready is an env.json newer than the start
# and /readyz answering 200. If the array PIN is set (e.g. `taskset -c
# 0`), the demo runs under it; the prefix must exec the gateway, so that
# DEMO is the gateway's own pid.
demo_up() {
  local dir=$1 marker=$WORK/.demo-started admin
  shift
  touch "$marker"
  sleep 1 # env.json's time must differ from the marker's
  ${PIN[@]+"${PIN[@]}"} "$BIN/healthgate" demo --dir "$dir" --size "$SIZE" --public 127.0.0.1:0 \
    --admin 127.0.0.1:0 "$@" >>"$dir.log" 2>&1 &
  DEMO=$!
  PIDS+=("$DEMO")
  for _ in $(seq 600); do
    if [ "$dir/env.json" -nt "$marker" ]; then
      admin=$(sed -n 's/.*"admin_url": *"\([^"]*\)".*/\1/p' "$dir/env.json")
      [ "$(curl -s -o /dev/null -w '%{http_code}' "$admin/readyz")" = 200 ] && return
    fi
    kill -0 "$DEMO" 2>/dev/null || break
    sleep 0.1
  done
  echo "the demo in $dir did not become ready:" >&2
  cat "$dir.log" >&2
  exit 1
}

# demo_down PID: stops a demo (SIGTERM, a clean shutdown) and waits for it.
demo_down() {
  kill -TERM "$1"
  wait "$1" 2>/dev/null || true
}

# demo_make DIR [CONFIG [SERVER]]: a fresh demo in DIR, made, stopped and
# configured, for demo_up to resume: CONFIG is TOML appended to its
# configuration, SERVER lines added to its own [server] table (both with
# `\n` for a new line; either may be empty).
demo_make() {
  local dir=$1 config=${2:-} server=${3:-}
  demo_up "$dir" --fresh
  demo_down "$DEMO"
  [ -z "$config" ] || printf '\n%b\n' "$config" >>"$dir/healthgate.toml"
  if [ -n "$server" ]; then
    printf '%b\n' "$server" >"$dir.server.toml"
    sed -i "/^\[server\]\$/r $dir.server.toml" "$dir/healthgate.toml"
  fi
}
