#!/usr/bin/env bash
# One H200 for benchmarks/distill.md (issue 28): `bench distill --preset h200` — 240 varied drives of 20 s rendered
# straight into model frames (15 processes) and 10 held-out ones (1 of them also through camera -> HEVC -> ingest),
# labelled by the shipped fitted teacher on the GPU, compact-xs and compact each trained from scratch for 2000
# steps of 32 clips (1.28 M frames; step 0 and 4 snapshots scored on the held-out drives), then personalisation:
# the trained compact-xs fine-tuned with DoRA + the driven-path loss on 40 drives of a keep-left:0.4 driver, scored
# on 8 others. Table (stdout and distill-<students>.txt), <students>/distill.json, distill.png and
# driver_offset.png go to $OUT (the device tool's output folder) or /tmp/distill-out.
# Expected, all in one call, ~15 min: data ~3.5 min (5,960 drive-seconds at ~0.5 CPU-s each on 15 processes),
# labels <1, compact-xs ~2.5 (compile included), compact ~3.5, evals ~2, the ingested drive ~1, the driver ~1.5.
# The device tool allows 10 minutes a call: run it as two calls on the same warm machine (the second reuses the
# datasets in $WORK):
#   STUDENTS=compact-xs bash benchmarks/distill_gpu.sh          # data, labels, compact-xs, ingested, driver (~9.5 min)
#   STUDENTS=compact NO_DRIVER=1 bash benchmarks/distill_gpu.sh # compact on the same data (~5 min)
# Extra options go through ARGS (e.g. ARGS="--steps 4000" for a longer budget, ARGS="--save-student /tmp/pre").
set -euo pipefail
out=${OUT:-/tmp/distill-out}
work=${WORK:-/tmp/distill-work}
mkdir -p "$out" "$work"
export PYTHONUNBUFFERED=1
args=(--preset h200 --student "${STUDENTS:-compact-xs,compact}" --workers "${WORKERS:-15}" --workdir "$work" --keep
      --out "$out/${STUDENTS:-all}")
[[ ${NO_DRIVER:-0} == 1 ]] && args+=(--driver none)
python3 -m spark_distill bench distill "${args[@]}" ${ARGS:-} 2>&1 | grep -v "Warning" | tee "$out/distill-${STUDENTS:-all}.txt"
