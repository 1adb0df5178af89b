#!/usr/bin/env bash
# Makes a Debian 12 or 13 machine (as root) ready to build ckvault, from nothing but git:
#   1. Debian packages (apt-get): curl, ca-certificates, gcc and libc6-dev (the linker Rust
#      uses), plus the packages given as arguments; only what is missing.
#   2. A Rust toolchain of at least 1.95 (Cargo.toml's rust-version; Debian 12's own rustc is
#      1.63, too old): one found on PATH or in ~/.cargo/bin is used; otherwise rustup, the
#      Rust project's installer, installs Rust 1.95.0 (profile minimal: rustc, cargo, std)
#      into ~/.rustup and ~/.cargo. It says exactly what it runs before it runs it, and when
#      that cannot work here (no network to sh.rustup.rs / static.rust-lang.org) it stops
#      with that message and what to do instead.
# Says what it installs, how, and how long it took. Quick when everything is there.
#
# usage: scripts/setup.sh [DEBIAN-PACKAGE...]        (scripts/demo.sh and scripts/test.sh run it)
# env:   CKVAULT_NO_INSTALL=1  install nothing; only check (and say what is missing)
# Exit status: 0 ready (cargo >= 1.95 is in ~/.cargo/bin or on PATH); 1 not ready.
set -euo pipefail
RUST_VERSION=1.95.0
RUST_MIN_MINOR=95
RUSTUP_URL=https://sh.rustup.rs

say() { echo "setup: $*" >&2; }
fail() { say "$*"; exit 1; }

# ---- Debian packages ----------------------------------------------------------------
pkgs=(curl ca-certificates gcc libc6-dev "$@")
missing=()
if command -v dpkg-query >/dev/null; then
  for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
else
  say "not a Debian system (no dpkg-query): make sure ${pkgs[*]} (or their equivalents) are installed"
fi
if [ ${#missing[@]} -gt 0 ]; then
  if [ "${CKVAULT_NO_INSTALL:-}" = 1 ]; then
    say "warning: missing Debian packages: ${missing[*]} (CKVAULT_NO_INSTALL=1: not installing; apt-get install ${missing[*]})"
    missing=()
  fi
fi
if [ ${#missing[@]} -gt 0 ]; then
  [ "$(id -u)" -eq 0 ] || fail "missing Debian packages: ${missing[*]}; run as root (or: sudo apt-get install ${missing[*]})"
  command -v apt-get >/dev/null || fail "missing packages ${missing[*]} and no apt-get: this script knows Debian 12 and 13 only"
  say "installing Debian packages with apt-get: ${missing[*]} (about 1 minute)"
  t=$SECONDS
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq || say "warning: apt-get update failed; trying the package lists at hand"
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
    || fail "apt-get install ${missing[*]} failed (run it yourself to see why)"
  say "Debian packages installed in $((SECONDS - t)) s"
fi

# ---- Rust -----------------------------------------------------------------------------
# rustup's proxies live in ~/.cargo/bin; a new shell finds them through ~/.cargo/env.
export PATH="$HOME/.cargo/bin:$PATH"
rust_ok() {
  local v
  v=$(rustc --version 2>/dev/null) || return 1
  command -v cargo >/dev/null || return 1
  # "rustc 1.95.0 (59807616e 2026-04-14)"
  [[ $v =~ ^rustc\ 1\.([0-9]+)\. ]] && [ "${BASH_REMATCH[1]}" -ge "$RUST_MIN_MINOR" ]
}
if rust_ok; then
  say "using $(rustc --version) ($(command -v cargo))"
  exit 0
fi
found=$(rustc --version 2>/dev/null || echo "no rustc")
if command -v rustup >/dev/null; then
  how="rustup toolchain install $RUST_VERSION --profile minimal && rustup default $RUST_VERSION"
  where="$(rustup show home 2>/dev/null || echo "$HOME/.rustup")"
else
  how="curl --proto '=https' --tlsv1.2 -sSf $RUSTUP_URL | sh -s -- -y --profile minimal --default-toolchain $RUST_VERSION"
  where="$HOME/.rustup and $HOME/.cargo"
fi
plan="Rust $RUST_VERSION (found: $found; ckvault needs 1.$RUST_MIN_MINOR or newer), with: $how"
if [ "${CKVAULT_NO_INSTALL:-}" = 1 ]; then
  fail "no Rust toolchain >= 1.$RUST_MIN_MINOR; would install $plan (CKVAULT_NO_INSTALL=1: not installing)"
fi
say "installing $plan"
say "  into $where: about 80 MB downloaded from static.rust-lang.org, 600 MB on disk, 1-3 minutes on a fast link"
t=$SECONDS
log=$(mktemp)
if command -v rustup >/dev/null; then
  set +e; { rustup toolchain install "$RUST_VERSION" --profile minimal && rustup default "$RUST_VERSION"; } >"$log" 2>&1; rc=$?; set -e
else
  set +e
  installer=$(mktemp)
  curl --proto '=https' --tlsv1.2 -sSf "$RUSTUP_URL" -o "$installer" >"$log" 2>&1 \
    && sh "$installer" -y --profile minimal --default-toolchain "$RUST_VERSION" >>"$log" 2>&1
  rc=$?
  rm -f "$installer"
  set -e
fi
if [ $rc -ne 0 ] || ! rust_ok; then
  why=$(tail -n 3 "$log" | tr '\n' ' ')
  rm -f "$log"
  fail "could not install $plan
setup:   it failed: ${why:-exit $rc}
setup:   This machine cannot download Rust. Install Rust $RUST_VERSION another way (https://rustup.rs on a
setup:   machine with access to static.rust-lang.org; or copy a toolchain into ~/.rustup/toolchains/ and
setup:   rustup's proxies into ~/.cargo/bin/), then run this command again."
fi
rm -f "$log"
say "installed $(rustc --version) in $((SECONDS - t)) s (new shells find it through ~/.cargo/env)"
