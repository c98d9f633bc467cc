# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""The teacher's ONNX graphs imported into torch (onnx2torch): fp16/bf16 autocast, channels-last and
CUDA graphs on a GPU; fp32 on the CPU. Used where TensorRT is absent.

`compile="on"` runs both graphs through `torch.compile` (inductor's fused kernels) at their first call; "auto"
compiles on CUDA only (the bench stand-in's vision ran 2x faster compiled on an H200; on the CPU the minute
of compiling outweighs the gain for a dataset of a few thousand frames). Compiled graphs are cached across
runs: inductor's own cache, and its artifacts saved beside the engines (`cache_dir`) after each first compile
and loaded before compiling. On CUDA each graph, compiled or eager, is replayed from a CUDA graph captured at
the backend's batch on its first call (`_Graphed`). The label pass does not call the graphs one by one:
`step_parts()` hands it the eager forwards and the way to compile, and it compiles and captures its whole
step (frame gather, modeld's state, both models) as one program.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from spark_distill.cuda_graphs import capture_or_none
from spark_distill.errors import ConfigError
from spark_distill.label.backends import StepParts
from spark_distill.notes import note
from spark_distill.openpilot.onnx_import import onnx_to_torch
from spark_distill.openpilot.teachers import Teacher, check_batching, make_batch_dynamic

log = logging.getLogger(__name__)
_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


class _Forward(torch.nn.Module):
    """module(*inputs) under the precision's autocast, as float32: what runs, compiled or not, captured or not."""

    def __init__(self, module: torch.nn.Module, device_type: str, dtype: torch.dtype | None) -> None:
        super().__init__()
        self.module, self.device_type, self.dtype = module, device_type, dtype

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        if self.dtype is None:
            return self.module(*inputs).float()
        with torch.autocast(self.device_type, dtype=self.dtype, cache_enabled=False):
            return self.module(*inputs).float()


class _Compiled:
    """A torch.compile'd function that calls `after_first` once its first call (the compile) has returned. Where
    torch.compile cannot trace the graph (onnx2torch builds some operators from tensors holding shapes, e.g.
    `torch.Size(tensor)`, which dynamo refuses), `eager` runs instead, from then on, with one note."""

    def __init__(self, fn: Callable[..., Any], eager: Callable[..., Any], after_first: Callable[[], None],
                 on_fallback: Callable[[Exception], None]) -> None:
        self.fn, self.eager, self.after_first, self.on_fallback = fn, eager, after_first, on_fallback

    def __call__(self, *args: Any) -> Any:
        if self.after_first is None:
            return self.fn(*args)
        try:
            out = self.fn(*args)
        except Exception as e:  # torch._dynamo.exc.TorchDynamoException and inductor's, by their module
            if not type(e).__module__.startswith(("torch._dynamo", "torch._inductor")):
                raise
            self.fn, self.after_first = self.eager, None
            self.on_fallback(e)
            return self.fn(*args)
        self.after_first, after = None, self.after_first
        after()
        return out


class _Graphed:
    """A forward replayed from a CUDA graph captured at a fixed batch (inputs copied into static buffers).
    Its output is a static buffer too: valid until the next call."""

    def __init__(self, forward: Callable[..., torch.Tensor], example: dict[str, torch.Tensor], what: str,
                 uncaptured: Callable[[], None] = lambda: None) -> None:
        self.forward = forward
        self.static = {k: v.clone() for k, v in example.items()}
        captured = capture_or_none(lambda: forward(*self.static.values()), what, note)
        self.graph, self.out = captured if captured is not None else (None, None)
        if captured is None:
            uncaptured()

    def __call__(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.graph is None:  # could not be captured: the forward as it is
            with torch.no_grad():
                return self.forward(*inputs.values())
        for k, v in inputs.items():
            self.static[k].copy_(v, non_blocking=True)
        self.graph.replay()
        return self.out


def _allow_recompiles(limit: int = 64) -> None:
    """Dynamo counts compilations per code object, and every compiled teacher of a process (vision and policy,
    each batch size, each backend built) runs `_Forward.forward`: past the default limit of 8 it would
    silently fall back to eager (seen on an H200 in bench label's second batch size)."""
    import torch._dynamo

    for name in ("recompile_limit", "cache_size_limit"):  # the name since torch 2.6, and before
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, max(limit, getattr(torch._dynamo.config, name)))
            return


class TorchBackend:
    name = "torch"

    def __init__(self, teacher: Teacher, vision_model: Any, policy_model: Any, *, batch: int = 32,
                 precision: str = "auto", device: str | None = None, cache_dir: Any = None,
                 cuda_graphs: bool = True, compile: str = "auto", fuse_step: bool | None = None) -> None:
        if compile not in ("auto", "on", "off"):
            raise ConfigError(f"--compile {compile!r}: choose auto, on or off")
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        cuda = self.device.type == "cuda"
        if cuda and self.device.index is not None:  # CUDA graphs capture on the current device's streams: make
            torch.cuda.set_device(self.device)  # it this process's GPU (one process per GPU under torchrun)
        self.precision = ("fp16" if cuda else "fp32") if precision == "auto" else precision
        if not cuda and self.precision != "fp32":
            raise ConfigError(f"the torch backend runs {self.precision} on CUDA only; use --precision fp32 on the CPU")
        self.batch = batch
        if cuda and self.precision == "fp32":  # true fp32: TF32 convolutions are ~1e-3 off ONNX Runtime
            torch.backends.cudnn.allow_tf32 = False
            torch.backends.cuda.matmul.allow_tf32 = False
        self.eager: dict[str, _Forward] = {}
        for (role, mf), model in zip(teacher.models, (vision_model, policy_model), strict=False):  # combined: one
            dynamic = make_batch_dynamic(model)
            if batch > 1 and not check_batching(model, dynamic, mf.inputs):
                raise ConfigError(f"{mf.path.name} does not run batched; use --batch 1 with this teacher")
            module = onnx_to_torch(dynamic).eval().to(self.device)
            if cuda and role == "vision":
                module = module.to(memory_format=torch.channels_last)
            self.eager[role] = _Forward(module, self.device.type, _DTYPES.get(self.precision))
        self.compiled = compile == "on" or (compile == "auto" and cuda)
        self.cuda_graphs = cuda and cuda_graphs
        self.captured = True  # until a capture fails (describe)
        # compiled: the label pass's whole step as one program on CUDA; on the CPU the models compiled apart (there
        # inductor's program of the whole step ran ~45% slower: 228-263 vs 446-467 frames/s, tiny stand-in, batch
        # 8, one core of the 2-core box)
        self.fuse_step = self.compiled and (cuda if fuse_step is None else fuse_step)
        # at the backend's batch: compiled (inductor's fused kernels, no CUDA graphs of its own, so that a caller
        # can capture a larger program around them) or eager; compiled at the first call
        self.forwards: dict[str, Callable[..., torch.Tensor]] = dict(self.eager)
        self.graphs: dict[str, _Graphed] = {}
        self._cache: Path | None = None
        if self.compiled:
            self._cache = _compile_cache(cache_dir, teacher, self.device, self.precision, batch)
            _allow_recompiles()
            self.forwards = {role: self._compile(f) for role, f in self.eager.items()}

    def _compile(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """torch.compile(fn) at fixed shapes; once its first call has compiled it, the compile cache is saved."""
        return _Compiled(torch.compile(fn, dynamic=False), fn, self._save_cache, self._compile_failed)

    def _compile_failed(self, error: Exception) -> None:
        if self.compiled:  # one note for the backend's graphs
            reason = next((line.strip() for line in str(error).splitlines() if line.strip()), "")[:200]
            note(f"torch.compile could not compile the teacher ({type(error).__name__}: {reason}); it runs "
                 "uncompiled")
        self.compiled = self.fuse_step = False  # what describe() records: the teacher ran uncompiled

    def _uncaptured(self) -> None:
        self.captured = False  # what describe() records: a graph (or the label step) ran uncaptured

    def _save_cache(self) -> None:
        if self._cache is not None:
            _save_compile_cache(self._cache)

    def _run(self, role: str, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        n = next(iter(inputs.values())).shape[0]
        if n == self.batch and self.cuda_graphs:
            if role not in self.graphs:  # captured at first use (the label pass captures its own step instead)
                self.graphs[role] = _Graphed(self.forwards[role], inputs, f"the teacher's {role} model",
                                             self._uncaptured)
            return self.graphs[role](inputs)
        with torch.no_grad():  # other batch sizes run eager: a compiled graph is for the backend's batch only
            return (self.forwards if n == self.batch else self.eager)[role](*inputs.values())

    def _layout(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if self.device.type == "cuda":
            return {k: v.contiguous(memory_format=torch.channels_last) if v.dim() == 4 else v
                    for k, v in inputs.items()}
        return inputs

    def vision(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self._run("vision", self._layout(inputs))

    def policy(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self._run("policy", inputs)

    def step_parts(self) -> StepParts:
        """The models as parts of the label pass's step, captured with it on CUDA. Compiled on CUDA, they are the
        eager forwards, compiled with the step as one inductor program (the frame gather and modeld's image ring
        fuse into the vision's first kernels; H200, bench stand-in, batch 256: the whole step 21,716 frames/s
        against 18,233 with the models compiled apart); otherwise the backend's own forwards."""
        forwards = self.eager if self.fuse_step else self.forwards
        vision, policy = forwards["vision"], forwards.get("policy")  # a combined teacher: its one model as vision
        return StepParts(lambda inputs: vision(*self._layout(inputs).values()), lambda inputs: policy(*inputs.values()),
                         self._compile if self.fuse_step else None, self.cuda_graphs, self._uncaptured)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "precision": self.precision, "device": str(self.device),
                "torch": torch.__version__, "cuda_graphs": self.cuda_graphs and self.captured,
                "compiled": self.compiled, "step_compiled": self.fuse_step,
                "gpu": torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else None}


def _compile_cache(cache_dir: Any, teacher: Teacher, device: torch.device, precision: str, batch: int) -> Path | None:
    """Load inductor's saved artifacts for this teacher/device/precision/batch/torch, if any; returns the file
    they live in (None where there is no cache folder or this torch cannot save them)."""
    if cache_dir is None or not hasattr(torch.compiler, "load_cache_artifacts"):
        return None
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    what = f"{teacher.sha256}|{where}|{precision}|{batch}|{torch.__version__}|inductor without CUDA graphs"
    key = hashlib.sha256(what.encode()).hexdigest()
    path = Path(cache_dir) / f"inductor-{key[:16]}.bin"
    if path.exists():
        try:
            torch.compiler.load_cache_artifacts(path.read_bytes())
        except Exception as e:  # a stale or foreign cache only costs a compile
            log.warning("ignoring the compile cache %s (%s)", path.name, e)
    return path


def _save_compile_cache(path: Path) -> None:
    try:
        saved = torch.compiler.save_cache_artifacts()
    except Exception as e:
        log.warning("could not save the compile cache (%s)", e)
        return
    if saved is not None:
        from spark_distill.data.files import write_bytes_atomic

        path.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(path, saved[0])
