#!/usr/bin/env bash
# Runs a REAL, private containerd (Debian 12's 1.6 + runc) as the upstream CRI runtime for
# ckvault's tests: its own root, state and sockets under DIR, nothing shared with a system
# containerd, and two local images imported into its k8s.io namespace.
#
# usage: containerd.sh start DIR     start containerd in DIR (created if missing)
#        containerd.sh stop DIR      stop it, its shims and containers; unmount under DIR
#        containerd.sh images        only build (or find) the cached images.tar, print its dir
#
# start writes into DIR (an absolute path of at most 80 characters, so that socket paths
# stay under the 108-byte limit):
#   config.toml        version 2; root DIR/root, state DIR/state, grpc DIR/containerd.sock
#   containerd.sock    the CRI (and containerd) gRPC socket, ready when start returns
#   containerd.log     containerd's log (info level)
#   containerd.pid     its pid; removed by stop
#   watchdog.pid       (only with CKVAULT_CTRD_WATCH_PID) see below
# and imports, into namespace k8s.io:
#   docker.io/library/busybox:ckvault   busybox-static's applets in /bin, Cmd ["sh"]
#   registry.k8s.io/pause:ckvault       the same rootfs, sleeping forever (the sandbox_image)
#
# Both images are built once, as one OCI image layout tar (no registry is reachable here),
# and cached as CKVAULT_CTRD_IMAGES/<hash of /bin/busybox and IMAGE_FORMAT>/images.tar
# (default /var/tmp/ckvault-ctrd-images/...). The CRI plugin has no CNI: pods must use the
# host network (NamespaceOption.network = NODE). Shared with other containerds on the host
# are only the shim socket dir /run/containerd/s (names hashed from the socket path) and
# the cgroup parent k8s.io/ (container ids are unique), so several can run at once.
#
# stop kills (SIGKILL) and deletes the tasks through ctr while containerd runs, stops
# containerd (TERM, then KILL after 10 s), kills any shim still naming DIR's socket and
# everything under it, removes those containers' empty cgroups, and unmounts whatever is
# still mounted strictly under DIR (deepest first; lazily if busy). It leaves DIR's files.
# Exit status 1 if something under DIR stays mounted.
#
# env:
#   CKVAULT_CTRD_IMAGES     image cache dir (default /var/tmp/ckvault-ctrd-images)
#   CKVAULT_CTRD_TRACE      a file to append a `set -x` trace (with times) to
#   CKVAULT_CTRD_WATCH_PID  a pid (the test process): a detached watchdog runs `stop DIR`
#                           when that process dies without having stopped DIR itself
#                           (killed test binary, panic=abort, Ctrl-C); with
#                           CKVAULT_CTRD_WATCH_RMDIR=1 it then also deletes DIR
#
# Needs root, and the Debian packages containerd, runc and busybox-static (installed with
# apt-get when missing). Exit status: 0 done; 2 bad usage; 3 this machine cannot run
# containerd (the reason is printed last on stderr, starting
# "containerd.sh: cannot run containerd here:"); 1 other errors.
set -euo pipefail

SELF=$(realpath -- "${BASH_SOURCE[0]}")
CACHE_BASE=${CKVAULT_CTRD_IMAGES:-/var/tmp/ckvault-ctrd-images}
BUSYBOX_IMAGE=docker.io/library/busybox:ckvault
PAUSE_IMAGE=registry.k8s.io/pause:ckvault
NS=k8s.io
# Bump when build_images changes what it makes (the image cache key includes it).
IMAGE_FORMAT=1
START=$SECONDS

log() { echo "containerd.sh: $*" >&2; }
usage() {
  log "usage: containerd.sh start DIR | stop DIR | images"
  exit 2
}
cannot() { log "cannot run containerd here: $*"; exit 3; }

# ---- packages ---------------------------------------------------------------------------
BUSYBOX=/bin/busybox
have_tools() {
  command -v containerd >/dev/null && command -v ctr >/dev/null \
    && command -v containerd-shim-runc-v2 >/dev/null && command -v runc >/dev/null \
    && dpkg -s busybox-static >/dev/null 2>&1 && [ -x "$BUSYBOX" ]
}
ensure_tools() {
  have_tools && return 0
  command -v apt-get >/dev/null || cannot "containerd, runc or busybox-static is missing and there is no apt-get"
  mkdir -p "$CACHE_BASE"
  # Parallel test binaries may all get here: one installs, the others wait for it.
  (
    flock -w 900 8 || cannot "gave up waiting 15 minutes for $CACHE_BASE/apt.lock"
    have_tools && exit 0
    log "installing containerd runc busybox-static with apt-get (once)"
    { apt-get update -qq || log "apt-get update failed; trying the package lists at hand"
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        containerd runc busybox-static; } >"$CACHE_BASE/apt.log" 2>&1 \
      || cannot "apt-get install containerd runc busybox-static failed, see $CACHE_BASE/apt.log: $(tail -n 2 "$CACHE_BASE/apt.log" | tr '\n' ' ')"
  ) 8>"$CACHE_BASE/apt.lock"
  have_tools || cannot "containerd, ctr, containerd-shim-runc-v2, runc or /bin/busybox (busybox-static) still missing after apt-get"
}

