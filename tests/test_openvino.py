"""The openvino backend: its sessions, precision handling, bounded memory, config validation,
and a real worker pool on it answering /ready and /ocr_service (real models, real HTTP).

Conformance with PaddleOCR's text on the whole eval set is tests/test_conformance.py's (it
runs every backend and precision the config accepts)."""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import psutil
import pytest

from ocr_engine import BackendSetupError, ModelNotFoundError
from ocr_engine.autoselect import cpu_flags, has_native_bf16
from ocr_engine.backends import (
    OPENVINO_FEW_SHAPES_CACHE,
    OPENVINO_RUNTIME_CACHE,
    OnnxSession,
    OpenVinoSession,
    get_backend,
)
from ocr_engine.models import resolve_model_set
from server.config import ConfigError, load_config
from tests.app_testing import ROOT, AppTestCase

WHEEL = resolve_model_set("ppocr-v4", "openvino")  # the wheel's graphs: what openvino reads
SAMPLE = ROOT / "docs" / "samples" / "receipt.jpg"


def test_openvino_reads_the_wheels_graphs() -> None:
    assert [p.name for p in (WHEEL.det, WHEEL.cls, WHEEL.rec)] == ["det.onnx", "cls.onnx",
                                                                  "rec.onnx"]
    assert get_backend("openvino").precisions == ("f32", "bf16")
    assert get_backend("onnxruntime").precisions == ("f32",)


def test_sessions_declare_their_input_shape() -> None:
    for session in (OpenVinoSession(WHEEL.rec, 1, "f32"), OnnxSession(WHEEL.rec, 1)):
        assert session.input_shape == (None, 3, None, None)  # batch, height, width dynamic


def test_the_dictionary_comes_from_the_onnx_metadata_as_on_onnxruntime() -> None:
    ours = OpenVinoSession(WHEEL.rec, 1, "f32").metadata
    assert ours == OnnxSession(WHEEL.rec, 1).metadata
    assert len(ours["character"].split("\n")) == 6623


@pytest.mark.parametrize("stage", ["det", "rec", "cls"])
def test_f32_outputs_match_onnxruntime_on_the_same_file(stage: str) -> None:
    path = getattr(WHEEL, stage)
    shape = {"det": (1, 3, 320, 480), "rec": (4, 3, 48, 640), "cls": (6, 3, 48, 192)}[stage]
    batch = np.random.default_rng(3).uniform(-1, 1, shape).astype(np.float32)
    theirs = OnnxSession(path, 2).run(batch)
    ours = OpenVinoSession(path, 2, "f32").run(batch)
    assert ours.shape == theirs.shape
    assert float(np.abs(ours - theirs).max()) < 1e-4


def test_precision_is_what_the_session_compiles_at() -> None:
    import openvino

    f32 = OpenVinoSession(WHEEL.cls, 1, "f32")
    # The plugin's default on an AMX CPU would be bf16: f32 must be asked for.
    assert f32._request.get_compiled_model().get_property("INFERENCE_PRECISION_HINT") == \
        openvino.Type.f32
    if not has_native_bf16(cpu_flags()):
        print("SKIPPED the bf16 half: this CPU has no native bf16")
        return
    bf16 = OpenVinoSession(WHEEL.cls, 1, "bf16")
    assert bf16._request.get_compiled_model().get_property("INFERENCE_PRECISION_HINT") == \
        openvino.Type.bf16


@pytest.mark.parametrize("backend", ["onnxruntime", "paddle"])
def test_bf16_is_refused_by_backends_that_compute_in_f32_only(backend: str) -> None:
    paths = resolve_model_set("ppocr-v4", backend)
    with pytest.raises(BackendSetupError, match="f32 only"):
        get_backend(backend).open_session(paths.det, 1, "bf16")


def test_a_missing_file_is_named() -> None:
    with pytest.raises(ModelNotFoundError, match="nowhere.onnx"):
        get_backend("openvino").open_session(Path("/nowhere.onnx"), 1)


def _rss_growth_over_new_shapes(runtime_cache: int, shapes: int) -> float:
    """MB the process grows while a detection session with `runtime_cache` reads `shapes` new
    input shapes, after the largest and 10 others have been seen (so the largest buffers are
    already there). Run in a fresh process: in a test process that has already run others the
    heap holds freed memory that new buffers reuse, which hides growth unevenly (a CI run
    measured 117 MB for the default cache here, against ~235 MB in a fresh process)."""
    rng = np.random.default_rng(11)
    process = psutil.Process()
    session = OpenVinoSession(WHEEL.det, 2, "f32", runtime_cache=runtime_cache)

    def new_shape() -> np.ndarray:
        side = lambda: 32 * int(rng.integers(4, 31))  # noqa: E731 - up to 960, as max/960
        return np.zeros((1, 3, side(), side()), np.float32)

    session.run(np.zeros((1, 3, 960, 960), np.float32))
    for _ in range(10):
        session.run(new_shape())
    before = process.memory_info().rss
    for _ in range(shapes):
        session.run(new_shape())
    return (process.memory_info().rss - before) / 2**20


