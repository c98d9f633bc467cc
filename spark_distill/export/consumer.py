# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""The consumer check: an exported graph run the way openpilot runs it, against ONNX Runtime.
Entry point: `tinygrad_check(graphs, feeds)`.

openpilot compiles its driving models from ONNX with tinygrad (`tinygrad.nn.onnx.OnnxRunner`, in
selfdrive/modeld's compile step), not with ONNX Runtime: an op or dtype that ORT accepts and tinygrad
does not (or computes differently) would pass the export's own check and fail in the car. Both run the
same feeds here, fed only the inputs each graph declares (OnnxRunner refuses a missing one, ORT an extra
one), and the largest absolute difference per output is the result.

Device: tinygrad 0.14 picks its device at first use from the `DEV` variable (`DEV=CPU`; the older
`CPU=1` is refused there with an assertion), else the first of METAL, AMD, NV, CUDA, QCOM, CL, CPU that
opens; the CPU device renders with the first of clang, LLVM, ... that works. The check pins `CPU:CLANG`
through tinygrad's `Context`, whatever the environment says, so its figures are the same on every
machine; the CPU device needs the `clang` compiler on PATH (Debian: `apt-get install clang`).

Cost: the first run of a graph is tinygrad lowering its kernels in Python (the compiled kernels are cached
in ~/.cache/tinygrad): ~20-30 s of one core for a compact student with the default optimizer, ~5 s under
`NOOPT=1` (the test suite's setting: same ops and lowering, kernels left unoptimised); each further input
costs ~0.3 s.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from spark_distill.errors import ExportError, MissingDependencyError, OnnxMismatchError, first_line
from spark_distill.openpilot.onnx_import import cpu_session

DEVICE = "CPU:CLANG"  # tinygrad's CPU device with its clang renderer: deterministic, no accelerator needed
REQUIREMENT = "tinygrad>=0.14,<0.15"  # 0.14 moved device choice to DEV=...; earlier releases read CPU=1
INSTALL_HINT = f"pip install '{REQUIREMENT}' (its CPU device also needs clang: apt-get install clang)"
CLANG_HINT = "tinygrad's CPU device compiles with clang: apt-get install clang (or --check none)"
FP32_TOLERANCE = 1e-4  # max abs difference, fp32 graphs (measured: <= 5e-6 on every export format)
FP16_TOLERANCE = 1e-2  # relative to 1 + the output's max abs value, graphs with fp16 weights


@dataclass
class TinygradResult:
    version: str
    device: str
    max_abs_diff: dict[str, float] = field(default_factory=dict)  # "graph/output" -> max |tinygrad - ORT|
    max_rel_diff: float = 0.0  # max over outputs of max |tinygrad - ORT| / (1 + max |ORT|)
    tolerance: float = FP32_TOLERANCE
    relative: bool = False  # whether `tolerance` bounds max_rel_diff (fp16) or the absolute differences
    feeds: int = 0
    optimizer: str = "default"  # tinygrad's kernel optimizer; "NOOPT" where the environment says NOOPT=1 (tests)

    def as_json(self) -> dict[str, Any]:
        return {"version": self.version, "device": self.device, "optimizer": self.optimizer, "feeds": self.feeds,
                "max_abs_diff": self.max_abs_diff, "max_rel_diff": self.max_rel_diff,
                "tolerance": self.tolerance, "tolerance_is_relative": self.relative}


def _why(e: BaseException) -> str:
    return f"{type(e).__name__}: {first_line(e, 10_000)}"


def tinygrad_module() -> Any:
    """`tinygrad`, or MissingDependencyError naming the install."""
    try:
        return importlib.import_module("tinygrad")
    except ImportError as e:
        raise MissingDependencyError(f"--check tinygrad needs tinygrad: {INSTALL_HINT}") from e



def _run_tinygrad(name: str, data: bytes, feeds: list[dict[str, np.ndarray]]) -> list[list[np.ndarray]]:
    """tinygrad's outputs of one graph for each feed, on DEVICE, lowered in this process (PARALLEL=0: no
    worker pool of spawned processes left behind; on 2 cores it costs no more)."""
    from tinygrad import Tensor
    from tinygrad.helpers import Context

    with Context(DEV=DEVICE, PARALLEL=0):
        try:
            Tensor([1.0]).realize()  # opens the device: the CPU device compiles its helpers with clang here
        except Exception as e:  # FileNotFoundError for clang, or tinygrad's own errors for a broken toolchain
            raise MissingDependencyError(f"tinygrad's {DEVICE} device does not start ({_why(e)}); "
                                         f"{CLANG_HINT}") from e
        # imported here: the module makes Tensors when imported, which outside the pinned device would make
        # tinygrad probe every accelerator it knows and pick one
        from tinygrad.nn.onnx import OnnxRunner

        try:
            runner = OnnxRunner(Tensor(data))
            outs = []
            for feed in feeds:
                got = runner({k: Tensor(np.ascontiguousarray(v)) for k, v in feed.items()})
                outs.append([got[out].numpy() for out in runner.graph_outputs])
        except FileNotFoundError as e:  # clang gone since the device opened (its helpers came from tinygrad's cache)
            raise MissingDependencyError(f"tinygrad's {DEVICE} device cannot compile ({_why(e)}); "
                                         f"{CLANG_HINT}") from e
        except Exception as e:  # an op tinygrad lacks (NotImplementedError) or cannot lower (RuntimeError, ...)
            raise ExportError(f"tinygrad cannot run {name} as openpilot would ({_why(e)}); nothing was "
                              "written (--check none skips this check)") from e
        return outs


def tinygrad_check(graphs: dict[str, bytes], feeds: dict[str, list[dict[str, np.ndarray]]], *,
                   fp16: bool = False) -> TinygradResult:
    """Run each serialized graph (name -> bytes) on its feeds in tinygrad and in ONNX Runtime; raises
    OnnxMismatchError above tolerance. Feeds may hold more inputs than a graph declares."""
    tinygrad_module()
    from tinygrad.helpers import NOOPT

    result = TinygradResult(version=importlib.metadata.version("tinygrad"), device=DEVICE, relative=fp16,
                            tolerance=FP16_TOLERANCE if fp16 else FP32_TOLERANCE,
                            optimizer="NOOPT" if NOOPT.value else "default")
    for name, data in graphs.items():
        sess = cpu_session(data)
        declared = [i.name for i in sess.get_inputs()]
        out_names = [o.name for o in sess.get_outputs()]
        own = [{k: f[k] for k in declared} for f in feeds[name]]
        for feed, got in zip(own, _run_tinygrad(name, data, own), strict=True):
            for out, ref, val in zip(out_names, sess.run(None, feed), got, strict=True):
                ref64, val64 = np.asarray(ref, np.float64), np.asarray(val, np.float64)
                if ref64.shape != val64.shape:
                    raise OnnxMismatchError(f"{name}: tinygrad's {out} has shape {val64.shape}, ONNX Runtime's "
                                            f"{ref64.shape}")
                diff = float(np.max(np.abs(val64 - ref64))) if ref64.size else 0.0
                diff = diff if np.isfinite(diff) else float("inf")  # NaN would vanish in max()
                key = f"{name}/{out}"
                result.max_abs_diff[key] = max(result.max_abs_diff.get(key, 0.0), diff)
                scale = 1.0 + (float(np.max(np.abs(ref64))) if ref64.size else 0.0)
                result.max_rel_diff = max(result.max_rel_diff, diff / scale)
        result.feeds += len(own)
    worst = result.max_rel_diff if fp16 else max(result.max_abs_diff.values(), default=0.0)
    if not worst <= result.tolerance:  # NaN fails too
        raise OnnxMismatchError(f"tinygrad ({result.device}, {result.version}) differs from ONNX Runtime by "
                                f"{worst:.3g} ({'relative' if fp16 else 'max abs'}; tolerance {result.tolerance:g}); "
                                "nothing was written")
    return result
