#!/usr/bin/env bash
# The main job on the embedded defaults, end to end on this machine:
#   1. install what it needs (Debian: age, zstd, debootstrap, gcc) and build ckvault;
#   2. make a REAL container checkpoint with Podman + CRIU (tests/harness/real-checkpoint.sh);
#   3. generate a responder key pair (age-keygen) and seal the checkpoint into the local
#      store ./ckvault-data (created with its own Ed25519 signing key), removing the plaintext;
#   4. inspect, list, verify, export, and open the record with the standard tools.
# Needs root (CRIU checkpoints need it). Re-running adds another record.
set -euo pipefail
cd "$(dirname "$0")/.."
STORE=${CKVAULT_STORE:-ckvault-data}
WORK=${CKVAULT_DEMO_DIR:-ckvault-demo}
MEM=${CKVAULT_DEMO_MEM_MIB:-64}

need=()
for c in age zstd debootstrap gcc; do command -v "$c" >/dev/null || need+=("$c"); done
if [ ${#need[@]} -gt 0 ]; then
  echo "== installing ${need[*]}"
  apt-get update -qq && apt-get install -y -qq age zstd debootstrap gcc libc6-dev >/dev/null
fi
echo "== building ckvault (release)"
cargo build --release --quiet
CK=$PWD/target/release/ckvault

mkdir -p "$WORK"; chmod 700 "$WORK"
if [ ! -f "$WORK/responder.key" ]; then
  age-keygen -o "$WORK/responder.key" 2>/dev/null
fi
RECIPIENT=$(age-keygen -y "$WORK/responder.key")

echo "== making a real checkpoint (${MEM} MiB of heap) with Podman + CRIU"
ARCHIVE=$WORK/checkpoint-web-7d4_forensics-app.tar
rm -f "$ARCHIVE"
tests/harness/real-checkpoint.sh "$ARCHIVE" "$MEM" forensics web-7d4 app

echo "== inspect (nothing is unpacked)"
"$CK" inspect "$ARCHIVE"
cp "$ARCHIVE" "$WORK/original.tar"   # kept only so this demo can compare bytes at the end

echo "== seal into $STORE (the plaintext is removed once sealed)"
"$CK" seal "$ARCHIVE" --store "$STORE" --recipient "$RECIPIENT" \
  --namespace forensics --pod web-7d4 --container app --remove-input >"$WORK/manifest.json"
ID=$(sed -n 's/^  "id": "\([0-9A-Z]*\)",$/\1/p' "$WORK/manifest.json")
echo "sealed record $ID"

echo "== ls / verify"
"$CK" ls --store "$STORE"
"$CK" verify "$ID" --store "$STORE"

echo "== export and open with age -d | zstd -d"
rm -f "$WORK/$ID.age" "$WORK/$ID.age.manifest.json" "$WORK/opened.tar"
"$CK" export "$ID" --store "$STORE" -o "$WORK/$ID.age"
age -d -i "$WORK/responder.key" "$WORK/$ID.age" | zstd -d -q -o "$WORK/opened.tar"
cmp "$WORK/opened.tar" "$WORK/original.tar"
echo "byte-for-byte identical: $(sha256sum <"$WORK/opened.tar" | cut -c1-64)"
rm -f "$WORK/opened.tar" "$WORK/original.tar"
echo "== done: store $STORE, responder identity $WORK/responder.key"

echo "== serving $STORE over HTTPS (embedded defaults); Ctrl-C to stop"
"$CK" serve &
SERVER=$!
trap 'kill $SERVER 2>/dev/null' EXIT
for _ in $(seq 50); do [ -f "$STORE/tls/admin.token" ] && curl -sf --cacert "$STORE/tls/ca.pem" https://127.0.0.1:8443/healthz >/dev/null && break; sleep 0.2; done
echo "== listing with the admin certificate, downloading with the admin token"
curl -s --cacert "$STORE/tls/ca.pem" --cert "$STORE/tls/admin.pem" --key "$STORE/tls/admin.key" https://127.0.0.1:8443/v1/checkpoints; echo
rm -f "$WORK/fetched.age" "$WORK/fetched.age.manifest.json" "$WORK/fetched.age.tar"
"$CK" fetch "$ID" --server https://127.0.0.1:8443 --cacert "$STORE/tls/ca.pem" \
  --token-file "$STORE/tls/admin.token" --public-key "$STORE/keys/signing.pub" \
  --purpose demo -o "$WORK/fetched.age" -i "$WORK/responder.key"
"$CK" audit verify --store "$STORE"
wait $SERVER
