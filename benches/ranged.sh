#!/usr/bin/env bash
# benches/ranged.sh: ranged transfers (issue 12). How fast assetd fetches a
# 1 GiB asset over several connections, next to one stream and to aria2c,
# from a server that caps each connection and from one that does not.
#
# A local nginx (127.0.0.1, sendfile, page-cached source) serves SIZE_MIB of
# random bytes twice: under /capped/ with `limit_rate CAP` (per request, the
# way providers cap a stream) and under /uncapped/ without. For each, median
# of RUNS, it times:
#   - `curl -s -o FILE URL`
#   - `aria2c -x8 -s8 -k1M -d DIR -o FILE URL`
#   - assetd single-stream: fresh daemon with `--connections 1`, empty store
#   - assetd ranged: fresh daemon with the defaults (8 connections, pieces
#     from 64 MiB up), empty store
# each assetd run a cold `assetctl fetch URL --digest sha256:… --size N`
# (receive + SHA-256 + write + fsync + rename), and the daemon's peak RSS
# (VmHWM) and CPU time (by thread name) for each assetd run. The first run
# of each assetd mode checks the cached file's sha256 and, from the daemon's
# log, that the ranged daemon read in pieces and the single-stream one did not.
#
# Before the timed runs it waits (up to 5 min) for the 1-minute load average
# to drop below 1.0, and says so if it did not.
# Prints a Markdown table for the README, the machine, every run, and
# PASS/MISS lines for issue 12's targets:
#   capped:   ranged >= 4x faster than single-stream, and no slower than
#             aria2c -x8 -s8
#   uncapped: ranged no slower than single-stream
#   peak RSS of the ranged daemon < 128 MiB (defaults)
#
# Run (as root on Debian, from anywhere):   benches/ranged.sh
#   RUNS=5          runs per command and server (default 3)
#   CAP=40m         nginx limit_rate of the capped server (default 40m:
#                   40 MiB/s a connection)
#   SIZE_MIB=1024   asset size in MiB (default 1024)
#   BENCH_DIR=DIR   parent of the temp dir (default /var/tmp); must be a real
#                   disk, not tmpfs; needs about 3x the asset free. Removed at
#                   exit.
# At the defaults the timed runs take about 4 minutes for RUNS=3, after the
# wait for a quiet machine (curl and single-stream under the cap take
# SIZE / CAP each). Installs nginx, curl, openssl, aria2 with apt-get
# when missing; builds assetd/assetctl with cargo (Rust itself must already
# be installed).
set -euo pipefail

RUNS=${RUNS:-3} CAP=${CAP:-40m} SIZE_MIB=${SIZE_MIB:-1024}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
die() { echo "ranged.sh: error: $*" >&2; exit 1; }
say() { echo "# $*" >&2; }
[[ $RUNS =~ ^[1-9][0-9]*$ ]] || die "RUNS must be a positive integer, got '$RUNS'"
[[ $SIZE_MIB =~ ^[1-9][0-9]*$ ]] || die "SIZE_MIB must be a positive integer, got '$SIZE_MIB'"
[[ $CAP =~ ^[1-9][0-9]*[km]?$ ]] || die "CAP must be an nginx size such as 40m, got '$CAP'"
SIZE=$((SIZE_MIB << 20))
((SIZE_MIB % 1024)) && LABEL="$SIZE_MIB MiB" || LABEL="$((SIZE_MIB / 1024)) GiB"
case $CAP in
  *m) CAP_LABEL="${CAP%m} MiB/s" ;;
  *k) CAP_LABEL="${CAP%k} KiB/s" ;;
  *) CAP_LABEL="$CAP B/s" ;;
esac
export PATH=$PATH:/usr/sbin:/sbin

# --- 1. Tools and binaries ---------------------------------------------------
missing=()
for t in nginx:nginx curl:curl openssl:openssl aria2c:aria2; do
  command -v "${t%%:*}" >/dev/null || missing+=("${t#*:}")
done
# shellcheck source=benches/lib.sh
source "$REPO/benches/lib.sh"
install_missing "${missing[@]}"
build_binaries

# --- 2. Temp dir on a real disk, the asset -----------------------------------
base=${BENCH_DIR:-/var/tmp}
mkdir -p "$base" || die "cannot create BENCH_DIR $base"
T=$(mktemp -d "$base/assetd-ranged.XXXXXX")
NGINX_PID='' DAEMON_PID=''
stop() { if [[ -n $1 ]]; then kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; fi; }
cleanup() { local rc=$?; stop "$DAEMON_PID"; stop "$NGINX_PID"; rm -rf "$T"; exit "$rc"; }
trap cleanup EXIT
trap 'exit 130' INT TERM

