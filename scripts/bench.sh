#!/usr/bin/env bash
# Benchmarks that print figures side by side, measured in one run on one machine, as ratios
# (machines here are shared and noisy: medians of BENCH_RUNS runs). No pass/fail: the
# targets and the measured results live in docs/performance.md.
#
#   sudo scripts/bench.sh           full run: 1 GiB and 4 GiB seals, 100k-record listing
#   sudo scripts/bench.sh --small   the CI version: 64 MiB, 10k records, fewer calls
#
# Sections (each prints one table):
#   1. seal      ckvault seal vs (a) the pipeline a careful user would write
#                (tee >(openssl dgst) | zstd -1 -T2 | age | tee >(openssl dgst)) and
#                (b) zstd -1 -T2 alone; wall, peak RSS, compression ratio; then the
#                computed floor: each part of a seal done alone by a standard tool on the
#                same input (zstd --fast=1 -T2 as ckvault's level -1, openssl dgst -sha256
#                of input and of output, age of the compressed bytes), floor =
#                max(sum of their CPU seconds / cores, the longest part's wall)
#   2. inspect   ckvault inspect vs tar tvf (plain tar); vs zstd -dc | tar tv (.tar.zst)
#   3. download  curl over TLS 1.3 from ckvault serve vs nginx (TLS 1.3, same cert, the
#                same blob file: nginx serves the store's file itself); every timed download
#                is checked (HTTP 200, byte count, sha256 equal to the blob's) or the section
#                fails; then 32 concurrent downloads: errors (status and size checked) and
#                audit events
#   4. cri       CRI proxy (frames relayed) vs direct on real containerd 2.1: p50 latency
#                added, throughput; beside it the floor, socat relaying the same bytes
#   5. list      GET /v1/checkpoints of N records
#   6. load      64 concurrent download loops plus seals into the same store, for
#                BENCH_LOAD_SECS (60; 10 with --small): errors, downloads, server peak RSS
#   7. capture   the kubelet's CheckpointContainer through ckvault proxy (checkpoint + seal +
#                receipt) vs the direct call, on containerd 2.1 + runc + CRIU 4.2, a
#                BENCH_CAPTURE_MIB (512; 64 with --small) MiB container; staging file and fifo
#   8. memsearch ckvault memsearch on a sealed BENCH_MEMSEARCH_MIB (1024; 64 with --small)
#                MiB record (decrypted in memory) vs checkpointctl 1.3 memparse on the
#                plaintext archive (in the checkpoint harness's Debian 13 root): time,
#                matches, same addresses, files created outside the store
#   9. watch     ckvault watch --once sealing a BENCH_WATCH_MIB (1024; 64 with --small) MiB
#                checkpoint (the kubelet's directory) vs ckvault seal of the same file
#  10. alert     an alert posted to a real Alertmanager 0.25 (group_wait 0s) until its sealed
#                record exists, vs the direct CheckpointContainer of the same container on
#                containerd 2.1, BENCH_ALERT_MIBS (64 and 512; 64 with --small) MiB containers
#  11. stop      the kubelet's StopContainer (grace 0) through ckvault proxy with an
#                on_stop rule (checkpoint + seal, then the stop) vs the same stop sent to the
#                runtime directly, containerd 2.1, BENCH_STOP_MIBS (64 and 512; 64 with
#                --small) MiB containers, a fresh pod for every stop
# BENCH_ONLY="4 5" runs only those sections (3 needs 1's checkpoint; it makes it if missing).
# Needs root (CRIU, containerd), age, zstd, openssl, curl, nginx (installed if missing).
set -euo pipefail
cd "$(dirname "$0")/.."
SMALL=0; [ "${1:-}" = "--small" ] && SMALL=1
if [ $SMALL = 1 ]; then
  SEAL_SIZES=(${BENCH_SEAL_SIZES:-64}); RUNS=${BENCH_RUNS:-1}; LIST_N=${BENCH_LIST_N:-10000}; CALLS=300
else
  SEAL_SIZES=(${BENCH_SEAL_SIZES:-1024 4096}); RUNS=${BENCH_RUNS:-3}; LIST_N=${BENCH_LIST_N:-100000}; CALLS=2000
fi
WORK=${BENCH_DIR:-/var/tmp/ckvault-bench}
mkdir -p "$WORK"; chmod 700 "$WORK"
command -v nginx >/dev/null || apt-get install -y -q nginx >/dev/null
# BENCH_PROFILE=debug (CI) reuses the test build: the script is exercised, the figures
# mean nothing. The default is a release build, as figures need.
if [ "${BENCH_PROFILE:-release}" = debug ]; then
  cargo build --quiet --bin ckvault --example cri_bench --example gen_records; PROFILE_DIR=debug
else
  cargo build --release --quiet --bin ckvault --example cri_bench --example gen_records; PROFILE_DIR=release
fi
TARGET=${CARGO_TARGET_DIR:-$PWD/target}
CK=${BENCH_CKVAULT:-$TARGET/$PROFILE_DIR/ckvault} # BENCH_CKVAULT: another build to compare
EX=$TARGET/$PROFILE_DIR/examples
[ -f "$WORK/key.txt" ] || age-keygen -o "$WORK/key.txt" 2>/dev/null
R=$(age-keygen -y "$WORK/key.txt")
PIDS=(); CLEAN_DIRS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
            for d in "${CLEAN_DIRS[@]}"; do rm -rf "$d"; done
            [ -d "$WORK/ctrd" ] && tests/harness/containerd.sh stop "$WORK/ctrd" >/dev/null 2>&1 || true; }
trap cleanup EXIT

