"""Licence plates: the grammar automaton, the constrained CTC beam search on synthetic
probability matrices, the crop-or-photo rule, and the engine's plate mode with the real
models (the 200 eval crops, synthetic scenes, one request over real HTTP)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bench.plates import DISTRACTORS, plate_scene, read_labels
from ocr_engine import OcrOptions
from ocr_engine.image import decode_image
from ocr_engine.plates import (
    DIGITS,
    PLATE_DETECTION,
    PROVINCES,
    REGION_LETTERS,
    PlateDecoder,
    PlateGrammar,
    is_plate_crop,
    plate_character,
    plate_reading_options,
)
from ocr_engine.rec import CtcGreedyDecoder, build_charset
from tests.app_testing import AppTestCase

GRAMMAR = PlateGrammar()
PLATE_MODE = OcrOptions(text_grammar="plate")

# ---------------------------------------------------------------- the grammar


@pytest.mark.parametrize("plate", [
    "京A12345", "沪AMS087", "皖AP666P", "浙D911SY", "粤Z1234港", "粤Z1234澳", "冀A1234挂",
    "京A1234学", "京A0123警", "沪A0256领",  # ordinary, and each special last character
    "京AD12345", "沪AF12345", "京ADA1234", "沪AFZ1234",  # small new-energy
    "粤B12345D", "粤B12345F",  # large new-energy
    "使014001", "使A12345", "领A1234学",  # 使 and 领 plates
])
def test_grammar_accepts_each_plate_form(plate: str) -> None:
    assert GRAMMAR.accepts(plate)


@pytest.mark.parametrize("province", list(PROVINCES))
def test_every_province_starts_a_plate(province: str) -> None:
    assert len(PROVINCES) == 31
    assert GRAMMAR.accepts(province + "A12345")


@pytest.mark.parametrize("letter", list(REGION_LETTERS))
def test_every_region_letter_but_i_and_o(letter: str) -> None:
    assert GRAMMAR.accepts("京" + letter + "12345")
    assert GRAMMAR.accepts("京A1234" + letter)


@pytest.mark.parametrize("text, why", [
    ("", "empty"),
    ("京A1234", "one character short"),
    ("京A1234567", "9 characters"),
    ("A123456", "no province"),
    ("#AST949", "a symbol for the province"),
    ("京112345", "a digit where the region letter must be"),
    ("京I12345", "region letter I"),
    ("京O12345", "region letter O"),
    ("京A1O345", "O in the serial"),
    ("京A1234I", "I in the serial"),
    ("京A·12345", "the separator is not part of the number"),
    ("京Aa2345", "lower case"),
    ("京A12挂45", "a special character before the end"),
    ("挂A12345", "a special character first"),
    ("京AD1234挂", "a special character ending an 8-character plate"),
    ("京AE12345", "small new-energy starting E (not in the default rule)"),
    ("京AD1234A", "small new-energy with a letter in the last four"),
    ("京ADAB234", "small new-energy with two letters before the digits"),
    ("粤B1234AD", "large new-energy with a letter among the first five"),
    ("粤B12345E", "large new-energy ending E"),
    ("使01400", "embassy with 5 digits"),
    ("使0140A1", "embassy with a letter"),
    ("使A1234", "使 before a short serial"),
    ("领0123456", "领 before digits only"),
])
def test_grammar_rejects(text: str, why: str) -> None:
    assert not GRAMMAR.accepts(text), why


def test_automaton_states_and_steps() -> None:
    state = GRAMMAR.run("京A1234")
    assert state is not None and not GRAMMAR.accepting(state)  # a prefix, not a plate
    # 京A12345 is a whole ordinary plate and still a prefix of a large new-energy one.
    whole = GRAMMAR.run("京A12345")
    assert GRAMMAR.accepting(whole) and set(GRAMMAR.allowed(whole)) == {"D", "F"}
    # After a letter in the serial only ordinary and small new-energy forms remain.
    assert set(GRAMMAR.allowed(GRAMMAR.run("京AD"))) == set(REGION_LETTERS + DIGITS)
    assert set(GRAMMAR.allowed(GRAMMAR.run("京AD1"))) == set(DIGITS + REGION_LETTERS)
    assert set(GRAMMAR.allowed(GRAMMAR.run("京AB1"))) == set(REGION_LETTERS + DIGITS)
    assert GRAMMAR.step(GRAMMAR.run("京AB123"), "挂") is not None  # ordinary 京AB123挂
    assert GRAMMAR.allowed(GRAMMAR.run("京AB1234")) == {}  # nothing after it
    assert GRAMMAR.step(0, "A") is None and GRAMMAR.run("京I") is None
    # Deterministic: one state per (state, character), small integers from 0.
    assert all(0 <= target < GRAMMAR.states for state in range(GRAMMAR.states)
               for target in GRAMMAR.allowed(state).values())
    assert GRAMMAR.states < 40


def test_wider_small_new_energy_series_is_an_explicit_choice() -> None:
    wider = PlateGrammar(small_new_energy_first="DABCEFGHJK")
    assert wider.accepts("京AE12345") and wider.accepts("京AKA1234")
    assert not GRAMMAR.accepts("京AKA1234") and not GRAMMAR.accepts("京AE12345")


def test_plate_character_folds_look_alikes_and_separators() -> None:
    assert [plate_character(c) for c in "·. -"] == ["", "", "", ""]
    assert [plate_character(c) for c in "OoＯ〇0"] == ["0"] * 5
    assert [plate_character(c) for c in "IilＩ|1"] == ["1"] * 6
    assert [plate_character(c) for c in "pＰP"] == ["P"] * 3
    assert plate_character("滬") == "沪" and plate_character("５") == "5"
    assert plate_character("#") is None and plate_character("的") is None


# ---------------------------------------------------------------- the beam search

# A small model alphabet: plate characters, look-alikes, a separator and characters no plate
# has (which greedy can read and the grammar never allows).
CHARSET = build_charset(list("皖京ABDGSP0123456789O·#的了是在有和"))


def frames(*columns: dict[str, float]) -> np.ndarray:
    """(1, T, C) probabilities: each frame the given characters, the rest of the mass blank
    ('' in a frame gives the blank's probability explicitly)."""
    probs = np.zeros((1, len(columns), len(CHARSET)), dtype=np.float32)
    for t, column in enumerate(columns):
        for char, prob in column.items():
            if char:
                probs[0, t, CHARSET.index(char)] = prob
        probs[0, t, 0] = column.get("", 1.0 - sum(column.values()))
    return probs


def spelled(text: str) -> list[dict[str, float]]:
    """Certain frames spelling `text`, a blank after each character."""
    out: list[dict[str, float]] = []
    for char in text:
        out += [{char: 0.98}, {}]
    return out


GREEDY = CtcGreedyDecoder(CHARSET)
PLATES = PlateDecoder(CHARSET)


def test_a_clean_plate_reads_as_greedy_with_the_same_score() -> None:
    probs = frames(*spelled("皖A12345"))
    plate, greedy = PLATES(probs)[0], GREEDY(probs)[0]
    assert plate.text == greedy.text == "皖A12345"
    assert plate.score == pytest.approx(greedy.score, abs=1e-6)


def test_letter_where_greedy_reads_a_digit() -> None:
    # Position 2 must be a letter: greedy's 8 loses to the second best B.
    columns = spelled("皖") + [{"8": 0.6, "B": 0.35}, {}] + spelled("12345")
    probs = frames(*columns)
    assert GREEDY(probs)[0].text == "皖812345"
    plate = PLATES(probs)[0]
    assert plate.text == "皖B12345"
    # The score counts what the model gave the letter read, not the digit.
    assert plate.score == pytest.approx(np.mean([0.98, 0.35] + [0.98] * 5), abs=1e-6)


def test_dropped_province_is_recovered_when_second_best() -> None:
    columns = [{"#": 0.55, "皖": 0.3}, {}] + spelled("A12345")
    probs = frames(*columns)
    assert GREEDY(probs)[0].text == "#A12345"
    assert PLATES(probs)[0].text == "皖A12345"


def test_province_below_the_top_k_is_still_considered() -> None:
    # Plate symbols the start state does not allow outrank the province; with top_k 2 only
    # the allowed set's best brings it in.
    columns = [{"A": 0.3, "B": 0.3, "1": 0.2, "皖": 0.05}, {}] + spelled("A12345")
    probs = frames(*columns)
    assert PlateDecoder(CHARSET, top_k=2)(probs)[0].text == "皖A12345"


def test_look_alike_mass_counts_for_the_plate_character() -> None:
    # Plates have no O: its 0.3 goes to 0, which then beats D's 0.45.
    columns = spelled("皖A1234") + [{"D": 0.45, "0": 0.25, "O": 0.3}]
    probs = frames(*columns)
    assert GREEDY(probs)[0].text == "皖A1234D"
    assert PLATES(probs)[0].text == "皖A12340"


def test_repeats_collapse_unless_a_blank_or_separator_parts_them() -> None:
    parted = spelled("皖A1") + spelled("1234")
    assert PLATES(frames(*parted))[0].text == "皖A11234"
    separated = spelled("皖A") + [{"1": 0.98}, {"·": 0.98}, {"1": 0.98}] + spelled("234")
    assert PLATES(frames(*separated))[0].text == "皖A11234"
    assert "·" in GREEDY(frames(*separated))[0].text
    # A held 1 over three frames is one character: 6 characters, no plate.
    held = spelled("皖A") + [{"1": 1.0, "": 0.0}] * 3 + spelled("234")
    assert GREEDY(frames(*held))[0].text == "皖A1234"
    assert PLATES(frames(*held))[0].text == ""


def test_separator_never_appears_and_counts_as_blank() -> None:
    columns = spelled("皖A") + [{"·": 0.9}] + spelled("12345")
    probs = frames(*columns)
    assert GREEDY(probs)[0].text == "皖A·12345"
    assert PLATES(probs)[0].text == "皖A12345"


def test_no_accepting_path_reads_nothing() -> None:
    for text in ("的了是在", "皖A123", "A12345"):
        assert GREEDY(frames(*spelled(text)))[0].text == text
        result = PLATES(frames(*spelled(text)))[0]
        assert (result.text, result.score) == ("", 0.0)


def test_a_character_is_read_not_invented() -> None:
    # Six certain characters and a seventh the model barely saw: below min_char_prob the
    # line is no plate; above it, it is.
    faint = spelled("皖A1234") + [{"5": 0.002}]
    assert PLATES(frames(*faint))[0].text == ""
    visible = spelled("皖A1234") + [{"5": 0.05}]
    assert PLATES(frames(*visible))[0].text == "皖A12345"


def test_rows_decode_in_order() -> None:
    batch = np.concatenate([frames(*spelled("皖A12345")), frames(*spelled("的了是在有和是")),
                            frames(*spelled("京B0123D"))])
    assert [r.text for r in PLATES(batch)] == ["皖A12345", "", "京B0123D"]


def test_a_charset_without_plate_characters_reads_nothing() -> None:
    latin = build_charset(list("ABC0123"))
    probs = np.full((1, 10, len(latin)), 1.0 / len(latin), dtype=np.float32)
    assert PlateDecoder(latin)(probs)[0].text == ""


# ---------------------------------------------------------------- crop or photo


@pytest.mark.parametrize("height, width, crop", [
    (24, 94, True), (140, 440, True), (36, 100, True), (48, 250, True),
    (480, 640, False), (960, 1280, False), (1080, 1920, False),  # photos
    (100, 100, False), (24, 300, False),  # square; a long strip of text
    (320, 1000, True), (500, 1500, False),  # plate-shaped: a large crop; photo-sized
])
def test_is_plate_crop(height: int, width: int, crop: bool) -> None:
    assert is_plate_crop(height, width) is crop


def test_plate_reading_options() -> None:
    crop = plate_reading_options(PLATE_MODE, 24, 94)
    assert (crop.use_det, crop.use_angle_cls) == (False, False)
    photo = plate_reading_options(PLATE_MODE, 480, 640)
    assert photo.use_det and photo.use_angle_cls
    assert {key: getattr(photo, key) for key in PLATE_DETECTION} == PLATE_DETECTION
    forced = plate_reading_options(PLATE_MODE.replace(use_det=False), 480, 640)
    assert not forced.use_det


def test_text_grammar_is_an_option_in_the_cache_key() -> None:
    assert OcrOptions().text_grammar == "none"
    assert PLATE_MODE.cache_key() != OcrOptions().cache_key()
    from ocr_engine import InvalidOptionError, parse_options
    assert parse_options({"text_grammar": " Plate "}).text_grammar == "plate"
    with pytest.raises(InvalidOptionError):
        parse_options({"text_grammar": "vin"})


# ---------------------------------------------------------------- the real models


@pytest.fixture(scope="session")
def plate_labels(eval_dir: Path) -> dict[str, str]:
    labels = read_labels(eval_dir / "plates")
    assert len(labels) == 200
    return labels


# Measured: the plate decoder reads 198 of the 200 crops exactly, greedy 196 ('·' removed).
# The two still missed (0168: 5 read as S; 0451: the second G of AGG read as 6) are valid
# plates either way, so the grammar cannot catch them.
PLATE_CROPS_EXACT = 198


@pytest.mark.slow
def test_eval_crops_read_better_with_the_plate_decoder(onnx_engine, eval_dir: Path,
                                                       plate_labels: dict[str, str]) -> None:
    plate_exact = greedy_exact = 0
    for name, label in sorted(plate_labels.items()):
        data = (eval_dir / "plates" / "images" / name).read_bytes()
        lines = onnx_engine.ocr(data, PLATE_MODE).lines
        assert len(lines) <= 1
        text = lines[0].text if lines else ""
        assert text == "" or GRAMMAR.accepts(text), (name, text)
        plate_exact += text == label
        greedy = onnx_engine.ocr(data, OcrOptions(use_det=False, use_angle_cls=False,
                                                  drop_score=0.0)).lines[0].text
        greedy_exact += greedy.replace("·", "") == label
    print(f"plate crops: plate decoder {plate_exact}/200, greedy {greedy_exact}/200")
    assert plate_exact >= PLATE_CROPS_EXACT
    assert plate_exact > greedy_exact


def test_plate_decoder_is_built_once_per_engine(onnx_engine) -> None:
    assert onnx_engine.plate_decoder is onnx_engine.plate_decoder
    assert onnx_engine.plate_decoder.symbols[0] == ""


def test_an_explicit_decoder_wins_over_the_option(onnx_engine, eval_dir: Path) -> None:
    data = (eval_dir / "plates" / "images" / "0451.jpg").read_bytes()
    crop_options = OcrOptions(use_det=False, use_angle_cls=False, text_grammar="plate")
    greedy = onnx_engine.ocr(data, crop_options, CtcGreedyDecoder(onnx_engine.charset))
    assert greedy.lines[0].text == "皖A·G6512"
    assert onnx_engine.ocr(data, crop_options).lines[0].text == "皖AG6512"


SCENE_CROPS = ("0000.jpg", "0298.jpg", "0737.jpg")
SCENE_SIZES = ((640, 480), (1280, 960))
SCENE_SCALES = (1.0, 1.5, 2.0, 3.0)


# Measured: all 24 scenes give exactly the plate (with the detection unclip ratio 1.5 instead
# of plate mode's 2.0, 23: 0737 at 2x in 640x480 read 皖ATG6L1). The distractor lines are
# dropped in every scene.
SCENES_EXACT = 24


@pytest.mark.slow
def test_plates_in_synthetic_scenes_are_found_and_nothing_else(
        onnx_engine, eval_dir: Path, plate_labels: dict[str, str]) -> None:
    found = []
    for name in SCENE_CROPS:
        crop = decode_image((eval_dir / "plates" / "images" / name).read_bytes())
        for number, (size, scale) in enumerate((s, k) for s in SCENE_SIZES
                                               for k in SCENE_SCALES):
            scene = plate_scene(crop, size, scale, seed=number)
            assert not is_plate_crop(*scene.shape[:2])
            texts = [line.text for line in onnx_engine.ocr_array(scene, PLATE_MODE).lines]
            # The distractor lines are read by detection and must be dropped.
            assert len(texts) <= 1, (name, size, scale, texts)
            found.append(texts == [plate_labels[name]])
    print(f"synthetic scenes: {sum(found)}/{len(found)} plates read exactly")
    assert len(found) == 24 and sum(found) >= SCENES_EXACT


@pytest.mark.slow
def test_a_scene_without_a_plate_reads_nothing_in_plate_mode(onnx_engine, eval_dir: Path
                                                            ) -> None:
    crop = decode_image((eval_dir / "plates" / "images" / "0000.jpg").read_bytes())
    scene = plate_scene(crop, (640, 480), 1.5, seed=7)
    # Paint the plate out: the scene keeps only the distractor lines.
    plate_mode = onnx_engine.ocr_array(scene, PLATE_MODE)
    box = np.array(plate_mode.lines[0].box)
    x0, y0 = box.min(axis=0) - 6
    x1, y1 = box.max(axis=0) + 6
    scene[max(0, y0):y1, max(0, x0):x1] = 128
    plain = [line.text for line in onnx_engine.ocr_array(
        scene, OcrOptions(**PLATE_DETECTION)).lines]
    assert any(DISTRACTORS[0].split()[0] in text for text in plain)  # text is there to read
    assert onnx_engine.ocr_array(scene, PLATE_MODE).lines == []


# ---------------------------------------------------------------- over HTTP


class TestPlateModeOverHttp(AppTestCase):
    real_models = True
    pool_size = 1
    hardened = False
    deadline = 240.0
    send_token = False

    def test_text_grammar_plate_reads_the_plate(self):
        eval_plates = Path(__file__).resolve().parents[2] / "shared" / "eval" / "plates"
        image = (eval_plates / "images" / "0641.jpg").read_bytes()
        plate = json.loads(self.upload(image, text_grammar="plate").body)
        assert [line["text"] for line in plate["lines"]] == ["皖AP666P"]
        plain = json.loads(self.upload(image, use_det="false").body)
        assert plain["cached"] is False and plain["lines"][0]["text"] == "AP666P"
        self.assert_error(self.upload(image, text_grammar="vin"), 400, "invalid_option")