FSTYPE=$(df -T "$T" | awk 'NR==2 {print $2}')
case $FSTYPE in tmpfs | ramfs | devtmpfs) die "$T is on $FSTYPE; set BENCH_DIR to a folder on a real disk" ;; esac
avail=$(df -B1 --output=avail "$T" | tail -1)
((avail > 3 * SIZE)) || die "need about $((3 * SIZE >> 20)) MiB free in $base, have $((avail >> 20)) MiB"
# The disk under BENCH_DIR, for the machine line: device, size, model.
DEV=$(findmnt -no SOURCE -T "$T" 2>/dev/null || df --output=source "$T" | tail -1)
DISK=$(lsblk -ndo SIZE,MODEL,ROTA "$DEV" 2>/dev/null |
  awk '{r = $NF; $NF = ""; sub(/ +$/, ""); printf "%s, %s", $0, (r ? "reported rotational" : "reported non-rotational")}' || true)
DISK="$FSTYPE on $DEV${DISK:+ ($DISK)}"
mkdir -p "$T/www" "$T/out" "$T/nginx/tmp"
say "creating $LABEL of random bytes in $T ($FSTYPE)"
{ openssl enc -aes-128-ctr -K "$(openssl rand -hex 16)" -iv "$(openssl rand -hex 16)" \
    -in /dev/zero 2>/dev/null || true; } | head -c "$SIZE" >"$T/www/asset.bin"
[[ $(stat -c %s "$T/www/asset.bin") -eq $SIZE ]] || die "could not create the asset"
sha() { openssl dgst -sha256 -r "$1" | cut -d' ' -f1; }
SHA=$(sha "$T/www/asset.bin")

