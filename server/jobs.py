"""Folder and ZIP jobs: expanding a request into items, and the runner that reads them.

A job is a list of items held in the job store (store/sqlite.py): each item is a page of a
file, the file being in a folder inside service.filename_roots or an entry of an uploaded ZIP
spooled into the state folder. An image is one item (page 1); a PDF or multi-page TIFF is
probed by a worker when its first page comes up (DocumentProbeJob: the front end never parses
a document), its further pages are added as items, and each page is read as its own PageJob,
under the same cache keys as server/documents.py gives a request's pages. The job's row, its
items and every item's result are committed as they happen, so a job survives a restart
(kill -9 included) and resumes where it stopped.

- Listing (`list_folder`, blocking, run in the default executor): the folder is opened with
  `sandbox.open_in_roots(directory=True)` and walked from fds only (os.scandir on an fd, each
  sub-folder opened with O_NOFOLLOW relative to its parent's fd), so no path the client names
  is ever followed through a symlink. A symlink met on the way is resolved by the sandbox's own
  rules: one that leads to a file inside the roots is an item, any other is skipped and
  counted. Each item is read again at run time through `sandbox.read_sandboxed`, so a file
  swapped for a link between listing and reading is refused then.
- ZIP uploads (`read_archive`): bounded before anything is unpacked (the entry count from the
  end-of-central-directory record, the declared sizes), entries with unsafe names, links,
  encryption or archives inside are refused, and entries are spooled under numbered names:
  an entry's name is only ever data, never a path.
- Running (`JobRunner`, on the IOLoop thread): one job at a time, oldest first; at most
  `JobLimits.max_in_flight` items in flight, each read through `OcrService.read(...,
  lane=Lane.BACKGROUND)`, so the pool dispatches an item only when no interactive request
  waits, and the result cache answers an item it already holds (counted as `cached`). An
  item that cannot be read fails alone, with its error code and message; a refusal that is
  not the item's fault (no worker, shutting down) leaves it queued for the next pass.
  Finished items are written in groups (one transaction per store round trip); a job is
  marked done only once every item's result is committed.
- Identical re-submissions (same folder listing with the same sizes and mtimes, or the same
  ZIP bytes, and the same options) are answered with the existing job.
- Retention: finished jobs are deleted, with their rows and spooled files, `retention`
  seconds after they finished (checked at start and periodically).
- Across nodes (service.redis_url: the job store is store/redis_jobs.py, passed as the
  runner's `stream` too): there is no queue of jobs here; every node's runner takes items
  from the nodes' shared Redis Stream, as many as it has slots, reads them the same way and
  records each before acknowledging it; a ZIP's entries are stored in Redis instead of the
  state folder, so any node reads them. See "running from the shared stream" below.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import errno
import fnmatch
import hashlib
import io
import json
import logging
import os
import re
import secrets
import stat
import time
import zipfile
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tornado.httputil import HTTPFile

from ocr_engine import InvalidOptionError, OcrOptions
from ocr_engine.documents import PDF_TEXT_MODES, document_kind
from ocr_engine.options import OPTION_SPECS, FieldSpec

from .config import MAX_DPI, MIN_DPI
from .documents import page_identity, page_key, probe_key
from .errors import ApiError, ErrorInfo, error_info
from .pool import Lane
from .protocol import DocumentProbeJob, OcrJob, PageJob
from .request import RequestPolicy, clip, given_options, loaded_model, request_spec
from .sandbox import open_in_roots, read_sandboxed
from .service import OcrService, request_key
from .store import FINISHED_STATUSES, ItemOutcome, ItemSpec, JobItem, JobRecord, JobStore
from .store.files import remove_tree, write_synced

if TYPE_CHECKING:  # the Redis store is only imported where service.redis_url is set
    from .store.redis_jobs import RedisJobStore, StreamEntry

log = logging.getLogger("ppocr.jobs")

# What a folder job reads when the request names no patterns.
DEFAULT_PATTERNS = ("*.jpg", "*.jpeg", "*.png", "*.bmp", "*.webp", "*.tif", "*.tiff", "*.gif",
                    "*.pdf")
MAX_PATTERNS, MAX_PATTERN_LENGTH = 32, 100
MAX_DEPTH = 64  # folders nested deeper are refused (each level holds an fd while walked)
PAGE_SIZE = 200  # items read from the store at a time
RECENT_ITEMS = 5
RETRY_DELAY_S = 1.0  # after a pass the pool refused items in (no worker, restarting)
PROBES_KEPT = 8  # documents' probes a running job keeps at hand (its pages need them)
STORE_RETRY_S = 1.0  # a shared job store that cannot be reached is tried again after this
ARCHIVE_BATCH_BYTES = 16 << 20  # a ZIP's entries go to a shared store this much at a time
ACTIVE_IDLE_S = 60.0  # a job no item of which was taken here for this long is forgotten here
# Pool refusals that are not the item's fault: the item stays queued and is read again.
TRANSIENT_CODES = frozenset({"queue_full", "unavailable", "shutting_down"})
ARCHIVE_SUFFIXES = (".zip", ".jar", ".tar", ".tgz", ".gz", ".bz2", ".xz", ".zst", ".7z", ".rar",
                    ".lz", ".lz4", ".lzma", ".cab", ".iso")
_ARCHIVE_MAGIC = (b"PK\x03\x04", b"PK\x05\x06", b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00",
                  b"7z\xbc\xaf\x27\x1c", b"Rar!\x1a\x07", b"\x28\xb5\x2f\xfd")
_JOB_ID = re.compile(r"^[0-9a-f]{32}$")
_FOLDER_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_READ_CHUNK = 1 << 20


@dataclass(frozen=True)
class JobLimits:
    """The jobs section of the config, resolved (max_in_flight is the pool's background cap)."""

    max_in_flight: int = 1
    retention: float = 7 * 86400.0
    max_items: int = 100_000
    max_zip_entries: int = 10_000
    max_zip_bytes: int = 1 << 30


def new_job_id() -> str:
    return secrets.token_hex(16)


def valid_job_id(job_id: str) -> bool:
    return bool(_JOB_ID.match(job_id))


# ---------------------------------------------------------------- the request

JOB_SPECS: tuple[FieldSpec, ...] = (
    FieldSpec("directory", str, None, "the folder to read: relative to one of "
              "service.filename_roots, or an absolute path inside one"),
    FieldSpec("recursive", bool, False, "also read the folder's sub-folders"),
    FieldSpec("patterns", str, None, "file-name patterns to read (shell-style, case-"
              "insensitive): a JSON list, or comma-separated; default: "
              + ", ".join(DEFAULT_PATTERNS)),
    FieldSpec("file", bytes, None, "instead of a folder: a ZIP of images, as a multipart file "
              "upload"),
    FieldSpec("model", str, None, "the loaded model set to read with; default: "
              "ocr.predict_system.model"),
    request_spec("preset"),
    FieldSpec("dpi", int, None, "PDF: the resolution pages are rendered at; default: "
              "ocr.predict_system.dpi", low=MIN_DPI, high=MAX_DPI),
    FieldSpec("pdf_text", str, "ocr", "PDF: ocr reads the rendered page; auto takes a page's "
              "text layer where it has one and reads the others; only takes the text layer",
              choices=PDF_TEXT_MODES),
) + OPTION_SPECS
JOB_FIELDS = tuple(spec.name for spec in JOB_SPECS)
_JOB_SPECS = {spec.name: spec for spec in JOB_SPECS}


@dataclass(frozen=True)
class JobRequest:
    """A validated POST /jobs: a folder (`directory`) or a ZIP (`archive`), never both."""

    directory: str | None
    archive: bytes | None
    archive_name: str
    recursive: bool
    patterns: tuple[str, ...]
    options: OcrOptions
    model: str
    dpi: int
    pdf_text: str


def parse_job_request(fields: Mapping[str, Any], files: Mapping[str, list[HTTPFile]],
                      policy: RequestPolicy) -> JobRequest:
    """Validates POST /jobs's fields (server.request.read_fields's output) the way
    parse_request validates /ocr_service's: unknown fields refused, an empty value means not
    given, the model and options checked by the same helpers (loaded_model, given_options)."""
    unknown = [name for name in fields if name not in _JOB_SPECS]
    unknown += [name for name in files if name != "file"]
    if unknown:
        raise ApiError("invalid_field", f"unknown field {clip(str(unknown[0]), 40)}; "
                       f"fields: {', '.join(JOB_FIELDS)}")
    given = {name: value for name, value in fields.items()
             if not (isinstance(value, str) and not value.strip())}
    uploads = files.get("file") or []
    if "file" in given:
        _coerce("file", given["file"])  # a text field named 'file' is not an upload
    directory = _coerce("directory", given["directory"]) if "directory" in given else None
    if directory is not None and uploads:
        raise ApiError("invalid_field", "give either 'directory' (a folder on the server) or "
                       "'file' (a ZIP upload), not both")
    if directory is None and not uploads:
        raise ApiError("missing_field", "a job needs 'directory' (a folder inside "
                       "service.filename_roots) or 'file' (a ZIP upload)")
    model = loaded_model(_coerce("model", given["model"]) if "model" in given else None,
                         policy)
    options = given_options(given, policy, model)
    recursive = _coerce("recursive", given["recursive"]) if "recursive" in given else False
    dpi = _coerce("dpi", given["dpi"]) if "dpi" in given else policy.default_dpi
    pdf_text = _coerce("pdf_text", given["pdf_text"]) if "pdf_text" in given else "ocr"
    patterns = _patterns(given.get("patterns"))
    upload = uploads[0] if uploads else None
    return JobRequest(directory=directory, archive=upload["body"] if upload else None,
                      archive_name=(upload.get("filename") or "upload.zip") if upload else "",
                      recursive=recursive, patterns=patterns, options=options, model=model,
                      dpi=dpi, pdf_text=pdf_text)


def _coerce(name: str, raw: Any) -> Any:
    try:
        return _JOB_SPECS[name].coerce(raw)
    except InvalidOptionError as exc:
        raise ApiError("invalid_field", str(exc)) from None


def _patterns(raw: Any) -> tuple[str, ...]:
    if raw is None:
        return DEFAULT_PATTERNS
    if isinstance(raw, str):
        items = [part.strip() for part in raw.split(",")]
    elif isinstance(raw, list):
        items = raw
    else:
        raise ApiError("invalid_field", "patterns must be a list of strings or a "
                       "comma-separated string")
    if not items or len(items) > MAX_PATTERNS:
        raise ApiError("invalid_field", f"patterns must list 1 to {MAX_PATTERNS} patterns")
    patterns = []
    for item in items:
        if not isinstance(item, str) or not item.strip():
            raise ApiError("invalid_field", "each pattern must be a non-empty string")
        if len(item) > MAX_PATTERN_LENGTH or "/" in item or "\0" in item:
            raise ApiError("invalid_field", f"pattern {clip(item, 40)} must be a file-name "
                           f"pattern (no '/') of at most {MAX_PATTERN_LENGTH} characters")
        patterns.append(item.strip().lower())
    return tuple(dict.fromkeys(patterns))


def _matches(name: str, patterns: tuple[str, ...]) -> bool:
    lowered = name.lower()
    return any(fnmatch.fnmatchcase(lowered, pattern) for pattern in patterns)


# ---------------------------------------------------------------- listing a folder

@dataclass(frozen=True)
class Listing:
    location: str  # the folder's real path (inside the roots)
    items: list[ItemSpec]
    skipped_symlinks: int


def list_folder(name: str, roots: Any, *, recursive: bool, patterns: tuple[str, ...],
                max_items: int) -> Listing:
    """The files matching `patterns` in the folder `name` leads to inside `roots` (blocking).
    Raises ApiError: the sandbox's refusals, too_many_items past `max_items`. The folder's
    location is the kernel's path for the fd it was opened as (/proc/self/fd: Linux)."""
    if not roots:
        raise ApiError("forbidden_path", "folder jobs read from service.filename_roots, and "
                       "the server has none configured")
    fd = open_in_roots(name, roots, directory=True)
    try:
        # The kernel's name for the folder we hold: where its items are read from later.
        location = os.readlink(f"/proc/self/fd/{fd}")
        walk = _Walk(name, location, roots, recursive, patterns, max_items)
        walk.folder(fd, "", 0)
    finally:
        os.close(fd)
    return Listing(location, sorted(walk.items, key=lambda item: item.file), walk.skipped)


class _Walk:
    def __init__(self, name: str, location: str, roots: Any, recursive: bool,
                 patterns: tuple[str, ...], max_items: int) -> None:
        self.name, self.location, self.roots = name, location, roots
        self.recursive, self.patterns, self.max_items = recursive, patterns, max_items
        self.items: list[ItemSpec] = []
        self.skipped = 0

    def folder(self, fd: int, prefix: str, depth: int) -> None:
        if depth > MAX_DEPTH:
            raise ApiError("invalid_field", f"{clip(self.name)} has folders nested more than "
                           f"{MAX_DEPTH} deep")
        with os.scandir(fd) as scan:
            entries = sorted(scan, key=lambda entry: entry.name)
        for entry in entries:
            if not _utf8(entry.name):
                continue  # not a name a client could be shown or send back
            relative = prefix + entry.name
            try:
                if entry.is_symlink():
                    self.link(fd, entry, relative)
                elif entry.is_dir(follow_symlinks=False):
                    if self.recursive:
                        self.subfolder(fd, entry.name, relative, depth)
                elif entry.is_file(follow_symlinks=False) and _matches(entry.name,
                                                                        self.patterns):
                    self.add(relative, entry.stat(follow_symlinks=False))
            except FileNotFoundError:
                continue  # removed while we listed it

    def subfolder(self, fd: int, name: str, relative: str, depth: int) -> None:
        try:
            child = os.open(name, _FOLDER_FLAGS, dir_fd=fd)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                self.skipped += 1  # swapped for a symlink since it was listed
                return
            if exc.errno == errno.ENOENT:
                return
            if exc.errno in (errno.EACCES, errno.EPERM):
                raise ApiError("forbidden_path", f"the server may not read the folder "
                               f"{clip(relative)} in {clip(self.name)}") from None
            raise ApiError("invalid_field", f"cannot open the folder {clip(relative)}: "
                           f"{exc.strerror or type(exc).__name__}") from None
        try:
            self.folder(child, relative + "/", depth + 1)
        finally:
            os.close(child)

    def link(self, fd: int, entry: os.DirEntry, relative: str) -> None:
        """A file link inside the roots is an item; any other link is skipped and counted
        (links to folders are never followed: they could loop)."""
        if not _matches(entry.name, self.patterns):
            if self.recursive and _leads_to_folder(fd, entry.name):
                self.skipped += 1
            return
        try:
            opened = open_in_roots(f"{self.location}/{relative}", self.roots)
        except ApiError:
            self.skipped += 1
            return
        try:
            self.add(relative, os.fstat(opened))
        finally:
            os.close(opened)

    def add(self, relative: str, status: os.stat_result) -> None:
        if len(self.items) >= self.max_items:
            raise ApiError("too_many_items", f"{clip(self.name)} holds more than "
                           f"{self.max_items} matching files (jobs.max_items)")
        self.items.append(ItemSpec(relative, status.st_size, status.st_mtime_ns))


def _leads_to_folder(fd: int, name: str) -> bool:
    try:
        return stat.S_ISDIR(os.stat(name, dir_fd=fd).st_mode)
    except OSError:
        return False


def _utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


# ---------------------------------------------------------------- a ZIP upload

@dataclass(frozen=True)
class Archive:
    """A checked ZIP: the entries to read (`items`, with their ZipInfo) and its digest."""

    zip: zipfile.ZipFile
    entries: list[zipfile.ZipInfo]
    items: list[ItemSpec]
    digest: str

    def spool(self, folder: Path, max_entry_bytes: int) -> None:
        """Writes entry k to `folder`/k (blocking), each file and the folder synced: a job
        the client was told about must find its files after a crash."""
        folder.mkdir(mode=0o700)
        dir_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            for seq, info in enumerate(self.entries):
                self._spool_entry(dir_fd, str(seq), info, max_entry_bytes)
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def read_entries(self, start: int, budget: int, max_entry_bytes: int
                     ) -> tuple[list[tuple[int, bytes]], int]:
        """Entries start.. unpacked (blocking), with the checks `spool` makes, until they
        hold `budget` bytes (one at least): [(seq, bytes)] and the next seq to read. For a
        shared job store that keeps the entries (server/store/redis_jobs.py)."""
        entries: list[tuple[int, bytes]] = []
        size, seq = 0, start
        while seq < len(self.entries) and (not entries or size < budget):
            data = b"".join(self._entry_chunks(self.entries[seq], max_entry_bytes))
            entries.append((seq, data))
            size += len(data)
            seq += 1
        return entries, seq

    def _spool_entry(self, dir_fd: int, name: str, info: zipfile.ZipInfo,
                     max_entry_bytes: int) -> None:
        write_synced(dir_fd, name, self._entry_chunks(info, max_entry_bytes))

    def _entry_chunks(self, info: zipfile.ZipInfo, max_entry_bytes: int) -> Iterator[bytes]:
        """The entry's bytes, checked as they are unpacked: no archive inside, no more than
        it declares."""
        limit = min(info.file_size, max_entry_bytes)
        try:
            written = 0
            with self.zip.open(info) as source:
                while chunk := source.read(_READ_CHUNK):
                    if written == 0 and chunk.startswith(_ARCHIVE_MAGIC):
                        raise ApiError("invalid_archive", f"entry {clip(info.filename, 60)} "
                                       "is itself an archive; nested archives are refused")
                    written += len(chunk)
                    if written > limit:  # zipfile stops at the declared size; never trust it
                        raise ApiError("archive_too_large", f"entry {clip(info.filename, 60)} "
                                       "holds more than it declares")
                    yield chunk
        except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError,
                RuntimeError) as exc:
            raise ApiError("invalid_archive", f"entry {clip(info.filename, 60)} cannot be "
                           f"unpacked ({_zip_problem(exc)})") from None


