"""The one validated configuration, loaded once at start.

config.json keeps the original server's shape (web_server / ocr.process / ocr.predict_system /
service) and adds keys with defaults. Every key is declared below with its type, default, range
and a one-line description (README's config reference is generated from the same declarations).
Unknown keys, wrong types and values out of range fail at start with a message naming the key.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ocr_engine import EngineLimits, InvalidOptionError
from ocr_engine.backends import BACKEND_NAMES, PRECISIONS, get_backend
from ocr_engine.options import OcrOptions, option_spec
from ocr_engine.presets import DEFAULT_PRESET, PRESET_NAMES

# Rendering resolution of document pages (config default and the request's `dpi` field).
MIN_DPI, MAX_DPI = 50, 600
# POST /ocr_service's answer: ours, or the original server's bare list (service.response_format).
RESPONSE_FORMATS = ("lines", "original")
EVENT_LOOPS = ("auto", "asyncio", "uvloop")


class ConfigError(ValueError):
    """The configuration is invalid; the message names the key."""


def _option(name: str) -> Any:
    """A config key that is a per-request OCR option: declared once, in ocr_engine.options."""
    spec = option_spec(name)
    return _key(spec.default, spec.description, low=spec.low, high=spec.high,
                choices=spec.choices, option=name)


def _limit(name: str, doc: str) -> Any:
    """A config key for one of the engine's tensor limits (default from ocr_engine)."""
    default = next(spec.default for spec in dataclasses.fields(EngineLimits) if spec.name == name)
    return _key(default, doc, low=1, high=10**10)


def _key(default: Any, doc: str, *, low: float | None = None, high: float | None = None,
         choices: tuple | None = None, nullable: bool = False, option: str | None = None,
         kind: type | None = None) -> Any:
    # `kind`: the value's type where the default (None) cannot say it.
    meta = {"doc": doc, "low": low, "high": high, "choices": choices, "nullable": nullable,
            "option": option, "kind": kind}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class WebServerConfig:
    port: int = _key(8888, "TCP port to listen on", low=1, high=65535)
    address: str = _key("", "address to bind; empty = all interfaces, as the original did")
    max_body_size: int = _key(20 * 1024 * 1024, "largest request body in bytes (413 beyond)",
                              low=1024, high=1 << 31)
    api_token: str | None = _key(None, "if set, every request except /health and the web "
                                 "page's files needs 'Authorization: Bearer <token>'",
                                 nullable=True)
    cors_origins: list = _key([], "origins allowed to call the API from a browser "
                              "(empty = CORS off; '*' = any)")
    request_timeout: float = _key(120.0, "seconds a blocking request may wait for its result "
                                  "before 504", low=1, high=3600)
    max_connections: int = _key(10000, "open connections at most; past it a new connection "
                                "gets an immediate 503 too_many_connections (the open-file "
                                "limit is raised at start to fit)", low=1, high=1_000_000)
    header_timeout: float = _key(15.0, "seconds a connection may take to send a request's "
                                 "headers, and may stay idle between requests", low=0.1,
                                 high=3600)
    body_timeout: float = _key(60.0, "seconds a request's body may take to arrive in full",
                               low=0.1, high=3600)
    log_format: str = _key("text", "log lines as text, or json (one object per line, with the "
                           "access log's fields) for log shippers", choices=("text", "json"))
    event_loop: str = _key("auto", "the front end's event loop: uvloop (needs the uvloop "
                           "package, not installed by default: it did not pay on measurement), "
                           "asyncio, or auto: uvloop when it is installed",
                           choices=EVENT_LOOPS)
    metrics: bool = _key(True, "serve Prometheus metrics at GET /metrics; false = 404")
    metrics_public: bool = _key(False, "true: /metrics answers without api_token (a scraper on "
                                "a trusted network needs no secret)")


