"""Presets (ocr_engine/presets.py): every bundle is valid options, a preset sets only what it
names over the base it is given, `paddleocr` is PaddleOCR's whole configuration whatever the
base, and an unknown name is an InvalidOptionError that names the field."""

from __future__ import annotations

import dataclasses

import pytest

from ocr_engine import InvalidOptionError, OcrOptions
from ocr_engine.options import OPTION_NAMES, option_spec
from ocr_engine.plates import PLATE_DETECTION
from ocr_engine.presets import DEFAULT_PRESET, PRESET_NAMES, PRESETS, Preset, apply_preset

# A base that differs from the built-in defaults in every option, so that a preset's result
# shows which options it set and which it left as configured.
ODD_BASE = OcrOptions(use_angle_cls=False, use_det=True, det_limit_side_len=640,
                      det_limit_type="min", det_db_thresh=0.25, det_db_box_thresh=0.55,
                      det_db_unclip_ratio=1.8, use_dilation=True, det_db_score_mode="slow",
                      cls_thresh=0.8, drop_score=0.4, text_grammar="none",
                      cls_long_lines="windows")


def test_the_odd_base_differs_from_the_defaults_where_it_can() -> None:
    defaults = OcrOptions()
    same = [name for name in OPTION_NAMES
            if getattr(ODD_BASE, name) == getattr(defaults, name)]
    # use_det false and a plate grammar would change what the pipeline does, not just a value.
    assert same == ["use_det", "text_grammar"]


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_every_preset_is_valid_options(name: str) -> None:
    preset = PRESETS[name]
    assert preset.name == name and preset.description
    for option, value in preset.changes.items():
        assert option_spec(option).check(value) == value
    applied = apply_preset(name, OcrOptions())
    assert isinstance(applied, OcrOptions)
    assert {option: getattr(applied, option) for option in preset.changes} == dict(
        preset.changes)


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_a_preset_sets_what_it_names_and_keeps_the_rest_of_the_base(name: str) -> None:
    changes = PRESETS[name].changes
    applied = apply_preset(name, ODD_BASE)
    for option in OPTION_NAMES:
        expected = changes[option] if option in changes else getattr(ODD_BASE, option)
        assert getattr(applied, option) == expected, option


def test_request_fields_go_over_the_preset() -> None:
    # The caller's order: configured base, then the preset, then the request's own fields.
    applied = apply_preset("page", ODD_BASE).replace(det_limit_side_len=2000)
    assert applied.det_limit_side_len == 2000
    assert applied.det_limit_type == PRESETS["page"].changes["det_limit_type"]
    assert applied.drop_score == ODD_BASE.drop_score


def test_paddleocr_is_paddleocrs_whole_configuration_over_any_base() -> None:
    # Every option set: the built-in defaults are PaddleOCR 2.x's (ocr_engine/options.py).
    assert set(PRESETS["paddleocr"].changes) == set(OPTION_NAMES)
    assert apply_preset("paddleocr", ODD_BASE) == OcrOptions()
    assert apply_preset("paddleocr", OcrOptions(use_det=False, text_grammar="plate")) == (
        OcrOptions())


def test_the_named_bundles() -> None:
    assert DEFAULT_PRESET == "page"
    assert set(PRESET_NAMES) == {"page", "paddleocr", "line", "plate"}
    page = apply_preset("page", OcrOptions())
    assert (page.det_limit_type, page.det_limit_side_len) == ("page", 1280)
    assert dict(PRESETS["line"].changes) == {"use_det": False}
    plate = apply_preset("plate", OcrOptions())
    assert plate.text_grammar == "plate"
    assert all(getattr(plate, option) == value for option, value in PLATE_DETECTION.items())
    assert (plate.det_limit_type, plate.det_limit_side_len, plate.use_dilation) == (
        "min", 736, True)


@pytest.mark.parametrize("name", ["Page", "pages", "", "none", None, 3, ["page"]])
def test_an_unknown_name_is_an_invalid_option(name) -> None:
    with pytest.raises(InvalidOptionError) as caught:
        apply_preset(name, OcrOptions())
    assert caught.value.name == "preset"
    assert "page, paddleocr, line, plate" in str(caught.value)


def test_a_preset_cannot_name_an_unknown_option_or_be_changed() -> None:
    with pytest.raises(ValueError, match="det_limit_sidelen"):
        Preset("typo", "a misspelt option", {"det_limit_sidelen": 1280})
    changes = {"use_det": False}
    preset = Preset("mine", "one line", changes)
    changes["use_det"] = True  # the caller's dict is copied, not kept
    assert preset.changes == {"use_det": False}
    with pytest.raises(TypeError):
        preset.changes["use_det"] = True  # type: ignore[index]
    with pytest.raises(dataclasses.FrozenInstanceError):
        preset.name = "other"  # type: ignore[misc]


def test_a_preset_with_an_invalid_value_cannot_be_made() -> None:
    with pytest.raises(InvalidOptionError, match="det_db_thresh"):
        Preset("bad", "out of range", {"det_db_thresh": 2.0})
    with pytest.raises(InvalidOptionError, match="det_limit_type"):
        Preset("bad", "no such rule", {"det_limit_type": "pages"})
