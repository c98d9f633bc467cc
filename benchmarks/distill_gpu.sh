#!/usr/bin/env bash
# One H200 for benchmarks/distill.md (issue 28): `bench distill --preset h200` — 300 varied drives of 20 s rendered
# straight into model frames (15 processes) and 12 held-out ones (2 of them also through camera -> HEVC -> ingest),
# labelled by the shipped fitted teacher on the GPU, compact-xs and compact each trained from scratch for 3000
# steps of 32 clips (5 snapshots + step 0 scored on the held-out drives), then personalisation: the trained
# compact-xs fine-tuned with DoRA + the driven-path loss on 40 drives of a keep-left:0.4 driver, scored on 8 others.
# Table (stdout and distill-<students>.txt), <students>/distill.json, distill.png and driver_offset.png go to $OUT
# (the device tool's output folder) or /tmp/distill-out. Expected ~15 min in one call: data ~4 min, labels ~1, training ~4 + ~3, evals ~2, the driver ~1.5.
# The device tool allows 10 minutes a call: split it in two calls on the same warm machine (the datasets in $WORK
# are reused by the second):
#   STUDENTS=compact-xs bash benchmarks/distill_gpu.sh     # data, labels, compact-xs, personalisation (~10 min)
#   STUDENTS=compact NO_DRIVER=1 bash benchmarks/distill_gpu.sh   # compact only, on the same data (~5 min)
# Extra options go through ARGS (e.g. ARGS="--steps 4000 --save-student /tmp/pre").
set -euo pipefail
out=${OUT:-/tmp/distill-out}
work=${WORK:-/tmp/distill-work}
mkdir -p "$out" "$work"
export PYTHONUNBUFFERED=1
args=(--preset h200 --student "${STUDENTS:-compact-xs,compact}" --workers "${WORKERS:-15}" --workdir "$work" --keep
      --out "$out/${STUDENTS:-all}")
[[ ${NO_DRIVER:-0} == 1 ]] && args+=(--driver none)
python3 -m spark_distill bench distill "${args[@]}" ${ARGS:-} 2>&1 | grep -v "Warning" | tee "$out/distill-${STUDENTS:-all}.txt"
