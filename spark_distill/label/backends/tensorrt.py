# SPDX-License-Identifier: MIT
# Copyright (c) 2026 spark-distill authors
"""TensorRT: engines built from the teacher's ONNX (FP16 by default), cached on disk keyed by the
ONNX sha256, GPU name, TensorRT version, precision and batch, with a shared timing cache; run with
execute_async_v3 on the current CUDA stream over torch-allocated device buffers.

Written against the TensorRT 10 Python API (`tensorrt`, or `tensorrt_rtx`). TensorRT is not on
PyPI without NVIDIA's index, so CI checks this logic with a small fake of that API on the CPU
(tests/label/fake_tensorrt.py); the real thing runs where `import tensorrt` works.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch

from spark_distill.data import files
from spark_distill.errors import ConfigError, LabelError, MissingDependencyError
from spark_distill.label.backends import tensorrt_module
from spark_distill.notes import note
from spark_distill.openpilot.teachers import Teacher, check_batching, make_batch_dynamic


def _torch_dtype(trt: Any, dtype: Any) -> torch.dtype:
    table = {trt.DataType.FLOAT: torch.float32, trt.DataType.HALF: torch.float16, trt.DataType.UINT8: torch.uint8,
             trt.DataType.INT32: torch.int32, trt.DataType.BF16: torch.bfloat16}
    if dtype not in table:
        raise LabelError(f"TensorRT tensor type {dtype} is not supported here")
    return table[dtype]


class _Engine:
    """One deserialized engine with its execution context."""

    def __init__(self, trt: Any, data: bytes, logger: Any, device: torch.device) -> None:
        self.trt, self.device = trt, device
        self.runtime = trt.Runtime(logger)
        self.engine = self.runtime.deserialize_cuda_engine(data)
        if self.engine is None:
            raise LabelError("TensorRT could not deserialize the cached engine; delete the cache and retry")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self.out_buffers: dict[int, torch.Tensor] = {}

    def __call__(self, inputs: dict[str, torch.Tensor], width: int) -> torch.Tensor:
        n = next(iter(inputs.values())).shape[0]
        keep = []
        for name in self.inputs:
            t = inputs[name].to(_torch_dtype(self.trt, self.engine.get_tensor_dtype(name))).contiguous()
            keep.append(t)
            self.context.set_input_shape(name, tuple(t.shape))
            self.context.set_tensor_address(name, t.data_ptr())
        if n not in self.out_buffers:
            dtype = _torch_dtype(self.trt, self.engine.get_tensor_dtype(self.outputs[0]))
            self.out_buffers[n] = torch.empty((n, width), dtype=dtype, device=self.device)
        out = self.out_buffers[n]
        self.context.set_tensor_address(self.outputs[0], out.data_ptr())
        stream = torch.cuda.current_stream(self.device).cuda_stream if self.device.type == "cuda" else 0
        if not self.context.execute_async_v3(stream):
            raise LabelError("TensorRT execution failed")
        return out.float()


class TensorRTBackend:
    name = "tensorrt"

    def __init__(self, teacher: Teacher, vision_model: Any, policy_model: Any, *, batch: int = 64,
                 precision: str = "auto", device: str | None = None, cache_dir: Path | None = None) -> None:
        trt = tensorrt_module()
        if trt is None:
            raise MissingDependencyError("the tensorrt backend needs NVIDIA TensorRT (pip install tensorrt from "
                                         "NVIDIA's index, or the DGX OS package); use --backend torch meanwhile")
        self.trt = trt
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.precision = "fp16" if precision == "auto" else precision
        if self.precision not in ("fp32", "fp16", "bf16"):
            raise ConfigError(f"unknown precision {self.precision!r}")
        self.gpu = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "cpu"
        self.cache_dir = Path(cache_dir) if cache_dir else Path.home() / ".cache" / "spark-distill" / "engines"
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.engines, self.widths, self.engine_files = {}, {}, {}
        for (role, mf), model in zip(teacher.models, (vision_model, policy_model), strict=False):  # combined: one
            dynamic = make_batch_dynamic(model)
            if batch > 1 and not check_batching(model, dynamic, mf.inputs):
                raise ConfigError(f"{mf.path.name} does not run batched; use --batch 1 with this teacher")
            data, path = self._engine_bytes(role, dynamic.SerializeToString(), mf.inputs, batch)
            self.engines[role] = _Engine(trt, data, self.logger, self.device)
            self.widths[role], self.engine_files[role] = mf.width, path.name

    def _engine_bytes(self, role: str, onnx_bytes: bytes, inputs: dict, batch: int) -> tuple[bytes, Path]:
        trt = self.trt
        key = hashlib.sha256(b"|".join([hashlib.sha256(onnx_bytes).hexdigest().encode(), self.gpu.encode(),
                                        trt.__version__.encode(), self.precision.encode(), str(batch).encode()]))
        path = self.cache_dir / f"{role}-{key.hexdigest()[:20]}.engine"
        if path.exists():
            return path.read_bytes(), path
        note(f"building a TensorRT {self.precision} engine for {role} (batch {batch}, {self.gpu}); cached for later "
             "runs")
        builder = trt.Builder(self.logger)
        network = builder.create_network(0)
        parser = trt.OnnxParser(network, self.logger)
        if not parser.parse(onnx_bytes):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise LabelError(f"TensorRT cannot parse the {role} model: {errors}")
        config = builder.create_builder_config()
        if self.precision == "fp16":
            config.set_flag(trt.BuilderFlag.FP16)
        elif self.precision == "bf16":
            config.set_flag(trt.BuilderFlag.BF16)
        timing_path = self.cache_dir / f"timing-{trt.__version__}-{self.gpu.replace(' ', '_')}.cache"
        timing = config.create_timing_cache(timing_path.read_bytes() if timing_path.exists() else b"")
        config.set_timing_cache(timing, False)
        profile = builder.create_optimization_profile()
        for name, (shape, _) in inputs.items():
            full = (batch, *shape[1:])
            profile.set_shape(name, (1, *shape[1:]), full, full)
        config.add_optimization_profile(profile)
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise LabelError(f"TensorRT failed to build the {role} engine (see the TensorRT log above)")
        data = bytes(serialized)
        files.write_bytes_atomic(path, data)
        files.write_bytes_atomic(timing_path, bytes(config.get_timing_cache().serialize()))
        return data, path

    def vision(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.engines["vision"](inputs, self.widths["vision"])

    def policy(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.engines["policy"](inputs, self.widths["policy"])

    def step_parts(self) -> None:
        """None: the label pass does not capture a TensorRT engine inside its own CUDA graph (never tried on
        hardware here: TensorRT is not installable on these machines), so its step stays uncaptured."""
        return None

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "precision": self.precision, "device": str(self.device), "gpu": self.gpu,
                "tensorrt": self.trt.__version__, "module": self.trt.__name__, "engines": self.engine_files}