@dataclass(frozen=True)
class ProcessConfig:
    number: int = _key(2, "worker processes, each with its own loaded models", low=1, high=64)
    max_task_number: int = _key(1000, "tasks before a worker is replaced (plus up to 10% "
                                "jitter); the replacement boots first, no task is lost",
                                low=1, high=10**9)
    threads: int = _key(0, "math threads per worker; 0 = CPU cores / number", low=0, high=256)
    task_timeout: float = _key(60.0, "seconds one image may take before its worker is killed "
                               "and the request answered 504", low=0.1, high=3600)
    queue_size: int = _key(64, "requests waiting for a worker before new ones get 503",
                           low=1, high=100000)
    boot_timeout: float = _key(180.0, "seconds a worker may take to load and warm up",
                               low=1, high=3600)
    ping_interval: float = _key(5.0, "seconds between liveness pings to an idle worker",
                                low=0.1, high=3600)
    ping_timeout: float = _key(10.0, "seconds a worker may take to answer a ping or take a job "
                               "before it is killed and replaced", low=0.1, high=3600)
    max_worker_rss_mb: int = _key(2048, "a worker whose resident memory after a job passes "
                                  "this many MB is replaced (like max_task_number, no request "
                                  "is lost); 0 = never", low=0, high=1 << 20)


