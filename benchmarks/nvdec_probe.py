# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""Probe: GPU-resident decoding of our lossy camera members with NVIDIA's PyNvVideoCodec (benchmarks/ingest.md).

    python3 benchmarks/nvdec_probe.py hevc,av1

Needs a CUDA GPU with NVDEC and the `pynvvideocodec` wheel (PyPI; not a dependency of the project). For each
codec: eight 20-frame 512x256 clips of a textured moving pattern with noise (`hevc_decoders.pattern_clips`);
then (1) one decoder per codec kept from clip to clip, each clip fed as one packet or as the packets PyAV's
parser cuts, then an ENDOFSTREAM packet; its frames, packed on the GPU into (T, 6, 128, 256), compared with
PyAV's decode (`codecs.decode_clip`); (2) camera frames/s with 1..14 threads, one decoder each.
Each frame is copied out as `Decode` returns it: the decoder hands out its own surfaces, which later frames reuse
(the first form of this probe converted after the flush and matched no clip).
"""

from __future__ import annotations

import ctypes
import sys
import threading
import time

import numpy as np


def main() -> None:
    import av
    import PyNvVideoCodec as nvc
    import torch
    from hevc_decoders import pattern_clips  # this folder: python3 benchmarks/nvdec_probe.py

    from spark_distill.data import codecs

    torch.zeros(1, device="cuda")
    handle = ctypes.c_void_p()
    assert ctypes.CDLL("libcuda.so.1").cuCtxGetCurrent(ctypes.byref(handle)) == 0  # torch's (primary) context
    ctx = handle.value

    def packet(data: np.ndarray | None) -> object:
        p = nvc.PacketData()
        p.bsl_data, p.bsl = (0, 0) if data is None else (data.ctypes.data, len(data))
        if data is None:
            p.decode_flag = nvc.VideoPacketFlag.ENDOFSTREAM
        return p

    def pack(frame: object, out: torch.Tensor) -> None:
        a = torch.from_dlpack(frame)  # NV12 (384, 512) on the GPU
        y = a[:256, :512].reshape(128, 2, 256, 2).permute(3, 1, 0, 2).reshape(4, 128, 256)  # loadyuv.cl order
        out[:4] = y
        out[4:] = a[256:384, :512].reshape(128, 256, 2).permute(2, 0, 1)

    def decode(dec: object, chunks: list[bytes], out: torch.Tensor) -> int:
        n = 0
        held = [np.frombuffer(c, np.uint8) for c in chunks]  # alive until Decode has read them
        for data in [*held, None]:
            for frame in dec.Decode(packet(data)):
                pack(frame, out[n])
                n += 1
        return n

    for codec in sys.argv[1].split(",") if len(sys.argv) > 1 else ("hevc", "av1"):
        clips = pattern_clips(codec=codec)
        ref = [codecs.decode_clip(codec, c) for c in clips]
        cid = nvc.cudaVideoCodec.HEVC if codec == "hevc" else nvc.cudaVideoCodec.AV1
        print(f"== {codec}: {len(clips)} clips, {np.mean([len(c) for c in clips]) / 1e3:.0f} kB each", flush=True)

        def cut(data: bytes, name: str = "hevc" if codec == "hevc" else "av1") -> list[bytes]:
            parser = av.CodecContext.create(name, "r")
            return [bytes(p) for p in [*parser.parse(data), *parser.parse(None)]]

        try:
            for mode in ("whole", "parsed"):
                dec = nvc.CreateDecoder(gpuid=0, codec=cid, cudacontext=ctx, cudastream=0, usedevicememory=1)
                out = torch.empty((64, 6, 128, 256), dtype=torch.uint8, device="cuda")
                same = 0
                for k in range(2 * len(clips)):
                    data = clips[k % len(clips)]
                    n = decode(dec, [data] if mode == "whole" else cut(data), out)
                    want = ref[k % len(clips)]
                    same += n == len(want) and np.array_equal(out[:n].cpu().numpy(), want)
                print(f"  {mode}: {same}/{2 * len(clips)} clips bit-exact against PyAV", flush=True)
        except nvc.PyNvVCExceptionUnsupported as e:
            print(f"  {codec}: not decodable on this GPU ({str(e).strip().splitlines()[-1]})", flush=True)
            continue
        for mode in ("whole", "parsed"):
            for threads in (1, 2, 4, 8, 14):
                counts, errors = [0] * threads, []
                stop = time.perf_counter() + 3.0

                def run(i: int, mode: str = mode, counts: list[int] = counts, errors: list[str] = errors,
                        stop: float = stop, cid: object = cid, clips: list[bytes] = clips, cut: object = cut) -> None:
                    try:
                        stream = torch.cuda.Stream()
                        with torch.cuda.stream(stream):
                            dec = nvc.CreateDecoder(gpuid=0, codec=cid, cudacontext=ctx,
                                                    cudastream=stream.cuda_stream, usedevicememory=1)
                            out = torch.empty((64, 6, 128, 256), dtype=torch.uint8, device="cuda")
                            k = i
                            while time.perf_counter() < stop:
                                data = clips[k % len(clips)]
                                counts[i] += decode(dec, [data] if mode == "whole" else cut(data), out)
                                k += 1
                            stream.synchronize()
                    except Exception as e:  # report, do not hang the other threads
                        errors.append(repr(e))

                start = time.perf_counter()
                pool = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
                for t in pool:
                    t.start()
                for t in pool:
                    t.join()
                fps = sum(counts) / (time.perf_counter() - start)
                print(f"  {mode:6s} {threads:2d} threads: {fps:8.0f} camera frames/s ({fps / 40:5.0f} clips of 2 x 20)"
                      + (f" errors: {errors[0]}" if errors else ""), flush=True)


if __name__ == "__main__":
    main()