def read_archive(data: bytes, patterns: tuple[str, ...], limits: JobLimits,
                 max_entry_bytes: int) -> Archive:
    """Checks a ZIP upload without unpacking it (blocking: it hashes the bytes). Refuses,
    naming the entry: more entries than max_zip_entries (counted from the end record, before
    zipfile parses the directory), declared sizes over max_zip_bytes in all or over
    `max_entry_bytes` for one, unsafe names, links, encrypted entries and nested archives."""
    declared = _declared_entries(data)
    if declared is None:
        raise ApiError("invalid_archive", "the upload is not a ZIP (no end of central "
                       "directory record)")
    if declared > limits.max_zip_entries:
        raise ApiError("too_many_items", f"the ZIP declares {declared} entries; the limit is "
                       f"{limits.max_zip_entries} (jobs.max_zip_entries)")
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        infos = archive.infolist()
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, ValueError,
            OSError) as exc:
        raise ApiError("invalid_archive", f"the upload is not a readable ZIP "
                       f"({_zip_problem(exc)})") from None
    if len(infos) > limits.max_zip_entries:
        raise ApiError("too_many_items", f"the ZIP holds {len(infos)} entries; the limit is "
                       f"{limits.max_zip_entries} (jobs.max_zip_entries)")
    total = 0
    names: set[str] = set()
    entries: list[zipfile.ZipInfo] = []
    items: list[ItemSpec] = []
    for info in infos:
        name = info.filename
        _check_entry_name(name)
        if stat.S_ISLNK(info.external_attr >> 16):
            raise ApiError("invalid_archive", f"entry {clip(name, 60)} is a symbolic link")
        if info.is_dir():
            continue
        if info.flag_bits & 0x1:
            raise ApiError("invalid_archive", f"entry {clip(name, 60)} is encrypted")
        if name.lower().endswith(ARCHIVE_SUFFIXES):
            raise ApiError("invalid_archive", f"entry {clip(name, 60)} is itself an archive; "
                           "nested archives are refused")
        total += info.file_size
        if total > limits.max_zip_bytes:
            raise ApiError("archive_too_large", f"the ZIP's entries declare more than "
                           f"{limits.max_zip_bytes} bytes uncompressed (jobs.max_zip_bytes)")
        if info.file_size > max_entry_bytes:
            raise ApiError("archive_too_large", f"entry {clip(name, 60)} declares "
                           f"{info.file_size} bytes; one file may hold {max_entry_bytes} "
                           "(web_server.max_body_size)")
        if not _matches(name.rsplit("/", 1)[-1], patterns):
            continue
        if name in names:
            raise ApiError("invalid_archive", f"entry {clip(name, 60)} appears twice")
        names.add(name)
        if len(items) >= limits.max_items:
            raise ApiError("too_many_items", f"the ZIP holds more than {limits.max_items} "
                           "matching files (jobs.max_items)")
        entries.append(info)
        items.append(ItemSpec(name, info.file_size, 0))
    return Archive(archive, entries, items, hashlib.sha256(data).hexdigest())