@dataclass(frozen=True)
class PredictSystemConfig:
    backend: str = _key("auto", "inference backend; auto: at first start each installed "
                        "backend (onnxruntime, openvino, paddle if installed) is timed at "
                        "`precision` on a calibration page and the fastest that reads it like "
                        "onnxruntime in f32 is used (the choice is stored in "
                        "<models_dir>/backend-choice.json and shown in /ready)",
                        choices=("auto", *BACKEND_NAMES))
    precision: str = _key("f32", "compute precision: f32 (every backend; identical text); "
                          "bf16 (openvino only, on AMX or AVX512_BF16 about twice as fast, "
                          "scores off by up to 0.04, text may change); auto: bf16 for the "
                          "stages measured to keep the eval set's text on every CPU with "
                          "native bf16: none is today, so auto is f32 on every backend "
                          "(docs/BENCHMARKS.md). onnxruntime and paddle compute in f32 "
                          "only: bf16 is refused for them",
                          choices=(*PRECISIONS, "auto"))
    model: str = _key("ppocr-v4", "default model set (models/manifest.json), or the name given "
                      "to det_model_dir/rec_model_dir models")
    models: list = _key([], "further model sets every worker loads; a request picks one with "
                        "the 'model' field")
    models_dir: str = _key("models", "where model sets are installed")
    det_model_dir: str | None = _key(None, "custom detection model (.onnx file or Paddle "
                                     "inference folder); with rec_model_dir replaces 'model'",
                                     nullable=True)
    rec_model_dir: str | None = _key(None, "custom recognition model", nullable=True)
    cls_model_dir: str | None = _key(None, "custom direction classifier model", nullable=True)
    rec_char_dict_path: str | None = _key(None, "dictionary file for a custom recognition "
                                          "model (not needed when the ONNX model carries one)",
                                          nullable=True)
    rec_image_shape: str = _key("3, 48, 320", "a custom recognition model's input (PaddleOCR's "
                                "name and form): 3, 32, 320 for PP-OCRv2 and older; a model "
                                "that declares its height is read at that height")
    enable_mkldnn: bool = _key(True, "kept for the original's configs: the paddle backend always "
                               "uses oneDNN (without it inference is ~5x slower)")
    rec_batch_num: int = _key(6, "recognition batch size (PaddleOCR's default 6)", low=1, high=64)
    cls_batch_num: int = _key(6, "direction classifier batch size", low=1, high=64)
    max_pixels: int = _key(40_000_000, "largest image (width x height) accepted; larger ones "
                           "are refused before decoding (413)", low=1, high=10**9)
    dpi: int = _key(200, "resolution PDF pages are rendered at for OCR, unless a request "
                    "gives 'dpi'", low=MIN_DPI, high=MAX_DPI)
    pdf_memory_mb: int = _key(1024, "MB of address space a PDF read (a probe, one page) may add "
                              "in its sandboxed child process; past it the document is refused "
                              "as document_too_complex", low=64, high=1 << 20)
    pdf_timeout: float | None = _key(None, "seconds a PDF read (a probe, one page) may take in "
                                     "its sandboxed child before it is killed and the document "
                                     "refused as document_too_complex; must be below "
                                     "ocr.process.task_timeout; null = 30 s or half the task "
                                     "timeout, whichever is less", low=1, high=3600,
                                     nullable=True, kind=float)
    preset: str = _key(DEFAULT_PRESET, "the option bundle requests start from unless they name "
                       "one (README, Presets); the option keys below, where this file sets "
                       "them, apply over it", choices=PRESET_NAMES)
    # PaddleOCR's options: default, range and description come from ocr_engine.options.
    use_angle_cls: bool = _option("use_angle_cls")
    det_limit_side_len: int = _option("det_limit_side_len")
    det_limit_type: str = _option("det_limit_type")
    det_db_thresh: float = _option("det_db_thresh")
    det_db_box_thresh: float = _option("det_db_box_thresh")
    det_db_unclip_ratio: float = _option("det_db_unclip_ratio")
    use_dilation: bool = _option("use_dilation")
    det_db_score_mode: str = _option("det_db_score_mode")
    cls_thresh: float = _option("cls_thresh")
    drop_score: float = _option("drop_score")

    # Caps on every tensor a request can cause (ocr_engine/limits.py): the worst case per
    # worker is bounded by construction, whatever the image and options (README).
    det_max_side: int = _limit("det_max_side", "longest side of the detection input; larger "
                               "ones are scaled down (PaddleOCR 3.x clamps at 4000)")
    det_max_pixels: int = _limit("det_max_pixels", "area of the detection input; larger ones "
                                 "are scaled down (~160 bytes of peak memory per pixel)")
    rec_max_width: int = _limit("rec_max_width", "widest recognition input in columns at the "
                                "model's height; wider lines are read in overlapping pieces")
    rec_max_line_width: int = _limit("rec_max_line_width", "most columns one line is read at "
                                     "over all its pieces; longer lines are squeezed to it")
    rec_max_batch_pixels: int = _limit("rec_max_batch_pixels", "batch x height x padded width "
                                       "of one recognition batch")
    cls_max_batch_pixels: int = _limit("cls_max_batch_pixels", "batch x height x width of one "
                                       "direction-classifier batch")

    def rec_shape(self) -> tuple[int, int, int]:
        """rec_image_shape as (channels, height, width); ConfigError when malformed."""
        parts = [part.strip() for part in self.rec_image_shape.split(",")]
        if len(parts) != 3 or not all(part.isascii() and part.isdigit() for part in parts):
            raise ConfigError("ocr.predict_system.rec_image_shape: expected three integers "
                              f"such as \"3, 48, 320\", got {self.rec_image_shape[:40]!r}")
        channels, height, width = (int(part) for part in parts)
        if channels != 3 or not 8 <= height <= 256 or not 8 <= width <= 4096:
            raise ConfigError("ocr.predict_system.rec_image_shape: channels must be 3, height "
                              "8 to 256, width 8 to 4096")
        return channels, height, width

    def pdf_timeout_s(self, task_timeout: float) -> float:
        """The PDF sandbox's time budget: the configured one, else 30 s or half the task
        timeout (the child must be killed before the pool kills the worker)."""
        return self.pdf_timeout if self.pdf_timeout is not None else min(30.0, task_timeout / 2)

    def engine_limits(self) -> EngineLimits:
        try:
            return EngineLimits(**{spec.name: getattr(self, spec.name)
                                   for spec in dataclasses.fields(EngineLimits)})
        except ValueError as exc:
            raise ConfigError(f"ocr.predict_system.{exc}") from None

    # Which of the option keys config.json sets (filled by load_config; not a key itself).
    given_options: tuple = field(default=(), metadata={"internal": True})

    def default_options(self) -> OcrOptions:
        names = {f.name for f in dataclasses.fields(OcrOptions)}
        return OcrOptions(**{k: v for k, v in dataclasses.asdict(self).items() if k in names})

    def configured_options(self) -> dict[str, Any]:
        """The option keys config.json sets, with their values (they apply over the preset)."""
        return {name: getattr(self, name) for name in self.given_options}


