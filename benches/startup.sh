#!/usr/bin/env bash
# benches/startup.sh: how long assetd takes to start serving with a large
# cache, and to list it, next to listing the same folder with ls and find.
#
# Makes a store of N tiny assets (default 100000), then times, median of RUNS:
#   - cold start: no metadata store yet, so it is rebuilt from blobs/
#   - warm start: metadata present, reconciled with blobs/ (the common case)
#   - `assetctl ls --json` of every asset (N/1000 pages)
#   - `ls -f blobs/sha256 | wc -l` and `find blobs -type f | wc -l` (peers)
# "Serving" means a gRPC call (Stat) is answered.
#
# Run:  benches/startup.sh        (env N, RUNS=3, BENCH_DIR=/var/tmp)
set -euo pipefail

N=${N:-100000}
RUNS=${RUNS:-3}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
T=$(mktemp -d "${BENCH_DIR:-/var/tmp}/assetd-startup.XXXXXX")
DAEMON=
cleanup() { [ -n "$DAEMON" ] && kill "$DAEMON" 2>/dev/null; wait 2>/dev/null; rm -rf "$T"; }
trap cleanup EXIT

(cd "$REPO" && cargo build --release --quiet --bin assetd --bin assetctl)
ASSETD=$REPO/target/release/assetd
ASSETCTL=$REPO/target/release/assetctl
SOCK=$T/assetd.sock
ROOT=$T/root

echo "# making $N assets" >&2
python3 - "$ROOT" "$N" <<'PY'
import hashlib, os, sys
root, n = sys.argv[1], int(sys.argv[2])
blobs = os.path.join(root, "blobs", "sha256")
os.makedirs(blobs)
for i in range(n):
    data = b"asset %d\n" % i
    path = os.path.join(blobs, hashlib.sha256(data).hexdigest())
    with open(path, "wb") as f:
        f.write(data)
    os.chmod(path, 0o444)
PY

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.4f", b - a }'; }
median() { tr ' ' '\n' | grep . | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
MISSING=sha256:0000000000000000000000000000000000000000000000000000000000000000

# Starts the daemon; sets SECS to the seconds until it answers a Stat.
start_serving() {
  local t0 t1
  t0=$(now)
  "$ASSETD" --root "$ROOT" --socket "$SOCK" --allow-source 127.0.0.0/8 >/dev/null 2>>"$T/assetd.log" &
  DAEMON=$!
  until "$ASSETCTL" --socket "$SOCK" stat "$MISSING" >/dev/null 2>&1 || [ $? -eq 4 ]; do
    kill -0 "$DAEMON" 2>/dev/null || { cat "$T/assetd.log" >&2; exit 1; }
    sleep 0.01
  done
  t1=$(now)
  SECS=$(elapsed "$t0" "$t1")
}
stop() { kill "$DAEMON"; wait "$DAEMON" 2>/dev/null || true; DAEMON=; }

cold=() warm=() list=() lsf=() findf=()
for run in $(seq "$RUNS"); do
  echo "# run $run/$RUNS" >&2
  rm -f "$ROOT/meta.redb"
  sync
  start_serving; cold+=("$SECS"); stop
  start_serving; warm+=("$SECS")
  t0=$(now); count=$("$ASSETCTL" --socket "$SOCK" --json ls | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))'); t1=$(now)
  [ "$count" = "$N" ] || { echo "assetctl ls listed $count of $N" >&2; exit 1; }
  list+=("$(elapsed "$t0" "$t1")")
  stop
  t0=$(now); [ "$(ls -f "$ROOT/blobs/sha256" | grep -vc '^\.')" = "$N" ]; t1=$(now); lsf+=("$(elapsed "$t0" "$t1")")
  t0=$(now); [ "$(find "$ROOT/blobs" -type f | wc -l)" = "$N" ]; t1=$(now); findf+=("$(elapsed "$t0" "$t1")")
done

m() { echo "$@" | median; }
c=$(m "${cold[*]}") w=$(m "${warm[*]}") l=$(m "${list[*]}") lf=$(m "${lsf[*]}") ff=$(m "${findf[*]}")
printf '\n%s cached assets, median of %s:\n\n' "$N" "$RUNS"
echo "| what | median s |"
echo "|---|---:|"
printf '| assetd start to serving, metadata rebuilt from blobs/ (cold) | %.3f |\n' "$c"
printf '| assetd start to serving, metadata reconciled (warm) | %.3f |\n' "$w"
printf '| `assetctl ls --json`, all %s assets | %.3f |\n' "$N" "$l"
printf '| `ls -f blobs/sha256 \\| wc -l` (names only) | %.3f |\n' "$lf"
printf '| `find blobs -type f \\| wc -l` | %.3f |\n' "$ff"
printf '\nMachine: %s cores, %s, kernel %s, %s; %s.\n' "$(nproc)" \
  "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')" "$(uname -r)" \
  "$(stat -f -c %T "$T")" "$(date -u '+%Y-%m-%d %H:%M UTC')"
printf 'All runs (s): cold=[%s] warm=[%s] list=[%s]\n' "${cold[*]}" "${warm[*]}" "${list[*]}"
awk -v w="$w" 'BEGIN { printf "%s: warm start under 1 s (%.3f s)\n", (w < 1 ? "PASS" : "MISS"), w }'
