#!/usr/bin/env bash
# Runs the official MulT (scripts/train_official.py) and mica --variant mult on the same
# MulT pickle, seed by seed, alternating and one at a time (docs/official-vs-mica.md).
# Usage: scripts/official_vs_mica.sh DATA.pkl OUTDIR EPOCHS [SEEDS...]
set -euo pipefail
data=$1; out=$2; epochs=$3; shift 3
seeds=("$@"); [ $# -eq 0 ] && seeds=(1111 1112 1113)
py=${PY:-/work/torch-venv/bin/python}
mica=${MICA:-target/release/mica}
mkdir -p "$out"
for s in "${seeds[@]}"; do
  echo "$(date -u +%T) official seed $s" >&2
  "$py" scripts/train_official.py --data "$data" --seed "$s" --epochs "$epochs" \
      --threads 1 --out "$out/official-$s.json" 2> "$out/official-$s.log"
  echo "$(date -u +%T) mica seed $s" >&2
  "$mica" train --data "$data" --dataset mosi --preset mult-official --variant mult \
      --epochs "$epochs" --seed "$s" --threads 1 --quiet --out "$out/mica-$s" \
      > "$out/mica-$s.log" 2>&1
done
echo "$(date -u +%T) done" >&2