@dataclass(frozen=True)
class OcrConfig:
    process: ProcessConfig = field(default_factory=ProcessConfig)
    predict_system: PredictSystemConfig = field(default_factory=PredictSystemConfig)


@dataclass(frozen=True)
class ServiceConfig:
    time: float = _key(6000.0, "seconds a cached result stays valid", low=0, high=10**8)
    img_number: int = _key(100, "results kept in the cache (LRU beyond)", low=0, high=10**7)
    task_ttl: float = _key(600.0, "seconds a finished non-blocking task stays readable by id",
                           low=1, high=10**7)
    max_tasks: int = _key(10000, "finished non-blocking tasks kept readable (oldest dropped)",
                          low=1, high=10**7)
    filename_roots: list = _key([], "folders file_type=filename may read from (their real "
                                "paths); empty = filename mode refused with 403")
    max_pages: int = _key(200, "pages a document may have (a PDF or TIFF with more is "
                          "refused with 413 too_many_pages)", low=1, high=100000)
    max_batch: int = _key(32, "images or documents one request may send (repeated 'file' "
                          "parts, or 'img_src' as a JSON list); more is 413", low=1, high=10000)
    response_format: str = _key("lines", "how POST /ocr_service answers: lines (a JSON object "
                                "with lines, text and sizes) or original (the original "
                                "server's bare list [[box, [text, score]], ...], null for a "
                                "non-blocking submit); a request's response_format wins",
                                choices=RESPONSE_FORMATS)
    state_dir: str = _key("state", "folder of the server's lasting state (SQLite files of the "
                          "folder jobs and of non-blocking document and batch tasks, their "
                          "spooled inputs), relative to the config file; created at start")
    redis_url: str | None = _key(None, "a Redis shared by every node (redis://[:password@]host:"
                                 "port/db, rediss:// for TLS): the result cache, tasks readable "
                                 "on any node and cross-node sharing of identical runs; null = "
                                 "all in this process (docs/DEPLOY.md)", nullable=True, kind=str)
    redis_prefix: str = _key("ppocr:", "prefix of every Redis key this service writes (several "
                             "deployments can share one Redis)")
    redis_timeout: float = _key(0.5, "seconds one Redis command may take; past it (or on a "
                                "connection error) the node serves on its own until Redis "
                                "answers again", low=0.01, high=60)
    redis_l1_size: int = _key(100, "results kept in this node's memory in front of Redis (so a "
                              "hot image costs no round trip), and the node's whole cache while "
                              "Redis is down; 0 = every hit asks Redis", low=0, high=10**7)
    redis_claim_ttl: float = _key(10.0, "seconds a node's claim on a run lasts unless renewed "
                                  "(every third of it while the run lasts): how long the other "
                                  "nodes wait before taking over a dead node's run", low=0.5,
                                  high=3600)
    redis_poll: float = _key(0.5, "seconds between a waiting node's checks of another node's run "
                             "(besides the completion message it is sent)", low=0.01, high=60)
    redis_task_lease: float = _key(30.0, "seconds a pending task stays readable on other nodes "
                                   "after its node stopped renewing it (a dead node's pending "
                                   "tasks then read 404)", low=1, high=86400)