def _declared_entries(data: bytes) -> int | None:
    """The entry count the ZIP's end record declares (ZIP64's when it says 0xFFFF)."""
    tail_start = max(0, len(data) - (22 + 0xFFFF))
    position = data.rfind(b"PK\x05\x06", tail_start)
    if position < 0 or len(data) - position < 22:
        return None
    count = int.from_bytes(data[position + 10:position + 12], "little")
    locator = position - 20
    if count == 0xFFFF and locator >= 0 and data[locator:locator + 4] == b"PK\x06\x07":
        offset = int.from_bytes(data[locator + 8:locator + 16], "little")
        if data[offset:offset + 4] == b"PK\x06\x06":
            count = int.from_bytes(data[offset + 32:offset + 40], "little")
    return count


def _check_entry_name(name: str) -> None:
    parts = name.replace("\\", "/").split("/")
    if ("\0" in name or name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name)
            or ".." in parts):
        raise ApiError("invalid_archive", f"entry {clip(name, 60)} has an unsafe name "
                       "(absolute, or with '..'); entries must stay inside the archive")


def _zip_problem(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return "".join(ch if ch.isprintable() else "?" for ch in text[:80])


# ---------------------------------------------------------------- fingerprints

def folder_fingerprint(listing: Listing, request: JobRequest) -> str:
    digest = hashlib.sha256(json.dumps(
        ["folder", listing.location, request.recursive, request.patterns,
         request.options.cache_key(), request.model, request.dpi, request.pdf_text]).encode())
    for item in listing.items:
        digest.update(json.dumps([item.file, item.size, item.mtime_ns]).encode())
    return digest.hexdigest()


def archive_fingerprint(archive: Archive, request: JobRequest) -> str:
    return hashlib.sha256(json.dumps(
        ["zip", archive.digest, request.patterns, request.options.cache_key(),
         request.model, request.dpi, request.pdf_text]).encode()).hexdigest()


def options_of(key: str) -> OcrOptions:
    """The options a job was stored with (OcrOptions.cache_key() form); an option added since
    takes its default."""
    known = {spec.name for spec in dataclasses.fields(OcrOptions)}
    return OcrOptions(**{name: value for name, value in json.loads(key).items()
                         if name in known})


# ---------------------------------------------------------------- the runner

@dataclass
class _Active:
    """The job being run: where its rate is measured from, and whether to stop it."""

    job: JobRecord
    options: OcrOptions
    started: float  # monotonic
    finished_before: int  # items finished when this run began (a resumed job has some)
    stop: bool = False
    expanded: bool = False  # a document's pages were added this pass (behind its cursor)
    last_taken: float = 0.0  # monotonic; a job read from the shared stream (see _forget_idle)
    # seq -> (digest, probe) of the documents whose pages are being read.
    probes: collections.OrderedDict = dataclasses.field(default_factory=collections.OrderedDict)


class _ItemWriter:
    """Group commit: what finished while the store was writing goes in the next transaction.
    A failed write is logged; its items stay queued and the job's next pass reads them."""

    def __init__(self, store: JobStore) -> None:
        self._store = store
        self._started: list[tuple[str, int, int]] = []
        self._finished: list[tuple[str, ItemOutcome]] = []
        self._flushing: asyncio.Task | None = None

    def started(self, job_id: str, item: JobItem) -> None:
        self._started.append((job_id, item.seq, item.page))
        self._kick()

    def finished(self, job_id: str, outcome: ItemOutcome) -> None:
        self._finished.append((job_id, outcome))
        self._kick()

    async def drain(self) -> None:
        while self._flushing is not None and not self._flushing.done():
            await asyncio.shield(self._flushing)

    def _kick(self) -> None:
        if self._flushing is None or self._flushing.done():
            self._flushing = asyncio.get_running_loop().create_task(self._flush())

    async def _flush(self) -> None:
        while self._started or self._finished:
            started, self._started = self._started, []
            finished, self._finished = self._finished, []
            try:
                await self._store.record(started, finished)
            except Exception:
                log.exception("cannot record %d finished job items; they will be read again",
                              len(finished))


class JobRunner:
    """Accepts jobs, runs them one at a time in the background and answers for them.

    Everything here runs on the IOLoop thread; file system work goes to the default executor
    and every store call to the store's own thread. `clock` (epoch seconds, for the stored
    times and retention) and `monotonic` (for the ETA) are injectable so tests tick time.

    With a `stream` (the Redis job store, shared by the nodes of a cluster, passed as both
    `store` and `stream`) the runner takes its items from the nodes' shared stream instead
    of running its own queue of jobs: at most max_in_flight at a time, each one recorded and
    acknowledged before its slot is free again (see "running from the shared stream").
    """

    def __init__(self, store: JobStore, ocr: OcrService, policy: RequestPolicy,
                 limits: JobLimits, state_dir: Path, *,
                 clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic,
                 on_item_finished: Callable[[str], None] | None = None,
                 stream: RedisJobStore | None = None) -> None:
        self.store = store
        self._stream = stream
        # Stream entries being read here: refreshed so no other node takes them over.
        self._held: dict[str, StreamEntry] = {}
        # Told "done", "cached" or "failed" for every finished item (the metrics).
        self._on_item_finished = on_item_finished
        self.ocr = ocr
        self.policy = policy
        self.limits = limits
        self.state_dir = Path(state_dir)
        self.spool_dir = self.state_dir / "spool"
        self._clock = clock
        self._monotonic = monotonic
        self._queue: collections.deque[str] = collections.deque()
        self._active: dict[str, _Active] = {}
        self._writer = _ItemWriter(store)
        self._wake: asyncio.Event | None = None
        self._stopping: asyncio.Event | None = None
        self._tasks: list[asyncio.Task] = []
        self.closing = False

    @property
    def running_jobs(self) -> int:
        return len(self._active)

    # -- life cycle -------------------------------------------------------------------

    async def start(self) -> None:
        """Creates the state folder, opens the store, deletes expired jobs and orphaned
        spool folders, and resumes unfinished jobs."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self._make_folders)
        await self.store.open()
        self._wake, self._stopping = asyncio.Event(), asyncio.Event()
        if self._stream is not None:
            await self._start_streaming()
            return
        await self.expire_finished()
        await self._remove_orphaned_spools()
        unfinished = await self.store.unfinished()
        if unfinished:
            log.info("resuming %d unfinished job(s): %s", len(unfinished),
                     ", ".join(job.id for job in unfinished))
        for job in unfinished:
            self._enqueue(job.id)
        self._tasks = [loop.create_task(self._schedule()),
                       loop.create_task(self._expire_periodically())]

    async def close(self) -> None:
        """Takes no new item, lets the items in flight finish (the pool must still be open),
        commits their results and closes the store. Unfinished jobs resume at next start."""
        if self.closing:
            return
        self.closing = True
        if self._stopping is not None:
            self._stopping.set()
            self._wake.set()
        for task in self._tasks:
            try:
                await task
            except Exception:
                log.exception("the job runner stopped on an error")
        await self._writer.drain()
        await self.store.close()

    # -- what the handlers call --------------------------------------------------------

    async def submit(self, request: JobRequest) -> tuple[JobRecord, bool]:
        """The new job (True), or the existing identical one (False)."""
        self._check_open()
        loop = asyncio.get_running_loop()
        if request.archive is None:
            listing, fingerprint = await loop.run_in_executor(None, self._list, request)
            job = self._new_job(request, "folder", request.directory, listing.location,
                                fingerprint, listing.skipped_symlinks)
            stored = await self.store.create(job, listing.items)
        else:
            archive = await loop.run_in_executor(None, read_archive, request.archive,
                                                 request.patterns, self.limits,
                                                 self.policy.max_body_size)
            fingerprint = archive_fingerprint(archive, request)
            existing = await self.store.find(fingerprint)
            if existing is not None:
                return existing, False
            job = self._new_job(request, "zip", request.archive_name, "", fingerprint, 0)
            if self._stream is not None:
                return await self._submit_shared_archive(archive, job)
            spool = self.spool_dir / job.id
            try:
                await loop.run_in_executor(None, archive.spool, spool,
                                           self.policy.max_body_size)
                stored = await self.store.create(job, archive.items)
            except BaseException:
                await loop.run_in_executor(None, _remove_tree, spool)
                raise
            if stored.id != job.id:  # an identical upload was recorded meanwhile
                await loop.run_in_executor(None, _remove_tree, spool)
        return await self._accepted(stored, job)

    async def _accepted(self, stored: JobRecord, job: JobRecord) -> tuple[JobRecord, bool]:
        created = stored.id == job.id
        if created:
            log.info("job %s: %d items from %s %s", job.id, stored.total, stored.source,
                     clip(stored.name, 120))
            if self._stream is None:
                self._enqueue(job.id)
            elif stored.total == 0 and await self._stream.complete_if_finished(
                    job.id, self._clock()):
                stored = await self.store.get(job.id) or stored  # nothing to read: done
        return stored, created

    async def get(self, job_id: str) -> JobRecord | None:
        self._check_open()
        return await self.store.get(job_id) if valid_job_id(job_id) else None

    async def page(self, limit: int, offset: int) -> tuple[list[JobRecord], int]:
        self._check_open()
        return await self.store.page(limit, offset)

    async def recent(self, job_id: str) -> list[JobItem]:
        """The job's last few items to finish, newest first."""
        self._check_open()
        return await self.store.recent(job_id, RECENT_ITEMS)

    async def results(self, job_id: str, after: tuple[int, int], limit: int = PAGE_SIZE
                      ) -> list[JobItem]:
        """Finished items after `after` ((seq, page)), in order."""
        self._check_open()
        return await self.store.items(job_id, after, limit)

    async def cancel(self, job_id: str) -> JobRecord:
        """Stops a queued or running job (items in flight still finish and are kept)."""
        job = await self.get(job_id)
        if job is None:
            raise ApiError("not_found", "no such job, or it has been deleted")
        changed = await self.store.set_status(job_id, "cancelled", self._clock())
        job = await self.store.get(job_id)
        if job is None:
            raise ApiError("not_found", "no such job, or it has been deleted")
        if not changed and job.status != "cancelled":
            raise ApiError("job_finished", f"the job is already {job.status}; there is "
                           "nothing to cancel")
        self._stop(job_id)
        log.info("job %s cancelled (%d of %d items finished)", job_id, job.done + job.failed,
                 job.total)
        return job

    async def delete(self, job_id: str) -> None:
        """Removes a job, its items, results and spooled files (a running job stops)."""
        job = await self.get(job_id)
        if job is None:
            raise ApiError("not_found", "no such job, or it has been deleted")
        self._stop(job_id)
        await self.store.delete(job_id)
        if job.source == "zip":
            await asyncio.get_running_loop().run_in_executor(None, _remove_tree,
                                                             self.spool_dir / job_id)

    @property
    def running(self) -> list[str]:
        """The ids of the jobs being run now (their items in flight included)."""
        return list(self._active)

    def eta(self, job: JobRecord) -> float | None:
        """Seconds until the job is done at the rate of its current run; None when it is not
        running here or has no finished item yet to measure by."""
        active = self._active.get(job.id)
        finished = job.done + job.failed
        if active is None or job.status != "running" or finished <= active.finished_before:
            return None
        elapsed = self._monotonic() - active.started
        return round((job.total - finished) * elapsed / (finished - active.finished_before), 1)

    async def expire_finished(self) -> int:
        """Deletes jobs that finished more than `retention` seconds ago; how many."""
        expired = await self.store.expired(self._clock() - self.limits.retention)
        for job in expired:
            try:
                await self.delete(job.id)
            except ApiError:
                continue  # deleted meanwhile
        if expired:
            log.info("deleted %d job(s) past jobs.retention", len(expired))
        return len(expired)

    # -- running ----------------------------------------------------------------------

    def _list(self, request: JobRequest) -> tuple[Listing, str]:
        """The folder's listing and the job's fingerprint (blocking: a big folder takes a
        while to walk and to hash)."""
        listing = list_folder(request.directory, self.policy.filename_roots,
                              recursive=request.recursive, patterns=request.patterns,
                              max_items=self.limits.max_items)
        return listing, folder_fingerprint(listing, request)

    def _new_job(self, request: JobRequest, source: str, name: str, location: str,
                 fingerprint: str, skipped: int) -> JobRecord:
        return JobRecord(id=new_job_id(), fingerprint=fingerprint, source=source, name=name,
                         location=location, options=request.options.cache_key(),
                         model=request.model, status="queued", total=0,
                         created_at=self._clock(), dpi=request.dpi, pdf_text=request.pdf_text,
                         skipped_symlinks=skipped)

    def _check_open(self) -> None:
        if self.closing:
            raise ApiError("shutting_down", "the server is shutting down")

    def _enqueue(self, job_id: str) -> None:
        self._queue.append(job_id)
        if self._wake is not None:
            self._wake.set()

    def _stop(self, job_id: str) -> None:
        if job_id in self._queue:
            self._queue.remove(job_id)
        active = self._active.get(job_id)
        if active is not None:
            active.stop = True
            if self._stream is not None:  # its entries still taken are dropped as they come
                self._active.pop(job_id, None)

    async def _schedule(self) -> None:
        while not self.closing:
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            job_id = self._queue.popleft()
            try:
                await self._run(job_id)
            except Exception as exc:  # a store failure, or a bug: the job fails, not the runner
                log.exception("job %s stopped on an unexpected error", job_id)
                try:
                    await self.store.set_status(job_id, "failed", self._clock(),
                                                error_info(exc).message)
                except Exception:
                    log.exception("cannot mark job %s failed", job_id)

    async def _run(self, job_id: str) -> None:
        job = await self.store.get(job_id)
        if job is None or job.status in FINISHED_STATUSES:
            return
        await self.store.set_status(job_id, "running", self._clock())
        active = _Active(job, options_of(job.options), self._monotonic(),
                         job.done + job.failed)
        self._active[job_id] = active
        try:
            while not (active.stop or self.closing):
                active.expanded = False
                await self._pass(active)
                await self._writer.drain()
                if active.stop or self.closing:
                    break
                if not await self.store.pending(job_id, (-1, -1), 1):
                    if await self.store.set_status(job_id, "done", self._clock()):
                        log.info("job %s done", job_id)
                    break
                # Items left: a document's pages added behind this pass's cursor (read them
                # now), or items the pool refused or whose results could not be written
                # (wait a little first).
                if not active.expanded:
                    await self._pause(RETRY_DELAY_S)
        finally:
            self._active.pop(job_id, None)

    async def _pass(self, active: _Active) -> None:
        """Reads every item still queued once, at most max_in_flight at a time."""
        in_flight: set[asyncio.Task] = set()
        loop = asyncio.get_running_loop()
        after = (-1, -1)
        while not (active.stop or self.closing):
            items = await self.store.pending(active.job.id, after, PAGE_SIZE)
            if not items:
                break
            for item in items:
                while len(in_flight) >= self.limits.max_in_flight:
                    await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
                if active.stop or self.closing:
                    break
                after = (item.seq, item.page)
                task = loop.create_task(self._read(active, item))
                in_flight.add(task)
                task.add_done_callback(in_flight.discard)
        if in_flight:
            await asyncio.wait(in_flight)

    async def _read(self, active: _Active, item: JobItem) -> None:
        self._writer.started(active.job.id, item)
        outcome = await self._outcome(active, item)
        if outcome is None:
            return  # still queued: the next pass reads it
        self._writer.finished(active.job.id, outcome)
        self._finished_item(outcome)

    def _finished_item(self, outcome: ItemOutcome) -> None:
        if self._on_item_finished is not None:
            self._on_item_finished("failed" if outcome.error is not None
                                   else "cached" if outcome.cached else "done")

    async def _outcome(self, active: _Active, item: JobItem) -> ItemOutcome | None:
        """The item read: its result or its error (as data); None when the refusal was not
        the item's fault (no worker, shutting down), so it stays queued."""
        job = active.job
        try:
            data = await self._item_bytes(job, item)
            result, cached = await self._ocr(active, item, data)
        except Exception as exc:  # the item's error, as data; the job goes on
            info = error_info(exc)
            if info.code in TRANSIENT_CODES:
                return None
            if info.details:
                log.error("job %s item %d page %d (%s) failed (%s): %s", job.id, item.seq,
                          item.page, clip(item.file, 120), info.code, info.details)
            return ItemOutcome(item.seq, item.page, error=ErrorInfo(info.code, info.message),
                               finished_at=self._clock())
        return ItemOutcome(item.seq, item.page, result=result, cached=cached,
                           finished_at=self._clock())

    async def _ocr(self, active: _Active, item: JobItem, data: bytes) -> tuple[dict, bool]:
        """(result, cached) of an image, or of one page of a document. A document's first
        page counts its pages (a probe) and adds the others as items, committed before that
        page's result can be."""
        job, options = active.job, active.options
        request_id = f"job-{job.id}-{item.seq}-{item.page}"
        kind = document_kind(data)
        probe: dict | None = None
        digest = b""
        if kind is not None:
            digest, probe = await self._probe(active, item, data, request_id)
            kind = probe.get("kind", kind)
        if kind not in ("pdf", "tiff"):  # an image (a TIFF of one frame included)
            if item.page != 1:
                raise ApiError("invalid_document", f"{clip(item.file)} is no longer a "
                               f"document, so it has no page {item.page}")
            key = request_key(data, options.cache_key(), job.model)
            return await self.ocr.read(key, OcrJob(data, options, job.model), request_id,
                                       Lane.BACKGROUND)
        pages = probe.get("pages")
        if isinstance(pages, bool) or not isinstance(pages, int) or pages < 1:
            raise ApiError("invalid_document", "the document has no pages")
        if item.page > pages:
            raise ApiError("invalid_document", f"the document has {pages} pages now, so no "
                           f"page {item.page}")
        if item.page == 1 and pages > 1:
            added = await self.store.add_pages(job.id, item.seq, pages, self.limits.max_items)
            if added is None:
                raise ApiError("too_many_items", f"its {pages} pages would take the job past "
                               f"{self.limits.max_items} items (jobs.max_items)")
            active.expanded = active.expanded or added > 0
        key = page_key(digest, page_identity(probe, item.page), kind, item.page, options,
                       job.model, job.dpi, job.pdf_text)
        result, cached = await self.ocr.read(
            key, PageJob(data, item.page, job.dpi, job.pdf_text, None, options, job.model),
            request_id, Lane.BACKGROUND)
        return result, cached

    async def _probe(self, active: _Active, item: JobItem, data: bytes, request_id: str
                     ) -> tuple[bytes, dict]:
        """The document's digest and probe, kept while its pages are read."""
        digest = hashlib.sha256(data).digest()
        kept = active.probes.get(item.seq)
        if kept is not None and kept[0] == digest:
            return kept
        reading = await self.ocr.begin(probe_key(digest), DocumentProbeJob(data), request_id,
                                       Lane.BACKGROUND, probe=True)
        probe, _ = await reading
        active.probes[item.seq] = (digest, probe)
        while len(active.probes) > PROBES_KEPT:
            active.probes.popitem(last=False)
        return digest, probe

    async def _item_bytes(self, job: JobRecord, item: JobItem) -> bytes:
        if job.source == "zip" and self._stream is not None:
            image = await self._stream.archive_entry(job.id, item.seq)
            if image is None:
                raise ApiError("file_not_found", f"the stored copy of {clip(item.file)} is "
                               "gone (expired or deleted)")
            return self._checked(image)
        return await asyncio.get_running_loop().run_in_executor(None, self._load, job, item)

    def _checked(self, image: bytes) -> bytes:
        if not image:
            raise ApiError("invalid_image", "the file is empty (0 bytes)")
        if len(image) > self.policy.max_body_size:
            raise ApiError("too_large", f"the file is over {self.policy.max_body_size} bytes, "
                           "the limit")
        return image

    def _load(self, job: JobRecord, item: JobItem) -> bytes:
        """The item's bytes (blocking): a spooled ZIP entry, or the file read afresh through
        the sandbox (it may have been swapped for a link since it was listed)."""
        if job.source == "zip":
            try:
                fd = os.open(self.spool_dir / job.id / str(item.seq),
                             os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            except FileNotFoundError:
                raise ApiError("file_not_found", f"the spooled copy of {clip(item.file)} "
                               "is gone") from None
            with open(fd, "rb") as handle:
                image = handle.read(self.policy.max_body_size + 1)
        else:
            path = f"{job.location}/{item.file}"
            try:
                image = read_sandboxed(path, self.policy.filename_roots,
                                       self.policy.max_body_size)
            except ApiError as error:
                # Name the file as the job lists it, not by the server's absolute path.
                raise ApiError(error.code, error.message.replace(clip(path),
                                                                 clip(item.file))) from None
        return self._checked(image)

    async def _pause(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._stopping.wait(), seconds)
        except TimeoutError:
            pass

    async def _expire_periodically(self) -> None:
        period = min(3600.0, max(15.0, self.limits.retention / 4))
        while not self.closing:
            await self._pause(period)
            if self.closing:
                return
            try:
                await self.expire_finished()
            except Exception as exc:
                if _store_down(exc):  # a shared store's outage: the next period tries again
                    log.warning("cannot delete expired jobs now: %s", error_info(exc).message)
                else:
                    log.exception("cannot delete expired jobs")

    # -- running from the shared stream (a Redis job store) ------------------------------
    #
    # Every node runs this loop against the same stream: what one node took, no other takes
    # while that node keeps refreshing it. A job is the store's (any node answers for it,
    # any node may cancel or delete it); `_active` only holds the jobs whose items this
    # node reads (their options, probes and rate). A store that cannot be reached pauses the
    # loop, never ends it: what was taken stays taken, what was read is recorded once Redis
    # answers again, and nothing is acknowledged before its item is recorded.

    async def _start_streaming(self) -> None:
        stream = self._stream
        try:
            await self.expire_finished()
            for job in await self.store.unfinished():  # an empty job cut short at submit
                if job.total == 0:
                    await stream.complete_if_finished(job.id, self._clock())
        except Exception as exc:  # noqa: BLE001 - Redis down at start: the loop waits for it
            log.warning("the shared job store is not answering at start (%s); job items "
                        "are taken once it does", error_info(exc).message)
        loop = asyncio.get_running_loop()
        log.info("taking job items from the shared stream as consumer %s (at most %d at a "
                 "time; another node's items are taken over after %g s idle)",
                 stream.consumer, self.limits.max_in_flight, stream.claim_idle)
        self._tasks = [loop.create_task(self._consume()),
                       loop.create_task(self._refresh_held()),
                       loop.create_task(self._expire_periodically())]

    async def _submit_shared_archive(self, archive: Archive, job: JobRecord
                                     ) -> tuple[JobRecord, bool]:
        """A ZIP job whose entries go to the shared store (every node reads them there),
        written before the job exists, so no node takes an item it cannot read."""
        stream, loop = self._stream, asyncio.get_running_loop()
        try:
            seq = 0
            while seq < len(archive.entries):
                entries, seq = await loop.run_in_executor(
                    None, archive.read_entries, seq, ARCHIVE_BATCH_BYTES,
                    self.policy.max_body_size)
                await stream.put_archive_entries(job.id, entries)
            stored = await self.store.create(job, archive.items)
        except BaseException:
            with contextlib.suppress(Exception):
                await stream.drop_archive(job.id)
            raise
        if stored.id != job.id:  # an identical upload was recorded meanwhile
            await stream.drop_archive(job.id)
        return await self._accepted(stored, job)

    async def _consume(self) -> None:
        stream = self._stream
        in_flight: set[asyncio.Task] = set()
        loop = asyncio.get_running_loop()
        backlog: list[StreamEntry] | None = None  # what this consumer held before a restart
        next_reclaim = 0.0
        unavailable: str | None = None
        while not self.closing:
            free = self.limits.max_in_flight - len(in_flight)
            if free <= 0:
                await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
                continue
            try:
                if backlog is None:
                    await stream.ensure_group()
                    backlog = await stream.held(10_000)
                    if backlog:
                        log.info("taking back %d job item(s) this node held before",
                                 len(backlog))
                if backlog:
                    entries, backlog = backlog[:free], backlog[free:]
                else:
                    entries = []
                    if self._monotonic() >= next_reclaim:
                        if await stream.finish_enqueueing():
                            log.info("added the stream entries of a job whose node stopped "
                                     "while creating it")
                        entries = await stream.reclaim(free)
                        next_reclaim = self._monotonic() + stream.claim_idle / 4
                        if entries:
                            log.info("took over %d job item(s) another node left idle for "
                                     "%g s", len(entries), stream.claim_idle)
                    if not entries:
                        entries = await stream.take(free)
            except Exception as exc:  # noqa: BLE001 - the store down: wait, then go on
                if not _store_down(exc):
                    log.exception("cannot take job items from the shared stream")
                elif unavailable is None:
                    log.warning("job items wait: %s", error_info(exc).message)
                unavailable = error_info(exc).message
                # Back from an outage, refresh this node's own entries before taking over
                # any other's (theirs went idle during the outage too).
                next_reclaim = self._monotonic() + stream.claim_idle / 4
                await self._pause(STORE_RETRY_S)
                continue
            if unavailable is not None:
                log.info("the shared job store answers again; job items go on")
                unavailable = None
            for entry in entries:
                self._held[entry.id] = entry
                task = loop.create_task(self._work(entry))
                in_flight.add(task)
                task.add_done_callback(in_flight.discard)
            self._forget_idle()
        if in_flight:
            await asyncio.wait(in_flight)

    async def _work(self, entry: StreamEntry) -> None:
        """Reads one taken entry's item and records it (acknowledging the entry); an entry
        whose job is gone or finished, or whose item is, is only acknowledged."""
        stream = self._stream
        try:
            while not self.closing:
                try:
                    job, item = await stream.begin(entry)
                    if (job is None or item is None or job.status in FINISHED_STATUSES
                            or item.state != "queued"):
                        await self._finish_entry(entry, None)
                        return
                    active = await self._join(job)
                except Exception as exc:  # noqa: BLE001 - the store down: try again
                    if not _store_down(exc):
                        # A bug, not an outage: leave the entry to be taken over later.
                        log.exception("job item %s (job %s) cannot be started", entry.id,
                                      entry.job_id)
                        return
                    if not self.closing:
                        await self._pause(STORE_RETRY_S)
                    continue
                outcome = await self._outcome(active, item)
                if outcome is None:  # the pool refused it for now: read it again shortly
                    await self._pause(RETRY_DELAY_S)
                    continue
                if await self._finish_entry(entry, outcome):
                    self._finished_item(outcome)
                return
        finally:
            self._held.pop(entry.id, None)

    async def _finish_entry(self, entry: StreamEntry, outcome: ItemOutcome | None) -> bool:
        """Records the outcome and acknowledges the entry, retrying while the store cannot be
        reached; False when the runner closed first (the entry stays taken: this node takes
        it back at its restart, another node after claim_idle)."""
        waited = False
        while True:
            try:
                ended = await self._stream.finish(entry, outcome, self._clock())
                break
            except Exception as exc:  # noqa: BLE001 - the store down: keep the outcome
                if not _store_down(exc):
                    log.exception("job %s item %d page %d cannot be recorded; it is read "
                                  "again later", entry.job_id, entry.seq, entry.page)
                    return False
                if self.closing:
                    log.warning("job %s item %d page %d: not recorded before shutdown (%s); "
                                "it is read again", entry.job_id, entry.seq, entry.page,
                                error_info(exc).message)
                    return False
                if not waited:
                    waited = True
                    log.warning("job items wait: job %s item %d page %d is read and kept "
                                "until the shared job store answers (%s)", entry.job_id,
                                entry.seq, entry.page, error_info(exc).message)
                await self._pause(STORE_RETRY_S)
        if ended:
            log.info("job %s done", entry.job_id)
            self._active.pop(entry.job_id, None)
        return True

    async def _join(self, job: JobRecord) -> _Active:
        """This node's state for a job it reads items of (marking the job running once)."""
        active = self._active.get(job.id)
        if active is None:
            if job.status == "queued":
                await self.store.set_status(job.id, "running", self._clock())
            active = _Active(job, options_of(job.options), self._monotonic(),
                             job.done + job.failed)
            self._active[job.id] = active
        active.last_taken = self._monotonic()
        return active

    def _forget_idle(self) -> None:
        """Drops the jobs this node has taken no item of lately (finished elsewhere, or
        read by the other nodes now)."""
        cutoff = self._monotonic() - ACTIVE_IDLE_S
        for job_id, active in list(self._active.items()):
            if active.last_taken < cutoff:
                del self._active[job_id]

    async def _refresh_held(self) -> None:
        """Resets the idle time of the entries being read here, every claim_idle/4 seconds,
        so that no other node takes them over while this one lives."""
        stream = self._stream
        while not self.closing:
            await self._pause(stream.claim_idle / 4)
            if self._held:
                try:
                    await stream.refresh(list(self._held))
                except Exception as exc:  # noqa: BLE001 - the store down: next time
                    log.debug("cannot refresh the taken job items: %s",
                              error_info(exc).message)

    # -- the state folder -------------------------------------------------------------

    def _make_folders(self) -> None:
        self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.spool_dir.mkdir(mode=0o700, exist_ok=True)

    async def _remove_orphaned_spools(self) -> None:
        """Spool folders of jobs that are not in the store (a crash between spooling and
        recording the job, or a deletion interrupted)."""
        loop = asyncio.get_running_loop()
        names = await loop.run_in_executor(None, os.listdir, self.spool_dir)
        for name in names:
            if not valid_job_id(name) or await self.store.get(name) is None:
                await loop.run_in_executor(None, _remove_tree, self.spool_dir / name)


def _store_down(exc: BaseException) -> bool:
    """A shared job store that cannot answer now (server/store/redis_jobs.StoreUnavailable)."""
    return error_info(exc).code == "store_unavailable"


def _remove_tree(path: Path) -> None:
    # Clean-up off the loop: what cannot be removed now is left, never an error in the job.
    remove_tree(path, ignore_errors=True)
