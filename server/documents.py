"""Documents and batches: one request, many runs, one answer (DESIGN.md, "Documents and jobs").

A PDF or a multi-page TIFF is recognised by its magic bytes only (`document_kind`): this
process never parses a document; a worker does, so a hostile one can crash a worker, never the
front end. Reading a document takes two kinds of run, both through the read path
(server/service.py: cache -> in-flight sharing -> pool):

1. a probe (`DocumentProbeJob`): the kind, page count and page sizes; a document of more than
   service.max_pages pages is refused there, before its pages are even counted through. It is
   cached under the document's hash and the password, so holding the bytes of an encrypted PDF
   is not enough to reach its cached pages, and it is shared apart from OCR runs
   (service.engine_runs counts pages and images only). A document the probe calls an image is
   read as an image.
2. one `PageJob` per selected page, each its own cache entry and its own run: pages spread over
   the pool, identical pages share a run, and a re-sent document costs only the pages not
   cached. A page's key is its content digest when the probe gives one (`page_digests`), else
   the document's hash and the page number; plus the options, the model and, for a PDF, the
   dpi and the pdf_text mode.

Limits are checked before any page is submitted: the selection (`pages`, or every page)
within the document, each selected page's rendered size within max_pixels. The first page
that fails fails the document with its error (naming the page) and no further page is
submitted; pages already submitted still finish and fill the cache, whoever is left waiting.

A request never has more than `window` runs of its own in flight (a little more than the pool
has workers), so a long document keeps every worker busy without filling the queue on its own;
a queue that other requests have filled refuses the page, and the document answers 503.

A batch is a list of items (images or documents) read concurrently through the same window;
each answers its own body or its own error, in input order. Everything runs on the IOLoop
thread.

A non-blocking document or batch is a task of the service's lasting store, which spools what
redoes it (`spool_request`: the parsed request as JSON, and the document's or the items' bytes;
a batch item named by `filename` is spooled as its name and read again when redone). At start
`resume_tasks` redoes every task still pending, one at a time in the order they were accepted,
each through a reader of its own as if it had just been submitted; a task whose spool cannot
be read finishes as failed with task_lost.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import hashlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from ocr_engine import OcrOptions
from ocr_engine.documents import document_kind, rendered_size

from .errors import ApiError, ErrorInfo, to_api_error
from .pool import Lane
from .protocol import DocumentProbeJob, OcrJob, PageJob
from .request import (
    BatchItem,
    DocumentOptions,
    OcrRequest,
    RequestPolicy,
    load_item,
    loaded_model,
    select_pages,
)
from .service import OcrService, request_key
from .store import LastingTaskStore, SpooledRequest, SpoolLost

log = logging.getLogger("ppocr.documents")

# (done, total): how far a document's pages or a batch's items are.
Progress = Callable[[int, int], Awaitable[None]]


class RequestReader:
    """Reads one request's image, document or batch through `service`.

    `window` bounds this request's runs in flight; `progress` (if given) is awaited with
    (done, total) as a document's pages or a batch's items finish. `engine_ms` adds up the
    engine time of the runs this request caused (for the access log).
    """

    def __init__(self, service: OcrService, policy: RequestPolicy, request: OcrRequest, *,
                 window: int, request_id: str | None = None, lane: Lane = Lane.INTERACTIVE,
                 progress: Progress | None = None) -> None:
        self._service = service
        self._policy = policy
        self._request = request
        self._slots = asyncio.Semaphore(max(1, window))
        self._request_id = request_id
        self._lane = lane
        self._progress = progress
        self.engine_ms = 0.0

    # -- one image or document -------------------------------------------------------------

    async def start(self, data: bytes) -> Awaitable[tuple[dict, bool]]:
        """Starts reading `data` (an image or a document): its first run is submitted now, so
        a refusal (queue full) raises here. Awaiting what it returns gives (result, cached)."""
        if document_kind(data) is None:
            return self._counted(await self._service.begin(*self._image_job(data),
                                                           self._request_id, self._lane))
        digest = hashlib.sha256(data).digest()
        probe = await self._service.begin(*self._probe_job(data, digest), self._request_id,
                                          self._lane, probe=True)
        return self._document(data, digest, probe, self._progress)

    async def read(self, data: bytes, progress: Progress | None = None) -> tuple[dict, bool]:
        """(result, cached) for `data`, every run through the window (a batch's items)."""
        if document_kind(data) is None:
            return await self._read(*self._image_job(data))
        digest = hashlib.sha256(data).digest()
        probe = self._read(*self._probe_job(data, digest), probe=True)
        return await self._document(data, digest, probe, progress)

    # -- a batch ---------------------------------------------------------------------------

    async def read_batch(self) -> dict:
        """{"results": [...]}: each item's body, or its own error, in input order."""
        items = self._request.batch or ()
        done = 0

        async def one(item: BatchItem) -> dict:
            nonlocal done
            try:
                data = await load_item(item, self._policy)
                result, cached = await self.read(data)
                entry = item_body(result, cached)
            except Exception as exc:  # noqa: BLE001 - the pool's refusals too (queue full)
                entry = failed_body(to_api_error(exc))
            done += 1
            if self._progress is not None:
                await self._progress(done, len(items))
            return entry

        if self._progress is not None:
            await self._progress(0, len(items))
        return {"results": list(await asyncio.gather(*(one(item) for item in items)))}

    # -- the parts -------------------------------------------------------------------------

    async def _document(self, data: bytes, digest: bytes,
                        probe_reading: Awaitable[tuple[dict, bool]],
                        progress: Progress | None) -> tuple[dict, bool]:
        probe, _ = await probe_reading
        kind = probe.get("kind")
        if kind == "image":  # a TIFF of one frame is an image like any other
            return await self._read(*self._image_job(data))
        page_count = _page_count(probe)
        pages = select_pages(self._request.document.pages, page_count, self._policy.max_pages)
        self._check_page_sizes(kind, probe, pages)
        digests = _page_digests(probe, page_count)
        done = 0
        if progress is not None:
            await progress(0, len(pages))

        async def read_page(page: int) -> tuple[dict, bool]:
            nonlocal done
            identity = digests[page - 1] if digests else None
            try:
                result, cached = await self._read(*self._page_job(data, digest, kind, page,
                                                                  identity))
            except Exception as exc:  # noqa: BLE001 - the pool's refusals too (queue full)
                error = to_api_error(exc)
                if error.message.startswith(f"page {page} "):
                    raise error from None
                raise ApiError(error.code, f"page {page}: {error.message}",
                               details=error.info.details) from None
            done += 1
            if progress is not None:
                await progress(done, len(pages))
            return result, cached

        try:
            async with asyncio.TaskGroup() as group:
                runs = [group.create_task(read_page(page)) for page in pages]
        except BaseExceptionGroup as failed:
            # The first page to fail (the others were cancelled; their runs go on).
            raise _first(failed) from None
        results = [run.result() for run in runs]
        entries = [page_entry(page, result) for page, (result, _) in zip(pages, results)]
        body = {"model": self._request.model, "kind": kind, "page_count": page_count,
                "pages": entries, "text": "\n\n".join(entry["text"] for entry in entries)}
        return body, all(cached for _, cached in results)

    async def _read(self, key: str, job: Any, *, probe: bool = False) -> tuple[dict, bool]:
        async with self._slots:
            reading = await self._service.begin(key, job, self._request_id, self._lane,
                                                probe=probe)
            result, cached = await reading
        if not cached and not probe:
            self._add_engine_time(result)
        return result, cached

    async def _counted(self, reading: Awaitable[tuple[dict, bool]]) -> tuple[dict, bool]:
        result, cached = await reading
        if not cached:
            self._add_engine_time(result)
        return result, cached

    def _add_engine_time(self, result: dict) -> None:
        total = (result.get("timings_ms") or {}).get("total")
        if isinstance(total, (int, float)):
            self.engine_ms += total

    def _image_job(self, data: bytes) -> tuple[str, OcrJob]:
        request = self._request
        return (request_key(data, request.options.cache_key(), request.model),
                OcrJob(data, request.options, request.model))

    def _probe_job(self, data: bytes, digest: bytes) -> tuple[str, DocumentProbeJob]:
        password = self._request.document.password
        return probe_key(digest, password), DocumentProbeJob(data, password,
                                                             self._policy.max_pages)

    def _page_job(self, data: bytes, digest: bytes, kind: str, page: int,
                  identity: str | None) -> tuple[str, PageJob]:
        request, document = self._request, self._request.document
        key = page_key(digest, identity, kind, page, request.options, request.model,
                       document.dpi, document.pdf_text)
        return key, PageJob(data, page, document.dpi, document.pdf_text, document.password,
                            request.options, request.model)

    def _check_page_sizes(self, kind: str, probe: dict, pages: list[int]) -> None:
        """Refuses the document before any page runs when a selected page would render past
        max_pixels (a PDF's sizes are in points, at the request's dpi; a TIFF's in pixels)."""
        sizes = probe.get("page_sizes")
        if not isinstance(sizes, list) or len(sizes) < max(pages, default=0):
            return  # the worker checks each page as it renders it
        dpi, limit = self._request.document.dpi, self._policy.max_pixels
        for page in pages:
            size = sizes[page - 1]
            if not (isinstance(size, (list, tuple)) and len(size) == 2
                    and all(isinstance(side, (int, float)) and 0 < side < 1e9
                            for side in size)):
                continue  # unusable: the worker says why when it reads the page
            width, height = rendered_size(*size, dpi) if kind == "pdf" else size
            if width * height > limit:
                at = f" at {dpi} dpi" if kind == "pdf" else ""
                hint = "; ask for a lower 'dpi'" if kind == "pdf" else ""
                raise ApiError("image_too_large", f"page {page} would be {width:g}x{height:g} "
                               f"pixels{at}, more than max_pixels ({limit}){hint}")


# -- tasks kept across restarts ----------------------------------------------------------------

SPOOL_VERSION = 1


def spool_request(request: OcrRequest, data: bytes | None = None) -> SpooledRequest:
    """What redoes a non-blocking document (`data`, its bytes) or batch (`request.batch`)."""
    document = request.document
    fields: dict[str, Any] = {
        "version": SPOOL_VERSION, "file_type": request.file_type, "model": request.model,
        "options": dataclasses.asdict(request.options),
        "document": {"pages": None if document.pages is None else
                     [list(selected) for selected in document.pages],
                     "dpi": document.dpi, "pdf_text": document.pdf_text,
                     "password": document.password}}
    files: dict[str, bytes] = {}
    if request.batch is None:
        files["document"] = data if data is not None else b""
        fields["file"] = "document"
        return SpooledRequest(fields, files)
    items = []
    for index, item in enumerate(request.batch):
        if item.error is not None:
            items.append({"error": {"code": item.error.code, "message": item.error.message}})
        elif item.image is not None:
            files[f"item-{index}"] = item.image
            items.append({"file": f"item-{index}"})
        else:
            items.append({"filename": item.filename})
    fields["batch"] = items
    return SpooledRequest(fields, files)


def spooled_request(spooled: SpooledRequest, policy: RequestPolicy
                    ) -> tuple[OcrRequest, bytes | None]:
    """The request (and a document's bytes) back from `spool_request`'s output, checked
    against today's policy (a model no longer loaded: unknown_model). SpoolLost when it is not
    what spool_request writes."""
    fields, files = spooled.fields, spooled.files
    try:
        if fields.get("version") != SPOOL_VERSION:
            raise ValueError(f"spool version {fields.get('version')!r}")
        model = loaded_model(fields["model"], policy)
        options = OcrOptions(**fields["options"])
        document = fields["document"]
        pages = document["pages"]
        options_of_document = DocumentOptions(
            pages=None if pages is None else tuple((first, last) for first, last in pages),
            dpi=document["dpi"], pdf_text=document["pdf_text"], password=document["password"])
        batch = None
        if "batch" in fields:
            batch = tuple(_spooled_item(item, files) for item in fields["batch"])
            data = None
        else:
            data = files[fields["file"]]
        request = OcrRequest(fields["file_type"], None, None, options, model, False,
                             options_of_document, batch)
    except ApiError:
        raise
    except (KeyError, TypeError, ValueError) as exc:
        raise SpoolLost("cannot be read", details=f"{type(exc).__name__}: {exc}") from None
    return request, data


def _spooled_item(item: dict, files: dict[str, bytes]) -> BatchItem:
    if "error" in item:
        return BatchItem(error=ErrorInfo(item["error"]["code"], item["error"]["message"]))
    if "file" in item:
        return BatchItem(image=files[item["file"]])
    if not isinstance(item["filename"], str):
        raise TypeError("a batch item's filename is not a string")
    return BatchItem(filename=item["filename"])


async def resume_tasks(service: OcrService, store: LastingTaskStore, policy: RequestPolicy, *,
                       window: int) -> list[str]:
    """Redoes every task `store` holds pending (after a restart), one at a time, oldest
    first, in the background; their ids. Each finishes through `service.run_task` as it
    would have: with its result, its own error, or task_lost when its spool is unreadable."""
    pending = await store.unfinished()
    if pending:
        log.info("redoing %d pending task(s): %s", len(pending), ", ".join(pending))
    turn = asyncio.Lock()  # one at a time: each has the whole window, as a new request would

    async def redo(task_id: str) -> dict:
        async with turn:
            request, data = spooled_request(await store.spooled(task_id), policy)
            progress = functools.partial(service.report_progress, task_id)
            reader = RequestReader(service, policy, request, window=window, progress=progress)
            if request.batch is not None:
                return await reader.read_batch()
            result, cached = await reader.read(data, progress)
            return {**result, "cached": cached}

    for task_id in pending:
        service.run_task(task_id, redo(task_id))
    return pending


# -- bodies ------------------------------------------------------------------------------------

def page_entry(page: int, result: dict) -> dict:
    """A document's page as the answer shows it (the worker's result, without its model and
    timings; the page number is the selection's, whatever page the cached entry came from)."""
    return {"page": page, "width": result.get("width"), "height": result.get("height"),
            "lines": result.get("lines", []), "text": result.get("text", ""),
            "source": result.get("source", "ocr")}


def item_body(result: dict, cached: bool) -> dict:
    """A batch item's answer: the body a single image (or document) gets, without an id."""
    return {"status": "done", "cached": cached, "model": result.get("model"), **result}


def failed_body(error: ApiError) -> dict:
    """A batch item that failed: its own error object; the other items are unaffected."""
    return {"error": error.to_dict(), "status": "failed"}


def window_for(pool_size: int, queue_size: int) -> int:
    """Runs in flight per request: every worker busy and one more waiting for each, never
    more than the queue holds."""
    return pool_size + min(pool_size, queue_size)


def _page_count(probe: dict) -> int:
    count = probe.get("pages")
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ApiError("invalid_document", "the document has no pages")
    return count


# The cache keys of a document's probe and pages, shared by requests and folder jobs (so a
# job's pages and a request's answer each other from the cache).

def probe_key(digest: bytes, password: str | None = None) -> str:
    # The password is part of the key: the bytes alone must not reach an encrypted document's
    # cached probe (and through it, its pages).
    options = "document-probe" + ("" if password is None else "\0password=" + password)
    return request_key(digest, options, "")


def page_key(digest: bytes, identity: str | None, kind: str, page: int, options: OcrOptions,
             model: str, dpi: int, pdf_text: str) -> str:
    """A page's key: its content digest (`identity`, from the probe) when there is one, else
    the document's digest and the page number; plus everything that changes its reading."""
    text = options.cache_key()
    if kind == "pdf":  # a TIFF frame is read as it is: dpi and the text layer do not apply
        text += f"\0dpi={dpi}\0pdf_text={pdf_text}"
    if identity is not None:
        return request_key(identity.encode(), "document-page\0" + text, model)
    return request_key(digest, f"document-page={page}\0" + text, model)


def page_identity(probe: dict, page: int) -> str | None:
    """The page's content digest when the probe gives one for every page."""
    digests = _page_digests(probe, probe.get("pages"))
    return digests[page - 1] if digests is not None and 1 <= page <= len(digests) else None


def _page_digests(probe: dict, page_count: int) -> list[str] | None:
    digests = probe.get("page_digests")
    if isinstance(digests, list) and len(digests) == page_count \
            and all(isinstance(digest, str) and digest for digest in digests):
        return digests
    return None


def _first(group: BaseExceptionGroup) -> ApiError:
    """The error to answer with: the first ApiError among the group's (its order is the order
    the pages failed in), else the first error of any kind, mapped."""
    errors: list[BaseException] = []

    def flatten(inner: BaseExceptionGroup) -> None:
        for error in inner.exceptions:
            if isinstance(error, BaseExceptionGroup):
                flatten(error)
            else:
                errors.append(error)

    flatten(group)
    return next((error for error in errors if isinstance(error, ApiError)),
                to_api_error(errors[0]))
