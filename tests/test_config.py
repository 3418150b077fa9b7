"""Config loading and validation; the README documents every key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from server.config import ConfigError, describe_keys, load_config

ROOT = Path(__file__).resolve().parent.parent


def test_shipped_config_loads_with_the_original_shape():
    config = load_config(ROOT / "config.json")
    assert config.web_server.port == 8888
    assert config.ocr.process.number == 2 and config.ocr.process.max_task_number == 1000
    assert config.service.time == 6000 and config.service.img_number == 100
    assert config.ocr.predict_system.default_options().det_limit_type == "max"
    # The shipped file names the default preset and sets no detection size over it.
    assert config.ocr.predict_system.preset == "page"
    assert "det_limit_side_len" not in config.ocr.predict_system.configured_options()
    assert config.resolve(config.service.filename_roots[0]) == ROOT / "docs" / "samples"


def test_the_original_servers_config_is_accepted(tmp_path):
    original = {"web_server": {"port": 8888},
                "ocr": {"process": {"number": 4, "max_task_number": 20},
                        "predict_system": {"enable_mkldnn": True, "det_model_dir": "./det/",
                                           "rec_model_dir": "./rec/", "cls_model_dir": "./cls/"}},
                "service": {"time": 6000, "img_number": 100}}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(original))
    config = load_config(path)
    assert config.ocr.process.number == 4
    assert config.resolve(config.ocr.predict_system.det_model_dir) == tmp_path / "det"


@pytest.mark.parametrize("overrides, message", [
    ({"web_server.prot": 1}, "web_server.prot: unknown key"),
    ({"ocr.process.number": "two"}, "ocr.process.number: expected an integer"),
    ({"ocr.process.number": 0}, "ocr.process.number: must be at least 1"),
    ({"ocr.process.task_timeout": -1}, "ocr.process.task_timeout: must be at least"),
    ({"ocr.predict_system.backend": "tensorflow"}, "ocr.predict_system.backend: must be one of"),
    ({"ocr.predict_system.det_db_thresh": 2}, "ocr.predict_system.det_db_thresh: must be at most"),
    ({"service.filename_roots": "docs"}, "service.filename_roots: expected a list"),
    ({"web_server.port": True}, "web_server.port: expected an integer"),
    ({"ocr.predict_system": 3}, "ocr.predict_system.: expected an object"),
    ({"ocr.predict_system.rec_image_shape": "3,48"},
     "ocr.predict_system.rec_image_shape: expected three integers"),
    ({"ocr.predict_system.rec_image_shape": "1, 48, 320"},
     "ocr.predict_system.rec_image_shape: channels must be 3"),
    ({"ocr.predict_system.preset": "fast"}, "ocr.predict_system.preset: must be one of"),
])
def test_bad_values_name_their_key(overrides, message):
    with pytest.raises(ConfigError) as error:
        load_config(None, overrides)
    assert message in str(error.value)


def test_invalid_json_and_missing_file_are_clear(tmp_path):
    bad = tmp_path / "config.json"
    bad.write_text("{")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_config(bad)
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "absent.json")


def test_readme_documents_every_key():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    missing = [key for key, _, _ in describe_keys() if f"`{key}`" not in readme]
    assert not missing, f"README lacks: {missing}"


def test_readme_documents_every_error_code():
    from server.errors import CATALOGUE

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    missing = [code for code in CATALOGUE if f"`{code}`" not in readme]
    assert not missing, f"README lacks: {missing}"


def test_readme_tables_are_generated_from_the_declarations():
    import runpy

    render = runpy.run_path(str(ROOT / "docs" / "readme_tables.py"), run_name="tables")["render"]
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert render(readme) == readme, "run: .venv/bin/python docs/readme_tables.py"


def test_a_custom_recogniser_gets_the_configured_input_shape(tmp_path):
    from server.main import build_engine_spec

    onnx = ROOT / "models" / "ppocr-v4" / "onnx"
    config = load_config(None, {
        "ocr.predict_system.model": "mine",
        "ocr.predict_system.det_model_dir": str(onnx / "det.onnx"),
        "ocr.predict_system.rec_model_dir": str(onnx / "rec.onnx"),
        "ocr.predict_system.rec_image_shape": "3, 32, 320"})
    assert build_engine_spec(config).models["mine"].rec_image_shape == (3, 32, 320)
