"""Shared fixtures. Group them by subject; each group is session-scoped where building is costly."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from ocr_engine import (
    EngineConfig,
    OcrEngine,
    OcrOptions,
    OcrResult,
    resolve_model_set,
    setup_process,
)
from ocr_engine.autoselect import cpu_flags, has_native_bf16, resolve_precision

TESTS_DIR = Path(__file__).resolve().parent

# ---------------------------------------------------------------- OCR engine and its reference data

# The evaluation images live beside the repository (../shared/eval), not in it. Tests that need
# them fail, never skip, when they are missing: a silently skipped conformance run reads as a pass.
EVAL_DIR = TESTS_DIR.parents[1] / "shared" / "eval"
REFERENCE_FILE = TESTS_DIR / "data" / "paddleocr_reference.json"
ENGINE_THREADS = 2


@pytest.fixture(scope="session")
def eval_dir() -> Path:
    if not (EVAL_DIR / "rapidocr_cases.json").is_file():
        pytest.fail(f"evaluation images not found at {EVAL_DIR} (expected ../shared/eval beside "
                    "the repository root, with rapidocr/, paddleocr/, plates/ and the case files)")
    return EVAL_DIR


def _engine(backend: str, precision: str = "f32") -> OcrEngine:
    # What a worker's bootstrap does before it builds engines; `precision` as the config's
    # ocr.predict_system.precision ("auto" resolved for this CPU, as the server does).
    setup_process(backend, ENGINE_THREADS)
    stages = resolve_precision(backend, precision, cpu_flags())
    return OcrEngine(EngineConfig(resolve_model_set("ppocr-v4", backend), threads=ENGINE_THREADS,
                                  precision=stages))


def _skip_without_native_bf16(what: str) -> None:
    # Emulated bf16 is slower than f32 and not what the config's bf16 is for; say so visibly.
    if not has_native_bf16(cpu_flags()):
        reason = f"{what}: this CPU has neither AMX nor AVX512_BF16 (no native bf16)"
        print(f"SKIPPED {reason}")
        pytest.skip(reason)


@pytest.fixture(scope="session")
def onnx_engine() -> OcrEngine:
    """ppocr-v4 on onnxruntime with PaddleOCR's default options."""
    return _engine("onnxruntime")


@pytest.fixture(scope="session")
def paddle_engine() -> OcrEngine:
    """ppocr-v4 on paddle.inference with PaddleOCR's default options."""
    return _engine("paddle")


@pytest.fixture(scope="session")
def openvino_engine() -> OcrEngine:
    """ppocr-v4 (the wheel's ONNX graphs) on OpenVINO in f32."""
    return _engine("openvino")


@pytest.fixture(scope="session")
def openvino_bf16_engine() -> OcrEngine:
    """OpenVINO with every stage in bf16."""
    _skip_without_native_bf16("openvino precision bf16")
    return _engine("openvino", "bf16")


@pytest.fixture(scope="session")
def reference() -> dict:
    """What PaddleOCR 2.10 read on every eval image (bench/paddleocr_reference.py): the file's
    header, with "cases" keyed by the image's path relative to the eval folder."""
    document = json.loads(REFERENCE_FILE.read_text(encoding="utf-8"))
    return {**document, "cases": {case["image"]: case for case in document["cases"]}}


@pytest.fixture(scope="session")
def read_eval_image(eval_dir: Path) -> Callable[..., OcrResult]:
    """`engine.ocr` of an eval image (a path relative to the eval folder), memoised by engine,
    image and options: the conformance and differential tests ask for many of the same slow
    calls. Tests of the engine's own behaviour call it directly instead."""
    results: dict[tuple, OcrResult] = {}

    def read(engine: OcrEngine, image: str, options: OcrOptions | None = None) -> OcrResult:
        key = (engine, image, (options or engine.config.defaults).cache_key())
        if key not in results:
            results[key] = engine.ocr((eval_dir / image).read_bytes(), options)
        return results[key]

    return read


# ---------------------------------------------------------------- the run's report

def pytest_terminal_summary(terminalreporter) -> None:
    """Names the CPU at the end of the report, beside the failures: the machines the suite
    runs on differ from session to session, and some outcomes depend on the CPU (bf16 tests
    run only with native bf16; a stage's text can differ by a borderline line)."""
    try:
        model = next((line.split(":", 1)[1].strip()
                      for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("model name")), "unknown")
    except OSError:
        model = "unknown"
    flags = cpu_flags()
    native = "yes" if has_native_bf16(flags) else "no"
    amx = "yes" if "amx_bf16" in flags else "no"
    terminalreporter.write_line(
        f"cpu: {model}, {os.cpu_count()} cores, native bf16 {native}, amx {amx}")
