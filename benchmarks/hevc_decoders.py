# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""How fast an `hevc` dataset's clips decode: one decoder per process, kept from clip to clip (each member starts
with its parameter sets and an IDR frame), frames copied to host numpy as a loader must; libavcodec in software,
NVDEC through FFmpeg (`hevc_cuvid`) and FFmpeg's hevc decoder with CUDA hwaccel; 1..N processes at once.
Prints camera frames/s (all processes) and how many frames came out late (after their clip's last packet).

    python benchmarks/hevc_decoders.py --decoders sw,cuvid,cuda --processes 1,4,14

The NVDEC rows need a GPU and an FFmpeg build with it (the av wheel has both); on a machine without, they say so.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import time

import numpy as np


def pattern_clips(n: int = 8, codec: str = "hevc", crf: int | None = None) -> list[bytes]:
    """20-frame members of a textured moving pattern with sensor-like noise (~6 kB per camera frame at hevc's
    default crf 20); also benchmarks/nvdec_probe.py's."""
    from spark_distill.data.codecs import encode_clip

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:128, 0:256]
    out = []
    for c in range(n):
        frames = []
        for t in range(20):
            base = 96 + 60 * np.sin((xx + 3 * t + 17 * c) / 23.0) * np.cos(yy / 17.0)
            planes = [base + rng.normal(0, 4, base.shape) for _ in range(4)]
            planes += [np.full_like(base, 128 + c), np.full_like(base, 120)]
            frames.append(np.clip(np.stack(planes), 0, 255).astype(np.uint8))
        out.append(encode_clip(np.stack(frames), codec, crf=crf)[1])
    return out


def _decoder(kind: str):
    import av

    if kind == "sw":
        ctx = av.CodecContext.create("hevc", "r")
        ctx.thread_count = 1
    elif kind == "cuvid":
        ctx = av.CodecContext.create("hevc_cuvid", "r")
    else:
        cuda = av.codec.hwaccel.HWAccel("cuda", allow_software_fallback=False)
        ctx = av.CodecContext.create("hevc", "r", hwaccel=cuda)
    ctx.flags |= int(av.codec.context.Flags.low_delay)
    return ctx


def _worker(kind: str, clips: list[bytes], seconds: float, results) -> None:
    try:
        ctx = _decoder(kind)
        frames, late, k, start = 0, 0, 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            packets = list(ctx.parse(clips[k % len(clips)]))
            out = [f for p in packets for f in ctx.decode(p)]
            for f in out:
                f.to_ndarray()
            late += len(packets) - len(out)
            frames, k = frames + len(out), k + 1
        results.put((frames / (time.perf_counter() - start), late, None))
    except Exception as e:  # no GPU, no such decoder
        results.put((0.0, 0, f"{type(e).__name__}: {e}"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--decoders", default="sw,cuvid,cuda")
    ap.add_argument("--processes", default="1,4,14")
    ap.add_argument("--seconds", type=float, default=4.0)
    args = ap.parse_args()
    clips = pattern_clips()
    print(f"members: {np.mean([len(c) for c in clips]) / 1000:.0f} kB per 20-frame camera clip", flush=True)
    ctx = mp.get_context("spawn")
    for kind in args.decoders.split(","):
        for n in (int(p) for p in args.processes.split(",")):
            results = ctx.Queue()
            procs = [ctx.Process(target=_worker, args=(kind, clips, args.seconds, results)) for _ in range(n)]
            for p in procs:
                p.start()
            got = [results.get(timeout=60 + 2 * args.seconds) for _ in procs]
            for p in procs:
                p.join()
            errors = {e for _, _, e in got if e}
            if errors:
                print(f"{kind:6s} {n:3d} processes: failed ({errors.pop()})", flush=True)
                continue
            total = sum(r for r, _, _ in got)
            print(f"{kind:6s} {n:3d} processes: {total:9.0f} camera frames/s ({total / n:6.0f} each), "
                  f"frames out late: {sum(lt for _, lt, _ in got)}", flush=True)


if __name__ == "__main__":
    main()