median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
timed() { # timed CMD... -> "wall_s rss_kib" of one run (stdout to /dev/null)
  /usr/bin/time -f "%e %M" -o "$WORK/time.txt" "$@" >/dev/null 2>"$WORK/stderr.txt" || { cat "$WORK/stderr.txt"; return 1; }
  cat "$WORK/time.txt"
}
checkpoint() { # checkpoint MIB COMPRESS -> path of a real checkpoint
  local f=$WORK/ckpt-$1.tar
  case $2 in gzip) f=$f.gz ;; zstd) f=$f.zst ;; esac
  [ -f "$f" ] || tests/harness/real-checkpoint.sh "$f" "$1" bench bench-pod app "$2" >/dev/null 2>&1
  echo "$f"
}
want() { [ -z "${BENCH_ONLY:-}" ] || [[ " $BENCH_ONLY " == *" $1 "* ]]; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN{ if (b > 0) printf "%.2f", a/b; else print "-" }'; }
echo "machine: $(nproc) cores, $(awk '/MemTotal/{printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), sha_ni=$(grep -qw sha_ni /proc/cpuinfo && echo yes || echo no)"
echo "runs per figure: $RUNS (medians)"

# ---------------------------------------------------------------------------------- 1
if want 1; then
echo; echo "== 1. seal"
printf "%-7s %-16s %8s %10s %10s %7s %12s\n" input contender "wall s" "RSS MiB" "out MiB" ratio "wall/zstd"
cat > "$WORK/pipeline.sh" <<EOF
#!/usr/bin/env bash
# The pipeline a careful user would write instead of ckvault seal.
set -euo pipefail
tee >(openssl dgst -sha256 > "\$2.in.sha256") < "\$1" | zstd -1 -T2 -q | age -r "$R" \
  | tee >(openssl dgst -sha256 > "\$2.out.sha256") > "\$2"
EOF
chmod +x "$WORK/pipeline.sh"
for mib in "${SEAL_SIZES[@]}"; do
  in=$(checkpoint "$mib" none); insize=$(stat -c %s "$in")
  declare -A W=() M=() O=()
  for run in $(seq "$RUNS"); do
    for what in seal pipeline zstd; do
      cat "$in" >/dev/null # same page-cache state for every contender
      rm -rf "$WORK/store" "$WORK/out"
      case $what in
        seal) read -r w m < <(timed "$CK" seal "$in" --store "$WORK/store" -r "$R")
              o=$(cat "$WORK"/store/records/*.age | wc -c) ;;
        pipeline) read -r w m < <(timed "$WORK/pipeline.sh" "$in" "$WORK/out"); o=$(stat -c %s "$WORK/out") ;;
        zstd) read -r w m < <(timed zstd -1 -T2 -q -f "$in" -o "$WORK/out"); o=$(stat -c %s "$WORK/out") ;;
      esac
      W[$what]+="$w "; M[$what]+="$m "; O[$what]=$o
    done
  done
  zw=$(echo ${W[zstd]} | tr ' ' '\n' | median)
  for what in seal pipeline zstd; do
    w=$(echo ${W[$what]} | tr ' ' '\n' | median); m=$(echo ${M[$what]} | tr ' ' '\n' | median)
    printf "%-7s %-16s %8.2f %10.1f %10.1f %7s %12s\n" "${mib}MiB" "$what" "$w" \
      "$(awk -v k="$m" 'BEGIN{print k/1024}')" "$(awk -v b="${O[$what]}" 'BEGIN{print b/1048576}')" \
      "$(ratio "$insize" "${O[$what]}")" "$(ratio "$w" "$zw")"
  done
  unset W M O
  # The floor: each part of a seal done alone by a standard tool on the same bytes. With
  # `cores` cores, the whole cannot take less than its CPU spread over all of them, nor
  # less than its longest part (a stream cannot end before its slowest stage has).
  cores=$(nproc); declare -a FL=() SW=()
  zlevel=$("$CK" seal --help | sed -n 's/.*\[default: \(-\?[0-9]*\)\].*/\1/p' | head -1)
  zflag=$([ "${zlevel:--1}" -lt 0 ] && echo "--fast=${zlevel#-}" || echo "-$zlevel")
  part() { /usr/bin/time -f "%e %U %S" -o "$WORK/time.txt" "$@" >/dev/null 2>&1 || return 1; cat "$WORK/time.txt"; }
  for run in $(seq "$RUNS"); do
    cat "$in" >/dev/null; rm -rf "$WORK/store"
    read -r w _ < <(timed "$CK" seal "$in" --store "$WORK/store" -r "$R"); SW+=("$w")
    cat "$in" >/dev/null
    read -r zw zu zs < <(part sh -c "zstd $zflag -T2 -q -c '$in' > '$WORK/floor.zst'")
    read -r hw hu hs < <(part openssl dgst -sha256 "$in")
    read -r ow ou os < <(part openssl dgst -sha256 "$WORK/floor.zst")
    read -r aw au as < <(part sh -c "age -r '$R' < '$WORK/floor.zst' > '$WORK/floor.age'")
    FL+=("$(awk -v c="$cores" -v zw="$zw" -v hw="$hw" -v ow="$ow" -v aw="$aw" \
      -v cpu="$(awk "BEGIN{print $zu+$zs+$hu+$hs+$ou+$os+$au+$as}")" 'BEGIN{
        m=zw; if (hw>m) m=hw; if (ow>m) m=ow; if (aw>m) m=aw; f=cpu/c; if (m>f) f=m; print f }')")
    [ "$run" = 1 ] && printf "%-7s floor parts (CPU s = user+sys, wall s): zstd %s %.2f/%.2f, sha256 in %.2f/%.2f, sha256 out %.2f/%.2f, age %.2f/%.2f\n" \
      "${mib}MiB" "$zflag" "$(awk "BEGIN{print $zu+$zs}")" "$zw" "$(awk "BEGIN{print $hu+$hs}")" "$hw" \
      "$(awk "BEGIN{print $ou+$os}")" "$ow" "$(awk "BEGIN{print $au+$as}")" "$aw"
  done
  sw=$(printf "%s\n" "${SW[@]}" | median); fl=$(printf "%s\n" "${FL[@]}" | median)
  printf "%-7s ckvault seal %.2f s, floor %.2f s (%s cores), ratio %s (seal runs next to its floor runs)\n" \
    "${mib}MiB" "$sw" "$fl" "$cores" "$(ratio "$sw" "$fl")"
  unset FL SW
done
rm -rf "$WORK/out" "$WORK"/out.*.sha256 "$WORK"/floor.*
fi

# ---------------------------------------------------------------------------------- 2
if want 2; then
echo; echo "== 2. inspect (median of 11 warm runs)"
printf "%-22s %-24s %10s\n" input contender "ms"
ms_of() { local t=(); for _ in $(seq 11); do local s; s=$(date +%s%N); "$@" >/dev/null 2>&1 || true; t+=($(( ($(date +%s%N) - s) / 1000 ))); done
          printf "%s\n" "${t[@]}" | median | awk '{printf "%.2f", $1/1000}'; }
big=$(checkpoint "${SEAL_SIZES[0]}" none); zst=$(checkpoint "${SEAL_SIZES[0]}" zstd)
printf "%-22s %-24s %10s\n" "$(basename "$big")" "ckvault inspect" "$(ms_of "$CK" inspect "$big")"
printf "%-22s %-24s %10s\n" "$(basename "$big")" "tar tvf" "$(ms_of tar tvf "$big")"
printf "%-22s %-24s %10s\n" "$(basename "$zst")" "ckvault inspect" "$(ms_of "$CK" inspect "$zst")"
printf "%-22s %-24s %10s\n" "$(basename "$zst")" "zstd -dc | tar tv" "$(ms_of sh -c "zstd -dc '$zst' | tar tv")"
fi

# ---------------------------------------------------------------------------------- 3
if want 3; then
echo; echo "== 3. download over TLS 1.3 on loopback"
rm -rf "$WORK/store"
big=$(checkpoint "${SEAL_SIZES[0]}" none)
id=$("$CK" seal "$big" --store "$WORK/store" -r "$R" | awk -F'"' '/"id"/ && !x {print $4; x=1}')
# All clients here are one identity on one address: the per-identity and per-address limits
# (4 downloads, 32 requests, 64 connections by default) are raised so that the server's
# capacity is what is measured, not its limits.
LOAD_LIMITS='max_downloads_per_identity = 128
max_downloads = 128
max_requests_per_identity = 256
max_connections_per_address = 512'
cat > "$WORK/serve.toml" <<EOF
[store]
path = "$WORK/store"
[server]
listen = "127.0.0.1:0"
$LOAD_LIMITS
EOF
"$CK" serve --config "$WORK/serve.toml" > "$WORK/serve.out" 2>"$WORK/serve.err" & PIDS+=($!); ckpid=$!
for _ in $(seq 100); do grep -q "serving https" "$WORK/serve.out" 2>/dev/null && break; sleep 0.2; done
port=$(sed -n 's/.*serving https:\/\/127.0.0.1:\([0-9]*\).*/\1/p' "$WORK/serve.out" | head -1)
T=$WORK/store/tls
blob=$WORK/store/records/$id.age
bsize=$(stat -c %s "$blob"); bsum=$(sha256sum "$blob" | awk '{print $1}')
grep -q "\"$bsum\"" "$WORK/store/records/$id.json" \
  || { echo "the blob does not match its manifest before the benchmark starts" >&2; exit 1; }
mkdir -p "$WORK/nginx/tmp"
nport=$((port + 1))
# nginx serves the store's blob file itself (the same inode ckvault reads), by alias.
cat > "$WORK/nginx/nginx.conf" <<EOF
user root;
worker_processes 1;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log;
events { worker_connections 256; }
http {
  access_log off; sendfile on; client_body_temp_path $WORK/nginx/tmp; proxy_temp_path $WORK/nginx/tmp;
  fastcgi_temp_path $WORK/nginx/tmp; uwsgi_temp_path $WORK/nginx/tmp; scgi_temp_path $WORK/nginx/tmp;
  server { listen 127.0.0.1:$nport ssl; ssl_protocols TLSv1.3;
           ssl_certificate $T/server.pem; ssl_certificate_key $T/server.key;
           location = /blob.age { alias $blob; } }
  server { listen 127.0.0.1:$((nport + 1)) ssl http2; ssl_protocols TLSv1.3;
           ssl_certificate $T/server.pem; ssl_certificate_key $T/server.key;
           location = /blob.age { alias $blob; } }
}
EOF
nginx -c "$WORK/nginx/nginx.conf" -g 'daemon off;' & PIDS+=($!); ngpid=$!
sleep 1
# CPU milliseconds a server (and its children: nginx's worker) used so far: on a shared
# machine the throughput of either varies with the load, its CPU per download much less.
cpu_ms() { local t=0 p; for p in $1 $(pgrep -P "$1"); do t=$((t + $(awk '{print $14+$15}' /proc/"$p"/stat))); done
           echo $((t * 1000 / $(getconf CLK_TCK))); }
# Each timed download lands in memory (tmpfs: one kernel copy, the same for both) and is
# checked after its clock stopped: HTTP 200, the blob's byte count and sha256. A refusal
# or a cut-off stream also "downloads fast"; it must not count.
DL=${BENCH_DL_DIR:-/dev/shm/ckvault-bench-dl.$$}; mkdir -p "$DL"; chmod 700 "$DL"
CLEAN_DIRS+=("$DL")
CURL=(curl -sS --tlsv1.3 --cacert "$T/ca.pem" -w '%{http_code} %{size_download} %{speed_download}\n')
AUTH=(--cert "$T/admin.pem" --key "$T/admin.key")
checked() { # checked NAME CURL-ARGS... -> bytes/s of one download whose status, size and sha256 are right
  local out=$DL/$1.out code size speed got; shift; rm -f "$out"
  read -r code size speed < <("${CURL[@]}" -o "$out" "$@" || echo "curl-failed 0 0")
  got=$(sha256sum "$out" 2>/dev/null | awk '{print $1}'); rm -f "$out"
  if [ "$code" != 200 ] || [ "$size" != "$bsize" ] || [ "$got" != "$bsum" ]; then
    echo "download check FAILED: $* -> status $code, $size bytes (want 200, $bsize), sha256 ${got:-none}" >&2
    return 1
  fi
  echo "$speed"
}
# The same HTTP version from both (curl would pick HTTP/2 from ckvault by ALPN and HTTP/1.1
# from an nginx without http2): HTTP/1.1 is the headline, HTTP/2 (nginx's http2 server)
# the second line. The first ckvault download after its start hashes the blob; the later
# ones are checked by the file identity it was verified with (SECURITY.md, "Downloads").
printf "%-42s %8s  %s\n" contender "MiB/s" "runs, MiB/s (each: 200, $bsize bytes, sha256 checked)"
# A verification is remembered for a blob that changed 2 s or more before it: let it settle.
while [ $(( $(date +%s) - $(stat -c %Z "$blob") )) -lt 3 ]; do sleep 0.5; done
c0=$(cpu_ms "$ckpid")
first=$(checked ck --http1.1 "${AUTH[@]}" "https://127.0.0.1:$port/v1/checkpoints/$id/archive") || exit 1
printf "%-42s %8.0f  %s\n" "ckvault first download (re-hashes)" "$(awk -v b="$first" 'BEGIN{print b/1048576}')" \
  "HTTP/1.1, one run, server CPU $(( $(cpu_ms "$ckpid") - c0 )) ms"
for hv in 1.1 2; do
  np=$([ $hv = 2 ] && echo $((nport + 1)) || echo "$nport")
  sc=(); nc=(); scpu=(); ncpu=()
  for _ in $(seq "$RUNS"); do
    c0=$(cpu_ms "$ckpid")
    sc+=("$(checked ck --http$hv "${AUTH[@]}" "https://127.0.0.1:$port/v1/checkpoints/$id/archive")") || exit 1
    c1=$(cpu_ms "$ckpid"); scpu+=($((c1 - c0))); c0=$(cpu_ms "$ngpid")
    nc+=("$(checked ng --http$hv "https://localhost:$np/blob.age" --resolve "localhost:$np:127.0.0.1")") || exit 1
    c1=$(cpu_ms "$ngpid"); ncpu+=($((c1 - c0)))
  done
  s=$(printf "%s\n" "${sc[@]}" | median); n=$(printf "%s\n" "${nc[@]}" | median)
  printf "%-42s %8.0f  %s\n" "ckvault serve HTTP/$hv (verifies, audits)" "$(awk -v b="$s" 'BEGIN{print b/1048576}')" \
    "$(printf "%s\n" "${sc[@]}" | awk '{printf "%.0f ", $1/1048576}')"
  printf "%-42s %8.0f  %s\n" "nginx HTTP/$hv (sendfile, TLS 1.3)" "$(awk -v b="$n" 'BEGIN{print b/1048576}')" \
    "$(printf "%s\n" "${nc[@]}" | awk '{printf "%.0f ", $1/1048576}')"
  echo "single stream ratio ckvault/nginx, HTTP/$hv: $(ratio "$s" "$n"); server CPU ms per download (median): ckvault $(printf "%s\n" "${scpu[@]}" | median), nginx $(printf "%s\n" "${ncpu[@]}" | median)"
done
before=$(grep -c '"action":"download"' "$WORK/store/audit.log" || true)
rss0=$(awk '/VmHWM/{print $2}' /proc/"$(pgrep -f "serve --config $WORK/serve.toml" | head -1)"/status)
start=$(date +%s%N); fails=0; cpids=()
for i in $(seq 32); do
  "${CURL[@]}" -o /dev/null "${AUTH[@]}" "https://127.0.0.1:$port/v1/checkpoints/$id/archive" > "$WORK/c$i.out" 2>&1 & cpids+=($!)
done
for p in "${cpids[@]}"; do wait "$p" || fails=$((fails + 1)); done
bad=$(cat "$WORK"/c*.out | awk -v n="$bsize" '$1 != 200 || $2 != n' | wc -l); fails=$((fails + bad))
secs=$(awk -v a="$start" -v b="$(date +%s%N)" 'BEGIN{print (b-a)/1e9}')
after=$(grep -c '"action":"download"' "$WORK/store/audit.log" || true)
rss1=$(awk '/VmHWM/{print $2}' /proc/"$(pgrep -f "serve --config $WORK/serve.toml" | head -1)"/status)
echo "32 concurrent downloads: $fails errors, $((after - before)) audited, $(ls -l "$blob" | awk '{print $5}') bytes each, ${secs}s, aggregate $(awk -v s="$secs" -v b="$(stat -c %s "$blob")" 'BEGIN{printf "%.0f", 32*b/s/1048576}') MiB/s, server peak RSS $((rss0 / 1024)) -> $((rss1 / 1024)) MiB"
"$CK" audit verify --store "$WORK/store" | head -1
fi

# ---------------------------------------------------------------------------------- 4
if want 4; then
echo; echo "== 4. CRI proxy on real containerd 2.1 ($CALLS interleaved calls per method, one HTTP/2 connection each)"
CACHE=/var/tmp/ckvault-real-cri/cache; BINDS=/var/tmp/ckvault-real-cri/binds
# The runtime is shared with the tests (tests/it/support/realcri.rs): take their lock.
mkdir -p "$BINDS"; exec 9>/var/tmp/ckvault-real-cri/test.lock; flock 9
env=$(CTD_BINDS=$BINDS ROOT_SEED="${CKVAULT_CKPT_CACHE:-/var/tmp/ckvault-ckpt}/root" \
  bash tests/harness/real-cri-runtime.sh start "$CACHE" 16 bench bench-pod app 2>/dev/null)
CRI_SOCKET=$(sed -n 's/^CRI_SOCKET=//p' <<<"$env")
P4=$BINDS/bench-proxy; rm -rf "$P4"; mkdir -p "$P4"
# (9>&-: the proxy must not inherit the lock, or the next section waits for it forever.)
"$CK" proxy --listen "$P4/proxy.sock" --runtime "$CRI_SOCKET" --store "$WORK/store" -r "$R" >/dev/null 2>"$P4/proxy.log" 9>&- & P4PID=$!; PIDS+=($P4PID)
# The floor of any proxy in its own process: socat relaying the bytes, parsing nothing.
socat UNIX-LISTEN:"$P4/relay.sock",fork UNIX-CONNECT:"$CRI_SOCKET" 9>&- & S4PID=$!; PIDS+=($S4PID)
for _ in $(seq 50); do [ -S "$P4/proxy.sock" ] && [ -S "$P4/relay.sock" ] && break; sleep 0.1; done
"$EX/cri_bench" "$CRI_SOCKET" "$P4/proxy.sock" "$CALLS" "$P4/relay.sock"
kill "$P4PID" "$S4PID" 2>/dev/null || true
exec 9>&-
fi

# ---------------------------------------------------------------------------------- 5
if want 5; then
echo; echo "== 5. listing $LIST_N records through the API"
rm -rf "$WORK/list-store"
# The template: a small archive (N copies must fit on disk); listing reads manifests only.
head -c 4096 /dev/urandom > "$WORK/small.bin"; tar cf "$WORK/small.tar" -C "$WORK" small.bin
tid=$("$CK" seal "$WORK/small.tar" --store "$WORK/list-store" -r "$R" --namespace team-0 --pod p --container c | awk -F'"' '/"id"/ && !x {print $4; x=1}')
"$EX/gen_records" "$WORK/list-store" "$((LIST_N - 1))" "$tid" >/dev/null
printf '[store]\npath = "%s"\n[server]\nlisten = "127.0.0.1:0"\n' "$WORK/list-store" > "$WORK/list.toml"
T=$WORK/list-store/tls; AUTH=(--cert "$T/admin.pem" --key "$T/admin.key")
"$CK" serve --config "$WORK/list.toml" > "$WORK/list.out" 2>&1 & PIDS+=($!)
for _ in $(seq 100); do grep -q "serving https" "$WORK/list.out" 2>/dev/null && break; sleep 0.2; done
lport=$(sed -n 's/.*serving https:\/\/127.0.0.1:\([0-9]*\).*/\1/p' "$WORK/list.out" | head -1)
lt=()
for _ in $(seq 5); do
  lt+=("$(curl -sS --cacert "$T/ca.pem" "${AUTH[@]}" -o "$WORK/list.json" -w '%{time_total}' "https://127.0.0.1:$lport/v1/checkpoints?limit=$LIST_N")")
done
echo "GET /v1/checkpoints?limit=$LIST_N: $(python3 -c "import json;print(len(json.load(open('$WORK/list.json'))['items']))") items, median $(printf "%s\n" "${lt[@]}" | median) s (first $(echo "${lt[0]}") s)"
fi

# ---------------------------------------------------------------------------------- 6
if want 6; then
LOAD_SECS=${BENCH_LOAD_SECS:-$([ $SMALL = 1 ] && echo 10 || echo 60)}
echo; echo "== 6. load: 64 concurrent download loops + sealing, ${LOAD_SECS}s"
rm -rf "$WORK/load" && mkdir -p "$WORK/load"
small=$(checkpoint 64 none)
lid=$("$CK" seal "$small" --store "$WORK/load/store" -r "$R" | awk -F'"' '/"id"/ && !x {print $4; x=1}')
LOAD_LIMITS=${LOAD_LIMITS:-'max_downloads_per_identity = 128
max_downloads = 128
max_requests_per_identity = 256
max_connections_per_address = 512'}
printf '[store]\npath = "%s"\n[server]\nlisten = "127.0.0.1:0"\n%s\n' "$WORK/load/store" "$LOAD_LIMITS" > "$WORK/load/serve.toml"
"$CK" serve --config "$WORK/load/serve.toml" > "$WORK/load/serve.out" 2>&1 & spid=$!; PIDS+=($spid)
for _ in $(seq 100); do grep -q "serving https" "$WORK/load/serve.out" 2>/dev/null && break; sleep 0.2; done
lport=$(sed -n 's/.*serving https:\/\/127.0.0.1:\([0-9]*\).*/\1/p' "$WORK/load/serve.out" | head -1)
T=$WORK/load/store/tls
end=$(( $(date +%s) + LOAD_SECS ))
worker() { local ok=0 bad=0
  while [ "$(date +%s)" -lt "$end" ]; do
    if curl -sS --fail --tlsv1.3 --max-time 120 --cacert "$T/ca.pem" --cert "$T/admin.pem" --key "$T/admin.key" \
         -o /dev/null "https://127.0.0.1:$lport/v1/checkpoints/$lid/archive" 2>>"$WORK/load/curl.err"; then ok=$((ok+1)); else bad=$((bad+1)); fi
  done; echo "$ok $bad" > "$WORK/load/w$1"; }
wpids=(); for i in $(seq 64); do worker "$i" & wpids+=($!); done
seals=0; sealfail=0
while [ "$(date +%s)" -lt "$end" ]; do
  if "$CK" seal "$small" --store "$WORK/load/store" -r "$R" >/dev/null 2>>"$WORK/load/seal.err"; then seals=$((seals+1)); else sealfail=$((sealfail+1)); fi
done
for p in "${wpids[@]}"; do wait "$p" || true; done
ok=$(cat "$WORK"/load/w* | awk '{s+=$1} END {print s}'); bad=$(cat "$WORK"/load/w* | awk '{s+=$2} END {print s}')
audited=$(grep -c '"action":"download"' "$WORK/load/store/audit.log" || true)
rss=$(awk '/VmHWM/{print int($2/1024)}' /proc/$spid/status)
echo "downloads ok $ok, failed $bad, audited $audited; seals ok $seals, failed $sealfail; server peak RSS ${rss} MiB"
"$CK" audit verify --store "$WORK/load/store" | head -1
fi

# ---------------------------------------------------------------------------------- 7
if want 7; then
CAP_MIB=${BENCH_CAPTURE_MIB:-$([ $SMALL = 1 ] && echo 64 || echo 512)}
echo; echo "== 7. capture: CheckpointContainer of a ${CAP_MIB} MiB container on containerd 2.1, direct vs through ckvault proxy"
CACHE=/var/tmp/ckvault-real-cri/cache; BINDS=/var/tmp/ckvault-real-cri/binds
# The runtime is shared with the tests (tests/it/support/realcri.rs): take their lock.
mkdir -p "$BINDS"; exec 9>/var/tmp/ckvault-real-cri/test.lock; flock 9
env=$(CTD_BINDS=$BINDS ROOT_SEED="${CKVAULT_CKPT_CACHE:-/var/tmp/ckvault-ckpt}/root" \
  bash tests/harness/real-cri-runtime.sh start "$CACHE" "$CAP_MIB" bench bench-pod app 2>/dev/null)
CRI_SOCKET=$(sed -n 's/^CRI_SOCKET=//p' <<<"$env"); CID=$(sed -n 's/^CONTAINER_ID=//p' <<<"$env")
PYC="$CACHE/venv/bin/python $CACHE/py/cri.py"
C=$BINDS/bench-capture; rm -rf "$C"; mkdir -p "$C/kubelet"
for mode in file fifo; do
  printf '[store]\npath = "%s"\n[seal]\nrecipients = ["%s"]\n[cri]\nupstream = "%s"\nlisten = "%s"\nstaging = "%s"\nstaging_mode = "%s"\n' \
    "$WORK/capture-$mode" "$R" "$CRI_SOCKET" "$C/$mode.sock" "$C/staging-$mode" "$mode" > "$C/$mode.toml"
  rm -rf "$WORK/capture-$mode"
  "$CK" proxy --config "$C/$mode.toml" >/dev/null 2>"$C/$mode.log" 9>&- & PIDS+=($!)
done
for _ in $(seq 100); do [ -S "$C/file.sock" ] && [ -S "$C/fifo.sock" ] && break; sleep 0.1; done
call() { # call SOCKET LOCATION -> seconds
  local t0 t1; rm -f "$2"; t0=$(date +%s.%N)
  $PYC "$1" checkpoint "$CID" "$2" 300 >/dev/null
  t1=$(date +%s.%N); rm -f "$2"; awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.3f", b-a}'
}
declare -A CW=()
for run in $(seq "$RUNS"); do
  CW[direct]+="$(call "$CRI_SOCKET" "$C/direct.tar") "
  for mode in file fifo; do CW[$mode]+="$(call "$C/$mode.sock" "$C/kubelet/checkpoint-bench-pod_bench-app-$run.tar") "; done
done
printf "%-26s %8s %8s\n" contender "wall s" "ratio"
d=$(tr ' ' '\n' <<<"${CW[direct]}" | grep . | median)
printf "%-26s %8.2f %8s\n" "direct (containerd)" "$d" "1.00"
for mode in file fifo; do
  w=$(tr ' ' '\n' <<<"${CW[$mode]}" | grep . | median)
  printf "%-26s %8.2f %8s\n" "proxy, staging_mode=$mode" "$w" "$(ratio "$w" "$d")"
done
exec 9>&-
echo "records sealed: file $(ls "$WORK/capture-file/records" | grep -c '.json$'), fifo $(ls "$WORK/capture-fifo/records" | grep -c '.json$') (each run: checkpoint + seal + receipt)"
fi

# ---------------------------------------------------------------------------------- 8
if want 8; then
MS_MIB=${BENCH_MEMSEARCH_MIB:-$([ $SMALL = 1 ] && echo 64 || echo 1024)}
NEEDLE="status=503 dur_ms=899"
echo; echo "== 8. memsearch: \"$NEEDLE\" in a ${MS_MIB} MiB checkpoint, sealed record vs checkpointctl on the plaintext"
ROOT=${CKVAULT_CKPT_CACHE:-/var/tmp/ckvault-ckpt}/root
[ -x "$ROOT/usr/bin/checkpointctl" ] || chroot "$ROOT" sh -c 'DEBIAN_FRONTEND=noninteractive apt-get install -y -q checkpointctl >/dev/null 2>&1 || (apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q checkpointctl >/dev/null)'
in=$(checkpoint "$MS_MIB" none)
rm -rf "$WORK/ms-store"
mid=$("$CK" seal "$in" --store "$WORK/ms-store" -r "$R" | awk -F'"' '/"id"/ && !x {print $4; x=1}')
mkdir -p "$ROOT/tmp/ckvault-bench" && cp "$in" "$ROOT/tmp/ckvault-bench/ck.tar"
declare -A MW=()
for run in $(seq "$RUNS"); do
  t0=$(date +%s.%N)
  "$CK" memsearch "$mid" --store "$WORK/ms-store" -i "$WORK/key.txt" --pid 1 --string "$NEEDLE" \
    --max-matches 100000000 --format json > "$WORK/ms-ours.json"
  t1=$(date +%s.%N)
  chroot "$ROOT" checkpointctl memparse /tmp/ckvault-bench/ck.tar --pid 1 --search "$NEEDLE" > "$WORK/ms-theirs.txt" 2>&1 || true
  t2=$(date +%s.%N)
  MW[ours]+="$(awk -v a="$t0" -v b="$t1" 'BEGIN{print b-a}') "; MW[theirs]+="$(awk -v a="$t1" -v b="$t2" 'BEGIN{print b-a}') "
done
rm -rf "$ROOT/tmp/ckvault-bench"
ours=$(grep -o '"address": *"0x[0-9a-f]*"' "$WORK/ms-ours.json" | sed 's/.*"0x//; s/"//' | awk '{printf "%016s\n", $1}' | tr ' ' 0 | sort)
theirs=$(grep -o '^| [0-9a-f]\{16\} ' "$WORK/ms-theirs.txt" | awk '{print $2}' | sort)
same=$([ "$ours" = "$theirs" ] && echo yes || echo NO)
wo=$(tr ' ' '\n' <<<"${MW[ours]}" | grep . | median); wt=$(tr ' ' '\n' <<<"${MW[theirs]}" | grep . | median)
strace -f -e trace=openat,creat -o "$WORK/ms-strace.txt" "$CK" memsearch "$mid" --store "$WORK/ms-store" \
  -i "$WORK/key.txt" --pid 1 --string "$NEEDLE" --format json >/dev/null 2>&1 || true
created=$(grep -E 'O_CREAT|creat\(' "$WORK/ms-strace.txt" | grep -vc "$WORK/ms-store" || true)
printf "%-42s %8s %9s\n" contender "wall s" matches
printf "%-42s %8.2f %9s\n" "ckvault memsearch (sealed record)" "$wo" "$(grep -c . <<<"$ours")"
printf "%-42s %8.2f %9s\n" "checkpointctl memparse (plaintext archive)" "$wt" "$(grep -c . <<<"$theirs")"
echo "ratio $(ratio "$wo" "$wt"); same addresses: $same; files created outside the store: $created"
fi

# ---------------------------------------------------------------------------------- 9
if want 9; then
W_MIB=${BENCH_WATCH_MIB:-$([ $SMALL = 1 ] && echo 64 || echo 1024)}
echo; echo "== 9. watch: ckvault watch --once sealing a ${W_MIB} MiB checkpoint vs ckvault seal of the same bytes"
src=$(checkpoint "$W_MIB" none)
declare -A WT=()
for run in $(seq "$RUNS"); do
  d=$WORK/watch-dir; rm -rf "$d" "$WORK/watch-store" "$WORK/watch-seal-store"; mkdir -p "$d"
  cp "$src" "$d/checkpoint-bench-pod_bench-app-$run.tar"; touch -d '-60 seconds' "$d/checkpoint-bench-pod_bench-app-$run.tar"
  WT[watch]+="$(timed "$CK" watch --dir "$d" --once --settle 1 --store "$WORK/watch-store" -r "$R" | cut -d' ' -f1) "
  WT[seal]+="$(timed "$CK" seal "$src" --store "$WORK/watch-seal-store" -r "$R" | cut -d' ' -f1) "
  left=$(find "$d" -name 'checkpoint-*.tar' | wc -l); receipts=$(find "$d" -name '*.json' | wc -l)
  [ "$left" = 0 ] && [ "$receipts" -ge 1 ] || echo "run $run: watch left $left archives, $receipts receipts"
done
ws=$(tr ' ' '\n' <<<"${WT[seal]}" | grep . | median); ww=$(tr ' ' '\n' <<<"${WT[watch]}" | grep . | median)
printf "%-30s %8s %8s\n" contender "wall s" "ratio"
printf "%-30s %8.2f %8s\n" "ckvault seal" "$ws" "1.00"
printf "%-30s %8.2f %8s\n" "ckvault watch --once" "$ww" "$(ratio "$ww" "$ws")"
echo "records: watch $(ls "$WORK/watch-store/records" | grep -c '.json$') (plaintext removed, receipt left), seal $(ls "$WORK/watch-seal-store/records" | grep -c '.json$')"
fi

# ---------------------------------------------------------------------------------- 10
if want 10; then
AL_SIZES=(${BENCH_ALERT_MIBS:-$([ $SMALL = 1 ] && echo 64 || echo "64 512")})
echo; echo "== 10. alert: Alertmanager alert -> sealed record vs the direct CRI checkpoint, containerd 2.1"
echo "   (Alertmanager 0.25, group_wait 0s, webhook to ckvault serve over TLS with a token; target:"
echo "    alert-to-sealed within 1.2x the direct checkpoint + 2 s)"
command -v prometheus-alertmanager >/dev/null || apt-get install -y -q --no-install-recommends prometheus-alertmanager >/dev/null
CACHE=/var/tmp/ckvault-real-cri/cache; BINDS=/var/tmp/ckvault-real-cri/binds
mkdir -p "$BINDS"; exec 9>/var/tmp/ckvault-real-cri/test.lock; flock 9
A=$BINDS/bench-alert
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
printf "%-10s %-32s %8s %8s %10s\n" size contender "wall s" ratio "target s"
for mib in "${AL_SIZES[@]}"; do
  env=$(CTD_BINDS=$BINDS ROOT_SEED="${CKVAULT_CKPT_CACHE:-/var/tmp/ckvault-ckpt}/root" \
    bash tests/harness/real-cri-runtime.sh start "$CACHE" "$mib" bench bench-pod app 2>/dev/null)
  CRI_SOCKET=$(sed -n 's/^CRI_SOCKET=//p' <<<"$env"); CID=$(sed -n 's/^CONTAINER_ID=//p' <<<"$env")
  PYC="$CACHE/venv/bin/python $CACHE/py/cri.py"
  rm -rf "$A"; mkdir -p "$A/policies" "$A/am"
  cat > "$A/policies/access.toml" <<'TOML'
version = 1
[[grant]]
subjects = ["group:alerting"]
namespaces = ["bench"]
actions = ["checkpoint"]
TOML
  token=$("$CK" token add alertmanager --group alerting --tokens "$A/tokens.toml" 2>/dev/null); echo "$token" > "$A/am/token"
  port=$(free_port); amport=$(free_port)
  cat > "$A/ckvault.toml" <<TOML
[store]
path = "$A/store"
[seal]
recipients = ["$R"]
[cri]
upstream = "$CRI_SOCKET"
staging = "$A/staging"
[server]
listen = "127.0.0.1:$port"
tokens = "$A/tokens.toml"
[policy]
dir = "$A/policies"
[alerts]
enabled = true
[capture]
cooldown = "1s"
[[trigger]]
name = "bench"
namespaces = ["bench"]
TOML
  "$CK" serve --config "$A/ckvault.toml" >/dev/null 2>"$A/serve.log" 9>&- & spid=$!; PIDS+=($spid)
  for _ in $(seq 300); do [ -f "$A/store/tls/ca.pem" ] && curl -s -o /dev/null --cacert "$A/store/tls/ca.pem" "https://127.0.0.1:$port/healthz" && break; sleep 0.1; done
  cat > "$A/am/am.yml" <<YAML
route: {receiver: ckvault, group_by: ['...'], group_wait: 0s, group_interval: 1s, repeat_interval: 1h}
receivers:
  - name: ckvault
    webhook_configs:
      - url: https://127.0.0.1:$port/v1/alerts/alertmanager
        http_config:
          authorization: {type: Bearer, credentials_file: $A/am/token}
          tls_config: {ca_file: $A/store/tls/ca.pem}
YAML
  prometheus-alertmanager --config.file="$A/am/am.yml" --storage.path="$A/am/data" \
    --web.listen-address="127.0.0.1:$amport" --cluster.listen-address= >/dev/null 2>"$A/am/log" 9>&- & apid=$!; PIDS+=($apid)
  for _ in $(seq 300); do curl -sf "http://127.0.0.1:$amport/-/ready" >/dev/null && break; sleep 0.1; done
  declare -A AW=()
  for run in $(seq "$RUNS"); do
    # Direct: CheckpointContainer on the runtime itself.
    loc=$A/direct.tar; rm -f "$loc"; t0=$(date +%s.%N)
    $PYC "$CRI_SOCKET" checkpoint "$CID" "$loc" 300 >/dev/null
    t1=$(date +%s.%N); rm -f "$loc"
    AW[direct]+="$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.3f", b-a}') "
    sleep 1.2  # past the cooldown
    # Through Alertmanager: alert posted to its API -> a new sealed record in the store.
    before=$(ls "$A/store/records" 2>/dev/null | grep -c '.json$' || true)
    t0=$(date +%s.%N)
    curl -sf -X POST -H 'Content-Type: application/json' "http://127.0.0.1:$amport/api/v2/alerts" \
      --data "[{\"labels\":{\"alertname\":\"Bench$run\",\"namespace\":\"bench\",\"pod\":\"bench-pod\",\"container\":\"app\"}}]" >/dev/null
    for _ in $(seq 6000); do
      n=$(ls "$A/store/records" 2>/dev/null | grep -c '.json$' || true); [ "$n" -gt "$before" ] && break; sleep 0.05
    done
    t1=$(date +%s.%N)
    [ "$n" -gt "$before" ] || { echo "run $run: no record after the alert (see $A/serve.log)"; break; }
    AW[alert]+="$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.3f", b-a}') "
    sleep 1.2
  done
  d=$(tr ' ' '\n' <<<"${AW[direct]}" | grep . | median); w=$(tr ' ' '\n' <<<"${AW[alert]:-}" | grep . | median)
  target=$(awk -v d="$d" 'BEGIN{printf "%.2f", 1.2*d+2}')
  printf "%-10s %-32s %8.2f %8s %10s\n" "${mib} MiB" "direct CheckpointContainer" "$d" "1.00" "-"
  printf "%-10s %-32s %8.2f %8s %10s\n" "${mib} MiB" "alert -> sealed (Alertmanager)" "$w" "$(ratio "$w" "$d")" "$target"
  kill "$apid" "$spid" 2>/dev/null || true; wait "$apid" "$spid" 2>/dev/null || true
  unset AW
done
exec 9>&-
rm -rf "$A"
fi

# ---------------------------------------------------------------------------------- 11
if want 11; then
ST_SIZES=(${BENCH_STOP_MIBS:-$([ $SMALL = 1 ] && echo 64 || echo "64 512")})
echo; echo "== 11. stop: StopContainer with a capture before it (ckvault proxy, on_stop) vs the stop alone, containerd 2.1"
echo "   (grace period 0, a stock grpcio client; added = what a capture before a stop costs a drain, per container)"
CACHE=/var/tmp/ckvault-real-cri/cache; BINDS=/var/tmp/ckvault-real-cri/binds
mkdir -p "$BINDS"; exec 9>/var/tmp/ckvault-real-cri/test.lock; flock 9
S=$BINDS/bench-stop
stop_req() { python3 -c 'import sys; c=sys.argv[1].encode(); print((bytes([10,len(c)])+c+bytes([16,0])).hex())' "$1"; }
printf "%-10s %-34s %8s %8s %9s\n" size contender "wall s" ratio "added s"
for mib in "${ST_SIZES[@]}"; do
  rm -rf "$S"; mkdir -p "$S"
  start_pod() { CTD_BINDS=$BINDS ROOT_SEED="${CKVAULT_CKPT_CACHE:-/var/tmp/ckvault-ckpt}/root" \
    bash tests/harness/real-cri-runtime.sh start "$CACHE" "$mib" bench bench-pod app 2>/dev/null; }
  env=$(start_pod); CRI_SOCKET=$(sed -n 's/^CRI_SOCKET=//p' <<<"$env")
  cat > "$S/ckvault.toml" <<TOML
[store]
path = "$S/store"
[seal]
recipients = ["$R"]
[cri]
upstream = "$CRI_SOCKET"
staging = "$S/staging"
listen = "$S/cri.sock"
[capture]
cooldown = "1s"
[[trigger]]
name = "drain"
on_stop = true
namespaces = ["bench"]
TOML
  "$CK" proxy --config "$S/ckvault.toml" >/dev/null 2>"$S/proxy.log" 9>&- & ppid=$!; PIDS+=($ppid)
  for _ in $(seq 300); do [ -S "$S/cri.sock" ] && break; sleep 0.1; done
  declare -A SW=()
  for run in $(seq "$RUNS"); do
    for via in direct proxy; do
      env=$(start_pod); CID=$(sed -n 's/^CONTAINER_ID=//p' <<<"$env")
      sock=$CRI_SOCKET; [ $via = proxy ] && sock=$S/cri.sock
      echo "[{\"method\": \"/runtime.v1.RuntimeService/StopContainer\", \"request\": \"$(stop_req "$CID")\", \"timeout\": 300}]" > "$S/call.json"
      before=$(ls "$S/store/records" 2>/dev/null | grep -c '.json$' || true)
      t0=$(date +%s.%N)
      out=$("$CACHE/venv/bin/python" tests/harness/grpc_call.py "$sock" "$S/call.json")
      t1=$(date +%s.%N)
      grep -q '"code": "OK"' <<<"$out" || echo "run $run ($via): $out"
      n=$(ls "$S/store/records" 2>/dev/null | grep -c '.json$' || true)
      [ $via = direct ] || [ "$n" -gt "$before" ] || echo "run $run: no record before the stop answered (see $S/proxy.log)"
      SW[$via]+="$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.3f", b-a}') "
    done
  done
  d=$(tr ' ' '\n' <<<"${SW[direct]}" | grep . | median); w=$(tr ' ' '\n' <<<"${SW[proxy]}" | grep . | median)
  printf "%-10s %-34s %8.2f %8s %9s\n" "${mib} MiB" "StopContainer, runtime directly" "$d" "1.00" "-"
  printf "%-10s %-34s %8.2f %8s %9s\n" "${mib} MiB" "StopContainer, capture before it" "$w" "$(ratio "$w" "$d")" \
    "$(awk -v a="$w" -v b="$d" 'BEGIN{printf "%.2f", a-b}')"
  kill "$ppid" 2>/dev/null || true; wait "$ppid" 2>/dev/null || true
  unset SW
done
exec 9>&-
rm -rf "$S"
fi