# ---- images (OCI image layout tars) -----------------------------------------------------
goarch() {
  case $(uname -m) in
    x86_64) echo amd64 ;; aarch64) echo arm64 ;; armv7l|armv6l) echo arm ;;
    i?86) echo 386 ;; ppc64le) echo ppc64le ;; s390x) echo s390x ;; riscv64) echo riscv64 ;;
    *) uname -m ;;
  esac
}

# put_blob LAYOUT FILE -> prints "sha256:<hex> <size>", moves FILE into LAYOUT/blobs/sha256
put_blob() {
  local hex size
  hex=$(sha256sum "$2" | cut -d' ' -f1)
  size=$(stat -c %s "$2")
  mv "$2" "$1/blobs/sha256/$hex"
  echo "sha256:$hex $size"
}

# add_image LAYOUT NAME CONFIG_JSON -> prints the index.json entry of a one-layer image
# (the layer is LAYOUT's $LAYER_DIGEST/$LAYER_SIZE/$DIFF_ID) named NAME.
add_image() {
  local L=$1 name=$2 cfg=$3 cdig csize mdig msize
  printf '{"architecture":"%s","os":"linux","config":%s,"rootfs":{"type":"layers","diff_ids":["%s"]},"history":[{"created_by":"ckvault tests/harness/containerd.sh"}]}' \
    "$ARCH" "$cfg" "$DIFF_ID" >"$L/config.json"
  read -r cdig csize < <(put_blob "$L" "$L/config.json")
  printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"%s","size":%s}]}' \
    "$cdig" "$csize" "$LAYER_DIGEST" "$LAYER_SIZE" >"$L/manifest.json"
  read -r mdig msize < <(put_blob "$L" "$L/manifest.json")
  printf '{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"%s","size":%s,"platform":{"architecture":"%s","os":"linux"},"annotations":{"io.containerd.image.name":"%s","org.opencontainers.image.ref.name":"%s"}}' \
    "$mdig" "$msize" "$ARCH" "$name" "${name##*:}"
}

# Builds $CACHE/images.tar: one OCI image layout holding both images, which share their
# only layer (busybox-static's binary, a symlink per applet in /bin, /etc/passwd, /etc/group).
build_images() {
  local R L applet busybox_entry pause_entry
  log "building the busybox and pause images (OCI image layout) in $CACHE (once)"
  ARCH=$(goarch)
  R=$(mktemp -d "$CACHE/rootfs.XXXXXX")
  mkdir -p "$R"/{bin,dev,etc,proc,sys,tmp,root,var/run}
  chmod 1777 "$R/tmp"
  cp "$BUSYBOX" "$R/bin/busybox"
  for applet in $("$BUSYBOX" --list); do
    [ "$applet" = busybox ] || [ -e "$R/bin/$applet" ] || ln -s busybox "$R/bin/$applet"
  done
  printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' >"$R/etc/passwd"
  printf 'root:x:0:\nnogroup:x:65534:\n' >"$R/etc/group"
  L=$(mktemp -d "$CACHE/layout.XXXXXX")
  mkdir -p "$L/blobs/sha256"
  tar -C "$R" --sort=name --mtime=@0 --numeric-owner --owner=0 --group=0 -cf "$L/layer.tar" .
  rm -rf "$R"
  DIFF_ID=sha256:$(sha256sum "$L/layer.tar" | cut -d' ' -f1)
  gzip -n -6 "$L/layer.tar"
  read -r LAYER_DIGEST LAYER_SIZE < <(put_blob "$L" "$L/layer.tar.gz")
  busybox_entry=$(add_image "$L" "$BUSYBOX_IMAGE" \
    '{"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],"Cmd":["sh"]}')
  # The sandbox's pid 1: sleeps forever, exits at once on TERM/INT.
  pause_entry=$(add_image "$L" "$PAUSE_IMAGE" \
    '{"Env":["PATH=/bin"],"Entrypoint":["/bin/sh","-c","trap \"exit 0\" TERM INT; while :; do sleep 3600 & wait $!; done"]}')
  printf '{"schemaVersion":2,"manifests":[%s,%s]}' "$busybox_entry" "$pause_entry" >"$L/index.json"
  printf '{"imageLayoutVersion":"1.0.0"}' >"$L/oci-layout"
  tar -C "$L" --sort=name --mtime=@0 --numeric-owner --owner=0 --group=0 \
    -cf "$CACHE/images.tar.tmp" oci-layout index.json blobs
  rm -rf "$L"
  mv "$CACHE/images.tar.tmp" "$CACHE/images.tar"
}

