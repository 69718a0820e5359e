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

# Builds assetd and assetctl in release mode; sets BIN to their folder.
build_binaries() {
  command -v cargo >/dev/null || die "cargo not found: install Rust (https://rustup.rs) first"
  say "building assetd and assetctl (release)"
  (cd "$REPO" && cargo build --release --quiet --bin assetd --bin assetctl) || die "cargo build failed"
  BIN=${CARGO_TARGET_DIR:-$REPO/target}/release
  [[ -x $BIN/assetd && -x $BIN/assetctl ]] || die "no binaries in $BIN"
}