# --- 3. nginx on a free port: /capped/ and /uncapped/ ---------------------------
port_taken() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
start_nginx() { # PORT; returns 1 if nginx did not come up on it
  cat >"$T/nginx/nginx.conf" <<EOF
$([[ $EUID -eq 0 ]] && echo 'user root;')
worker_processes 1; daemon off; pid $T/nginx/nginx.pid;
error_log $T/nginx/error.log warn;
events { worker_connections 256; }
http {
  access_log off;
  sendfile on; tcp_nopush on; default_type application/octet-stream;
  client_body_temp_path $T/nginx/tmp/body; proxy_temp_path $T/nginx/tmp/proxy;
  fastcgi_temp_path $T/nginx/tmp/fastcgi; uwsgi_temp_path $T/nginx/tmp/uwsgi; scgi_temp_path $T/nginx/tmp/scgi;
  server {
    listen 127.0.0.1:$1;
    location /capped/ { alias $T/www/; limit_rate $CAP; }
    location /uncapped/ { alias $T/www/; }
  }
}
EOF
  nginx -e "$T/nginx/error.log" -p "$T/nginx" -c "$T/nginx/nginx.conf" &
  NGINX_PID=$!
  for _ in $(seq 50); do
    curl -sf -o /dev/null -r 0-0 "http://127.0.0.1:$1/capped/asset.bin" && return 0
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
say "nginx on 127.0.0.1:$PORT (/capped/: limit_rate $CAP; /uncapped/)"
for s in capped uncapped; do
  h=$(curl -sfI "http://127.0.0.1:$PORT/$s/asset.bin") || die "nginx does not serve /$s/asset.bin"
  grep -qi '^accept-ranges: *bytes' <<<"$h" || die "nginx does not answer Accept-Ranges: bytes for /$s/"
done
cat "$T/www/asset.bin" >/dev/null # warm the page cache for the source

# --- helpers: daemon, /proc, timing ------------------------------------------
start_daemon() { # LOG [ASSETD FLAGS...]: fresh daemon on an empty root
  rm -rf "$T/root" "$T/a.sock"
  "$BIN/assetd" --root "$T/root" --socket "$T/a.sock" --allow-source 127.0.0.0/8 "${@:2}" 2>"$1" &
  DAEMON_PID=$!
  for _ in $(seq 100); do
    [[ -S $T/a.sock ]] && return 0
    kill -0 "$DAEMON_PID" 2>/dev/null || { cat "$1" >&2; DAEMON_PID=''; die "assetd exited at startup (log above)"; }
    sleep 0.1
  done
  die "assetd's socket $T/a.sock did not appear within 10 s (log: $(cat "$1"))"
}
TCK=$(getconf CLK_TCK)
cpu_ticks() { # PID -> "utime stime" in clock ticks, all threads
  local s; s=$(<"/proc/$1/stat"); s=${s##*) }
  local -a f; read -r -a f <<<"$s"; echo "${f[11]} ${f[12]}"
}
threads_cpu() { # PID -> CPU seconds (user+sys) by thread name, since the daemon started
  local f s
  for f in "/proc/$1/task/"*/stat; do
    s=$(cat "$f" 2>/dev/null) || continue
    local name=${s#*(}; name=${name%)*}; name=${name// /_}
    s=${s##*) }; local -a a; read -r -a a <<<"$s"
    echo "$name ${a[11]} ${a[12]}"
  done | awk -v t="$TCK" '{u[$1] += $2; s[$1] += $3; n[$1]++}
    END {for (k in u) if (u[k] + s[k]) printf "%s%s %.2f+%.2f\n", k, (n[k] > 1 ? "(x" n[k] ")" : ""), u[k] / t, s[k] / t}' |
    sort -t' ' -k2 -gr | paste -sd, | sed 's/,/, /g'
}
hwm_mib() { awk '/^VmHWM/ {printf "%.1f", $2 / 1024}' "/proc/$1/status"; }
now() { date +%s.%N; }
calc() { awk "BEGIN { x = ($2); printf \"$1\", x }"; } # FORMAT EXPR
median() { tr ' ' '\n' <<<"$1" | grep . | sort -g |
  awk '{a[NR] = $1} END {printf "%.3f", NR % 2 ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }
max() { tr ' ' '\n' <<<"$1" | grep . | sort -g | tail -1; }
declare -A TIMES=() HWM=()
timed() { # KEY CMD...: sync, run CMD, append its wall seconds to TIMES[KEY]
  local key=$1 t0; shift
  sync
  t0=$(now)
  "$@" || die "$key failed"
  TIMES[$key]+="$(calc %.3f "$(now) - $t0") "
}
sized() { [[ $(stat -c %s "$1") -eq $SIZE ]] || die "$1: wrong size $(stat -c %s "$1")"; }

# --- contenders: c_NAME URL ----------------------------------------------------
c_curl() { curl -sf -o "$T/out/curl.bin" "$1" && sized "$T/out/curl.bin"; }
c_aria() {
  aria2c -q -x8 -s8 -k1M --allow-overwrite=true --auto-file-renaming=false \
    -d "$T/out" -o aria.bin "$1" && sized "$T/out/aria.bin"
}
c_assetd() { "$BIN/assetctl" --socket "$T/a.sock" fetch "$1" --digest "sha256:$SHA" --size "$SIZE" --quiet >"$T/out/path"; }
ORDER=(curl aria single ranged)
declare -A DESC=(
  [curl]='`curl -s -o FILE URL`'
  [aria]='`aria2c -x8 -s8 -k1M -d DIR -o FILE URL`'
  [single]='assetd single-stream (`--connections 1`; verified, fsynced)'
  [ranged]='assetd ranged (defaults: 8 connections; verified, fsynced)'
)
declare -A FLAGS=([single]='--connections 1' [ranged]='')
HINTS=()
# assetd_run MODE SERVER RUN: fresh daemon, one timed cold fetch, its RSS and CPU
assetd_run() {
  local mode=$1 srv=$2 i=$3 key=$2.$1 log=$T/assetd.$2.$1.$3.log u0 s0 u1 s1 hwm line
  # shellcheck disable=SC2086 # FLAGS holds zero or more words
  start_daemon "$log" ${FLAGS[$mode]}
  read -r u0 s0 < <(cpu_ticks "$DAEMON_PID")
  timed "$key" c_assetd "http://127.0.0.1:$PORT/$srv/asset.bin"
  read -r u1 s1 < <(cpu_ticks "$DAEMON_PID")
  hwm=$(hwm_mib "$DAEMON_PID")
  HWM[$key]+="$hwm "
  line=$(grep -m1 'mib_per_s=' "$log" || true)
  local dsecs dmbs wall=${TIMES[$key]% }
  dsecs=$(grep -o ' secs=[0-9.]*' <<<"$line" | cut -d= -f2 || true)
  dmbs=$(grep -o 'mib_per_s=[0-9.]*' <<<"$line" | cut -d= -f2 || true)
  HINTS+=("- $srv, $mode, run $i: wall ${wall##* } s; daemon log secs=${dsecs:-?} (mib_per_s=${dmbs:-?}); daemon CPU user $(calc %.2f "($u1 - $u0) / $TCK") s + sys $(calc %.2f "($s1 - $s0) / $TCK") s (by thread: $(threads_cpu "$DAEMON_PID")); VmHWM $hwm MiB")
  if ((i == 1)); then
    local path; path=$(<"$T/out/path"); path=${path%%[[:space:]]*}
    [[ -f $path ]] || die "assetctl printed '$path', which is not a file"
    [[ $(sha "$path") == "$SHA" ]] || die "cached file $path has the wrong sha256"
    if [[ $mode == ranged ]]; then
      grep -q 'reading in pieces' "$log" || die "$srv: the ranged daemon did not read in pieces (log: $(cat "$log"))"
    else
      ! grep -q 'reading in pieces' "$log" || die "$srv: the --connections 1 daemon read in pieces"
    fi
    say "$srv, $mode: verified $path"
  fi
  stop "$DAEMON_PID"; DAEMON_PID=''
  rm -rf "$T/root" "$T/out/"*
}

# --- 4. wait for a quiet machine (2 cores, shared), then the runs -------------
wait_for_quiet
for ((i = 1; i <= RUNS; i++)); do
  for srv in capped uncapped; do
    say "run $i/$RUNS, $srv"
    url=http://127.0.0.1:$PORT/$srv/asset.bin
    for c in curl aria; do
      timed "$srv.$c" "c_$c" "$url"
      rm -f "$T/out/"*
    done
    assetd_run single "$srv" "$i"
    assetd_run ranged "$srv" "$i"
  done
done

# --- 5. report ------------------------------------------------------------------
declare -A MED=()
for srv in capped uncapped; do for c in "${ORDER[@]}"; do MED[$srv.$c]=$(median "${TIMES[$srv.$c]}"); done; done
rss() { [[ -n ${HWM[$1]:-} ]] && max "${HWM[$1]}" || echo '–'; }
echo
echo "$LABEL of random bytes from nginx on 127.0.0.1 (sendfile, page-cached source), capped at $CAP_LABEL"
echo "a connection (\`limit_rate $CAP\`) and uncapped; fresh daemon and empty store per assetd fetch; median of $RUNS:"
echo
echo "| command | capped s | capped MB/s | capped time vs ranged | uncapped s | uncapped MB/s | uncapped time vs ranged | daemon peak RSS MiB, capped / uncapped |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|"
for c in "${ORDER[@]}"; do
  row="| ${DESC[$c]} "
  for srv in capped uncapped; do
    m=${MED[$srv.$c]}
    row+="| $m | $(calc %.0f "$SIZE / 1e6 / $m") | $(calc %.2fx "$m / ${MED[$srv.ranged]}") "
  done
  if [[ $c == single || $c == ranged ]]; then row+="| $(rss "capped.$c") / $(rss "uncapped.$c") |"; else row+="| – |"; fi
  echo "$row"
done
echo
cpu=$(awk -F': *' '/^model name/ {print $2; exit}' /proc/cpuinfo)
echo "Machine: $(nproc) cores, ${cpu:-unknown CPU}, kernel $(uname -r), $DISK; $(date -u '+%Y-%m-%d %H:%M UTC')."
echo "All runs (s):"
for srv in capped uncapped; do
  echo "  $srv: $(for c in "${ORDER[@]}"; do printf '%s=[%s] ' "$c" "${TIMES[$srv.$c]% }"; done)"
done
echo "$LOAD_NOTE; at the end: $(cut -d' ' -f1-3 /proc/loadavg)."
echo
echo "Where assetd's time goes:"
printf '%s\n' "${HINTS[@]}"
echo
check() { if (($(calc %d "$2"))); then echo "- PASS: $1"; else echo "- MISS: $1"; fi; }
CS=${MED[capped.single]} CR=${MED[capped.ranged]} CA=${MED[capped.aria]}
US=${MED[uncapped.single]} UR=${MED[uncapped.ranged]}
RR=$(max "${HWM[capped.ranged]} ${HWM[uncapped.ranged]}")
echo "Targets (issue 12):"
check "capped: ranged >= 4x faster than single-stream ($(calc %.2fx "$CS / $CR"))" "$CS >= 4 * $CR"
check "capped: ranged no slower than aria2c -x8 -s8 ($CR s vs $CA s: $(calc %.2fx "$CR / $CA") the time)" "$CR <= $CA"
check "uncapped: ranged no slower than single-stream ($UR s vs $US s: $(calc %.2fx "$UR / $US") the time)" "$UR <= $US"
check "peak RSS of the ranged daemon < 128 MiB at the defaults ($RR MiB)" "$RR < 128"
