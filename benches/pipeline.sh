#!/usr/bin/env bash
# benches/pipeline.sh: the fetch pipeline under load and faults (issue 5).
#
# nginx on 127.0.0.1 (sendfile, page-cached source; its access log gives
# $bytes_sent per request) serves SIZE_MIB of random bytes. In one run:
#   1. Single flight: 64 concurrent `assetctl fetch` of the uncached asset
#      against one (fresh daemon and empty root per case, median of RUNS):
#      upstream bytes and requests from nginx's log; wall time from launching
#      the callers to the last one finishing. All 64 must print the same path;
#      its sha256 is checked once, outside the timing.
#   2. Resume: a TCP proxy (inline Python 3, stdlib) between assetd and nginx
#      closes its FIRST connection after forwarding half the asset; assetd
#      resumes with Range/If-Range. Response bytes the proxy forwarded / asset,
#      upstream requests, the daemon's `retrying` line, and the time against an
#      uncut fetch through the same proxy (one run each, informational).
# Targets (issue 5): the 64 pull <= 1.05x the asset and take <= 1.1x one
# fetch's time; cut and resumed, <= 1.05x the asset in total. Waits (up to
# 5 min) for the 1-minute load average to drop below 1.0 before timing.
# Prints a Markdown table for the README, machine info and PASS/MISS lines.
#
# Run (as root on Debian, from anywhere):   benches/pipeline.sh
#   RUNS=5          runs of the one-vs-64 timing (default 3)
#   SIZE_MIB=256    asset size in MiB (default 1024)
#   BENCH_DIR=DIR   parent of the temp dir (default /var/tmp); a real disk, not
#                   tmpfs, with about 2x the asset + 1 GiB free. Removed at exit.
# Installs nginx, curl, openssl, python3 with apt-get when missing; builds
# assetd/assetctl with cargo (Rust itself must already be installed).
set -euo pipefail

RUNS=${RUNS:-3} SIZE_MIB=${SIZE_MIB:-1024} CALLERS=64
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
die() { echo "pipeline.sh: error: $*" >&2; exit 1; }
say() { echo "# $*" >&2; }
[[ $RUNS =~ ^[1-9][0-9]*$ ]] || die "RUNS must be a positive integer, got '$RUNS'"
[[ $SIZE_MIB =~ ^[1-9][0-9]*$ ]] || die "SIZE_MIB must be a positive integer, got '$SIZE_MIB'"
SIZE=$((SIZE_MIB << 20)) CUT=$((SIZE_MIB << 19))
((SIZE_MIB % 1024)) && LABEL="$SIZE_MIB MiB" || LABEL="$((SIZE_MIB / 1024)) GiB"
export PATH=$PATH:/usr/sbin:/sbin

# --- 1. Tools and binaries ---------------------------------------------------
missing=()
for t in nginx curl openssl python3; do command -v "$t" >/dev/null || missing+=("$t"); done
# shellcheck source=benches/lib.sh
source "$REPO/benches/lib.sh"
install_missing "${missing[@]}"
build_binaries

# --- 2. Temp dir on a real disk, the asset -----------------------------------
base=${BENCH_DIR:-/var/tmp}
mkdir -p "$base" || die "cannot create BENCH_DIR $base"
T=$(mktemp -d "$base/assetd-pipeline.XXXXXX")
NGINX_PID='' DAEMON_PID='' PROXY_PID=''
stop() { if [[ -n $1 ]]; then kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; fi; }
cleanup() { local rc=$?; stop "$DAEMON_PID"; stop "$PROXY_PID"; stop "$NGINX_PID"; rm -rf "$T"; exit "$rc"; }
trap cleanup EXIT
trap 'exit 130' INT TERM

FSTYPE=$(df -T "$T" | awk 'NR==2 {print $2}')
case $FSTYPE in tmpfs | ramfs | devtmpfs) die "$T is on $FSTYPE; set BENCH_DIR to a folder on a real disk" ;; esac
avail=$(df -B1 --output=avail "$T" | tail -1)
((avail > 2 * SIZE + (1 << 30))) || die "need about $(((2 * SIZE >> 20) + 1024)) MiB free in $base, have $((avail >> 20)) MiB"
mkdir -p "$T/www" "$T/out" "$T/nginx/tmp"
say "creating $LABEL of random bytes in $T ($FSTYPE)"
{ openssl enc -aes-128-ctr -K "$(openssl rand -hex 16)" -iv "$(openssl rand -hex 16)" \
    -in /dev/zero 2>/dev/null || true; } | head -c "$SIZE" >"$T/www/asset.bin"
