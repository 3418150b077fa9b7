"""`backend: "auto"`: time each installed backend x precision on one calibration page, pick the
fastest that reads it exactly as onnxruntime in f32 does, remember the choice.

Why measure instead of a fixed order: which runtime wins depends on the CPU (OpenVINO's bf16 is
twice as fast only where AMX or AVX512_BF16 exist), on the thread count and on the package
versions; a table written once would be wrong on the next machine. Why one page is enough:
every candidate must read it to the character like the f32 reference, and the conformance tests
hold each backend x precision the config accepts to PaddleOCR's text on the whole eval set; the
page only has to rank the speeds and catch a runtime that misbehaves on this machine.

Process model: each backend is measured in its own child process (`python -m
ocr_engine.autoselect measure ...`), because a backend's process setup (environment, threads)
belongs to the process and paddle must not share one with the others; the parent never
imports a runtime. The server calls `select_backend` before its workers start, off its IOLoop.

The choice is stored as JSON (`CHOICE_FILE` in the folder the caller names) keyed by
everything it depends on (CPU flags, package versions, model set, threads, precision setting),
so later starts on the same machine reuse it, and a changed package or CPU measures again.
The ranking itself (`pick`) is pure bookkeeping over `Measurement`s, testable with fake timings.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .backends import BACKENDS, STAGES, StagePrecision, get_backend

log = logging.getLogger("ppocr.autoselect")

CHOICE_FILE = "backend-choice.json"
# The calibration page: a PaddleOCR sample receipt committed in the repository (docs/samples),
# 30-odd lines of Chinese, digits and Latin, so all three stages do real work on it.
CALIBRATION_PAGE = Path(__file__).resolve().parents[1] / "docs" / "samples" / "receipt.jpg"
# Timed runs per candidate after one warm-up run; the median ranks it.
TIMED_RUNS = 3
# The reference every candidate must read the page like.
REFERENCE = ("onnxruntime", "f32")
# OpenVINO's precision "auto": bf16 for these stages only, where the CPU computes bf16 natively,
# and only for a stage measured to keep the text. None is, now. One stage at a time on the
# shared eval set (53 conforming pages + 220 word and plate crops; docs/BENCHMARKS.md, "OpenVINO,
# precision and auto backend"), on a Xeon with AMX: bf16 detection changed the text of 13 pages,
# bf16 recognition of 21 pages and 3 crops, bf16 classification of none, so "auto" ran the
# classifier in bf16. On an AMD EPYC with AVX512_BF16 and no AMX the bf16 classifier turned two
# lines of rapidocr's devanagari.jpg (P(180) 0.904 and 0.921 in f32, 0.898 and 0.894 in bf16,
# against cls_thresh 0.9); over the 276 eval images' 1,556 lines (squeezed and windowed) its
# P(180) moved by up to 0.09, so the AMX result rested on margins. The classifier is ~3% of a
# page; a stage comes back here only with that measurement on both kinds of CPU.
AUTO_BF16_STAGES: tuple[str, ...] = ()
NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16")
MEASURE_TIMEOUT_S = 600


class AutoSelectError(RuntimeError):
    """No candidate could be measured, or none read the page like the reference."""


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The CPU's feature flags (Linux); empty where the file does not say."""
    try:
        text = cpuinfo.read_text(encoding="ascii", errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.partition(":")[2].split())
    return frozenset()


def has_native_bf16(flags: Iterable[str]) -> bool:
    """AMX or AVX512_BF16: without either, bf16 is emulated and slower than f32."""
    return any(flag in flags for flag in NATIVE_BF16_FLAGS)


def auto_precision(backend: str, flags: Iterable[str]) -> StagePrecision:
    """What precision "auto" means for `backend` on a CPU with `flags`: bf16 for
    AUTO_BF16_STAGES (none today) where both have bf16, f32 for the rest."""
    if "bf16" not in get_backend(backend).precisions or not has_native_bf16(flags):
        return StagePrecision()
    return StagePrecision(**{stage: "bf16" if stage in AUTO_BF16_STAGES else "f32"
                             for stage in STAGES})


def resolve_precision(backend: str, setting: str, flags: Iterable[str]) -> StagePrecision:
    """A configured precision ("f32", "bf16", "auto") as each stage's precision on `backend`."""
    if setting == "auto":
        return auto_precision(backend, flags)
    return StagePrecision.uniform(setting)


def installed_backends() -> list[str]:
    """Backends whose runtime package imports here, registry order (paddle only if present)."""
    return [name for name, backend in BACKENDS.items()
            if importlib.util.find_spec(backend.runtime_module.partition(".")[0]) is not None]


