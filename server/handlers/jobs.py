"""/jobs: folder and ZIP jobs (server/jobs.py runs them; the job store keeps them).

POST /jobs starts one (201, or 200 with the existing job for an identical re-submission);
GET /jobs lists them, newest first; GET /jobs/<id> is one job's progress; POST
/jobs/<id>/cancel stops it; DELETE /jobs/<id> removes it with its results; GET
/jobs/<id>/results streams its results from the store, a page of items at a time (a running
job's finished items are readable), in json, jsonl, csv or txt.
"""

from __future__ import annotations

import csv
import datetime
import io
import json
from collections.abc import Callable
from dataclasses import dataclass

from tornado.iostream import StreamClosedError

from ocr_engine import InvalidOptionError
from ocr_engine.options import FieldSpec

from ..errors import ApiError
from ..jobs import JobRunner, parse_job_request, valid_job_id
from ..request import clip, read_fields
from ..store import JobItem, JobRecord
from .base import BaseHandler

EXPORT_FORMATS = ("json", "jsonl", "csv", "txt")
CSV_COLUMNS = ("file", "page", "line", "text", "confidence",
               "x1", "y1", "x2", "y2", "x3", "y3", "x4", "y4")
LIST_SPECS = (
    FieldSpec("limit", int, 20, "jobs per page", low=1, high=100),
    FieldSpec("offset", int, 0, "jobs to skip, newest first", low=0, high=10**9),
)
RESULT_SPECS = (
    FieldSpec("format", str, "json", "json: an array of one object per item; jsonl: one "
              "object per line; csv: one row per text line; txt: each file's text",
              choices=EXPORT_FORMATS),
)
_JOB_ID_SCHEMA = {"job_id": {"type": "string", "pattern": "^[0-9a-f]{32}$",
                             "description": "the id POST /jobs answered with"}}


class JobsBaseHandler(BaseHandler):
    openapi_parameters = _JOB_ID_SCHEMA

    @property
    def runner(self) -> JobRunner:
        runner = self.ctx.services.jobs
        if runner is None:
            raise ApiError("not_found", "folder jobs are off on this server (it runs without "
                           "a job store)")
        return runner

    async def job(self, job_id: str) -> JobRecord:
        job = await self.runner.get(job_id) if valid_job_id(job_id) else None
        if job is None:
            raise ApiError("not_found", "no such job (unknown, expired or deleted)"
                           if valid_job_id(job_id) else "no such job (ids are 32 hex "
                           "characters)")
        return job

    def query(self, specs: tuple[FieldSpec, ...]) -> dict:
        """The query string's values by the declarations; unknown or repeated names are
        refused, an empty value means the default."""
        known = {spec.name: spec for spec in specs}
        values = {spec.name: spec.default for spec in specs}
        for name, raw in self.request.query_arguments.items():
            if name not in known:
                raise ApiError("invalid_field", f"unknown query parameter {clip(name, 40)}; "
                               f"parameters: {', '.join(known)}")
            if len(raw) > 1:
                raise ApiError("invalid_field", f"query parameter {clip(name, 40)} is given "
                               "more than once")
            text = raw[0].decode("utf-8", "replace")
            if text.strip():
                try:
                    values[name] = known[name].coerce(text)
                except InvalidOptionError as exc:
                    raise ApiError("invalid_field", str(exc)) from None
        return values

    def job_body(self, job: JobRecord, recent: list[JobItem] | None = None) -> dict:
        body = {"id": job.id, "status": job.status, "source": job.source, "name": job.name,
                "model": job.model, "options": json.loads(job.options),
                "total": job.total, "done": job.done, "failed": job.failed,
                "cached": job.cached, "skipped_symlinks": job.skipped_symlinks,
                "created_at": _iso(job.created_at), "started_at": _iso(job.started_at),
                "finished_at": _iso(job.finished_at), "eta_s": self.runner.eta(job),
                "url": self.reverse_url("job", job.id),
                "result_url": self.reverse_url("job_results", job.id)}
        if job.error is not None:
            body["error"] = job.error
        if recent is not None:
            body["recent"] = [_summary(item) for item in recent]
        return body


class JobsHandler(JobsBaseHandler):
    """POST /jobs starts a folder or ZIP job; GET /jobs lists the jobs, newest first."""

    uploads = True

    async def post(self) -> None:
        if self._finished:
            return  # refused while the body was arriving
        runner = self.runner
        with self.in_progress():
            fields, files = read_fields(self.request.headers.get("Content-Type", ""),
                                        self.body(), self.request.query_arguments)
            request = parse_job_request(fields, files, self.ctx.requests)
            job, created = await runner.submit(request)
        self.set_header("Location", self.reverse_url("job", job.id))
        self.send_json({"id": job.id, "status": job.status, "total": job.total,
                        "skipped_symlinks": job.skipped_symlinks,
                        "url": self.reverse_url("job", job.id),
                        "result_url": self.reverse_url("job_results", job.id)},
                       status=201 if created else 200)

    async def get(self) -> None:
        runner = self.runner
        query = self.query(LIST_SPECS)
        jobs, total = await runner.page(query["limit"], query["offset"])
        following = query["offset"] + len(jobs)
        self.send_json({"jobs": [self.job_body(job) for job in jobs], "total": total,
                        "limit": query["limit"], "offset": query["offset"],
                        "next": (f"/jobs?limit={query['limit']}"
                                 f"&offset={following}") if following < total else None})


