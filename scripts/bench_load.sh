#!/usr/bin/env bash
# Load-time and peak-memory benchmark: `mica inspect --json` and `mica convert` versus
# Python's `pickle.load` + `astype(float32)` on a large float64 MulT pickle.
#
# Usage: scripts/bench_load.sh [PICKLE] [MICA_BINARY]
#   PICKLE defaults to /tmp/mica_big_mult.pkl (created with make_big_mult_pickle.py, 1 GB,
#   if missing); MICA_BINARY defaults to target/release/mica (build it first with
#   `cargo build --release`). Needs numpy and GNU time (/usr/bin/time).
set -euo pipefail
cd "$(dirname "$0")/.."
PKL=${1:-/tmp/mica_big_mult.pkl}
BIN=${2:-${CARGO_TARGET_DIR:-target}/release/mica}
OUT=$(mktemp -d /tmp/mica_bench_out.XXXXXX)
trap 'rm -rf "$OUT"' EXIT

if [ ! -f "$PKL" ]; then
    python3 scripts/make_big_mult_pickle.py --out "$PKL" --gb 1.0
fi

F32_BYTES=$(python3 - "$PKL" <<'PY'
import pickletools, sys
# Size of the f32 result without loading the file: count float64 payload bytes / 2.
total = 0
with open(sys.argv[1], "rb") as f:
    for op, arg, _ in pickletools.genops(f):
        if op.name in ("BINBYTES", "BINBYTES8", "BYTEARRAY8") and isinstance(arg, (bytes, bytearray)) and len(arg) > 64:
            total += len(arg) // 2
print(total)
PY
)

measure() { # label, command...
    local label=$1
    shift
    cat "$PKL" > /dev/null # same warm page cache for every contender
    /usr/bin/time -v "$@" > /dev/null 2> "$OUT/time.txt" || {
        cat "$OUT/time.txt"
        exit 1
    }
    local secs rss
    secs=$(grep "Elapsed (wall clock)" "$OUT/time.txt" | awk '{print $NF}')
    rss=$(grep "Maximum resident set size" "$OUT/time.txt" | awk '{print $NF}')
    python3 -c "import sys; kb=int(sys.argv[2]); f32=int(sys.argv[3]); print(f'{sys.argv[1]:<34} wall {sys.argv[4]:>8}  peak RSS {kb/1048576:6.2f} GiB  ({kb*1024/f32:4.2f}x the f32 result)')" \
        "$label" "$rss" "$F32_BYTES" "$secs"
}

echo "file: $PKL ($(stat -c %s "$PKL") bytes); f32 result: $F32_BYTES bytes"
echo "load: $(uptime)"
measure "python pickle.load + astype(f32)" python3 -c "
import pickle, sys, numpy as np
with open(sys.argv[1], 'rb') as f:
    data = pickle.load(f)
out = {s: {k: np.nan_to_num(a.astype(np.float32), copy=False, nan=0.0, posinf=0.0, neginf=0.0)
           for k, a in d.items() if a.dtype != object} for s, d in data.items()}
" "$PKL"
measure "mica inspect --json" "$BIN" inspect --json "$PKL"
measure "mica convert" "$BIN" convert "$PKL" --out "$OUT/ds"
measure "mica inspect --json (mica dir)" "$BIN" inspect --json "$OUT/ds"
echo "load: $(uptime)"
