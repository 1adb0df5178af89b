#!/usr/bin/env bash
# Makes a REAL Kubernetes-style container checkpoint archive for ckvault's tests,
# benchmarks and README demo.
#
# usage: real-checkpoint.sh OUT [MEM_MIB] [NS] [POD] [CONTAINER] [none|gzip|zstd] [MARKER]
#        real-checkpoint.sh --prepare      (only build the root and memhog, then exit)
#
#   OUT        where the archive goes (written 0600, atomically: a partial OUT never exists)
#   MEM_MIB    heap the checkpointed process holds (default 64)
#   NS POD CONTAINER
#              the identity: annotations io.kubernetes.pod.namespace / pod.name /
#              container.name in spec.dump, as CRI-O writes them (default default/demo-pod/app)
#   COMPRESS   none (a plain tar, as the kubelet's archives are), gzip or zstd
#   MARKER     a value V: the string "CKVAULT-SECRET-MARKER-V" is planted in the process's
#              heap (see memhog.c), and exists nowhere else in the archive (default: none)
#
# How: Podman 5 + crun + CRIU 4 from Debian 13 packages, installed by debootstrap into a
# root of their own (the host's Debian 12 CRIU is too old for its kernel). In fresh mount
# and PID namespaces that root becomes "/", a container runs tests/harness/memhog.c with the
# Kubernetes annotations, and `podman container checkpoint --export` writes the archive:
# the layout CRI-O writes for the kubelet (checkpoint/ with CRIU images, config.dump,
# spec.dump, rootfs-diff.tar, ...), plus Podman's own extras.
#
# env:
#   CKVAULT_CKPT_CACHE     cache dir for the root, memhog and the lock (default /var/tmp/ckvault-ckpt)
#   CKVAULT_DEBIAN_MIRROR  Debian mirror for debootstrap (default http://deb.debian.org/debian)
#
# Needs: root, unshare/flock (util-linux), gcc + libc6-dev (static libc), and on the first
# run debootstrap plus Debian's package archive (a minute or two; later runs take seconds).
# Runs are serialized by a flock on $CACHE/lock, so parallel callers wait their turn.
#
# Exit status: 0 done; 2 bad usage; 3 this machine cannot make a checkpoint (the reason is
# printed last on stderr, starting "real-checkpoint: cannot checkpoint here:"); 1 other errors.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CACHE=${CKVAULT_CKPT_CACHE:-/var/tmp/ckvault-ckpt}
MIRROR=${CKVAULT_DEBIAN_MIRROR:-http://deb.debian.org/debian}
R=$CACHE/root                  # the Debian 13 root
W=/opt/ckvault                 # work dir inside the root
SUITE=trixie
PACKAGES="podman crun criu libcriu2 conmon catatonit busybox-static iproute2 iptables nftables"
START=$SECONDS

log() { echo "real-checkpoint: $*" >&2; }
usage() {
  log "usage: real-checkpoint.sh OUT [MEM_MIB] [NS] [POD] [CONTAINER] [none|gzip|zstd] [MARKER]"
  log "       real-checkpoint.sh --prepare"
  exit 2
}
cannot() { log "cannot checkpoint here: $*"; exit 3; }

# ---- arguments ------------------------------------------------------------------------
PREPARE=0
if [ "${1:-}" = --prepare ]; then
  PREPARE=1
  [ $# -eq 1 ] || usage
else
  if [ $# -lt 1 ] || [ $# -gt 7 ]; then usage; fi
  OUT=$(realpath -m -- "$1")
  MEM=${2:-64}; NS=${3:-default}; POD=${4:-demo-pod}; CTR=${5:-app}; COMP=${6:-none}
  MARKER=${7:-}
  [[ $MEM =~ ^[0-9]{1,6}$ ]] || { log "MEM_MIB must be a whole number of MiB: '$MEM'"; usage; }
  # Names as Kubernetes and Podman accept them; also keeps them inert in every command below.
  for name in "$NS" "$POD" "$CTR"; do
    [[ $name =~ ^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$ ]] \
      || { log "NS, POD and CONTAINER must match [A-Za-z0-9][A-Za-z0-9_.-]{0,62}: '$name'"; usage; }
  done
  case $COMP in none|gzip|zstd) ;; *) log "COMPRESS must be none, gzip or zstd: '$COMP'"; usage ;; esac
  [ ${#MARKER} -le 1024 ] || { log "MARKER is longer than 1024 bytes"; usage; }
  [ -d "$(dirname "$OUT")" ] || mkdir -p "$(dirname "$OUT")"
fi

# ---- what the machine must offer --------------------------------------------------------
[ "$(id -u)" -eq 0 ] || cannot "not root (CRIU and the namespaces it needs want uid 0)"
for tool in unshare flock chroot mount pivot_root; do
  command -v "$tool" >/dev/null || cannot "'$tool' is missing (Debian: apt-get install util-linux)"
done
command -v gcc >/dev/null || cannot "gcc is missing (Debian: apt-get install gcc libc6-dev)"
unshare -m -p -f true 2>/dev/null \
  || cannot "this sandbox does not allow new mount and PID namespaces (unshare -m -p -f failed)"

mkdir -p "$CACHE"
chmod 700 "$CACHE"
exec 9>"$CACHE/lock"
if ! flock -n 9; then
  log "waiting for another real-checkpoint.sh run (lock $CACHE/lock)"
  flock -w 1800 9 || { log "gave up waiting 30 minutes for $CACHE/lock"; exit 1; }
fi

# ---- the Debian 13 root (first run only) ------------------------------------------------
root_ok() { [ -x "$R/usr/bin/podman" ] && [ -x "$R/usr/bin/crun" ] && [ -x "$R/usr/sbin/criu" ] \
              && [ -x "$R/usr/bin/conmon" ] && [ -x "$R/bin/busybox" ]; }
build_root() {
  local B=$CACHE/root.build
  log "building a Debian 13 root with podman, crun and criu in $R (first run only, 1-3 minutes)"
  if ! command -v debootstrap >/dev/null; then
    command -v apt-get >/dev/null || cannot "debootstrap is missing and there is no apt-get to install it"
    log "installing debootstrap with apt-get"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap; } \
      >"$CACHE/apt-host.log" 2>&1 || cannot "could not install debootstrap, see $CACHE/apt-host.log"
  fi
  rm -rf "$B"; mkdir -p "$B"
  debootstrap --variant=minbase "$SUITE" "$B" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1 \
    || cannot "debootstrap of Debian $SUITE from $MIRROR failed, see $CACHE/debootstrap.log: $(tail -n 2 "$CACHE/debootstrap.log" | tr '\n' ' ')"
  cp /etc/resolv.conf "$B/etc/resolv.conf" 2>/dev/null || true
  # No daemons may start inside the chroot while packages are configured.
  printf '#!/bin/sh\nexit 101\n' >"$B/usr/sbin/policy-rc.d"; chmod 755 "$B/usr/sbin/policy-rc.d"
  # shellcheck disable=SC2086 # PACKAGES is a word list on purpose
  DEBIAN_FRONTEND=noninteractive chroot "$B" apt-get install -y -qq --no-install-recommends \
      $PACKAGES >"$CACHE/apt.log" 2>&1 \
    || cannot "installing $PACKAGES into the root failed, see $CACHE/apt.log: $(tail -n 2 "$CACHE/apt.log" | tr '\n' ' ')"
  chroot "$B" apt-get clean >/dev/null 2>&1 || true
  rm -rf "$R"; mv "$B" "$R"   # the root appears whole or not at all
  root_ok || { log "the built root lacks podman, crun, criu, conmon or busybox"; exit 1; }
  log "root built in $((SECONDS - START)) s"
}
root_ok || build_root

# Configuration (rewritten each run: cheap, and a root built elsewhere gets it too).
mkdir -p "$R/etc/containers" "$R$W"
cat >"$R/etc/containers/containers.conf" <<'EOF'
[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
runtime = "crun"
[containers]
netns = "none"
EOF
cat >"$R/etc/containers/storage.conf" <<'EOF'
[storage]
driver = "vfs"
runroot = "/run/containers/storage"
graphroot = "/var/lib/containers/storage"
EOF

# ---- memhog, compiled once per source version -------------------------------------------
SRC_HASH=$(sha256sum "$HERE/memhog.c" | cut -c1-16)
MEMHOG=$CACHE/memhog-$SRC_HASH
if [ ! -x "$MEMHOG" ]; then
  gcc -O2 -static -o "$MEMHOG.tmp" "$HERE/memhog.c" 2>"$CACHE/gcc.log" \
    || cannot "gcc -static memhog.c failed (static libc missing? apt-get install libc6-dev): $(tail -n 3 "$CACHE/gcc.log" | tr '\n' ' ')"
  mv "$MEMHOG.tmp" "$MEMHOG"
fi
[ "$PREPARE" -eq 1 ] && { log "root and memhog ready in $CACHE"; exit 0; }

# ---- the container image: busybox + memhog ----------------------------------------------
IMG_DIR=$R$W/img
rm -rf "$IMG_DIR"; mkdir -p "$IMG_DIR"/{bin,tmp,proc,dev,sys}
cp "$MEMHOG" "$IMG_DIR/bin/memhog"
cp "$R/bin/busybox" "$IMG_DIR/bin/busybox"
for c in sh sleep cat; do ln -s busybox "$IMG_DIR/bin/$c"; done
IMAGE=localhost/ckvault-memhog:$(cat "$MEMHOG" "$R/bin/busybox" | sha256sum | cut -c1-16)
tar -C "$IMG_DIR" --sort=name --numeric-owner --owner=0 --group=0 -cf "$R$W/rootfs.tar" .

# ---- what runs inside: enter.sh makes the root "/", inside.sh drives podman -------------
cat >"$R$W/enter.sh" <<'EOF'
#!/bin/bash
# PID 1 of a fresh PID namespace, in a private mount namespace: mount the kernel file
# systems into the root, pivot into it, run the command. When it exits, every process
# of the namespace (conmon, the container) dies with it.
set -e
R=$1; shift
mount --make-rprivate /
mount --bind "$R" "$R"
mount -t proc proc "$R/proc"
mount -t sysfs sys "$R/sys"
mount -t tmpfs -o mode=755 dev "$R/dev"
for d in null:1:3 zero:1:5 full:1:7 random:1:8 urandom:1:9 tty:5:0; do
  IFS=: read -r n a b <<<"$d"; mknod -m 666 "$R/dev/$n" c "$a" "$b"
done
mkdir -p "$R/dev/pts" "$R/dev/shm"
mount -t devpts devpts "$R/dev/pts" -o newinstance,ptmxmode=0666
ln -sf pts/ptmx "$R/dev/ptmx"
mount -t tmpfs shm "$R/dev/shm"
mount -t tmpfs tmp "$R/tmp"
mount -t tmpfs run "$R/run"
cd "$R"; mkdir -p oldroot; pivot_root . oldroot; umount -l /oldroot
exec "$@"
EOF
cat >"$R$W/inside.sh" <<'EOF'
#!/bin/sh
# usage: inside.sh CGROUP(v1|v2) IMAGE MEM NS POD CTR COMPRESS [MARKER_HEX]
set -eu
CG=$1 IMAGE=$2 MEM=$3 NS=$4 POD=$5 CTR=$6 COMP=$7 HEX=${8:-}
W=/opt/ckvault
say() { echo "inside: $*" >&2; }
if [ "$CG" = v2 ]; then mount -t cgroup2 none /sys/fs/cgroup
else
  mount -t tmpfs -o mode=755 cgroup /sys/fs/cgroup
  for c in cpu cpuacct cpuset memory devices freezer blkio pids; do
    mkdir -p /sys/fs/cgroup/$c; mount -t cgroup -o $c cgroup /sys/fs/cgroup/$c
  done
  mkdir -p /sys/fs/cgroup/systemd; mount -t cgroup -o none,name=systemd cgroup /sys/fs/cgroup/systemd
fi
export PODMAN_IGNORE_CGROUPSV1_WARNING=1
podman rm -af >/dev/null 2>&1 || true          # leftovers of an interrupted run
podman image exists "$IMAGE" || podman import -q "$W/rootfs.tar" "$IMAGE" >/dev/null
set -- /bin/memhog "$MEM"; [ -n "$HEX" ] && set -- "$@" "$HEX"
podman run -d --name "$CTR" --network none \
  --annotation io.kubernetes.pod.namespace="$NS" \
  --annotation io.kubernetes.pod.name="$POD" \
  --annotation io.kubernetes.container.name="$CTR" \
  "$IMAGE" "$@" >/dev/null
# Filling takes well under a second per 100 MiB; allow a generous minute plus 1 s per 64 MiB.
limit=$((600 + MEM * 10 / 64)); i=0
until podman logs "$CTR" 2>/dev/null | grep -q '^ready'; do
  if [ "$(podman inspect -f '{{.State.Running}}' "$CTR")" != true ]; then
    say "memhog exited before it was ready; its output:"; podman logs "$CTR" >&2 || true; exit 1
  fi
  i=$((i + 1)); [ $i -lt $limit ] || { say "memhog not ready after $((limit / 10)) s"; exit 1; }
  sleep 0.1
done
if ! podman container checkpoint --export "$W/out.tar" --compress "$COMP" "$CTR" >/dev/null; then
  dir=$(podman inspect -f '{{.StaticDir}}' "$CTR" 2>/dev/null || true)
  if [ -f "$dir/dump.log" ]; then say "CRIU's dump.log ends:"; tail -n 25 "$dir/dump.log" >&2; fi
  exit 3
fi
podman rm -f "$CTR" >/dev/null 2>&1 || true
EOF
chmod 755 "$R$W/enter.sh" "$R$W/inside.sh"

# ---- checkpoint -------------------------------------------------------------------------
CG=v1; [ -f /sys/fs/cgroup/cgroup.controllers ] && CG=v2
HEX=""; [ -n "$MARKER" ] && HEX=$(printf '%s' "$MARKER" | od -An -v -tx1 | tr -d ' \n')
rm -f "$R$W/out.tar"
RUNLOG=$CACHE/last-run.log
# Run in a subshell that first closes every descriptor above 2 (the lock included; this
# shell keeps holding it): CRIU refuses to dump files opened outside the container.
set +e
(
  for fd in /proc/"$BASHPID"/fd/*; do
    fd=${fd##*/}; [ "$fd" -gt 2 ] && eval "exec $fd>&-" 2>/dev/null
  done
  exec unshare -m -p -f --propagation private "$R$W/enter.sh" "$R" \
    /bin/sh "$W/inside.sh" "$CG" "$IMAGE" "$MEM" "$NS" "$POD" "$CTR" "$COMP" "$HEX"
) </dev/null >"$RUNLOG" 2>&1
rc=$?
set -e
if [ $rc -ne 0 ] || [ ! -s "$R$W/out.tar" ]; then
  sed 's/^/  | /' "$RUNLOG" | tail -n 40 >&2
  if [ $rc -eq 3 ]; then cannot "CRIU could not dump the container (its log is above)"; fi
  cannot "podman could not run or checkpoint the container (exit $rc; its output is above)"
fi

# Move the archive out: 0600 before it leaves the root, renamed into place whole.
chmod 600 "$R$W/out.tar"
TMP=$(mktemp "$(dirname "$OUT")/.real-checkpoint.XXXXXX")
trap 'rm -f "$TMP"' EXIT
mv -f "$R$W/out.tar" "$TMP"
chmod 600 "$TMP"
mv -f "$TMP" "$OUT"
trap - EXIT
log "wrote $OUT ($(stat -c %s "$OUT") bytes, ${MEM} MiB heap, $NS/$POD/$CTR, $COMP) in $((SECONDS - START)) s"
