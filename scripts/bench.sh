#!/usr/bin/env bash
# Benchmarks that print figures (no pass/fail thresholds: machines are shared and noisy).
#   scripts/bench.sh [SIZES_MIB...]     default: 64 1024
# For each size: makes a REAL checkpoint with the project harness, then measures, on the same
# file in the same run:
#   - ckvault seal: wall time and peak RSS (/usr/bin/time -v)
#   - zstd -1 -T2 alone (the floor: sealing must at least compress) and its output size
#   - ckvault inspect: wall time
# Needs root (CRIU) and a release build (built here).
set -euo pipefail
cd "$(dirname "$0")/.."
SIZES=("$@"); [ ${#SIZES[@]} -gt 0 ] || SIZES=(64 1024)
RUNS=${BENCH_RUNS:-3}
WORK=${BENCH_DIR:-/var/tmp/ckvault-bench}
mkdir -p "$WORK"; chmod 700 "$WORK"
cargo build --release --quiet
CK=$PWD/target/release/ckvault
[ -f "$WORK/key.txt" ] || age-keygen -o "$WORK/key.txt" 2>/dev/null
R=$(age-keygen -y "$WORK/key.txt")

median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
measure() { # measure OUTFILE CMD... -> prints "wall_s rss_kib"
  local out=$1; shift
  /usr/bin/time -f "%e %M" -o "$WORK/time.txt" "$@" >"$out" 2>/dev/null
  cat "$WORK/time.txt"
}

printf "%-8s %-22s %10s %12s %14s %10s\n" "input" "command" "wall s" "peak RSS MiB" "output MiB" "ratio"
for mib in "${SIZES[@]}"; do
  in=$WORK/ckpt-$mib.tar
  [ -f "$in" ] || tests/harness/real-checkpoint.sh "$in" "$mib" bench bench-pod app >/dev/null 2>&1
  insize=$(stat -c %s "$in")
  cat "$in" >/dev/null # warm the page cache for every contender alike
  for what in seal zstd inspect; do
    walls=(); rss=(); outsize=0
    for _ in $(seq "$RUNS"); do
      rm -rf "$WORK/store"
      case $what in
        seal) read -r w m < <(measure "$WORK/seal.json" "$CK" seal "$in" --store "$WORK/store" -r "$R")
              outsize=$(cat "$WORK"/store/records/*.age | wc -c) ;;
        zstd) read -r w m < <(measure "$WORK/out.zst" zstd -1 -T2 -q -c "$in")
              outsize=$(stat -c %s "$WORK/out.zst") ;;
        inspect) read -r w m < <(measure "$WORK/inspect.txt" "$CK" inspect "$in")
              outsize=0 ;;
      esac
      walls+=("$w"); rss+=("$m")
    done
    wmed=$(printf "%s\n" "${walls[@]}" | median)
    rmed=$(printf "%s\n" "${rss[@]}" | median)
    ratio=$([ "$outsize" -gt 0 ] && awk -v a="$insize" -v b="$outsize" 'BEGIN{printf "%.2f", a/b}' || echo "-")
    printf "%-8s %-22s %10s %12.1f %14.1f %10s\n" "${mib}MiB" "$what" "$wmed" \
      "$(awk -v k="$rmed" 'BEGIN{print k/1024}')" "$(awk -v b="$outsize" 'BEGIN{print b/1048576}')" "$ratio"
  done
done
rm -rf "$WORK/store" "$WORK/out.zst"
