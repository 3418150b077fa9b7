"""ocr_engine.fusion: the rewritten graph computes what the original computes, on synthetic
PP-LCNetV3-like graphs (every rewrite, and the cases it must leave alone) and on the real
PP-OCRv4 models the registry installs."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from ocr_engine import CtcGreedyDecoder, OcrOptions, decode_image, resolve_model_set
from ocr_engine.fusion import fuse_model
from tests.onnx_graphs import GraphBuilder, lcnet_like_model, op_counts


def run(model: onnx.ModelProto | str, batch: np.ndarray) -> np.ndarray:
    source = model if isinstance(model, str) else model.SerializeToString()
    session = ort.InferenceSession(source, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: batch})[0]


def fused_copy(model: onnx.ModelProto):
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return copy, fuse_model(copy)


@pytest.fixture
def batch() -> np.ndarray:
    return np.random.default_rng(1).normal(0, 1, (2, 3, 12, 40)).astype(np.float32)


def test_every_rewrite_keeps_the_output(batch) -> None:
    model = lcnet_like_model()
    fused, stats = fused_copy(model)
    assert (stats.affine_into_conv, stats.hard_swish, stats.affine_into_next_conv,
            stats.scale_into_padded_conv) == (3, 3, 2, 1)
    counts = op_counts(fused)
    # 8 elementwise ops per layer became HardSigmoid + Mul, plus one Add before the padded conv.
    assert "Clip" not in counts and "Div" not in counts
    assert (counts["HardSigmoid"], counts["Mul"], counts["Add"], counts["Conv"]) == (3, 3, 1, 4)
    expected, got = run(model, batch), run(fused, batch)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_padded_borders_stay_exact(batch) -> None:
    """The shift before a padded conv cannot become a bias (padding is not shifted): the
    border rows and columns prove the rewrite kept it as an Add."""
    b = GraphBuilder(seed=3)
    x = b.affine(b.hard_swish(b.conv("x", 3, 4, 3, 1)), 0.5, 2.0)  # a large shift
    out = b.conv(x, 4, 4, 3, 1)
    model = b.model("x", out, [3])
    fused, stats = fused_copy(model)
    assert stats.scale_into_padded_conv == 1 and stats.affine_into_next_conv == 0
    expected, got = run(model, batch), run(fused, batch)
    np.testing.assert_allclose(got[:, :, [0, -1], :], expected[:, :, [0, -1], :],
                               rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_shared_tensors_are_left_alone(batch) -> None:
    """An affine whose output also feeds a non-conv, or a conv output read twice, must not be
    folded: the other reader would see the changed tensor."""
    b = GraphBuilder(seed=5)
    conv = b.conv("x", 3, 4, 1, 0)
    scaled = b.op("Mul", b.scalar(2.0), conv)
    side = b.op("Add", scaled, conv)  # conv read twice
    shifted = b.op("Add", b.op("Mul", b.scalar(3.0), side), b.scalar(1.0))
    out = b.op("Add", b.conv(shifted, 4, 4, 1, 0), shifted)  # affine read by conv and Add
    model = b.model("x", out, [3])
    fused, stats = fused_copy(model)
    assert stats.total == 0
    np.testing.assert_array_equal(run(fused, batch), run(model, batch))


def test_a_graph_without_the_patterns_is_unchanged_in_meaning(batch) -> None:
    b = GraphBuilder(seed=7)
    out = b.op("Relu", b.conv(b.op("Sigmoid", "x"), 3, 4, 3, 1))
    model = b.model("x", out, [3])
    fused, stats = fused_copy(model)
    assert stats.total == 0
    np.testing.assert_array_equal(run(fused, batch), run(model, batch))


@pytest.mark.slow
@pytest.mark.parametrize("image", ["paddleocr/doc/imgs/11.jpg", "paddleocr/doc/imgs_en/img_12.jpg"])
def test_real_models_fused_read_the_same(onnx_engine, eval_dir, image) -> None:
    """The installed fused det and rec models against the originals from the same wheel, on a
    real page and its line crops: same probability map and text up to float rounding. (The
    differential tests compare the whole pipeline: rapidocr runs the original files.)"""
    paths = onnx_engine.config.models
    assert (paths.det.name, paths.rec.name) == ("det.fused.onnx", "rec.fused.onnx")
    wheel = resolve_model_set(paths.name, paths.backend, derived_files=False)
    original = {stage: str(getattr(wheel, stage)) for stage in ("det", "rec")}
    page = decode_image((eval_dir / image).read_bytes())

    det_input = onnx_engine.detector.preprocess(page, OcrOptions()).tensor
    np.testing.assert_allclose(run(str(paths.det), det_input), run(original["det"], det_input),
                               atol=1e-3)

    lines = onnx_engine.text_lines(page, OcrOptions())
    crops = [lines.crops[i] for i in range(min(6, len(lines.crops)))]
    assert len(crops) == 6
    # The engine's own batching: one batch of the 6 crops, padded to the widest.
    [batch] = list(onnx_engine.recognizer.batches(crops))
    fused, plain = run(str(paths.rec), batch.tensor), run(original["rec"], batch.tensor)
    np.testing.assert_allclose(fused, plain, atol=1e-3)
    decode = CtcGreedyDecoder(onnx_engine.charset)
    assert ([line.text for line in decode(fused)] == [line.text for line in decode(plain)])