class JobHandler(JobsBaseHandler):
    """GET /jobs/<id>: a job's progress; DELETE /jobs/<id>: remove it and its results."""

    async def get(self, job_id: str) -> None:
        job = await self.job(job_id)
        self.send_json(self.job_body(job, await self.runner.recent(job.id)))

    async def delete(self, job_id: str) -> None:
        job = await self.job(job_id)
        await self.runner.delete(job.id)
        self.set_status(204)
        self.clear_header("Content-Type")
        self.finish()


class JobCancelHandler(JobsBaseHandler):
    """POST /jobs/<id>/cancel: stop a queued or running job (its finished items are kept)."""

    async def post(self, job_id: str) -> None:
        if self._finished:
            return
        job = await self.job(job_id)
        job = await self.runner.cancel(job.id)
        self.send_json(self.job_body(job, await self.runner.recent(job.id)))


class JobResultsHandler(JobsBaseHandler):
    """GET /jobs/<id>/results?format=json|jsonl|csv|txt: the finished items' results."""

    async def get(self, job_id: str) -> None:
        job = await self.job(job_id)
        export = EXPORTS[self.query(RESULT_SPECS)["format"]]
        self.set_header("Content-Type", export.media_type)
        self.set_header("Content-Disposition",
                        f'inline; filename="job-{job.id}.{export.extension}"')
        runner = self.runner
        after, first = (-1, -1), True
        chunk = export.head
        try:
            while True:
                items = await runner.results(job.id, after)
                if not items:
                    break
                parts = [chunk]
                for item in items:
                    parts.append(export.item(item, first))
                    first = False
                self.write("".join(parts))
                await self.flush()  # one page at a time: never the whole job in memory
                chunk = ""
                after = (items[-1].seq, items[-1].page)
            self.finish(chunk + export.tail)
        except StreamClosedError:
            return  # the client left


# ---------------------------------------------------------------- export formats

@dataclass(frozen=True)
class Export:
    media_type: str
    extension: str
    item: Callable[[JobItem, bool], str]  # (item, first) -> text
    head: str = ""
    tail: str = ""


def item_object(item: JobItem) -> dict:
    """One item's result: the file, its page and status, then the result's fields (model,
    width, height, lines, text) or its error."""
    body: dict = {"file": item.file, "page": item.page, "status": item.state}
    if item.error is not None:
        body["error"] = item.error.public_dict()
    else:
        body["cached"] = item.cached
        body.update({key: value for key, value in (item.result or {}).items()
                     if key != "timings_ms"})
    return body


def _json_item(item: JobItem, first: bool) -> str:
    return ("" if first else ",\n") + json.dumps(item_object(item), ensure_ascii=False)


def _jsonl_item(item: JobItem, first: bool) -> str:
    return json.dumps(item_object(item), ensure_ascii=False) + "\n"


def _csv_item(item: JobItem, first: bool) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    for number, line in enumerate((item.result or {}).get("lines", []), start=1):
        writer.writerow([item.file, item.page, number, line["text"], line["confidence"],
                         *(coordinate for point in line["box"] for coordinate in point)])
    return out.getvalue()


def _txt_item(item: JobItem, first: bool) -> str:
    if item.error is not None:
        text = f"[failed: {item.error.code}: {item.error.message}]"
    else:
        text = (item.result or {}).get("text", "")
    return f"==> {item.file} (page {item.page}) <==\n{text}\n\n"


EXPORTS = {
    "json": Export("application/json; charset=utf-8", "json", _json_item, "[\n", "\n]\n"),
    "jsonl": Export("application/x-ndjson; charset=utf-8", "jsonl", _jsonl_item),
    "csv": Export("text/csv; charset=utf-8", "csv", _csv_item, ",".join(CSV_COLUMNS) + "\r\n"),
    "txt": Export("text/plain; charset=utf-8", "txt", _txt_item),
}


def _summary(item: JobItem) -> dict:
    summary: dict = {"file": item.file, "page": item.page, "status": item.state,
                     "attempts": item.attempts}
    if item.error is not None:
        summary["error"] = item.error.public_dict()
    else:
        summary["cached"] = item.cached
        summary["lines"] = len((item.result or {}).get("lines", []))
    return summary


def _iso(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    moment = datetime.datetime.fromtimestamp(epoch, datetime.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