def _in_a_fresh_process(function, *args):
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(function, *args).result()


@pytest.mark.slow
def test_memory_grows_far_less_over_new_input_shapes_without_the_runtime_cache() -> None:
    """The plugin's runtime cache keeps kernels for every shape it has seen (0.9 GB after 120
    detection shapes, measured); OpenVinoSession turns it off. Side by side on the same 40
    shapes, each in a fresh process: the default cache must grow at least twice as much as
    ours."""
    ours = _in_a_fresh_process(_rss_growth_over_new_shapes, OPENVINO_RUNTIME_CACHE, 40)
    default = _in_a_fresh_process(_rss_growth_over_new_shapes, 5000, 40)
    print(f"openvino det, RSS growth over 40 new shapes: {ours:.0f} MB without the runtime "
          f"cache, {default:.0f} MB with the plugin's default")
    assert default > 2 * ours


def test_only_the_classifier_keeps_the_runtime_cache(openvino_engine) -> None:
    """Detection and recognition see new shapes with every image: cache off. The classifier
    always reads 48x192 at batch sizes up to cls_batch_size, so it keeps the plugin's cache."""
    assert openvino_engine.detector.session.runtime_cache == OPENVINO_RUNTIME_CACHE == 0
    assert openvino_engine.recognizer.session.runtime_cache == 0
    assert openvino_engine.classifier.session.runtime_cache == OPENVINO_FEW_SHAPES_CACHE > 0


def _cls_growth_after_its_shapes_are_seen() -> float:
    session = get_backend("openvino").open_session(WHEEL.cls, 1, "f32", few_shapes=True)
    rows = np.zeros((6, 3, 48, 192), np.float32)
    for size in range(1, 7):  # every batch size the engine sends
        session.run(rows[:size])
    process = psutil.Process()
    before = process.memory_info().rss
    for _ in range(5):
        for size in range(1, 7):
            session.run(rows[:size])
    return (process.memory_info().rss - before) / 2**20


def test_the_classifier_cache_stops_growing_once_its_shapes_are_seen() -> None:
    # A fresh process, so that no other test's threads or freed memory sway the figure.
    grown = _in_a_fresh_process(_cls_growth_after_its_shapes_are_seen)
    print(f"openvino cls with its runtime cache: {grown:.1f} MB over 30 more runs")
    assert grown < 10


# ---------------------------------------------------------------- config

def test_config_refuses_bf16_where_the_backend_cannot_compute_it() -> None:
    with pytest.raises(ConfigError, match="bf16 is not available on backend 'onnxruntime'"):
        load_config(None, {"ocr.predict_system.backend": "onnxruntime",
                           "ocr.predict_system.precision": "bf16"})
    with pytest.raises(ConfigError, match="precision: must be one of"):
        load_config(None, {"ocr.predict_system.precision": "fp16"})
    for backend, precision in (("openvino", "bf16"), ("auto", "bf16"), ("onnxruntime", "auto"),
                               ("paddle", "f32")):
        system = load_config(None, {"ocr.predict_system.backend": backend,
                                    "ocr.predict_system.precision": precision}
                             ).ocr.predict_system
        assert (system.backend, system.precision) == (backend, precision)


def test_the_defaults_are_auto_backend_and_f32() -> None:
    system = load_config(None).ocr.predict_system
    assert (system.backend, system.precision) == ("auto", "f32")
    assert load_config(ROOT / "config.json").ocr.predict_system.backend == "auto"


# ---------------------------------------------------------------- a real pool on openvino

class TestOpenVinoWorkers(AppTestCase):
    real_models = True
    deadline = 240.0
    overrides = {"ocr.predict_system.backend": "openvino"}

    def test_ready_names_the_backend_and_a_page_is_read(self) -> None:
        ready = self.request("/ready")
        assert ready.code == 200
        import json

        backend = json.loads(ready.body)["backend"]
        assert backend["name"] == "openvino" and backend["chosen_by"] == "config"
        assert backend["precision"] == "f32"
        response = self.upload(SAMPLE.read_bytes())
        assert response.code == 200, response.body
        lines = json.loads(response.body)["lines"]
        assert len(lines) >= 10
