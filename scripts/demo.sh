#!/usr/bin/env bash
# The main job on the embedded defaults, end to end on this machine:
#   1. set up (scripts/setup.sh: Debian packages age, zstd, debootstrap, gcc, curl; a Rust
#      toolchain >= 1.95 through rustup where none is found), build ckvault (release) and
#      install the binary as /usr/local/bin/ckvault (CKVAULT_BIN_DIR to change);
#   2. make a REAL container checkpoint with Podman + CRIU (tests/harness/real-checkpoint.sh);
#   3. generate a responder key pair (age-keygen) and seal the checkpoint into the local
#      store ./ckvault-data (created with its own Ed25519 signing key), removing the plaintext;
#   4. inspect, list, verify, export, and open the record with the standard tools;
#   5. serve the store over HTTPS on 127.0.0.1:$CKVAULT_DEMO_PORT (default 8443), fetch the
#      record back with the admin token, open and verify it, then keep serving until Ctrl-C.
# No plaintext checkpoint is left behind: every plaintext copy the demo makes is removed when
# it ends, however it ends. Needs root (CRIU checkpoints need it). Re-running adds a record.
set -euo pipefail
cd "$(dirname "$0")/.."
STORE=${CKVAULT_STORE:-ckvault-data}
WORK=${CKVAULT_DEMO_DIR:-ckvault-demo}
MEM=${CKVAULT_DEMO_MEM_MIB:-64}
PORT=${CKVAULT_DEMO_PORT:-8443}
BIN_DIR=${CKVAULT_BIN_DIR:-/usr/local/bin}
T0=$SECONDS
[[ $PORT =~ ^[0-9]{1,5}$ ]] && [ "$PORT" -ge 1 ] && [ "$PORT" -le 65535 ] \
  || { echo "demo: CKVAULT_DEMO_PORT must be a TCP port number (1-65535), not '$PORT'" >&2; exit 2; }
[ "$(id -u)" -eq 0 ] || { echo "demo: run as root (CRIU checkpoints need it; not root? sudo scripts/demo.sh)" >&2; exit 1; }
port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
if port_busy "$PORT"; then
  echo "demo: port $PORT on 127.0.0.1 is busy (another server listens there; see: ss -ltnp 'sport = :$PORT');" \
    "stop it or choose another port: CKVAULT_DEMO_PORT=8444 scripts/demo.sh" >&2
  exit 1
fi
# Plaintext copies of the checkpoint this demo makes: all removed on exit, however it ends.
ARCHIVE=$WORK/checkpoint-web-7d4_forensics-app.tar
plaintext=("$ARCHIVE" "$WORK/original.tar" "$WORK/opened.tar" "$WORK/fetched.age.tar")
SERVER=
cleanup() {
  rm -f "${plaintext[@]}"
  if [ -n "$SERVER" ]; then kill "$SERVER" 2>/dev/null || true; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "== setting up: Debian packages and a Rust toolchain (scripts/setup.sh)"
scripts/setup.sh age zstd debootstrap util-linux
export PATH="$HOME/.cargo/bin:$PATH"
echo "== building ckvault (release; the first build takes 6-25 minutes on 2 cores, later ones seconds)"
t=$SECONDS
cargo build --release --locked --quiet
echo "   built in $((SECONDS - t)) s"
install -D -m 0755 target/release/ckvault "$BIN_DIR/ckvault"
echo "== installed $BIN_DIR/ckvault (a copy of target/release/ckvault): run \`ckvault --help\` from any shell"
CK=$BIN_DIR/ckvault

mkdir -p "$WORK"; chmod 700 "$WORK"
if [ ! -f "$WORK/responder.key" ]; then
  age-keygen -o "$WORK/responder.key" 2>/dev/null
fi
RECIPIENT=$(age-keygen -y "$WORK/responder.key")

echo "== making a real checkpoint (${MEM} MiB of heap) with Podman + CRIU"
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

echo "== serving $STORE over HTTPS on 127.0.0.1:$PORT (embedded defaults)"
"$CK" serve --listen "127.0.0.1:$PORT" &
SERVER=$!
up=0
for _ in $(seq 100); do
  if ! kill -0 "$SERVER" 2>/dev/null; then
    wait "$SERVER" || true
    SERVER=
    echo "demo: ckvault serve stopped before it served (its reason is above); nothing was fetched" >&2
    exit 1
  fi
  [ -f "$STORE/tls/admin.token" ] && curl -sf --cacert "$STORE/tls/ca.pem" "https://127.0.0.1:$PORT/healthz" >/dev/null && { up=1; break; }
  sleep 0.2
done
[ $up = 1 ] || { echo "demo: ckvault serve did not answer https://127.0.0.1:$PORT/healthz within 20 s" >&2; exit 1; }
echo "== listing with the admin certificate, downloading with the admin token"
curl -sS --fail-with-body --cacert "$STORE/tls/ca.pem" --cert "$STORE/tls/admin.pem" --key "$STORE/tls/admin.key" "https://127.0.0.1:$PORT/v1/checkpoints"; echo
rm -f "$WORK/fetched.age" "$WORK/fetched.age.manifest.json" "$WORK/fetched.age.tar"
"$CK" fetch "$ID" --server "https://127.0.0.1:$PORT" --cacert "$STORE/tls/ca.pem" \
  --token-file "$STORE/tls/admin.token" --public-key "$STORE/keys/signing.pub" \
  --purpose demo -o "$WORK/fetched.age" -i "$WORK/responder.key"
rm -f "$WORK/fetched.age.tar"
echo "   (the opened plaintext $WORK/fetched.age.tar is removed: the sealed $WORK/fetched.age stays)"
"$CK" audit verify --store "$STORE"
echo "== demo done in $((SECONDS - T0)) s; serving until Ctrl-C. In another shell:"
echo "   ckvault ls --store $PWD/$STORE"
echo "   ckvault fetch $ID --server https://127.0.0.1:$PORT --cacert $PWD/$STORE/tls/ca.pem --token-file $PWD/$STORE/tls/admin.token -o /tmp/$ID.age"
wait "$SERVER"
