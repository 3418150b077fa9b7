"""The OCR job handler that runs inside each worker process (child side only).

`boot(spec)` is the worker's bootstrap: it applies the backend's process-wide settings (thread
counts, environment) before any engine is built, then loads one engine per model set and warms
each up, so the first real request does not pay for lazy set-up.

Documents (`DocumentProbeJob`, `PageJob`): a PDF is read by pdfium in a child process forked for
each job, under `PdfSandbox`'s memory and time budget (ocr_engine/documents.py), so a hostile
PDF costs that child, never this worker and its loaded models.
"""

from __future__ import annotations

from ocr_engine import EngineConfig, ModelNotFoundError, OcrEngine, OcrResult, setup_process
from ocr_engine.documents import probe_document, read_page

from .protocol import DocumentProbeJob, EngineSpec, OcrJob, PageJob


def boot(spec: EngineSpec) -> OcrHandler:
    setup_process(spec.backend, spec.threads)
    return OcrHandler(spec)


class OcrHandler:
    """Loads one engine per configured model set, warms each up, then reads images."""

    def __init__(self, spec: EngineSpec) -> None:
        self.engines = {}
        for name, paths in spec.models.items():
            engine = OcrEngine(EngineConfig(paths, threads=spec.threads,
                                            max_pixels=spec.max_pixels,
                                            rec_batch_size=spec.rec_batch_size,
                                            cls_batch_size=spec.cls_batch_size,
                                            defaults=spec.defaults, limits=spec.limits,
                                            precision=spec.precision))
            engine.warm_up()
            self.engines[name] = engine
        self.max_pixels = spec.max_pixels
        self.pdf_sandbox = spec.pdf_sandbox

    def __call__(self, job: OcrJob | DocumentProbeJob | PageJob) -> dict:
        if isinstance(job, PageJob):
            return self.read_page(job)
        if isinstance(job, DocumentProbeJob):
            return probe_document(job.data, job.password, job.max_pages,
                                  self.pdf_sandbox).to_dict()
        result = self.engines[job.model].ocr(job.image, job.options)
        return {"model": job.model, **result.to_dict()}

    def read_page(self, job: PageJob) -> dict:
        engine = self.engines.get(job.model)
        if engine is None:
            raise ModelNotFoundError(f"model set {job.model!r} is not loaded in this worker")
        content = read_page(job.data, job.page, job.dpi, job.pdf_text, job.password,
                            self.max_pixels, self.pdf_sandbox)
        if content.image is None:
            result = OcrResult(content.width, content.height, list(content.text_lines),
                               {"text_layer": content.read_ms, "total": content.read_ms})
        else:
            result = engine.ocr_array(content.image, job.options)
            result.timings_ms["render"] = content.read_ms
            result.timings_ms["total"] += content.read_ms
        return {"model": job.model, "page": job.page, **result.to_dict(),
                "source": content.source}