# Sets CACHE to the image dir for this busybox and image format, building it when missing.
ensure_images() {
  local key
  key=$( { cat "$BUSYBOX"; echo "$IMAGE_FORMAT $BUSYBOX_IMAGE $PAUSE_IMAGE"; } | sha256sum | cut -c1-16)
  CACHE=$CACHE_BASE/$key
  mkdir -p "$CACHE"
  [ -s "$CACHE/images.tar" ] && return 0
  (
    flock -w 300 7 || { log "gave up waiting 5 minutes for $CACHE/lock"; exit 1; }
    [ -s "$CACHE/images.tar" ] && exit 0
    build_images
  ) 7>"$CACHE/lock"
}

# ---- helpers for start and stop -----------------------------------------------------------
# The cmdline of pid $1 with NULs as spaces (empty when gone).
cmdline() { { tr '\0' ' ' <"/proc/$1/cmdline"; } 2>/dev/null || true; }

# The pid in file $1 if that process is alive and its cmdline contains $2.
live_pid() {
  local pid
  [ -f "$1" ] || return 1
  pid=$(cat "$1" 2>/dev/null) || return 1
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  [[ $(cmdline "$pid") == *"$2"* ]] || return 1
  echo "$pid"
}

# Waits up to $2 tenths of a second for pid $1 to go away.
wait_gone() {
  local i=0
  while [ -d "/proc/$1" ] && [ "$i" -lt "$2" ]; do
    # A zombie (not reaped yet by its new parent) counts as gone.
    [ "$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" = Z ] && return 0
    sleep 0.1; i=$((i + 1))
  done
  [ ! -d "/proc/$1" ]
}

