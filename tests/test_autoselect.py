"""backend "auto" (ocr_engine/autoselect.py): the bookkeeping with fake timings, then one real
measurement of the installed backends on the calibration page, in child processes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ocr_engine import autoselect
from ocr_engine.autoselect import (
    CALIBRATION_PAGE,
    CHOICE_FILE,
    AutoSelectError,
    Measurement,
    auto_precision,
    candidates,
    cpu_flags,
    has_native_bf16,
    measure_in_subprocess,
    pick,
    resolve_precision,
    select_backend,
)
from ocr_engine.backends import StagePrecision
from ocr_engine.models import DEFAULT_MODELS_DIR
from tests.app_testing import ROOT, AppTestCase

AMX = frozenset({"avx512f", "amx_bf16", "amx_tile"})
AVX2_ONLY = frozenset({"avx2", "fma"})
AVX512_BF16_ONLY = frozenset({"avx2", "avx512f", "avx512_bf16"})  # e.g. AMD EPYC (Zen 5)
TEXT = ("line one", "line two")


def m(backend: str, precision: str, ms: float, texts=TEXT, error=None) -> Measurement:
    return Measurement(backend, precision, ms, tuple(texts), error)


# ---------------------------------------------------------------- pick: fake timings

def test_the_fastest_identical_candidate_wins() -> None:
    best = pick([m("onnxruntime", "f32", 900), m("openvino", "f32", 700),
                 m("openvino", "bf16", 400, texts=("line one", "linc two")),
                 m("paddle", "f32", 800)])
    assert (best.backend, best.precision) == ("openvino", "f32")


def test_failed_candidates_are_never_picked() -> None:
    best = pick([m("onnxruntime", "f32", 900), m("openvino", "f32", 1, texts=(), error="boom")])
    assert best.backend == "onnxruntime"


def test_a_tie_goes_to_the_earlier_candidate() -> None:
    assert pick([m("onnxruntime", "f32", 500), m("openvino", "f32", 500)]).backend == \
        "onnxruntime"


def test_without_the_reference_nothing_is_picked() -> None:
    with pytest.raises(AutoSelectError, match="reference"):
        pick([m("openvino", "f32", 100)])
    with pytest.raises(AutoSelectError, match="reference"):
        pick([m("onnxruntime", "f32", 100, error="no such file"), m("openvino", "f32", 50)])


# ---------------------------------------------------------------- precision and candidates

def test_native_bf16_needs_amx_or_avx512_bf16() -> None:
    assert has_native_bf16(AMX) and has_native_bf16({"avx512_bf16"})
    assert not has_native_bf16(AVX2_ONLY)


def test_auto_precision_is_f32_on_every_cpu_today() -> None:
    # bf16 changed the eval set's text in every stage on some CPU with native bf16 (the
    # classifier on an AVX512_BF16 EPYC): AUTO_BF16_STAGES in ocr_engine/autoselect.py.
    for flags in (AMX, AVX512_BF16_ONLY, AVX2_ONLY):
        assert resolve_precision("openvino", "auto", flags) == StagePrecision()


def test_auto_precision_is_bf16_only_for_the_listed_stages_and_where_native(monkeypatch) -> None:
    monkeypatch.setattr(autoselect, "AUTO_BF16_STAGES", ("cls",))
    assert auto_precision("openvino", AMX) == StagePrecision(det="f32", cls="bf16", rec="f32")
    assert auto_precision("openvino", AVX512_BF16_ONLY) == StagePrecision(cls="bf16")
    assert auto_precision("openvino", AVX2_ONLY) == StagePrecision()
    assert auto_precision("onnxruntime", AMX) == StagePrecision()  # f32 only
    assert resolve_precision("openvino", "bf16", AVX2_ONLY) == StagePrecision.uniform("bf16")


def test_candidates_follow_the_precision_setting() -> None:
    backends = ["onnxruntime", "openvino"]
    f32 = StagePrecision()
    assert candidates(backends, "f32", AMX) == [("onnxruntime", f32), ("openvino", f32)]
    assert candidates(backends, "bf16", AMX) == [("openvino", StagePrecision.uniform("bf16"))]
    # auto: each backend in f32 and its auto precision where that differs (none does today:
    # bf16 where measured to keep the text, never all-bf16); f32 only without native bf16.
    assert candidates(backends, "auto", AMX) == [("onnxruntime", f32), ("openvino", f32)]
    assert candidates(backends, "auto", AVX2_ONLY) == [("onnxruntime", f32), ("openvino", f32)]


def test_a_stage_measured_to_keep_the_text_becomes_an_auto_candidate(monkeypatch) -> None:
    monkeypatch.setattr(autoselect, "AUTO_BF16_STAGES", ("cls",))
    f32, cls_bf16 = StagePrecision(), StagePrecision(cls="bf16")
    assert resolve_precision("openvino", "auto", AMX) == cls_bf16
    assert candidates(["onnxruntime", "openvino"], "auto", AMX) == [
        ("onnxruntime", f32), ("openvino", f32), ("openvino", cls_bf16)]
    assert candidates(["openvino"], "auto", AVX2_ONLY) == [("openvino", f32)]


def test_stage_precision_round_trips_through_its_description() -> None:
    for precision in (StagePrecision(), StagePrecision.uniform("bf16"),
                      StagePrecision(cls="bf16")):
        assert StagePrecision.parse(precision.describe()) == precision
    assert StagePrecision(cls="bf16").describe() == "det=f32,cls=bf16,rec=f32"
    with pytest.raises(ValueError, match="fp8"):
        StagePrecision.parse("fp8")


def test_cpu_flags_are_read_from_cpuinfo(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu avx2 amx_bf16\n", encoding="ascii")
    assert cpu_flags(cpuinfo) == {"fpu", "avx2", "amx_bf16"}
    assert cpu_flags(tmp_path / "missing") == frozenset()


# ---------------------------------------------------------------- the stored choice

class FakeMeasure:
    """Stands in for the child processes: fixed timings, and a count of the calls."""

    def __init__(self, timings: dict[tuple[str, str], float]) -> None:
        self.timings, self.calls = timings, []

    def __call__(self, backend, precisions, threads, models_dir, model):
        self.calls.append(backend)
        return [m(backend, p.describe(), self.timings[backend, p.describe()])
                for p in precisions]


def test_the_choice_is_measured_once_then_reused(tmp_path: Path) -> None:
    measure = FakeMeasure({("onnxruntime", "f32"): 900, ("openvino", "f32"): 600})
    first = select_backend("f32", 2, DEFAULT_MODELS_DIR, "ppocr-v4", tmp_path,
                           backends=["onnxruntime", "openvino"], flags=AMX, measure=measure)
    assert (first.name, first.precision, first.chosen_by) == ("openvino", StagePrecision(),
                                                              "measurement")
    assert first.details["reused"] is False
    assert [row["median_ms"] for row in first.details["measured"]] == [900, 600]
    assert measure.calls == ["onnxruntime", "openvino"]
    again = select_backend("f32", 2, DEFAULT_MODELS_DIR, "ppocr-v4", tmp_path,
                           backends=["onnxruntime", "openvino"], flags=AMX, measure=measure)
    assert (again.name, again.details["reused"]) == ("openvino", True)
    assert measure.calls == ["onnxruntime", "openvino"]  # not measured again
    stored = json.loads((tmp_path / CHOICE_FILE).read_text(encoding="utf-8"))
    assert [entry["name"] for entry in stored.values()] == ["openvino"]


def test_another_thread_count_or_cpu_measures_again(tmp_path: Path) -> None:
    measure = FakeMeasure({("onnxruntime", "f32"): 900, ("openvino", "f32"): 600})
    common = dict(backends=["onnxruntime", "openvino"], measure=measure)
    select_backend("f32", 2, DEFAULT_MODELS_DIR, "ppocr-v4", tmp_path, flags=AMX, **common)
    select_backend("f32", 1, DEFAULT_MODELS_DIR, "ppocr-v4", tmp_path, flags=AMX, **common)
    select_backend("f32", 1, DEFAULT_MODELS_DIR, "ppocr-v4", tmp_path, flags=AVX2_ONLY,
                   **common)
    assert len(measure.calls) == 6
    assert len(json.loads((tmp_path / CHOICE_FILE).read_text(encoding="utf-8"))) == 3


def test_a_choice_among_other_candidates_is_measured_again(tmp_path: Path, monkeypatch) -> None:
    # A choice stored while "auto" offered a bf16 classifier is not reused once it no longer does.
    measure = FakeMeasure({("onnxruntime", "f32"): 900, ("openvino", "f32"): 600,
                           ("openvino", "det=f32,cls=bf16,rec=f32"): 500})
    common = dict(backends=["onnxruntime", "openvino"], flags=AMX, measure=measure)
    monkeypatch.setattr(autoselect, "AUTO_BF16_STAGES", ("cls",))
    before = select_backend("auto", 2, DEFAULT_MODELS_DIR, "ppocr-v4", tmp_path, **common)
    monkeypatch.setattr(autoselect, "AUTO_BF16_STAGES", ())
    after = select_backend("auto", 2, DEFAULT_MODELS_DIR, "ppocr-v4", tmp_path, **common)
    assert (before.precision, after.precision) == (StagePrecision(cls="bf16"), StagePrecision())
    assert after.details["reused"] is False and len(measure.calls) == 4


def test_a_corrupt_choice_file_is_measured_over(tmp_path: Path) -> None:
    (tmp_path / CHOICE_FILE).write_text("{not json", encoding="utf-8")
    measure = FakeMeasure({("onnxruntime", "f32"): 500, ("openvino", "f32"): 600})
    choice = select_backend("f32", 2, DEFAULT_MODELS_DIR, "ppocr-v4", tmp_path,
                            backends=["onnxruntime", "openvino"], flags=AMX, measure=measure)
    assert choice.name == "onnxruntime" and measure.calls


def test_bf16_with_no_bf16_candidate_reading_alike_is_an_error(tmp_path: Path) -> None:
    def measure(backend, precisions, threads, models_dir, model):
        return [m(backend, p.describe(), 100 if backend == "openvino" else 900,
                  texts=("garbled",) if backend == "openvino" else TEXT) for p in precisions]

    with pytest.raises(AutoSelectError, match="bf16"):
        select_backend("bf16", 2, DEFAULT_MODELS_DIR, "ppocr-v4", tmp_path,
                       backends=["onnxruntime", "openvino"], flags=AMX, measure=measure)


# ---------------------------------------------------------------- one real measurement

@pytest.mark.slow
def test_real_measurement_on_the_calibration_page(tmp_path: Path) -> None:
    """Child processes time onnxruntime and OpenVINO (f32) on the page: both read it, to the
    character alike, and the choice is one of them, stored and reused."""
    assert CALIBRATION_PAGE.is_file()
    f32 = [StagePrecision()]
    rows = (measure_in_subprocess("onnxruntime", f32, 1, DEFAULT_MODELS_DIR, "ppocr-v4")
            + measure_in_subprocess("openvino", f32, 1, DEFAULT_MODELS_DIR, "ppocr-v4"))
    assert [row.error for row in rows] == [None, None]
    assert len(rows[0].texts) >= 10 and rows[0].texts == rows[1].texts
    assert all(0 < row.median_ms < float("inf") for row in rows)
    print("calibration page, 1 thread:",
          ", ".join(f"{row.backend} {row.median_ms:.0f} ms" for row in rows))
    replay = {(row.backend, row.precision): row for row in rows}
    choice = select_backend(
        "f32", 1, DEFAULT_MODELS_DIR, "ppocr-v4", tmp_path,
        backends=["onnxruntime", "openvino"], flags=AMX,
        measure=lambda backend, precisions, *_: [replay[backend, p.describe()]
                                                 for p in precisions])
    assert choice.name == min(rows, key=lambda row: row.median_ms).backend
    assert all(row["identical"] for row in choice.details["measured"])


# ---------------------------------------------------------------- the server's wiring

class TestAutoBackendServer(AppTestCase):
    """backend "auto" through server.main.build_engine_spec and /ready. The choice file in the
    models folder (a temporary one linking the real set, so the machine's own choice file is
    left alone) is seeded first (by select_backend itself, with fake timings that make
    openvino the fastest), so the server reuses it instead of measuring for a minute: the
    workers must then run openvino, and /ready say it was chosen by measurement."""

    real_models = True
    deadline = 240.0

    def get_app(self):
        from ocr_engine.backends import BACKENDS

        models_dir = self.tmp_path / "models"
        models_dir.mkdir()
        (models_dir / "manifest.json").write_bytes((ROOT / "models" / "manifest.json").read_bytes())
        (models_dir / "ppocr-v4").symlink_to(ROOT / "models" / "ppocr-v4")
        self.overrides = {"ocr.predict_system.backend": "auto",
                          "ocr.predict_system.models_dir": str(models_dir)}
        timings = {(name, precision): 900.0 for name in BACKENDS
                   for precision in ("f32", "bf16", "det=f32,cls=bf16,rec=f32")}
        timings["openvino", "f32"] = 100.0
        self.seeded = select_backend("f32", 1, models_dir, "ppocr-v4", models_dir,
                                     measure=FakeMeasure(timings))
        return super().get_app()

    def test_ready_shows_the_measured_choice_and_the_workers_use_it(self) -> None:
        assert self.seeded.name == "openvino"
        ready = self.request("/ready")
        assert ready.code == 200
        backend = json.loads(ready.body)["backend"]
        assert (backend["name"], backend["precision"], backend["chosen_by"]) == (
            "openvino", "f32", "measurement")
        assert backend["reused"] is True
        assert {row["backend"] for row in backend["measured"]} >= {"onnxruntime", "openvino"}
        assert self.pool.spec.backend == "openvino"
        response = self.upload((ROOT / "docs" / "samples" / "receipt.jpg").read_bytes())
        assert response.code == 200 and len(json.loads(response.body)["lines"]) >= 10