@dataclass(frozen=True)
class JobsConfig:
    max_workers: int = _key(0, "folder-job items in flight at once (each holds a worker or "
                            "waits for one at background priority); 0 = all workers but one, "
                            "1 when there is one", low=0, high=64)
    idle_takeover: float = _key(2.0, "seconds without interactive requests after which job "
                                "items may use every worker (max_workers then no longer "
                                "applies; an interactive request waits for one item at most); "
                                "0 = max_workers always holds", low=0, high=3600)
    retention: float = _key(7 * 86400.0, "seconds a finished job (done, failed, cancelled) and "
                            "its results are kept; checked at start and periodically",
                            low=60, high=10**9)
    max_items: int = _key(100_000, "files a folder or ZIP job may hold (413 beyond)", low=1,
                          high=10**7)
    max_zip_entries: int = _key(10_000, "entries a ZIP upload may declare, folders included "
                                "(413 beyond, refused before it is unpacked)", low=1,
                                high=10**6)
    max_zip_bytes: int = _key(1 << 30, "total uncompressed bytes a ZIP upload's entries may "
                              "declare (413 beyond, refused before it is unpacked)",
                              low=1024, high=1 << 40)
    redis_claim_idle: float = _key(60.0, "with service.redis_url: seconds a job item another "
                                   "node took may go without that node refreshing it (every "
                                   "quarter of this while it reads) before this node takes it "
                                   "over (the other node died)", low=0.2, high=86400)
    redis_consumer: str | None = _key(None, "with service.redis_url: this node's name in the "
                                      "job stream's consumer group, stable across restarts "
                                      "(a restarted node takes its items back at once); "
                                      "null = <host name>:<web_server.port>", nullable=True,
                                      kind=str)


@dataclass(frozen=True)
class Config:
    web_server: WebServerConfig = field(default_factory=WebServerConfig)
    ocr: OcrConfig = field(default_factory=OcrConfig)
    service: ServiceConfig = field(default_factory=ServiceConfig)
    jobs: JobsConfig = field(default_factory=JobsConfig)
    # Where relative paths in the file are resolved from (the config file's folder).
    base_dir: Path = field(default=Path("."), compare=False)

    def resolve(self, path: str) -> Path:
        return (self.base_dir / os.path.expanduser(path)).resolve()

    @property
    def threads_per_worker(self) -> int:
        process = self.ocr.process
        return process.threads or max(1, (os.cpu_count() or 1) // process.number)


_SECTIONS = (Config, OcrConfig)


def load_config(path: str | Path | None = None, overrides: dict | None = None) -> Config:
    """Reads `path` (JSON), applies `overrides` ({"web_server.port": 9000, ...}), validates."""
    data: dict = {}
    base_dir = Path.cwd()
    if path is not None:
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"{path}: no such config file") from None
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}: not valid JSON: {exc}") from None
        base_dir = path.resolve().parent
    for dotted, value in (overrides or {}).items():
        node = data
        *parents, last = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    config = _build(Config, data, "")
    config.ocr.predict_system.engine_limits()  # the limits' own cross-checks (ConfigError)
    config.ocr.predict_system.rec_shape()  # well-formed (ConfigError)
    _check_pdf_timeout(config)
    _check_precision(config)
    _check_redis_url(config.service.redis_url)
    return dataclasses.replace(config, base_dir=base_dir)


def _check_redis_url(url: str | None) -> None:
    if url is not None and not url.startswith(("redis://", "rediss://", "unix://")):
        # Only the scheme is quoted: the rest may hold a password.
        raise ConfigError("service.redis_url: must start with redis://, rediss:// (TLS) or "
                          f"unix://, got scheme {url.partition(':')[0][:20]!r}")


def _check_precision(config: Config) -> None:
    system = config.ocr.predict_system
    if system.precision != "bf16" or system.backend == "auto":
        return
    if "bf16" not in get_backend(system.backend).precisions:
        capable = [name for name in BACKEND_NAMES if "bf16" in get_backend(name).precisions]
        raise ConfigError(f"ocr.predict_system.precision: bf16 is not available on backend "
                          f"{system.backend!r}, which computes in f32 only; bf16 needs "
                          f"backend {' or '.join(capable)} (or auto)")