def candidates(backends: Sequence[str], setting: str, flags: Iterable[str]
               ) -> list[tuple[str, StagePrecision]]:
    """(backend, precision) pairs worth timing for a precision `setting`: "f32" gives each
    backend in f32; "bf16" only backends that have it, every stage bf16; "auto" each backend
    in f32 and, where the CPU has native bf16 and the backend bf16, its auto precision too
    (never all-bf16: "auto" promises the eval set's text, which bf16 detection and
    recognition do not keep, even where they read the calibration page alike)."""
    flags = frozenset(flags)
    pairs: list[tuple[str, StagePrecision]] = []
    for name in backends:
        backend = get_backend(name)
        if setting == "bf16":
            if "bf16" in backend.precisions:
                pairs.append((name, StagePrecision.uniform("bf16")))
            continue
        pairs.append((name, StagePrecision()))
        if setting == "auto" and "bf16" in backend.precisions and has_native_bf16(flags):
            precision = auto_precision(name, flags)
            if (name, precision) not in pairs:
                pairs.append((name, precision))
    return pairs


@dataclass(frozen=True)
class Measurement:
    backend: str
    precision: str  # StagePrecision.describe()
    median_ms: float
    texts: tuple[str, ...]  # the lines read, in order
    error: str | None = None  # the candidate failed to load or run


@dataclass(frozen=True)
class BackendChoice:
    name: str
    precision: StagePrecision
    chosen_by: str  # "measurement" or "config"
    # What the choice rests on: each candidate's median ms and whether it read the page like
    # the reference; the cache key; reused from the choice file or measured now.
    details: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"name": self.name, "precision": self.precision.describe(),
                "chosen_by": self.chosen_by, **self.details}


def pick(measurements: Sequence[Measurement]) -> Measurement:
    """The fastest measurement that read what the reference read (onnxruntime, f32).

    A failed candidate or one that read differently is never picked; ties go to the earlier
    candidate (registry order: onnxruntime first). AutoSelectError when the reference itself
    is missing or failed, or nothing qualifies.
    """
    reference = next((m for m in measurements
                      if (m.backend, m.precision) == REFERENCE and m.error is None), None)
    if reference is None:
        raise AutoSelectError("the reference (onnxruntime, f32) could not be measured")
    identical = [m for m in measurements if m.error is None and m.texts == reference.texts]
    return min(identical, key=lambda m: m.median_ms)


def choice_key(backends: Sequence[str], setting: str, threads: int, model_files: Sequence[Path],
               flags: Iterable[str], pairs: Sequence[tuple[str, StagePrecision]]) -> str:
    """What a stored choice depends on, as a short digest: CPU flags, the Python and package
    versions, the model files' sizes, the thread count, the precision setting and the
    candidates it stands for (a choice made among others, such as a bf16 stage "auto" no
    longer offers, is measured again)."""
    versions = {name: _package_version(get_backend(name).package) for name in backends}
    files = sorted((str(path), path.stat().st_size if path.exists() else -1)
                   for path in model_files)
    payload = json.dumps({"flags": sorted(flags), "versions": versions, "threads": threads,
                          "precision": setting, "files": files, "python": sys.version,
                          "candidates": [f"{name}:{precision.describe()}"
                                         for name, precision in pairs]},
                         sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _package_version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "absent"


def load_choice(folder: Path, key: str) -> BackendChoice | None:
    try:
        stored = json.loads((folder / CHOICE_FILE).read_text(encoding="utf-8"))
        entry = stored[key]
        return BackendChoice(entry["name"], StagePrecision.parse(entry["precision"]),
                             "measurement", {**entry.get("details", {}), "reused": True})
    except (OSError, ValueError, KeyError, TypeError):
        return None


def store_choice(folder: Path, key: str, choice: BackendChoice) -> None:
    """Adds `choice` under `key` to the choice file, written whole to a temporary file and
    renamed, so a crash never leaves half a file behind. The temporary file's name is this
    process's own: two servers starting at once on one models folder (a node pair on one host,
    a parallel test run) each rename a whole file, and the last one's stands."""
    path = folder / CHOICE_FILE
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(stored, dict):
            stored = {}
    except (OSError, ValueError):
        stored = {}
    stored[key] = {"name": choice.name, "precision": choice.precision.describe(),
                   "details": choice.details}
    folder.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(stored, indent=1, sort_keys=True), encoding="utf-8")
    os.replace(temporary, path)


