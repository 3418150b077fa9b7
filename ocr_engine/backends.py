"""Inference backends behind one small interface: `run(batch) -> first output`.

Each backend is imported only when chosen, so an onnxruntime worker never pays for importing
paddle (seconds, hundreds of MB). Sessions are created once per process and are not shared
between threads: the engine calls them from one thread at a time.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

import numpy as np

from .errors import ModelNotFoundError

BACKENDS = ("onnxruntime", "paddle")


class InferenceSession(Protocol):
    metadata: dict[str, str]

    def run(self, batch: np.ndarray) -> np.ndarray: ...


class OnnxSession:
    def __init__(self, path: Path, threads: int) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Input shapes change with every image; memory patterns only pay off for fixed shapes.
        options.enable_mem_pattern = False
        # Spinning between parallel sections cuts recognition latency by ~25% at 2 threads
        # (measured); with one thread there is no pool to spin, and no core is taken from the
        # other workers.
        options.add_session_config_entry("session.intra_op.allow_spinning",
                                         "1" if threads > 1 else "0")
        options.log_severity_level = 3
        self._session = ort.InferenceSession(str(path), options,
                                             providers=["CPUExecutionProvider"])
        self._input = self._session.get_inputs()[0].name
        self.metadata = dict(self._session.get_modelmeta().custom_metadata_map)

    def run(self, batch: np.ndarray) -> np.ndarray:
        return self._session.run(None, {self._input: batch})[0]


class PaddleSession:
    """paddle.inference with oneDNN and the new executor.

    The legacy executor is faster on first sight but oneDNN caches a kernel per input shape and
    the process grows to 6-7 GB; PIR with oneDNN crashes on these legacy-format models.
    """

    def __init__(self, model_dir: Path, threads: int) -> None:
        os.environ.setdefault("FLAGS_enable_pir_api", "0")
        os.environ.setdefault("GLOG_minloglevel", "2")
        from paddle import inference

        model_file, params_file = paddle_model_files(model_dir)
        config = inference.Config(str(model_file), str(params_file))
        config.disable_gpu()
        config.enable_onednn()
        # oneDNN keeps kernels per input shape, and nearly every image brings new shapes (the
        # detector's input size, the recogniser's batch widths). A cache of 10 shapes held
        # ~160 MB more after 200 varied images than a cache of 1 and saved no measurable time.
        config.set_onednn_cache_capacity(1)
        config.set_cpu_math_library_num_threads(threads)
        config.enable_new_executor(True)
        config.enable_new_ir(False)
        config.enable_memory_optim()
        config.switch_ir_optim(True)
        config.disable_glog_info()
        config.switch_use_feed_fetch_ops(False)
        self._predictor = inference.create_predictor(config)
        self._input = self._predictor.get_input_handle(self._predictor.get_input_names()[0])
        self._output = self._predictor.get_output_handle(self._predictor.get_output_names()[0])
        self.metadata = {}

    def run(self, batch: np.ndarray) -> np.ndarray:
        self._input.reshape(batch.shape)
        self._input.copy_from_cpu(batch)
        self._predictor.run()
        return self._output.copy_to_cpu()


def paddle_model_files(model_dir: Path) -> tuple[Path, Path]:
    for stem in ("inference", "model"):
        model_file, params_file = model_dir / f"{stem}.pdmodel", model_dir / f"{stem}.pdiparams"
        if model_file.is_file() and params_file.is_file():
            return model_file, params_file
    raise ModelNotFoundError(f"no inference.pdmodel + inference.pdiparams in {model_dir}")


def open_session(backend: str, path: Path, threads: int) -> InferenceSession:
    if backend == "onnxruntime":
        if not Path(path).is_file():
            raise ModelNotFoundError(f"ONNX model file not found: {path}")
        return OnnxSession(Path(path), threads)
    if backend == "paddle":
        if not Path(path).is_dir():
            raise ModelNotFoundError(f"Paddle model directory not found: {path}")
        return PaddleSession(Path(path), threads)
    raise ModelNotFoundError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
