#!/usr/bin/env bash
# Paired download pace: two ckvault builds (A, B) and nginx serving the same sealed blob,
# each round one download from each in rotating order, per HTTP version; prints medians and
# the medians of the per-round ratios (A/nginx, B/nginx, B/A). Rounds are paired, so a
# machine whose speed drifts during the run moves all three alike.
#
# usage: scripts/bench-pace.sh ROUNDS CKVAULT_A CKVAULT_B
#   Needs the work directory a section-3 run of scripts/bench.sh left (BENCH_WORK, default
#   /var/tmp/ckvault-bench: its store with one sealed record, serve.toml, nginx/nginx.conf),
#   e.g. BENCH_ONLY=3 BENCH_RUNS=1 BENCH_SEAL_SIZES=1024 scripts/bench.sh first.
#   A variant that needs an environment variable: pass a two-line wrapper script as B.
set -euo pipefail
[ $# -eq 3 ] || { sed -n 2,12p "$0" >&2; exit 2; }
N=$1; A=$2; B=$3
W=${BENCH_WORK:-/var/tmp/ckvault-bench}; T=$W/store/tls
[ -f "$W/serve.toml" ] && [ -f "$W/nginx/nginx.conf" ] \
  || { echo "bench-pace: no section-3 work directory in $W; run BENCH_ONLY=3 scripts/bench.sh first" >&2; exit 2; }
id=$(ls $W/store/records | sed -n 's/\.age$//p' | head -1); blob=$W/store/records/$id.age
pids=()
D=$(mktemp -d /dev/shm/ckvault-pace.XXXXXX)
trap 'kill "${pids[@]}" 2>/dev/null; wait 2>/dev/null; rm -rf "$D"' EXIT
# start BIN NAME: a server in this shell (so the trap stops it); its port in $port
start() { "$1" serve --config $W/serve.toml > $W/$2.out 2>$W/$2.err & pids+=($!)
  for _ in $(seq 100); do grep -q "serving https" $W/$2.out 2>/dev/null && break; sleep 0.2; done
  port=$(sed -n 's/.*serving https:\/\/127.0.0.1:\([0-9]*\).*/\1/p' $W/$2.out | head -1)
  [ -n "$port" ] || { echo "bench-pace: $1 did not start (see $W/$2.err)" >&2; exit 1; }; }
start "$A" a; pa=$port; start "$B" b; pb=$port
nginx -c $W/nginx/nginx.conf -g 'daemon off;' & pids+=($!)
sleep 1
n1=$(sed -n 's/.*listen 127.0.0.1:\([0-9]*\) ssl;.*/\1/p' $W/nginx/nginx.conf); n2=$((n1+1))
bsize=$(stat -c %s "$blob")
echo "blob: $id, $bsize bytes; $N rounds per HTTP version"
# one download; its speed in bytes/s, or a failure if it was not a whole 200 of the blob
dl() { local code size speed
  read -r code size speed < <(curl -sS --tlsv1.3 --cacert $T/ca.pem -o $D/o \
    -w '%{http_code} %{size_download} %{speed_download}\n' "$@" || echo "failed 0 0")
  [ "$code" = 200 ] && [ "$size" = "$bsize" ] \
    || { echo "bench-pace: download FAILED: $* -> $code, $size bytes (want 200, $bsize)" >&2; exit 1; }
  echo "$speed"; }
AUTH=(--cert $T/admin.pem --key $T/admin.key)
# warm (first download re-hashes)
dl --http1.1 "${AUTH[@]}" https://127.0.0.1:$pa/v1/checkpoints/$id/archive >/dev/null
dl --http1.1 "${AUTH[@]}" https://127.0.0.1:$pb/v1/checkpoints/$id/archive >/dev/null
sleep 1
for hv in 1.1 2; do
  np=$([ $hv = 2 ] && echo $n2 || echo $n1)
  : > $D/res.$hv
  for i in $(seq $N); do
    order=(a b n); r=$((i % 3)); order=("${order[@]:$r}" "${order[@]:0:$r}")
    for c in "${order[@]}"; do
      case $c in
        a) s=$(dl --http$hv "${AUTH[@]}" https://127.0.0.1:$pa/v1/checkpoints/$id/archive);;
        b) s=$(dl --http$hv "${AUTH[@]}" https://127.0.0.1:$pb/v1/checkpoints/$id/archive);;
        n) s=$(dl --http$hv https://localhost:$np/blob.age --resolve localhost:$np:127.0.0.1);;
      esac
      echo "$i $c $s" >> $D/res.$hv
    done
  done
  python3 - $D/res.$hv $hv <<'PY'
import sys,statistics as st,collections
d=collections.defaultdict(dict)
for l in open(sys.argv[1]):
    i,c,s=l.split(); d[int(i)][c]=float(s)/1048576
med=lambda xs: st.median(xs)
A=[r['a'] for r in d.values()]; B=[r['b'] for r in d.values()]; Nn=[r['n'] for r in d.values()]
print(f"HTTP/{sys.argv[2]}: A {med(A):.0f}  B {med(B):.0f}  nginx {med(Nn):.0f} MiB/s (medians of {len(A)})")
print(f"  paired ratios (median): A/nginx {med([r['a']/r['n'] for r in d.values()]):.3f}  B/nginx {med([r['b']/r['n'] for r in d.values()]):.3f}  B/A {med([r['b']/r['a'] for r in d.values()]):.3f}")
# the spread of each ratio over the rounds (quartiles), and how often it was at least 1
for name, k in (("A/nginx", "a"), ("B/nginx", "b")):
    rs = sorted(r[k]/r['n'] for r in d.values())
    q = st.quantiles(rs, n=4) if len(rs) > 1 else [rs[0]] * 3
    print(f"  {name}: quartiles {q[0]:.3f} {q[1]:.3f} {q[2]:.3f}; >= 1.0 in {sum(x >= 1 for x in rs)} of {len(rs)} rounds")
PY
done
# Time to first byte: one-byte ranges, 25 from A and 25 from nginx alternated (HTTP/1.1).
# ckvault authenticates the client certificate and writes the download's audit event
# (durable) before its first byte; nginx does neither.
for _ in $(seq 25); do
  curl -sS --http1.1 --tlsv1.3 --cacert $T/ca.pem "${AUTH[@]}" -r 0-0 -o /dev/null \
    -w 'a %{time_appconnect} %{time_starttransfer}\n' https://127.0.0.1:$pa/v1/checkpoints/$id/archive
  curl -sS --http1.1 --tlsv1.3 --cacert $T/ca.pem -r 0-0 -o /dev/null \
    -w 'n %{time_appconnect} %{time_starttransfer}\n' https://localhost:$n1/blob.age --resolve localhost:$n1:127.0.0.1
done > $D/ttfb
python3 - $D/ttfb <<'PY'
import sys, statistics as st
d = {'a': [], 'n': []}
for l in open(sys.argv[1]):
    k, h, t = l.split(); d[k].append((float(h) * 1e3, float(t) * 1e3))
for k, name in (('a', 'A'), ('n', 'nginx')):
    v = d[k]
    print(f"first byte, {name}: {st.median(t for _, t in v):.2f} ms (TLS handshake {st.median(h for h, _ in v):.2f} ms, "
          f"then {st.median(t - h for h, t in v):.2f} ms; medians of {len(v)})")
PY