def _check_pdf_timeout(config: Config) -> None:
    # The sandboxed child must be killed (the document refused) before the pool kills the
    # worker running it for the same job (the worker, models and all, lost).
    pdf_timeout = config.ocr.predict_system.pdf_timeout
    task_timeout = config.ocr.process.task_timeout
    if pdf_timeout is not None and pdf_timeout >= task_timeout:
        raise ConfigError(f"ocr.predict_system.pdf_timeout ({pdf_timeout:g}) must be below "
                          f"ocr.process.task_timeout ({task_timeout:g}): a slow PDF must cost "
                          "its sandboxed child, not the worker")


def _build(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'}: expected an object")
    fields = {f.name: f for f in dataclasses.fields(cls) if not _internal(f)}
    for key in data:
        if key not in fields:
            raise ConfigError(f"{where}{key}: unknown key (known here: {', '.join(fields)})")
    values = {}
    for name, spec in fields.items():
        if name not in data:
            continue
        if dataclasses.is_dataclass(_field_class(cls, name)):
            values[name] = _build(_field_class(cls, name), data[name], f"{where}{name}.")
        else:
            values[name] = _check(f"{where}{name}", spec, data[name])
    if cls is PredictSystemConfig:
        options = {f.name for f in dataclasses.fields(OcrOptions)}
        values["given_options"] = tuple(name for name in fields if name in data
                                        and name in options)
    return cls(**values)


def _internal(spec: dataclasses.Field) -> bool:
    """A field that is not a config key (where paths resolve from, what the file set)."""
    return spec.name == "base_dir" or spec.metadata.get("internal", False)


def _field_class(cls: type, name: str) -> Any:
    return {"web_server": WebServerConfig, "ocr": OcrConfig, "service": ServiceConfig,
            "jobs": JobsConfig, "process": ProcessConfig,
            "predict_system": PredictSystemConfig}.get(name) \
        if cls in _SECTIONS else None


def _check(key: str, spec: dataclasses.Field, value: Any) -> Any:
    meta = spec.metadata
    default = spec.default if spec.default is not dataclasses.MISSING else spec.default_factory()
    if value is None:
        if meta["nullable"]:
            return None
        raise ConfigError(f"{key}: must not be null")
    expected = meta["kind"] or (type(default) if default is not None else str)
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if expected is int and isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, expected) or (expected is not bool and isinstance(value, bool)):
        raise ConfigError(f"{key}: expected {_type_name(expected)}, got {json.dumps(value)[:60]}")
    if expected is list:
        if not all(isinstance(item, str) for item in value):
            raise ConfigError(f"{key}: expected a list of strings")
        return tuple(value)
    if meta["choices"] and value not in meta["choices"]:
        raise ConfigError(f"{key}: must be one of {', '.join(meta['choices'])}, got {value!r}")
    if meta["low"] is not None and value < meta["low"]:
        raise ConfigError(f"{key}: must be at least {meta['low']}, got {value}")
    if meta["high"] is not None and value > meta["high"]:
        raise ConfigError(f"{key}: must be at most {meta['high']}, got {value}")
    if meta["option"] is not None:
        try:  # the option's own check (NaN, say) as well
            option_spec(meta["option"]).check(value)
        except InvalidOptionError as exc:
            raise ConfigError(f"{key}: {exc}") from None
    return value


def _type_name(kind: type) -> str:
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string",
            list: "a list"}.get(kind, kind.__name__)


def describe_keys() -> list[tuple[str, str, str]]:
    """(dotted key, default as JSON, description) for every key: the README reference."""
    rows = []

    def walk(cls: type, prefix: str) -> None:
        for spec in dataclasses.fields(cls):
            if _internal(spec):
                continue
            sub = _field_class(cls, spec.name)
            if sub is not None:
                walk(sub, f"{prefix}{spec.name}.")
                continue
            default = spec.default if spec.default is not dataclasses.MISSING \
                else spec.default_factory()
            rows.append((f"{prefix}{spec.name}", json.dumps(default), spec.metadata["doc"]))

    walk(Config, "")
    return rows
