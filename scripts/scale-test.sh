#!/usr/bin/env bash
# Scale test (a script, not a unit test): classify N patches (default 10 000) of which
# 1% are corrupt or truncated, kill the run halfway and finish it with --resume, then
# check that every good patch is classified exactly once, every bad one is reported
# with its reason, the exit status says some failed, and peak RSS does not grow with
# the number of patches (measured at N/10 and N).
#
#   scripts/scale-test.sh [N]
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-10000}
work=target/scale-test
cargo build --release -q -p edgemed-runtime --bin edgemed-run
bin=$PWD/target/release/edgemed-run
samples=(examples/data/pcam/*.png)

make_set() { # DIR COUNT: patches copied from the samples; every 100th truncated or garbage
    local dir=$1 count=$2 i
    rm -rf "$dir" && mkdir -p "$dir"
    for ((i = 0; i < count; i++)); do
        local f
        f=$(printf '%s/patch_%06d.png' "$dir" "$i")
        case $((i % 200)) in
            37) head -c 700 "${samples[i % 100]}" > "$f" ;;         # truncated PNG
            137) head -c 4096 /dev/urandom > "$f" ;;                # not an image
            *) ln "${samples[i % 100]}" "$f" 2>/dev/null || cp "${samples[i % 100]}" "$f" ;;
        esac
    done
}

measure() { # VAR ARGS...: runs edgemed-run ARGS; VAR gets its peak RSS in KiB, $status its exit status
    local var=$1 t
    shift
    t=$(mktemp)
    set +e
    /usr/bin/time -f '%M' -o "$t" "$bin" "$@" 2>>"$work/stderr.log" >/dev/null
    status=$?
    set -e
    printf -v "$var" '%s' "$(tail -n 1 "$t")"
    rm -f "$t"
}

check() { # CSV COUNT: every patch once; good ones classified, bad ones with a reason
    awk -F, -v n="$2" '
        NR == 1 { next }
        { rows++; if (seen[$1]++) dup++
          bad = ($1 ~ /37\.png$/)   # i % 200 == 37 or 137
          if (bad && $4 == "") wrong++
          if (!bad && $2 == "") wrong++
          if (bad) failed++ }
        END { printf "%d rows, %d duplicates, %d failed with a reason, %d wrong\n", rows, dup, failed, wrong
              exit !(rows == n && dup == 0 && wrong == 0 && failed == n / 100) }' "$1"
}

mkdir -p "$work"
: > "$work/stderr.log"
echo "making $n patches in $work/patches (1% corrupt or truncated)" >&2
make_set "$work/patches" "$n"
make_set "$work/small" $((n / 10))

measure small_rss classify "$work/small" --format csv -o "$work/small.csv" --force
[[ $status == 1 ]] || { echo "exit status $status with bad patches in the input, expected 1" >&2; exit 1; }
check "$work/small.csv" $((n / 10))

start=$(date +%s.%N)
measure full_rss classify "$work/patches" --format csv -o "$work/full.csv" --force
secs=$(echo "$(date +%s.%N) - $start" | bc -l)
[[ $status == 1 ]] || { echo "exit status $status with bad patches in the input, expected 1" >&2; exit 1; }
check "$work/full.csv" "$n"
grep -q "patch_000037.png: not a readable image" "$work/stderr.log" || { echo "the truncated patch's reason is missing" >&2; exit 1; }

# Killed halfway (SIGKILL: no chance to clean up), then resumed.
rm -f "$work/resumed.csv" "$work/resumed.csv.partial"
"$bin" classify "$work/patches" --format csv -o "$work/resumed.csv" --force 2>/dev/null >/dev/null &
pid=$!
rows_in() { if [[ -f $1 ]]; then wc -l < "$1"; else echo 0; fi; }
while [[ $(rows_in "$work/resumed.csv.partial") -lt $((n / 2)) ]] && kill -0 $pid 2>/dev/null; do sleep 0.05; done
kill -9 $pid 2>/dev/null || true
wait $pid 2>/dev/null || true
kept=$(($(wc -l < "$work/resumed.csv.partial") - 1))
set +e
"$bin" classify "$work/patches" --format csv -o "$work/resumed.csv" --resume 2>>"$work/stderr.log" >/dev/null
status=$?
set -e
[[ $status == 1 ]] || { echo "resumed run: exit status $status, expected 1" >&2; exit 1; }
check "$work/resumed.csv" "$n"

printf '%-44s %s\n' "patches (1% bad)" "$n" \
    "classified in" "$(printf '%.1f s (%.0f patches/s)' "$secs" "$(echo "$n / $secs" | bc -l)")" \
    "peak RSS, $((n / 10)) patches" "$((small_rss / 1024)) MiB" \
    "peak RSS, $n patches" "$((full_rss / 1024)) MiB" \
    "killed at, then resumed" "$kept rows kept, finished with every patch once"
# Flat: ten times the patches may not cost more than 10% (or 8 MiB) more memory.
if ((full_rss > small_rss * 11 / 10 && full_rss - small_rss > 8192)); then
    echo "peak RSS grew with the number of patches" >&2
    exit 1
fi
echo "scale test passed" >&2