[[ $(stat -c %s "$T/www/asset.bin") -eq $SIZE ]] || die "could not create the asset"
sha() { openssl dgst -sha256 -r "$1" | cut -d' ' -f1; }
SHA=$(sha "$T/www/asset.bin")

# --- 3. nginx on a free port, one log line per request -------------------------
port_taken() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
ACCESS=$T/nginx/access.log
start_nginx() { # PORT; returns 1 if nginx did not come up on it
  cat >"$T/nginx/nginx.conf" <<EOF
$([[ $EUID -eq 0 ]] && echo 'user root;')
worker_processes 1; daemon off; pid $T/nginx/nginx.pid;
error_log $T/nginx/error.log warn;
events { worker_connections 256; }
http {
  log_format bench '\$bytes_sent \$status "\$http_range" \$request_uri';
  access_log $ACCESS bench;
  sendfile on; tcp_nopush on; default_type application/octet-stream;
  client_body_temp_path $T/nginx/tmp/body; proxy_temp_path $T/nginx/tmp/proxy;
  fastcgi_temp_path $T/nginx/tmp/fastcgi; uwsgi_temp_path $T/nginx/tmp/uwsgi; scgi_temp_path $T/nginx/tmp/scgi;
  server { listen 127.0.0.1:$1; root $T/www; }
}
EOF
  nginx -e "$T/nginx/error.log" -p "$T/nginx" -c "$T/nginx/nginx.conf" &
  NGINX_PID=$!
  for _ in $(seq 50); do
    curl -sf -o /dev/null -r 0-0 "http://127.0.0.1:$1/asset.bin" && return 0
    kill -0 "$NGINX_PID" 2>/dev/null || break
    sleep 0.1
  done
  stop "$NGINX_PID"; NGINX_PID=''
  return 1
}
PORT=''
for _ in $(seq 20); do
  p=$((20000 + RANDOM % 40000))
  port_taken "$p" && continue
  if start_nginx "$p"; then PORT=$p; break; fi
done
[[ -n $PORT ]] || { cat "$T/nginx/error.log" >&2 2>/dev/null; die "nginx did not start (log above)"; }
say "nginx on 127.0.0.1:$PORT"
cat "$T/www/asset.bin" >/dev/null # warm the page cache for the source

# --- 4. The fault-injecting proxy ------------------------------------------------
# proxy.py UPSTREAM_PORT CUT PORT_FILE STATS_FILE: listens on a free port
# (written to PORT_FILE), forwards each connection to nginx, closes the first
# connection after CUT response bytes (0: never), and on SIGTERM writes
# "CONNECTIONS RESPONSE_BYTES" to STATS_FILE.
cat >"$T/proxy.py" <<'EOF'
import os, signal, socket, sys, threading
up_port, cut, port_file, stats_file = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
lock, stats = threading.Lock(), [0, 0]  # connections, response bytes forwarded
def finish(*_):  # no lock: the handler runs in the main thread, which may hold it
    with open(stats_file, "w") as f: f.write(f"{stats[0]} {stats[1]}\n")
    os._exit(0)
signal.signal(signal.SIGTERM, finish)
def pump(src, dst, limit, count):  # forward until EOF or `limit` bytes (0: none), then close both
    done = 0
    try:
        while not limit or done < limit:
            data = src.recv(min(1 << 20, limit - done) if limit else 1 << 20)
            if not data: break
            dst.sendall(data)
            done += len(data)
            if count:
                with lock: stats[1] += len(data)
    except OSError: pass
    for s in (src, dst):
        try: s.shutdown(socket.SHUT_RDWR)
        except OSError: pass
        s.close()
ls = socket.create_server(("127.0.0.1", 0))
with open(port_file + ".tmp", "w") as f: f.write(str(ls.getsockname()[1]))
os.rename(port_file + ".tmp", port_file)
while True:
    down, _ = ls.accept()
    up = socket.create_connection(("127.0.0.1", up_port))
    with lock: stats[0] += 1; first = stats[0] == 1
    threading.Thread(target=pump, args=(down, up, 0, False), daemon=True).start()
    threading.Thread(target=pump, args=(up, down, cut if first else 0, True), daemon=True).start()
EOF

