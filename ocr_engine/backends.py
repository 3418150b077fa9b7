"""Inference backends: one registry entry per runtime, each session behind `run(batch) -> output`.

`BACKENDS` maps a backend's name to what everything else derives from it: the model format it
reads (the manifest's "onnx" or "paddle" entry), whether it loads the files the manifest derives
at fetch time (onnxruntime: the fused ONNX graphs, faster on it) or the wheel's own (an
OpenVINO backend would read the same format but prefer the unfused graphs), a factory that
imports its runtime only when chosen (an onnxruntime worker never pays for importing paddle:
seconds, hundreds of MB), and its process setup.

Process setup: thread counts and environment variables belong to the process, not to an engine,
so building an engine never changes them. `setup_process(name, threads)` applies them; call it
once per process before building engines (the server's worker bootstrap, the CLI and the bench
do). Sessions are created once per process and are not shared between threads: the engine calls
them from one thread at a time.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Protocol

import cv2
import numpy as np

from .errors import BackendSetupError, ModelNotFoundError


class InferenceSession(Protocol):
    metadata: dict[str, str]
    # The model's declared input shape, None for each dynamic dimension (and for a runtime that
    # does not say): the stages read fixed sizes off it instead of assuming them.
    input_shape: tuple[int | None, ...] | None

    def run(self, batch: np.ndarray) -> np.ndarray: ...


# The engine's stages, each with its own session (and so its own precision).
STAGES = ("det", "cls", "rec")
PRECISIONS = ("f32", "bf16")


@dataclass(frozen=True)
class StagePrecision:
    """The compute precision of each stage's session. f32 everywhere is the only one every
    backend has (onnxruntime and paddle compute in f32 only: their CPU kernels here have no
    bf16 path for these models, so "precision" for them is always f32)."""

    det: str = "f32"
    cls: str = "f32"
    rec: str = "f32"

    def __post_init__(self) -> None:
        for stage in STAGES:
            if getattr(self, stage) not in PRECISIONS:
                raise ValueError(f"precision of {stage}: must be one of "
                                 f"{', '.join(PRECISIONS)}, got {getattr(self, stage)!r}")

    @classmethod
    def uniform(cls, precision: str) -> StagePrecision:
        return cls(precision, precision, precision)

    @classmethod
    def parse(cls, text: str) -> StagePrecision:
        """"f32", "bf16", or per stage as describe() writes it: "det=bf16,cls=f32,rec=f32"."""
        if "=" not in text:
            return cls.uniform(text)
        parts = dict(part.split("=", 1) for part in text.split(",") if part)
        unknown = set(parts) - set(STAGES)
        if unknown:
            raise ValueError(f"precision: unknown stage(s) {', '.join(sorted(unknown))}")
        return cls(**parts)

    def used(self) -> set[str]:
        return {getattr(self, stage) for stage in STAGES}

    def describe(self) -> str:
        """"f32" or "bf16" when every stage has it, else each stage's: "det=bf16,cls=f32,...".
        """
        if len(self.used()) == 1:
            return self.det
        return ",".join(f"{stage}={getattr(self, stage)}" for stage in STAGES)


@dataclass(frozen=True)
class Backend:
    name: str
    model_format: str  # the manifest's format entry it reads: "onnx" or "paddle"
    # True: the files the manifest derives at fetch time (the fused graphs) where a set has
    # them; False: the wheel's own files.
    loads_derived_files: bool
    package: str  # the distribution that provides the runtime, for version reports
    runtime_module: str  # what the factory imports (bench times the import on its own)
    # (model path, threads, precision, few_shapes) -> session; imports the runtime only when
    # called. few_shapes: the caller sends a handful of input shapes only (the classifier's
    # fixed 48x192 at batch sizes 1..6), so per-shape caches stay small by themselves.
    factory: Callable[[Path, int, str, bool], InferenceSession] = field(repr=False)
    # Environment variables the runtime reads when it loads (set before it is imported).
    environment: Callable[[int], dict[str, str]] = field(repr=False)
    # The compute precisions its sessions can run at ("f32" first: every backend has it).
    precisions: tuple[str, ...] = ("f32",)
    # True: the runtime keeps compiled kernels per input shape without bound, so the stages
    # round their inputs up to a few bucket shapes (buckets.py) for it.
    bounded_shapes: bool = False

    def open_session(self, path: Path, threads: int, precision: str = "f32",
                     few_shapes: bool = False) -> InferenceSession:
        if precision not in self.precisions:
            raise BackendSetupError(
                f"backend {self.name!r} computes in {', '.join(self.precisions)} only, not "
                f"{precision!r}")
        return self.factory(Path(path), threads, precision, few_shapes)


# onnxruntime's CPU arena keeps the peak of every run: after the worst inputs the limits allow,
# a worker held 1.9 GB until it was recycled. Runs with a larger input than this (elements) end
# by handing the arena's free chunks back (run option memory.enable_memory_arena_shrinkage); the
# worker then holds 0.35-0.7 GB (most of it the recogniser's arena after batches of the widest
# lines, which stay under this size). On the benchmark page at 2 threads, shrinking after every
# run cost 7-8% and running without the arena 19-22% (and held 0.5 GB); the page's runs stay
# under this size (its detection input is 672 x 960 x 3 = 1.9 M), so it pays nothing.
SHRINK_ARENA_ABOVE = 3_000_000


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
        declared = self._session.get_inputs()[0]
        self._input = declared.name
        self.input_shape = declared_shape(declared.shape)
        self.metadata = dict(self._session.get_modelmeta().custom_metadata_map)
        self._shrink = ort.RunOptions()
        self._shrink.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")

    def run(self, batch: np.ndarray) -> np.ndarray:
        options = self._shrink if batch.size > SHRINK_ARENA_ABOVE else None
        return self._session.run(None, {self._input: batch}, options)[0]


class PaddleSession:
    """paddle.inference with oneDNN and the new executor.

    The legacy executor is faster on first sight but oneDNN caches a kernel per input shape and
    the process grows to 6-7 GB; PIR with oneDNN crashes on these legacy-format models, so the
    process setup turns PIR off before paddle is imported.
    """

    def __init__(self, model_dir: Path, threads: int) -> None:
        if os.environ.get("FLAGS_enable_pir_api") != "0":
            raise BackendSetupError(
                "the paddle backend needs its process setup before paddle is imported: call "
                "ocr_engine.backends.setup_process('paddle', threads) first")
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
        self.input_shape = _paddle_input_shape(self._input)
        self.metadata = {}

    def run(self, batch: np.ndarray) -> np.ndarray:
        self._input.reshape(batch.shape)
        self._input.copy_from_cpu(batch)
        self._predictor.run()
        return self._output.copy_to_cpu()


# OpenVINO CPU runtime-cache entries (see OpenVinoSession); 0 = none kept. A session that sees
# a few input shapes only (few_shapes: the classifier) keeps the plugin's default, bounded by
# those shapes.
OPENVINO_RUNTIME_CACHE = 0
OPENVINO_FEW_SHAPES_CACHE = 5000


class OpenVinoSession:
    """OpenVINO's CPU plugin reading the ONNX file itself (no conversion step).

    One compiled model per file, dynamic shapes. The plugin keeps the kernels it prepares for
    each input shape in a runtime cache (5,000 entries by default, hundreds per shape), so
    every new image shape grew the process: a compiled detector held 0.50 GB after 30 random
    shapes and 0.91 GB after 120, a recogniser 0.79 GB after 100 batch shapes. With the cache
    off (CPU_RUNTIME_CACHE_CAPACITY 0) the same runs ended at 0.49 and 0.41 GB, flat once the
    largest shape has been seen (bench/openvino_checks.py cache-rss). Rounding the inputs up
    to bucket shapes (buckets.py) would bound the cache too, but the padding changed the text
    of 27 of the 53 conforming eval pages (detection padding alone), so it is off
    (`bounded_shapes`). The price of no cache: a shape seen before is prepared again. On
    varied images (bench/engine.py's set, interleaved, same text throughout) the engine took
    0.85x onnxruntime's time with the cache off, 0.71x at 200 entries, 0.65x at 1000 and 0.55x
    with the default 5000; but at 300 entries a whole engine held 1,087 MB after 400 varied
    images (766 MB after 1,000 as set here), over the 1 GB a worker may hold, and with shapes
    that keep changing a few hundred entries hold a few shapes only (docs/BENCHMARKS.md). The
    classifier is the exception (`few_shapes`): its inputs are always 48x192 at batch sizes up
    to 6, so it keeps the plugin's cache, bounded by those shapes, and saves re-preparing every
    batch (its stage went from 51 to 25-35 ms on the benchmark page).

    LATENCY with one stream and `threads` inference threads: one request at a time, as the
    engine calls it. Pinning is off: several workers share the cores, and pinned threads of
    two workers would fight over the same ones.

    Precision: OpenVINO computes in bf16 by default on a CPU with AMX or AVX512_BF16; "f32" asks
    for f32 explicitly (outputs within 1e-4 of onnxruntime on the same file, tested), "bf16"
    for bf16 (det and rec 3-4x faster on AMX, measured; probabilities off by up to 4e-2, which
    changes the text of some eval pages: docs/BENCHMARKS.md).
    """

    def __init__(self, path: Path, threads: int, precision: str,
                 runtime_cache: int = OPENVINO_RUNTIME_CACHE) -> None:
        import openvino

        core = openvino.Core()
        model = core.read_model(str(path))
        self.input_shape = declared_shape(
            [d.get_length() if d.is_static else None for d in model.inputs[0].get_partial_shape()])
        self.metadata = _onnx_metadata(model)
        compiled = core.compile_model(model, "CPU", {
            "INFERENCE_NUM_THREADS": threads,
            "PERFORMANCE_HINT": "LATENCY",
            "NUM_STREAMS": 1,
            "ENABLE_CPU_PINNING": False,
            "INFERENCE_PRECISION_HINT": precision,
            "CPU_RUNTIME_CACHE_CAPACITY": runtime_cache,
        })
        self._compiled = compiled
        self._request = compiled.create_infer_request()
        self.runtime_cache = runtime_cache  # the plugin does not report it back

    def run(self, batch: np.ndarray) -> np.ndarray:
        # share_inputs: no copy of the (possibly 100 MB) input; the output is copied out of the
        # request's buffer, which the next run overwrites.
        self._request.infer({0: batch}, share_inputs=True)
        output = self._request.get_output_tensor(0).data.copy()
        if batch.size > SHRINK_ARENA_ABOVE:
            # The compiled model keeps the intermediate buffers of the largest input it has
            # run: after the worst inputs the limits allow, a worker held 1.85 GB until it was
            # recycled. release_memory() hands them back (the engine then trims the heap:
            # memory.py), as the arena shrinkage does for onnxruntime; ordinary pages stay
            # under this size and pay nothing.
            self._compiled.release_memory()
        return output


def _onnx_metadata(model) -> dict[str, str]:
    # OpenVINO keeps an ONNX file's metadata_props under rt_info["framework"] (2024+); the rec
    # model's dictionary ("character") is one of them.
    try:
        framework = model.get_rt_info()["framework"]
        return {str(key): str(value.astype(str)) if hasattr(value, "astype") else str(value)
                for key, value in framework.items()}
    except (KeyError, RuntimeError, TypeError, AttributeError):
        return {}


def declared_shape(dims) -> tuple[int | None, ...] | None:
    """A runtime's declared dimensions as ints, None for each dynamic one (onnxruntime names
    them with a string or leaves them None; paddle and OpenVINO say -1)."""
    if dims is None:
        return None
    return tuple(d if isinstance(d, int) and not isinstance(d, bool) and d >= 0 else None
                 for d in dims)


def _paddle_input_shape(handle) -> tuple[int | None, ...] | None:
    # paddle.inference's input handle knows its shape only once it has been reshaped: before
    # that paddle 3.3 answers [0] (measured), older versions raise. Either way the model does
    # not declare one through this handle.
    try:
        dims = list(handle.shape())
    except Exception:  # noqa: BLE001 - any failure means "not declared"
        return None
    return declared_shape(dims) if dims and 0 not in dims else None


def paddle_model_files(model_dir: Path) -> tuple[Path, Path]:
    for stem in ("inference", "model"):
        model_file, params_file = model_dir / f"{stem}.pdmodel", model_dir / f"{stem}.pdiparams"
        if model_file.is_file() and params_file.is_file():
            return model_file, params_file
    raise ModelNotFoundError(f"no inference.pdmodel + inference.pdiparams in {model_dir}")


def _open_onnx(path: Path, threads: int, precision: str, few_shapes: bool) -> InferenceSession:
    if not path.is_file():
        raise ModelNotFoundError(f"ONNX model file not found: {path}")
    return OnnxSession(path, threads)


def _open_paddle(path: Path, threads: int, precision: str, few_shapes: bool
                 ) -> InferenceSession:
    if not path.is_dir():
        raise ModelNotFoundError(f"Paddle model directory not found: {path}")
    return PaddleSession(path, threads)


def _open_openvino(path: Path, threads: int, precision: str, few_shapes: bool
                   ) -> InferenceSession:
    if not path.is_file():
        raise ModelNotFoundError(f"ONNX model file not found: {path}")
    return OpenVinoSession(path, threads, precision, OPENVINO_FEW_SHAPES_CACHE if few_shapes
                           else OPENVINO_RUNTIME_CACHE)


def _paddle_environment(threads: int) -> dict[str, str]:
    # PIR + oneDNN crashes on the legacy-format models; glog would print every pass at load.
    # OpenMP sizes its pool from OMP_NUM_THREADS when paddle loads, before the predictor's
    # thread count applies: without it a 1-thread worker ran 5 OS threads instead of 3 on 2
    # cores (measured), idle OpenMP threads that grow with the machine's cores.
    return {"FLAGS_enable_pir_api": "0", "GLOG_minloglevel": "2",
            "OMP_NUM_THREADS": str(threads)}


BACKENDS: Mapping[str, Backend] = MappingProxyType({backend.name: backend for backend in (
    Backend("onnxruntime", "onnx", loads_derived_files=True, package="onnxruntime",
            runtime_module="onnxruntime", factory=_open_onnx, environment=lambda threads: {}),
    Backend("paddle", "paddle", loads_derived_files=False, package="paddlepaddle",
            runtime_module="paddle.inference", factory=_open_paddle,
            environment=_paddle_environment),
    # The wheel's own ONNX graphs: OpenVINO fuses them itself, and on our fused graphs it was
    # slower (2 threads, as a ratio to onnxruntime on the fused graph: det 1.11x fused vs 0.79x
    # wheel, rec 1.90x vs 0.80x; bench/openvino_checks.py graphs).
    Backend("openvino", "onnx", loads_derived_files=False, package="openvino",
            runtime_module="openvino", factory=_open_openvino, environment=lambda threads: {},
            precisions=("f32", "bf16")),
)})
# The names config choices and command lines offer, the default first.
BACKEND_NAMES: tuple[str, ...] = tuple(BACKENDS)
DEFAULT_BACKEND = BACKEND_NAMES[0]
# The model formats the backends read, each once, in registry order.
MODEL_FORMATS: tuple[str, ...] = tuple(dict.fromkeys(b.model_format for b in BACKENDS.values()))


def get_backend(name: str) -> Backend:
    try:
        return BACKENDS[name]
    except KeyError:
        raise ModelNotFoundError(
            f"unknown backend {name!r}; choose one of {', '.join(BACKEND_NAMES)}") from None


def setup_process(backend: str, threads: int) -> None:
    """Applies `backend`'s process-wide settings for engines of `threads` intra-op threads.

    Call once per process, before building engines and before anything imports the backend's
    runtime. Environment variables already set are left as they are (an operator's override).
    """
    entry = get_backend(backend)
    # OpenCV's own pool would add threads on top of the inference threads; the pool sizes each
    # worker's threads to its share of the cores.
    cv2.setNumThreads(threads)
    for name, value in entry.environment(threads).items():
        os.environ.setdefault(name, value)