# All descendants of pid $1 (children first-level order; may include exiting processes).
descendants() {
  local kids k
  kids=$(cat /proc/"$1"/task/*/children 2>/dev/null || true)
  for k in $kids; do
    echo "$k"
    descendants "$k"
  done
}

write_config() {
  local D=$1
  mkdir -p "$D/root" "$D/state" "$D/opt" "$D/cni/bin" "$D/cni/net.d" "$D/pods"
  chmod 711 "$D/root" "$D/state"
  cat >"$D/config.toml" <<EOF
# Written by ckvault tests/harness/containerd.sh: a private containerd for tests.
version = 2
root = "$D/root"
state = "$D/state"
oom_score = 0
# Nothing here needs these; some probe the host (btrfs, zfs, devmapper) or /run.
disabled_plugins = [
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.internal.v1.tracing",
  "io.containerd.tracing.processor.v1.otlp",
]

[grpc]
  address = "$D/containerd.sock"
  uid = 0
  gid = 0

[ttrpc]
  address = "$D/containerd.sock.ttrpc"

[debug]
  address = ""
  level = "info"

[metrics]
  address = ""

[plugins]
  [plugins."io.containerd.internal.v1.opt"]
    path = "$D/opt"

  [plugins."io.containerd.runtime.v1.linux"]
    runtime_root = "$D/state/runc-v1"
    shim_debug = false

  [plugins."io.containerd.grpc.v1.cri"]
    sandbox_image = "$PAUSE_IMAGE"
    # No CAP_SYS_RESOURCE in this sandbox: containerd may not lower oom_score_adj.
    restrict_oom_score_adj = true
    disable_tcp_service = true
    stream_server_address = "127.0.0.1"
    stream_server_port = "0"
    enable_selinux = false
    disable_apparmor = true
    disable_proc_mount = false
    max_container_log_line_size = 16384

    [plugins."io.containerd.grpc.v1.cri".containerd]
      snapshotter = "overlayfs"
      default_runtime_name = "runc"
      disable_snapshot_annotations = true

      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"

        [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
          BinaryName = "$(command -v runc)"
          Root = "$D/state/runc"
          SystemdCgroup = false

    # No CNI: empty dirs. Pods use the host network (NamespaceOption.network = NODE).
    [plugins."io.containerd.grpc.v1.cri".cni]
      bin_dir = "$D/cni/bin"
      conf_dir = "$D/cni/net.d"
      max_conf_num = 1

    [plugins."io.containerd.grpc.v1.cri".registry]
      config_path = ""
EOF
}

ctr_() { timeout 30 ctr -a "$SOCK" -n "$NS" "$@"; }

start() {
  local D=$1 pid i
  [ "$(id -u)" -eq 0 ] || cannot "not root (containerd and runc want uid 0)"
  ensure_tools
  D=$(realpath -m -- "$D")
  [ ${#D} -le 80 ] || { log "DIR must be at most 80 characters (socket paths): $D"; exit 2; }
  mkdir -p "$D"
  SOCK=$D/containerd.sock
  if pid=$(live_pid "$D/containerd.pid" "$D/config.toml"); then
    log "containerd already runs in $D (pid $pid); stop it first"
    exit 1
  fi
  grep -q overlay /proc/filesystems || modprobe overlay 2>/dev/null || true
  grep -q overlay /proc/filesystems || cannot "the kernel has no overlay file system"
  ensure_images
  write_config "$D"
  rm -f "$SOCK" "$SOCK.ttrpc"

  # Detached (own session, no inherited pipes) so the caller's output capture ends.
  setsid containerd --config "$D/config.toml" </dev/null >>"$D/containerd.log" 2>&1 &
  pid=$!
  echo "$pid" >"$D/containerd.pid"
  if [ -n "${CKVAULT_CTRD_WATCH_PID:-}" ]; then
    [[ $CKVAULT_CTRD_WATCH_PID =~ ^[0-9]+$ ]] || { log "CKVAULT_CTRD_WATCH_PID is not a pid"; exit 2; }
    env -u CKVAULT_CTRD_TRACE setsid bash "$SELF" _watch "$D" "$CKVAULT_CTRD_WATCH_PID" \
      </dev/null >/dev/null 2>&1 &
    echo "$!" >"$D/watchdog.pid"
  fi

  i=0
  until ctr -a "$SOCK" version >/dev/null 2>&1; do
    if ! kill -0 "$pid" 2>/dev/null; then
      log "containerd exited at start; the end of $D/containerd.log:"
      tail -n 15 "$D/containerd.log" >&2 || true
      rm -f "$D/containerd.pid"
      cannot "containerd exited at start (see $D/containerd.log)"
    fi
    i=$((i + 1))
    if [ "$i" -gt 300 ]; then
      tail -n 15 "$D/containerd.log" >&2 || true
      stop "$D" || true
      cannot "containerd did not answer on $SOCK within 30 s"
    fi
    sleep 0.1
  done
  local up=$SECONDS
  # The CRI plugin must have loaded (it is skipped, with a log line, when it cannot).
  if ! ctr -a "$SOCK" plugins ls 2>/dev/null | grep -E '^io\.containerd\.grpc\.v1[[:space:]]+cri[[:space:]].*ok' >/dev/null; then
    log "the CRI plugin did not load; ctr plugins ls and the log say:"
    ctr -a "$SOCK" plugins ls 2>&1 | grep -v ' ok *$' >&2 || true
    grep -iE 'level=(error|warning)' "$D/containerd.log" | tail -n 10 >&2 || true
    stop "$D" || true
    cannot "containerd's CRI plugin did not load (see $D/containerd.log)"
  fi
  ctr_ images import "$CACHE/images.tar" >"$D/import.log" 2>&1 \
    || { cat "$D/import.log" >&2; stop "$D" || true; log "ctr images import $CACHE/images.tar failed"; exit 1; }
  local images
  images=$(ctr_ images ls -q)
  for img in "$BUSYBOX_IMAGE" "$PAUSE_IMAGE"; do
    grep -qxF "$img" <<<"$images" \
      || { stop "$D" || true; log "$img missing after import (have: $images)"; exit 1; }
  done
  log "containerd $(containerd --version | awk '{print $3}') ready on $SOCK (pid $pid) in $((SECONDS - START)) s (answering after $((up - START)) s)"
}

stop() {
  local D=$1 pid shims s k ids id
  [ -d "$D" ] || { log "no such dir: $D (nothing to stop)"; return 0; }
  D=$(realpath -- "$D")
  SOCK=$D/containerd.sock
  if pid=$(live_pid "$D/watchdog.pid" "_watch $D "); then
    [ "$pid" = "${WATCHDOG_SELF:-}" ] || kill "$pid" 2>/dev/null || true
  fi
  rm -f "$D/watchdog.pid"

  pid=$(live_pid "$D/containerd.pid" "$D/config.toml") || pid=
  if [ -n "$pid" ] && [ -S "$SOCK" ]; then
    # Kill and delete the tasks while containerd runs: the shims then unmount and exit.
    # (CRI itself deletes a task once it sees it exit; whatever is left is deleted here.)
    local err=${CKVAULT_CTRD_TRACE:-/dev/null} left_tasks i
    ids=$(ctr_ tasks ls -q 2>>"$err" || true)
    for id in $ids; do ctr_ tasks kill -a -s SIGKILL "$id" >/dev/null 2>>"$err" || true; done
    i=0
    while [ -n "$ids" ] && [ "$i" -lt 50 ]; do
      sleep 0.1
      left_tasks=$(ctr_ tasks ls 2>>"$err" | awk 'NR > 1 && $3 != "RUNNING" { print $1 }' || true)
      ids=$(ctr_ tasks ls -q 2>>"$err" || true)
      for id in $left_tasks; do ctr_ tasks delete "$id" >/dev/null 2>>"$err" || true; done
      i=$((i + 1))
    done
  fi
  if [ -n "$pid" ]; then
    kill -TERM "$pid" 2>/dev/null || true
    wait_gone "$pid" 100 || { kill -KILL "$pid" 2>/dev/null || true; wait_gone "$pid" 50 || true; }
  fi
  rm -f "$D/containerd.pid"

  # Shims that outlived containerd (their cmdline names our socket): kill what they run.
  shims=$(grep -lsF -- "$SOCK" /proc/[0-9]*/cmdline 2>/dev/null | cut -d/ -f3 || true)
  for s in $shims; do
    [[ $(cmdline "$s") == *containerd-shim*"-address $SOCK "* ]] || [[ $(cmdline "$s") == *containerd-shim*"-address $SOCK" ]] || continue
    for k in $(descendants "$s"); do kill -KILL "$k" 2>/dev/null || true; done
    kill -KILL "$s" 2>/dev/null || true
  done
  for s in $shims; do wait_gone "$s" 50 || true; done

  # Empty cgroups of our containers (cgroupfs driver: <controller>/k8s.io/<id>).
  for id in "$D/state/io.containerd.runtime.v2.task/$NS"/*; do
    id=${id##*/}
    [[ $id =~ ^[0-9a-f]{64}$ ]] || continue
    for cg in /sys/fs/cgroup/*/"$NS"/"$id" /sys/fs/cgroup/"$NS"/"$id"; do
      if [ -d "$cg" ]; then rmdir "$cg" 2>/dev/null || true; fi
    done
  done

  # Whatever is still mounted strictly under DIR, deepest first.
  local mounts m left=0
  # mountinfo escapes space, tab, newline and backslash as \040 \011 \012 \134.
  mounts=$(awk -v p="$D/" '{
      m = $5
      gsub(/\\040/, " ", m); gsub(/\\011/, "\t", m); gsub(/\\012/, "\n", m); gsub(/\\134/, "\\", m)
      if (index(m, p) == 1) print length(m) "\t" m
    }' /proc/self/mountinfo | sort -rn | cut -f2- | uniq)
  while IFS= read -r m; do
    [ -n "$m" ] || continue
    umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || { log "could not unmount $m"; left=1; }
  done <<<"$mounts"
  [ "$left" -eq 0 ] || return 1
  return 0
}

# Runs detached: stops DIR when the watched process dies while DIR's containerd still runs.
watch() {
  local D=$1 watched=$2
  while kill -0 "$watched" 2>/dev/null && [ -f "$D/containerd.pid" ]; do sleep 1; done
  if [ -f "$D/containerd.pid" ]; then
    if WATCHDOG_SELF=$$ stop "$D" >>"$D/watchdog.log" 2>&1 \
        && [ "${CKVAULT_CTRD_WATCH_RMDIR:-}" = 1 ]; then
      rm -rf --one-file-system -- "$D"
    fi
  fi
}

if [ -n "${CKVAULT_CTRD_TRACE:-}" ]; then
  exec 19>>"$CKVAULT_CTRD_TRACE"
  BASH_XTRACEFD=19
  PS4='+ $(date +%T.%N) ${FUNCNAME[0]:-main}: '
  set -x
fi

case ${1:-} in
  start) [ $# -eq 2 ] || usage; start "$2" ;;
  stop) [ $# -eq 2 ] || usage; stop "$2" ;;
  images)
    [ $# -eq 1 ] || usage
    ensure_tools; ensure_images; echo "$CACHE" ;;
  _watch) [ $# -eq 3 ] || usage; watch "$2" "$3" ;;
  *) usage ;;
esac
