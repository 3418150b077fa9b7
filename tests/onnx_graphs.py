"""Small ONNX graphs in paddle2onnx's PP-LCNetV3 spelling, for the fusion and registry tests."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


class GraphBuilder:
    """Appends nodes in paddle2onnx's style: scalars as Constant nodes, weights as initializers."""

    def __init__(self, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.count = 0

    def name(self, stem: str) -> str:
        self.count += 1
        return f"{stem}_{self.count}"

    def scalar(self, value: float) -> str:
        out = self.name("const")
        self.nodes.append(helper.make_node("Constant", [], [out], value=numpy_helper.from_array(
            np.array([value], np.float32), out)))
        return out

    def op(self, op_type: str, *inputs: str, **attributes) -> str:
        out = self.name(op_type.lower())
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], **attributes))
        return out

    def conv(self, x: str, c_in: int, c_out: int, kernel: int, pad: int, group: int = 1) -> str:
        weights, bias = self.name("W"), self.name("B")
        self.initializers += [
            numpy_helper.from_array(self.rng.normal(0, 0.5, (c_out, c_in // group, kernel, kernel))
                                    .astype(np.float32), weights),
            numpy_helper.from_array(self.rng.normal(0, 0.5, c_out).astype(np.float32), bias)]
        return self.op("Conv", x, weights, bias, kernel_shape=[kernel, kernel],
                       pads=[pad] * 4, group=group)

    def affine(self, x: str, scale: float, shift: float) -> str:
        """LearnableAffineBlock: Mul(s, x) -> Add(., b), scale first as paddle2onnx writes it."""
        return self.op("Add", self.op("Mul", self.scalar(scale), x), self.scalar(shift))

    def hard_swish(self, x: str) -> str:
        clipped = self.op("Clip", self.op("Add", x, self.scalar(3.0)), self.scalar(0.0),
                          self.scalar(6.0))
        return self.op("Div", self.op("Mul", x, clipped), self.scalar(6.0))

    def rep_layer(self, x: str, c_in: int, c_out: int, kernel: int, pad: int, group: int = 1
                  ) -> str:
        """One PP-LCNetV3 layer: conv, affine, hard-swish, affine."""
        x = self.affine(self.conv(x, c_in, c_out, kernel, pad, group), 1.3, 0.4)
        return self.affine(self.hard_swish(x), 0.7, -0.25)

    def model(self, x: str, out: str, shape: list[int]) -> onnx.ModelProto:
        graph = helper.make_graph(
            self.nodes, "lcnet_like",
            [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["N", shape[0], "H", "W"])],
            [helper.make_tensor_value_info(out, TensorProto.FLOAT, ["N", None, "H", "W"])],
            self.initializers)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 12)])
        model.ir_version = 7
        onnx.checker.check_model(model)
        return model


def lcnet_like_model(channels: int = 8, seed: int = 0) -> onnx.ModelProto:
    """A depthwise (padded) and a pointwise (unpadded) layer after a stem, like PP-LCNetV3:
    both kinds of 'affine into the next conv' appear, the last affine feeds the output."""
    b = GraphBuilder(seed)
    x = b.rep_layer("x", 3, channels, 3, 1)
    x = b.rep_layer(x, channels, channels, 3, 1, group=channels)  # depthwise, padded
    x = b.rep_layer(x, channels, 2 * channels, 1, 0)  # pointwise
    x = b.conv(x, 2 * channels, 4, 1, 0)
    return b.model("x", x, [3])


def op_counts(model: onnx.ModelProto) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in model.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts
