#!/usr/bin/env bash
# Builds ckvault's container image (deploy/image/Containerfile) from this repository alone,
# offline: FROM scratch with the ckvault binary built on this host, the shared libraries it
# links (found with ldd), a CA bundle, passwd/group entries and /tmp. Uses Debian's buildah,
# or podman when buildah is missing (scripts/test-deps.sh installs both).
#
#   scripts/image.sh [--bin PATH] [--tag NAME] [--out FILE.tar] [--no-strip]
#
#   --bin PATH     the binary to package (default target/release/ckvault; build it with
#                  `cargo build --release --bin ckvault`, ~10 min)
#   --tag NAME     image name (default localhost/ckvault:VERSION, VERSION from `ckvault --version`)
#   --out FILE     also write the image as an OCI archive, for nodes without a registry:
#                  `ctr -n k8s.io images import FILE` (containerd), `podman load -i FILE` (CRI-O)
#   --no-strip     keep the binary's debug information (it is stripped of it by default)
#
# Prints the image name, its ID and its size. Needs root (or rootless podman/buildah set up).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
bin="$repo/target/release/ckvault" tag="" out="" strip=1
while [ $# -gt 0 ]; do
  case "$1" in
    --bin) bin=${2:?--bin needs a path}; shift 2 ;;
    --tag) tag=${2:?--tag needs a name}; shift 2 ;;
    --out) out=${2:?--out needs a file}; shift 2 ;;
    --no-strip) strip=0; shift ;;
    -h|--help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "scripts/image.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
die() { echo "scripts/image.sh: $*" >&2; exit 1; }
[ -x "$bin" ] || die "no binary at $bin: build it with \`cargo build --release --bin ckvault\` or pass --bin PATH"
if command -v buildah >/dev/null 2>&1; then builder=buildah
elif command -v podman >/dev/null 2>&1; then builder=podman
else die "neither buildah nor podman is installed: apt-get install buildah (or run scripts/test-deps.sh as root)"
fi
[ -f /etc/ssl/certs/ca-certificates.crt ] || die "no CA bundle at /etc/ssl/certs/ca-certificates.crt: apt-get install ca-certificates"
version=$("$bin" --version | awk '{print $2}')
[ -n "$version" ] || die "$bin --version printed no version"
tag=${tag:-localhost/ckvault:$version}

ctx=$(mktemp -d "${TMPDIR:-/var/tmp}/ckvault-image.XXXXXX")
trap 'rm -rf "$ctx"' EXIT
root="$ctx/rootfs"
mkdir -p "$root"/{lib,lib64,etc/ssl/certs,tmp,var/lib/ckvault,usr/local/bin}
chmod 1777 "$root/tmp"
chmod 0700 "$root/var/lib/ckvault"

if [ "$strip" = 1 ] && command -v strip >/dev/null 2>&1; then
  strip --strip-debug -o "$root/usr/local/bin/ckvault" "$bin"
else
  cp "$bin" "$root/usr/local/bin/ckvault"
fi
chmod 0755 "$root/usr/local/bin/ckvault"

# Every library ldd resolves, and the ELF interpreter, at the same paths (symlinks followed:
# the image holds the files themselves).
libs=$(ldd "$bin") || die "ldd $bin failed: is it a dynamically linked Linux binary?"
if grep -q 'not found' <<<"$libs"; then die "ldd cannot resolve every library of $bin:"$'\n'"$libs"; fi
while read -r path; do
  [ -n "$path" ] || continue
  case "$path" in /lib/*|/lib64/*|/usr/lib/*) ;; *) die "library outside /lib, /lib64, /usr/lib: $path" ;; esac
  dest="$root$path"
  case "$path" in /usr/lib/*) dest="$root${path#/usr}" ;; esac   # Debian 12 merges /usr: /lib -> usr/lib
  mkdir -p "$(dirname "$dest")"
  cp -L "$path" "$dest"
done < <(awk '/=> \// {print $3} /^[[:space:]]*\/[^ ]*ld-linux/ {print $1}' <<<"$libs")

cat > "$root/etc/passwd" <<'PASSWD'
root:x:0:0:root:/root:/sbin/nologin
ckvault:x:65532:65532:ckvault:/var/lib/ckvault:/sbin/nologin
PASSWD
cat > "$root/etc/group" <<'GROUP'
root:x:0:
ckvault:x:65532:
GROUP
echo 'hosts: files dns' > "$root/etc/nsswitch.conf"
cp -L /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
chmod 0644 "$root"/etc/passwd "$root"/etc/group "$root"/etc/nsswitch.conf "$root"/etc/ssl/certs/ca-certificates.crt
cp "$repo/deploy/image/Containerfile" "$ctx/Containerfile"

echo "scripts/image.sh: building $tag with $builder from $bin (ckvault $version)" >&2
# A fixed timestamp: the same binary and libraries give the same image.
if [ "$builder" = buildah ]; then
  buildah build --quiet --timestamp 0 --layers=false --build-arg "VERSION=$version" \
    -f "$ctx/Containerfile" -t "$tag" "$ctx" >/dev/null
  id=$(buildah images --noheading --format '{{.ID}}' "$tag" | head -n1)
  [ -z "$out" ] || { rm -f "$out"; buildah push --quiet "$tag" "oci-archive:$out:$tag" >/dev/null; }
else
  podman build --quiet --timestamp 0 --build-arg "VERSION=$version" \
    -f "$ctx/Containerfile" -t "$tag" "$ctx" >/dev/null
  id=$(podman image inspect --format '{{.Id}}' "$tag")
  [ -z "$out" ] || { rm -f "$out"; podman save --quiet --format oci-archive -o "$out" "$tag"; }
fi
size=$(podman image inspect --format '{{.Size}}' "$tag" 2>/dev/null || echo "?")
echo "scripts/image.sh: built $tag (image $id, $size bytes)${out:+; OCI archive $out}" >&2
echo "$tag"
