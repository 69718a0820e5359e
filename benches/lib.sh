# Shared by the benchmark scripts (sourced, not run): installing missing
# Debian packages and building the release binaries. Expects die, say and
# REPO from the caller; sets BIN.

# Installs the Debian packages named, as root.
install_missing() {
  (($#)) || return 0
  [[ $EUID -eq 0 ]] || die "missing $*: run as root, or install them"
  say "installing $*"
  apt-get update -qq || die "apt-get update failed"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null \
    || die "apt-get install $* failed"
}

# Builds assetd, assetctl and any other binaries named, in release mode;
# sets BIN to their folder.
build_binaries() {
  command -v cargo >/dev/null || die "cargo not found: install Rust (https://rustup.rs) first"
  local bins=(assetd assetctl "$@") args=() b
  for b in "${bins[@]}"; do args+=(--bin "$b"); done
  say "building ${bins[*]} (release)"
  (cd "$REPO" && cargo build --release --quiet "${args[@]}") || die "cargo build failed"
  BIN=${CARGO_TARGET_DIR:-$REPO/target}/release
  for b in "${bins[@]}"; do [[ -x $BIN/$b ]] || die "no $b in $BIN"; done
}

load1() { cut -d' ' -f1 /proc/loadavg; }
quiet() { awk -v l="$(load1)" 'BEGIN { exit !(l < 1.0) }'; }

# Waits (up to 5 min) for the 1-minute load average to drop below 1.0: the
# machine has 2 cores, shared. Sets LOAD_NOTE to say how that went.
wait_for_quiet() {
  local waited=0
  while ! quiet && ((waited < 300)); do
    say "1-minute load average $(load1) >= 1.0; waiting (${waited}s of 300s)"
    sleep 10
    waited=$((waited + 10))
  done
  LOAD_NOTE="1-minute load average $(load1) when the timed runs began (waited ${waited} s for < 1.0)"
  quiet ||
    LOAD_NOTE="1-minute load average still $(load1) after waiting 300 s for < 1.0: timed runs went ahead on a busy machine"
  say "$LOAD_NOTE"
}