# --- helpers: daemon, one measured case, timing ----------------------------------
start_daemon() { # LOG: fresh daemon on an empty root
  rm -rf "$T/root" "$T/a.sock"
  "$BIN/assetd" --root "$T/root" --socket "$T/a.sock" --allow-source 127.0.0.0/8 2>"$1" &
  DAEMON_PID=$!
  for _ in $(seq 100); do
    [[ -S $T/a.sock ]] && return 0
    kill -0 "$DAEMON_PID" 2>/dev/null || { cat "$1" >&2; DAEMON_PID=''; die "assetd exited at startup (log above)"; }
    sleep 0.1
  done
  die "assetd's socket $T/a.sock did not appear within 10 s (log: $(cat "$1"))"
}
fetch() { # URL OUT: one client; the printed path goes to OUT
  "$BIN/assetctl" --socket "$T/a.sock" fetch "$1" --digest "sha256:$SHA" --size "$SIZE" --quiet >"$2"
}
now() { date +%s.%N; }
calc() { awk "BEGIN { x = ($2); printf \"$1\", x }"; } # FORMAT EXPR
median() { tr ' ' '\n' <<<"$1" | grep . | sort -g |
  awk '{a[NR] = $1} END {printf "%.3f", NR % 2 ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }
max() { tr ' ' '\n' <<<"$1" | grep . | sort -g | tail -1; }
# measure NAME URL CALLERS VERIFY: fresh daemon and empty root; CALLERS fetches
# of URL launched in the background at once, timed from the launch to the last
# one finishing. All must print the same path; VERIFY=1 checks its sha256
# (after the timing). Sets SECS, and from nginx's log of this case NGINX_LOG,
# REQS (requests for the asset) and BYTES (their $bytes_sent).
measure() {
  local name=$1 url=$2 n=$3 pids=() failed=0 mark t0 c p paths
  start_daemon "$T/assetd.$name.log"
  mark=$(wc -l <"$ACCESS")
  sync; t0=$(now)
  for ((c = 0; c < n; c++)); do fetch "$url" "$T/out/$name.$c" & pids+=($!); done
  for p in "${pids[@]}"; do wait "$p" || failed=$((failed + 1)); done
  SECS=$(calc %.3f "$(now) - $t0")
  ((failed == 0)) || die "$name: $failed of $n fetches failed (daemon log: $(cat "$T/assetd.$name.log"))"
  paths=$(cat "$T/out/$name."* | sort -u)
  [[ $(wc -l <<<"$paths") -eq 1 ]] || die "$name: the $n callers printed different paths: $paths"
  [[ -f $paths ]] || die "$name: assetctl printed '$paths', which is not a file"
  if [[ $4 == 1 ]]; then
    [[ $(sha "$paths") == "$SHA" ]] || die "$name: cached file $paths has the wrong sha256"
    say "$name: $n of $n callers printed $paths; sha256 verified"
  fi
  stop "$DAEMON_PID"; DAEMON_PID=''
  rm -rf "$T/root" "$T/out/$name."*
  NGINX_LOG=$(tail -n +"$((mark + 1))" "$ACCESS" | grep ' /asset.bin$' || true)
  read -r REQS BYTES < <(awk 'NF {n++; b += $1} END {printf "%d %d\n", n, b}' <<<"$NGINX_LOG")
}
# proxied NAME CUT: measure one fetch through a fresh proxy that cuts its first
# connection after CUT response bytes (0: never). Sets PROXY_CONNS, PROXY_BYTES.
proxied() {
  rm -f "$T/proxy.port" "$T/proxy.stats"
  python3 "$T/proxy.py" "$PORT" "$2" "$T/proxy.port" "$T/proxy.stats" &
  PROXY_PID=$!
  for _ in $(seq 100); do [[ -s $T/proxy.port ]] && break; sleep 0.05; done
  [[ -s $T/proxy.port ]] || die "the proxy did not start"
  measure "$1" "http://127.0.0.1:$(<"$T/proxy.port")/asset.bin" 1 1
  kill "$PROXY_PID" || die "the proxy died"; wait "$PROXY_PID" 2>/dev/null || true; PROXY_PID=''
  read -r PROXY_CONNS PROXY_BYTES <"$T/proxy.stats" || die "the proxy wrote no stats"
}
URL=http://127.0.0.1:$PORT/asset.bin

# --- 5. wait for a quiet machine (2 cores, shared) ---------------------------------
load1() { cut -d' ' -f1 /proc/loadavg; }
waited=0
while (($(calc %d "$(load1) >= 1.0") && waited < 300)); do
  say "1-minute load average $(load1) >= 1.0; waiting (${waited}s of 300s)"
  sleep 10; waited=$((waited + 10))
done
LOAD_NOTE="1-minute load average $(load1) when the timed runs began (waited ${waited} s for < 1.0)"
(($(calc %d "$(load1) < 1.0"))) ||
  LOAD_NOTE="1-minute load average still $(load1) after waiting 300 s for < 1.0: timed runs went ahead on a busy machine"
say "$LOAD_NOTE"

# --- 6. single flight: one fetch, then 64 at once, RUNS times -----------------------
T1='' T64='' REQ1='' REQ64='' B1='' B64=''
for ((i = 1; i <= RUNS; i++)); do
  say "run $i/$RUNS: one fetch, then $CALLERS at once"
  measure "one.$i" "$URL" 1 0
  T1+="$SECS " REQ1+="$REQS " B1+="$BYTES "
  measure "many.$i" "$URL" "$CALLERS" $((i == 1))
  T64+="$SECS " REQ64+="$REQS " B64+="$BYTES "
done

# --- 7. resume after a cut at half way, through the proxy ---------------------------
say "one fetch through the proxy, uncut"
proxied uncut 0
TU=$SECS UNCUT_REQ=$REQS UNCUT_BYTES=$PROXY_BYTES
say "one fetch through the proxy, cut after $((CUT >> 20)) MiB on its first connection"
proxied cut "$CUT"
TC=$SECS CUT_REQ=$REQS CUT_BYTES=$PROXY_BYTES
RETRY_LINE=$(grep -m1 'retrying' "$T/assetd.cut.log" || echo '(none: no retrying line in the daemon log)')
RESTART_LINE=$(grep -m1 'starting over' "$T/assetd.cut.log" || true)

# --- 8. report ------------------------------------------------------------------------
M1=$(median "$T1") M64=$(median "$T64") MAXB64=$(max "$B64")
ratio() { calc %.4fx "$1 / $SIZE"; }
echo
echo "$LABEL of random bytes ($SIZE bytes) from nginx on 127.0.0.1 (sendfile, page-cached source); fresh"
echo "daemon (default flags) and empty root per case. Upstream bytes: nginx's \`\$bytes_sent\` (headers"
echo "included; worst run) or, through the proxy, the response bytes it forwarded. Wall s: median of"
echo "$RUNS for the first two rows, one run for the proxy rows (Python proxy: informational)."
echo
echo "| case | upstream bytes / asset | upstream requests | wall s | time vs one fetch |"
echo "|---|---:|---:|---:|---:|"
echo "| one \`assetctl fetch\` | $(ratio "$(max "$B1")") | $(max "$REQ1") | $M1 | 1.00x |"
echo "| $CALLERS concurrent \`assetctl fetch\` of the same asset | $(ratio "$MAXB64") | $(max "$REQ64") | $M64 | $(calc %.2fx "$M64 / $M1") |"
echo "| one fetch through the proxy, uncut | $(ratio "$UNCUT_BYTES") | $UNCUT_REQ | $TU | $(calc %.2fx "$TU / $M1") |"
echo "| one fetch through the proxy, cut at $((CUT >> 20)) MiB and resumed | $(ratio "$CUT_BYTES") | $CUT_REQ | $TC | $(calc %.2fx "$TC / $M1") |"
echo
echo "Resumed vs uncut through the same proxy: $(calc %.2fx "$TC / $TU") ($TC s vs $TU s; includes the retry backoff)."
echo "Cut case: $PROXY_CONNS proxy connections; nginx's log (\$bytes_sent \$status \"\$http_range\" URI; the"
echo "cut request counts what nginx put into the socket before the proxy closed it):"
awk '{print "    " $0}' <<<"$NGINX_LOG"
echo "Daemon log: $RETRY_LINE"
if [[ -n $RESTART_LINE ]]; then echo "Daemon log (restarted from 0!): $RESTART_LINE"; fi
echo
cpu=$(awk -F': *' '/^model name/ {print $2; exit}' /proc/cpuinfo)
echo "Machine: $(nproc) cores, ${cpu:-unknown CPU}, kernel $(uname -r), $FSTYPE; $(date -u '+%Y-%m-%d %H:%M UTC')."
echo "All runs: one fetch s=[${T1% }] requests=[${REQ1% }] bytes=[${B1% }];"
echo "  $CALLERS at once s=[${T64% }] requests=[${REQ64% }] bytes=[${B64% }]."
echo "$LOAD_NOTE; at the end: $(cut -d' ' -f1-3 /proc/loadavg)."
echo
check() { if (($(calc %d "$2"))); then echo "- PASS: $1"; else echo "- MISS: $1"; fi; }
echo "Targets:"
check "$CALLERS callers pull <= 1.05x the asset from upstream ($(ratio "$MAXB64"))" "$MAXB64 <= 1.05 * $SIZE"
check "$CALLERS callers take <= 1.1x one fetch's time ($(calc %.2fx "$M64 / $M1"))" "$M64 <= 1.1 * $M1"
check "cut at half way and resumed: <= 1.05x the asset in total ($(ratio "$CUT_BYTES"))" "$CUT_BYTES <= 1.05 * $SIZE"
