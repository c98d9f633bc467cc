# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""Inference backends behind one interface, chosen by name. Entry point: `get_backend(name, ...)`.

A backend runs the teacher's two graphs on batches of B rows: `vision(inputs)` and
`policy(inputs)` take dicts of torch tensors on `backend.device` and return float32 [B, N] tensors
there (valid until the next call). Adding a backend is one file plus one line in BACKENDS.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from spark_distill.errors import ConfigError, UnknownTeacherError

PRECISIONS = ("auto", "fp32", "fp16", "bf16")


@dataclass(frozen=True)
class StepParts:
    """What the label pass needs to run its whole step (frame gather, modeld state, both models, outputs) as one
    program: the two models as plain forwards it may trace, how to compile the step, whether to capture it."""

    vision: Callable[[dict[str, Any]], Any]
    policy: Callable[[dict[str, Any]], Any]
    compile: Callable[[Callable[..., Any]], Callable[..., Any]] | None  # compiles the step; None: it runs eager
    capture: bool  # replay the step from a CUDA graph
    uncaptured: Callable[[], None] = lambda: None  # called where the step could not be captured (it runs eager)


class Backend(Protocol):
    name: str
    device: Any  # torch.device
    precision: str

    def vision(self, inputs: dict[str, Any]) -> Any: ...

    def policy(self, inputs: dict[str, Any]) -> Any: ...

    def step_parts(self) -> StepParts | None:
        """The models as parts of the label pass's own step (compiled and captured with it), or None where they
        run as opaque calls (ONNX Runtime, TensorRT)."""
        ...

    def describe(self) -> dict[str, Any]: ...


def _load(module: str, cls: str) -> Callable[..., Backend]:
    def make(*args: Any, **kwargs: Any) -> Backend:
        return getattr(importlib.import_module(f"spark_distill.label.backends.{module}"), cls)(*args, **kwargs)

    return make


BACKENDS: dict[str, Callable[..., Backend]] = {
    "onnxruntime": _load("onnxruntime", "OrtBackend"),
    "torch": _load("torch", "TorchBackend"),
    "tensorrt": _load("tensorrt", "TensorRTBackend"),
}


def tensorrt_module() -> Any | None:
    """The TensorRT Python module (`tensorrt`, or `tensorrt_rtx`), or None."""
    for name in ("tensorrt", "tensorrt_rtx"):
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    return None


def auto_backend() -> str:
    """Fastest available: TensorRT on a CUDA GPU, else torch on a CUDA GPU, else ONNX Runtime on the CPU."""
    import torch

    if torch.cuda.is_available():
        return "tensorrt" if tensorrt_module() is not None else "torch"
    return "onnxruntime"


def get_backend(name: str, *args: Any, **kwargs: Any) -> Backend:
    """Build backend `name` ('auto' picks one); unknown names list the available ones."""
    if kwargs.get("precision", "auto") not in PRECISIONS:
        raise ConfigError(f"unknown precision {kwargs['precision']!r}; choose one of {', '.join(PRECISIONS)}")
    if name == "auto":
        name = auto_backend()
    if name not in BACKENDS:
        raise UnknownTeacherError(f"unknown backend {name!r}; available: {', '.join(sorted(BACKENDS))}, auto")
    compile_ = kwargs.pop("compile", "auto")  # torch.compile of the teacher: the torch backend's option
    if name == "torch":
        kwargs["compile"] = compile_
    elif compile_ == "on":
        raise ConfigError(f"--compile on applies to the torch backend, not {name}")
    return BACKENDS[name](*args, **kwargs)
