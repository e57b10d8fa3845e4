"""Small ONNX models written with onnx's helper API: for tests, benchmarks and examples.

Needs the ``onnx`` package (in the dev extra); nothing here is downloaded.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

__all__ = ["mlp_reference", "write_mlp_onnx"]


def write_mlp_onnx(
    path: str | os.PathLike[str],
    layers: Sequence[tuple[np.ndarray, np.ndarray]],
    *,
    input_name: str = "features",
    features: int | None = None,
) -> str:
    """Write a float32 MLP: ``x @ W + b`` per layer, ReLU between layers; returns the path.

    ``features`` fixes the input's width in the model (default: the first weight's rows); the
    batch dimension is dynamic.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes = []
    initializers = []
    current = input_name
    for index, (weight, bias) in enumerate(layers):
        w_name, b_name = f"W{index}", f"b{index}"
        initializers.append(numpy_helper.from_array(np.asarray(weight, np.float32), w_name))
        initializers.append(numpy_helper.from_array(np.asarray(bias, np.float32), b_name))
        product, summed = f"matmul{index}", f"layer{index}"
        nodes.append(helper.make_node("MatMul", [current, w_name], [product]))
        nodes.append(helper.make_node("Add", [product, b_name], [summed]))
        current = summed
        if index < len(layers) - 1:
            nodes.append(helper.make_node("Relu", [summed], [f"relu{index}"]))
            current = f"relu{index}"
    nodes.append(helper.make_node("Identity", [current], ["output"]))
    width = features if features is not None else int(np.asarray(layers[0][0]).shape[0])
    outputs = int(np.asarray(layers[-1][0]).shape[1])
    graph = helper.make_graph(
        nodes, "streamdag_mlp",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["rows", width])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["rows", outputs])],
        initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, os.fspath(path))
    return os.fspath(path)


def mlp_reference(rows: np.ndarray, layers: Sequence[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """What ``write_mlp_onnx``'s model computes, in numpy float32 (the tests' reference)."""
    current = np.asarray(rows, np.float32)
    for index, (weight, bias) in enumerate(layers):
        current = current @ np.asarray(weight, np.float32) + np.asarray(bias, np.float32)
        if index < len(layers) - 1:
            current = np.maximum(current, np.float32(0))
    return current
