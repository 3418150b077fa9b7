"""The OCR job handler that runs inside each worker process (child side only).

`boot(spec)` is the worker's bootstrap: it applies the backend's process-wide settings (thread
counts, environment) before any engine is built, then loads one engine per model set and warms
each up, so the first real request does not pay for lazy set-up.
"""

from __future__ import annotations

from ocr_engine import EngineConfig, OcrEngine

from .protocol import EngineSpec, OcrJob


def boot(spec: EngineSpec) -> OcrHandler:
    from ocr_engine import backends

    setup = getattr(backends, "setup_process", None)  # TODO: registry's process setup
    if setup is not None:
        setup(spec.backend, spec.threads)
    return OcrHandler(spec)


class OcrHandler:
    """Loads one engine per configured model set, warms each up, then reads images."""

    def __init__(self, spec: EngineSpec) -> None:
        self.engines = {}
        for name, paths in spec.models.items():
            extra = {"limits": spec.limits} if spec.limits is not None else {}
            engine = OcrEngine(EngineConfig(paths, threads=spec.threads,
                                            max_pixels=spec.max_pixels,
                                            rec_batch_size=spec.rec_batch_size,
                                            cls_batch_size=spec.cls_batch_size,
                                            defaults=spec.defaults, **extra))
            engine.warm_up()
            self.engines[name] = engine

    def __call__(self, job: OcrJob) -> dict:
        result = self.engines[job.model].ocr(job.image, job.options)
        return {"model": job.model, **result.to_dict()}
