#!/usr/bin/env bash
# The training loader on a lossy (av1 or hevc) dataset against the same training step on batches in memory
# (issue 16: keep >= 0.9 of in-memory speed). One command from the repository root, e.g. on the GPU box:
#
#   PYTHONPATH=$PWD bash benchmarks/loader_lossy.sh
#
# Builds its own dataset: DISTINCT synthetic comma 3X segments of SEG_SECONDS s (realistic frames, written in
# parallel), ingested with --codec CODEC (default av1) at --crf CRF (default: the codec's), labeled by the tiny
# stand-in teacher; then `bench train
# --streaming-only --repeat R` on the compact student (its DoRA step in memory, then fed by the loader) for each
# loader worker count in WORKERS, the shards read R times over to stand for SEGMENTS segments [default: what
# bench train needs for BATCH x STEPS with the largest of WORKERS]: every clip is still read and decoded, and
# ingesting repeats (as this script did before) cost 170 of its 269 s on the H200 box.
# Every setting is an environment variable (defaults below).
# CPU smoke run (~5 min on 2 busy cores):
#   DISTINCT=2 SEG_SECONDS=2 BATCH=2 STEPS=1 WORKERS=2 DEVICE=cpu bash benchmarks/loader_lossy.sh
set -euo pipefail
PY=${PYTHON:-python3}
DISTINCT=${DISTINCT:-8}
SEG_SECONDS=${SEG_SECONDS:-6}
CODEC=${CODEC:-av1}
CRF=${CRF:-}
WORKERS=${WORKERS:-"8 14"}
BATCH=${BATCH:-128}
STEPS=${STEPS:-6}
SHARD_CLIPS=${SHARD_CLIPS:-4}
STUDENT=${STUDENT:-compact}
DEVICE=${DEVICE:-}
work=$(mktemp -d "${WORKDIR:-${TMPDIR:-/tmp}}/loader-lossy.XXXXXX")
trap 'rm -rf "$work"' EXIT
sd() { "$PY" -m spark_distill "$@"; }
start=$(date +%s)
most=$(printf '%s\n' $WORKERS | sort -n | tail -1)
SEGMENTS=${SEGMENTS:-$("$PY" -c "from spark_distill.bench.train import segments_needed as n
print(n(batch=$BATCH, steps=$STEPS, workers=$most, seconds=$SEG_SECONDS, clip_len=20))")}

REPEAT=${REPEAT:-$(( (SEGMENTS + DISTINCT - 1) / DISTINCT ))}

echo "== $DISTINCT synthetic segments of ${SEG_SECONDS} s, read $REPEAT times over for $SEGMENTS (in $work)"
pids=()
for ((i = 0; i < DISTINCT; i++)); do
  sd synth-route "$work/synth$i" --segments 1 --seconds "$SEG_SECONDS" --seed "$i" > "$work/synth$i.log" 2>&1 &
  pids+=($!)
done
for pid in "${pids[@]}"; do wait "$pid" || { cat "$work"/synth*.log; exit 1; }; done
mkdir "$work/route"
for ((i = 0; i < DISTINCT; i++)); do
  seg=$(ls -d "$work/synth$i"/*--0)
  prefix=$(basename "${seg%--0}")
  mv "$seg" "$work/route/$prefix--$i"
done

echo "== ingest --codec $CODEC ${CRF:+--crf $CRF}"
sd ingest "$work/route" --out "$work/ds" --codec "$CODEC" ${CRF:+--crf "$CRF"} --shard-clips "$SHARD_CLIPS"
echo "== label (tiny stand-in teacher)"
sd synth-teacher "$work/teacher" --weights random > /dev/null
sd label "$work/ds" --teacher "$work/teacher" --name lossy ${DEVICE:+--device "$DEVICE"}
du -sh "$work/ds/frames"
echo "dataset ready after $(( $(date +%s) - start )) s"

for w in $WORKERS; do
  echo "== bench train --streaming-only, $w loader workers, batch $BATCH"
  sd bench train "$work/ds" --labels lossy --student "$STUDENT" --batch-size "$BATCH" --full-batch-size "$BATCH" \
    --steps "$STEPS" --repeat "$REPEAT" \
    --workers "$w" --streaming-only ${DEVICE:+--device "$DEVICE"}
done
echo "total $(( $(date +%s) - start )) s"
