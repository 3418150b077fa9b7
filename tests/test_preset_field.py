"""The `preset` request field and config key: which options a request starts from.

Precedence (server/request.py option_bases), low to high: built-in defaults, the model set's
own detection defaults, then either the configured default preset with config.json's option
keys over it, or (a request naming a preset) config.json's keys with that preset over them,
then the request's own option fields. The unit tests check the table; the HTTP tests check
that the preset is part of the cache key (through what it resolves to) and that a wrong name
is a clear 400.
"""

from __future__ import annotations

from ocr_engine import OcrOptions
from ocr_engine.presets import DEFAULT_PRESET, PRESET_NAMES, PRESETS, apply_preset
from server.config import load_config
from server.request import RequestPolicy, given_options, option_bases
from tests.app_testing import ROOT, AppTestCase


def policy_with(bases) -> RequestPolicy:
    return RequestPolicy(bases["a", None], "a", ("a", "b"), (), 1 << 20, bases=bases)


def test_every_preset_is_valid_options_and_the_default_is_named():
    assert DEFAULT_PRESET in PRESET_NAMES
    for name in PRESET_NAMES:
        assert isinstance(apply_preset(name, OcrOptions()), OcrOptions)
    assert apply_preset("line", OcrOptions()).use_det is False


def test_precedence_set_defaults_preset_config_request():
    bases = option_bases({"a": {"det_db_thresh": 0.2}, "b": {}},
                         {"drop_score": 0.7, "det_limit_side_len": 1600}, "page")
    policy = policy_with(bases)
    plain = given_options({}, policy, "a")
    # The set's own default, config.json's keys over the default preset.
    assert plain.det_db_thresh == 0.2 and plain.drop_score == 0.7
    assert plain.det_limit_side_len == 1600
    assert given_options({}, policy, "b").det_db_thresh == OcrOptions().det_db_thresh
    # A request's preset wins over config.json's keys...
    asked = given_options({"preset": "paddleocr"}, policy, "a")
    expected = apply_preset("paddleocr", OcrOptions(det_db_thresh=0.2, drop_score=0.7,
                                                    det_limit_side_len=1600))
    assert asked == expected
    assert asked.det_limit_side_len == PRESETS["paddleocr"].changes["det_limit_side_len"]
    # ...and the request's own fields win over its preset.
    assert given_options({"preset": "paddleocr", "det_limit_side_len": "640"}, policy,
                         "a").det_limit_side_len == 640


def test_a_preset_that_leaves_an_option_alone_keeps_the_configured_value():
    bases = option_bases({"a": {}}, {"cls_thresh": 0.8}, "page")
    line = given_options({"preset": "line"}, policy_with({**bases, ("b", None): bases["a", None]}),
                         "a")
    assert line.use_det is False and line.cls_thresh == 0.8


def test_config_records_which_option_keys_the_file_sets(tmp_path):
    config = load_config(ROOT / "config.json", {"ocr.predict_system.drop_score": 0.6})
    assert "drop_score" in config.ocr.predict_system.given_options
    assert config.ocr.predict_system.configured_options()["drop_score"] == 0.6
    assert "det_db_thresh" not in config.ocr.predict_system.configured_options()
    assert config.ocr.predict_system.preset == DEFAULT_PRESET


class TestPresetOverHttp(AppTestCase):
    def test_the_preset_is_part_of_the_cache_key(self):
        image = b"preset cache key image"
        before = self.service.engine_runs
        assert self.read(image).code == 200
        assert self.read(image, preset="line").code == 200
        assert self.service.engine_runs == before + 2  # two presets, two keys
        # The paddleocr preset and the same options given one by one are one key.
        fields = {name: str(value).lower() if isinstance(value, bool) else str(value)
                  for name, value in PRESETS["paddleocr"].changes.items()}
        assert self.read(image, preset="paddleocr").code == 200
        runs = self.service.engine_runs
        response = self.read(image, preset="line", **fields)
        assert response.code == 200 and self.service.engine_runs == runs

    def test_an_unknown_preset_is_a_400_naming_the_choices(self):
        body = self.assert_error(self.read(b"x", preset="receipts"), 400, "invalid_field")
        error = body["error"]
        assert "preset" in error["message"] and all(name in error["message"]
                                                    for name in PRESET_NAMES)