def select_backend(setting: str, threads: int, models_dir: Path, model: str, folder: Path,
                   *, backends: Sequence[str] | None = None, flags: Iterable[str] | None = None,
                   measure=None) -> BackendChoice:
    """The backend and precision for `backend: "auto"`: the stored choice for this machine
    and setup if there is one, else measured now (in child processes) and stored in `folder`.

    `measure(backend, precisions, threads, models_dir, model) -> [Measurement]` is the
    measuring step (default: `measure_in_subprocess`); tests pass their own.
    """
    from .models import resolve_model_set

    flags = cpu_flags() if flags is None else frozenset(flags)
    backends = list(installed_backends() if backends is None else backends)
    if "onnxruntime" not in backends:
        raise AutoSelectError("backend auto needs onnxruntime (the reference) installed")
    pairs = candidates(backends, setting, flags)
    if ("onnxruntime", StagePrecision()) not in pairs:  # precision bf16: still the reference
        pairs.insert(0, ("onnxruntime", StagePrecision()))
    model_files = []
    for name in backends:
        paths = resolve_model_set(model, name, models_dir)
        model_files += [p for p in (paths.det, paths.rec, paths.cls) if p is not None]
    key = choice_key(backends, setting, threads, model_files, flags, pairs)
    stored = load_choice(folder, key)
    if stored is not None:
        return stored
    measure = measure or measure_in_subprocess
    measurements: list[Measurement] = []
    for name in backends:
        precisions = [precision for backend, precision in pairs if backend == name]
        if precisions:
            measurements += measure(name, precisions, threads, models_dir, model)
    best = pick(measurements)
    reference = next(m for m in measurements if (m.backend, m.precision) == REFERENCE)
    if (best.backend, best.precision) == REFERENCE and setting == "bf16":
        raise AutoSelectError("precision bf16: no bf16 candidate read the calibration page "
                              "like onnxruntime in f32")
    details = {"measured": [{"backend": m.backend, "precision": m.precision,
                             "median_ms": round(m.median_ms, 1),
                             "identical": m.error is None and m.texts == reference.texts,
                             **({"error": m.error} if m.error else {})}
                            for m in measurements],
               "key": key, "threads": threads, "reused": False}
    choice = BackendChoice(best.backend, StagePrecision.parse(best.precision), "measurement",
                           details)
    store_choice(folder, key, choice)
    return choice


def measure_in_subprocess(backend: str, precisions: Sequence[StagePrecision], threads: int,
                          models_dir: Path, model: str) -> list[Measurement]:
    """Times `backend` at each precision in a fresh child process (its own process setup)."""
    command = [sys.executable, "-m", "ocr_engine.autoselect", "measure", "--backend", backend,
               "--threads", str(threads), "--models-dir", str(models_dir), "--model", model,
               *(arg for p in precisions for arg in ("--precision", p.describe()))]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        filter(None, [str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH")]))}
    try:
        done = subprocess.run(command, capture_output=True, text=True, env=env,
                              timeout=MEASURE_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        return [Measurement(backend, p.describe(), float("inf"), (), "timed out")
                for p in precisions]
    if done.returncode != 0:
        reason = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        return [Measurement(backend, p.describe(), float("inf"), (), reason[:300])
                for p in precisions]
    rows = json.loads(done.stdout.strip().splitlines()[-1])
    return [Measurement(row["backend"], row["precision"], row["median_ms"],
                        tuple(row["texts"]), row.get("error")) for row in rows]


def measure_here(backend: str, precisions: Sequence[StagePrecision], threads: int,
                 models_dir: Path, model: str, page: Path = CALIBRATION_PAGE
                 ) -> list[Measurement]:
    """The child's side: builds an engine per precision and times it on the page."""
    from .backends import setup_process
    from .models import resolve_model_set
    from .pipeline import EngineConfig, OcrEngine

    setup_process(backend, threads)
    data = page.read_bytes()
    paths = resolve_model_set(model, backend, models_dir)
    results = []
    for precision in precisions:
        try:
            engine = OcrEngine(EngineConfig(paths, threads=threads, precision=precision))
            texts = tuple(line.text for line in engine.ocr(data).lines)  # the warm-up
            times = []
            for _ in range(TIMED_RUNS):
                start = time.perf_counter()
                engine.ocr(data)
                times.append((time.perf_counter() - start) * 1000)
            del engine
            results.append(Measurement(backend, precision.describe(), statistics.median(times),
                                       texts))
        except Exception as exc:  # noqa: BLE001 - a candidate that fails is reported, not fatal
            results.append(Measurement(backend, precision.describe(), float("inf"), (),
                                       f"{type(exc).__name__}: {exc}"[:300]))
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ocr_engine.autoselect")
    commands = parser.add_subparsers(dest="command", required=True)
    measure = commands.add_parser("measure", help="time one backend (the server's child step)")
    measure.add_argument("--backend", required=True)
    measure.add_argument("--precision", action="append", default=[])
    measure.add_argument("--threads", type=int, default=1)
    measure.add_argument("--models-dir", type=Path, required=True)
    measure.add_argument("--model", default="ppocr-v4")
    args = parser.parse_args(argv)
    rows = measure_here(args.backend, [StagePrecision.parse(p) for p in args.precision or
                                       ["f32"]], args.threads, args.models_dir, args.model)
    # One JSON line on stdout, last: the runtime's own chatter may come before it.
    print(json.dumps([asdict(row) | {"texts": list(row.texts)} for row in rows],
                     ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
