"""Static full-integer INT8 TFLite files (the ``int8=True`` half of :mod:`rfdetr.deploy.export.formats.tflite`).

PT2E quantization of the PyTorch graph, not of a converted float file (ai-edge-quantizer 0.10's static recipes on
our converted file gave files LiteRT refuses): the graph is captured with ``torch.export``, this project's
``matmul + add_`` products are rewritten as ``aten.linear`` (the only product litert-torch's annotators quantize),
litert-torch's ``PT2EQuantizer`` observes the calibration images through torchao's ``prepare_pt2e``, ``convert_pt2e``
inserts the quantize / dequantize pairs and ``litert_torch.convert`` lowers them to int8 kernels. The file's input and
outputs are float32, or int8 / uint8 for accelerators that take integers only (:func:`_set_io_type`).

``litert-torch`` and ``torchao`` are optional dependencies, imported only here, when quantizing.
"""

from __future__ import annotations

import logging
import operator
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rfdetr.deploy.export.formats import FORMATS
from rfdetr.deploy.export.formats.litert import NamedIO, converter, embed_metadata, quiet_converter
from rfdetr.deploy.export.graph import INPUT_NAME, ExportForward
from rfdetr.deploy.export.int8 import FLOAT_GROUPS
from rfdetr.util.atomic import write_bytes_atomic

__all__ = ["FLOAT_MODULES", "INT8_OPS", "quantize_module", "quantized_graph"]

logger = logging.getLogger(__name__)


# PT2E patterns (litert-torch's PT2EQuantizer annotators) quantized to INT8: the matrix products and convolutions,
# nearly all of the compute, as for ONNX (:data:`rfdetr.deploy.export.int8.ONNX_INT8_OPS`). The converter lowers each to
# an int8 FULLY_CONNECTED / CONV_2D (int8 per-channel weights, int8 per-tensor activations, int32 bias) with
# QUANTIZE / DEQUANTIZE where a float op follows; the rest (LayerNorm, Softmax, GELU, the attention BATCH_MATMULs,
# which litert-torch 0.10 has no annotator for, grid sampling, box arithmetic) stays float32.
INT8_OPS: tuple[str, ...] = ("linear", "addmm", "conv", "conv_relu")
# Submodules kept float32 besides the two-stage proposal heads (rfdetr.deploy.export.int8.FLOAT_GROUPS, kept float in
# every format): the multi-scale projector, whose output is the memory the proposal heads score. Measured on the demo
# model (160 px, 32 calibration images, its 16 test images, top detections above 0.5 matched by box, in XNNPACK):
#
#   kept float                      worst score change   size     latency (1 thread)
#   nothing                         0.41                 1.49 MB  2.7 ms
#   proposal heads                  0.39                 1.52 MB  2.7 ms
#   proposal heads + projector      0.013                1.78 MB  3.0 ms    <- default
#   (float32 file                   -                    3.51 MB  3.3 ms)
#
# The 0.39 is one image where two proposals are nearly tied: XNNPACK's int8 rounding (float requantization, not
# TFLite's reference fixed-point) swaps them, and that object's detection loses 0.39 of score (the reference kernels,
# like the PyTorch QDQ simulation, keep it within 0.002); with the projector in float the proposals no longer tie.
FLOAT_MODULES: tuple[str, ...] = ("backbone.0.projector",)


def _float_node(node: Any) -> bool:
    value = node.meta.get("val")
    return isinstance(value, torch.Tensor) and value.dtype.is_floating_point


def _in_modules(node: Any, names: Sequence[str]) -> bool:
    """Whether an exported graph node comes from a submodule called ``name`` (a dotted path of the model, e.g.
    ``transformer.enc_output``) or from one inside it."""
    for path, _ in node.meta.get("nn_module_stack", {}).values():
        parts = str(path).split(".")
        for name in names:
            want = name.split(".")
            if any(parts[i: i + len(want)] == want for i in range(len(parts) - len(want) + 1)):
                return True
    return False


def _input_dependent(graph: Any) -> set[Any]:
    """The nodes of an exported graph that depend on its inputs (the others depend on parameters and buffers)."""
    dependent: set[Any] = set()
    for node in graph.nodes:
        if node.op == "placeholder" or any(n in dependent for n in node.all_input_nodes):
            dependent.add(node)
    return dependent


def _value(graph_module: Any, node: Any) -> Any:
    """The value of a node of an exported graph that does not depend on its inputs."""
    if isinstance(node, (list, tuple)):
        return type(node)(_value(graph_module, n) for n in node)
    if not isinstance(node, torch.fx.Node):
        return node
    if node.op == "get_attr":
        return operator.attrgetter(node.target)(graph_module)
    return node.target(*(_value(graph_module, a) for a in node.args),
                       **{k: _value(graph_module, v) for k, v in node.kwargs.items()})


def _fold(graph_module: Any, node: Any, value: torch.Tensor) -> Any:
    """A get_attr node holding ``value``, the value of the constant expression ``node`` (itself when it is one)."""
    if node.op == "get_attr":
        return node
    name = f"_int8_folded_{node.name}"
    graph_module.register_buffer(name, value.detach().clone().contiguous())
    with graph_module.graph.inserting_before(node):
        folded = graph_module.graph.get_attr(name)
    folded.meta = dict(node.meta)
    return folded


def _as_linear(graph_module: Any) -> int:
    """Rewrite this project's ``matmul(x, W.t())`` [+ ``add_(bias)``] (:func:`rfdetr.models.layers.linear`, the
    ViT, projector and decoder FFN products) as ``aten.linear(x, W, bias)`` in an exported graph, with ``W`` (a
    ``torch.cat`` of q / k / v or a flattened 1x1 conv) and ``bias`` folded into constants: the PT2E annotators
    quantize ``aten.linear`` only. Returns how many products were rewritten."""
    aten = torch.ops.aten
    graph = graph_module.graph
    dependent = _input_dependent(graph)
    count = 0
    with torch.no_grad():
        for node in list(graph.nodes):
            if node.op != "call_function" or node.target != aten.matmul.default or len(node.args) != 2:
                continue
            x, transposed = node.args
            if not (isinstance(transposed, torch.fx.Node) and transposed.target == aten.t.default
                    and transposed.args[0] not in dependent and x in dependent):
                continue
            weight = _value(graph_module, transposed.args[0])
            if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
                continue
            users = list(node.users)
            bias, replaced = None, node
            if (len(users) == 1 and users[0].target in (aten.add_.Tensor, aten.add.Tensor)
                    and users[0].args[0] is node and len(users[0].args) == 2
                    and isinstance(users[0].args[1], torch.fx.Node) and users[0].args[1] not in dependent):
                value = _value(graph_module, users[0].args[1])
                if isinstance(value, torch.Tensor) and tuple(value.shape) == (weight.shape[0],):
                    bias, replaced = (users[0].args[1], value), users[0]
            args = [x, _fold(graph_module, transposed.args[0], weight)]
            if bias is not None:
                args.append(_fold(graph_module, *bias))
            with graph.inserting_before(replaced):
                product = graph.call_function(aten.linear.default, tuple(args))
            product.meta = dict(replaced.meta)
            replaced.replace_all_uses_with(product)
            graph.erase_node(replaced)
            if replaced is not node:
                graph.erase_node(node)
            count += 1
    graph.eliminate_dead_code()
    graph_module.recompile()
    return count


def _pt2e_quantizer(exclude: Sequence[str]) -> Any:
    """litert-torch's PT2E quantizer (int8 per-channel weights, int8 per-tensor static activations, histogram
    calibration) for the :data:`INT8_OPS` patterns on float tensors outside the ``exclude`` submodules.

    Its own module-name filter cannot be used: it maps ``nn_module_stack`` keys back to names by replacing every
    ``_`` with ``.`` (``enc_output`` never matches), and without a dtype filter its ``add`` annotator puts a
    histogram observer on the integer index arithmetic of the two-stage top-k, which fails on int64.
    """
    from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config

    class _Quantizer(PT2EQuantizer):  # type: ignore[misc]
        STATIC_OPS = list(INT8_OPS)

        def _annotate_for_static_quantization_config(self, model: Any) -> Any:
            def keep(node: Any) -> bool:
                return (node.op != "call_function" or _float_node(node)) and not _in_modules(node, exclude)

            return self._annotate_all_static_patterns(model, self.global_config, keep)

    return _Quantizer().set_global(get_symmetric_quantization_config(is_per_channel=True, is_dynamic=False))


def _default_exclude() -> tuple[str, ...]:
    return (*FLOAT_GROUPS, *FLOAT_MODULES)


def quantized_graph(
    module: ExportForward,
    example: torch.Tensor,
    calibration: Sequence[np.ndarray],
    *,
    batch: int = 1,
    exclude: Sequence[str] | None = None,
) -> tuple[Any, Any, dict[str, tuple[float, float]]]:
    """The PT2E-quantized graph of ``module`` (its QDQ simulation runs in PyTorch), before litert-torch lowers it.

    Returns:
        (the quantized ``torch.fx.GraphModule`` taking ``input=`` and returning a dict by output name, the
        quantizer, the (min, max) seen on ``calibration`` of the input and of each output by name).
    """
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    exclude = _default_exclude() if exclude is None else tuple(exclude)
    with torch.no_grad():
        module(example)  # fills the proposal-grid cache with real tensors (see export)
    graph = torch.export.export(NamedIO(module).eval(), (), {INPUT_NAME: example}).module()
    rewritten = _as_linear(graph)
    quantizer = _pt2e_quantizer(exclude)
    prepared = prepare_pt2e(graph, quantizer)
    # The observed range of every input and output, for integer I/O where the converted file has a float tensor.
    ranges: dict[str, tuple[float, float]] = {}

    def observe(name: str, value: torch.Tensor) -> None:
        low, high = ranges.get(name, (0.0, 0.0))  # 0 always representable (zero padding)
        ranges[name] = (min(low, float(value.min())), max(high, float(value.max())))

    with torch.no_grad():
        for array in calibration:
            pixels = torch.from_numpy(np.repeat(array, batch, axis=0))
            observe(INPUT_NAME, pixels)
            for name, value in prepared(**{INPUT_NAME: pixels}).items():
                observe(name, value)
    logger.debug("PT2E: %d matmuls rewritten as linear, kept float: %s", rewritten, ", ".join(exclude))
    return convert_pt2e(prepared, fold_quantize=False), quantizer, ranges


def quantize_module(
    module: ExportForward,
    path: str | os.PathLike[str],
    example: torch.Tensor,
    calibration: Sequence[np.ndarray],
    metadata: Mapping[str, str] | None = None,
    *,
    batch: int = 1,
    exclude: Sequence[str] | None = None,
    io: str = "float",
) -> Path:
    """Write ``module`` as a static full-integer INT8 ``.tflite`` file, calibrated on preprocessed images.

    PT2E quantization of the PyTorch graph (litert-torch's ``PT2EQuantizer`` through torchao's ``prepare_pt2e`` /
    ``convert_pt2e``), lowered by ``litert_torch.convert`` in its static QDQ mode: the :data:`INT8_OPS` become int8
    kernels (XNNPACK's QS8 on the CPU) with int8 per-channel weights and int8 per-tensor activations whose scales come
    from a histogram of the values seen on ``calibration``.

    Args:
        module: the traced forward (eval, CPU, float32, position embeddings baked).
        path: the ``.tflite`` file (written atomically).
        example: [B, 3, R, R] input the graph is captured with.
        calibration: network inputs [1, 3, R, R] float32 (:func:`rfdetr.deploy.export.calibration.calibration_arrays`).
        metadata: string entries stored in the flatbuffer's metadata (:data:`METADATA_NAME`).
        batch: the file's static batch (inputs are repeated to fill it).
        exclude: submodule names (dotted paths of the model) kept float; default
            :data:`rfdetr.deploy.export.int8.FLOAT_GROUPS` (the two-stage proposal heads) and
            :data:`FLOAT_MODULES` (the projector).
        io: type of the file's input and outputs: ``float`` (float32, quantized inside the file), ``int8`` or
            ``uint8`` (with the scale and zero point in the tensors' quantization parameters; for NPUs that take
            integers only). :class:`Session` converts either way, so ``predict()`` is the same.

    Raises:
        ImportError: litert-torch is not installed.
        ValueError: an unknown ``io``.
    """
    offered = FORMATS["tflite"].int8.io  # type: ignore[union-attr]
    if io not in offered:
        raise ValueError(f"int8 I/O must be one of {', '.join(offered)}, got {io!r}")
    FORMATS["tflite"].require(int8=True)
    litert_torch = converter()
    from litert_torch.quantize.quant_config import QuantConfig

    exclude = _default_exclude() if exclude is None else tuple(exclude)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    quantized, quantizer, ranges = quantized_graph(module, example, calibration, batch=batch, exclude=exclude)
    # Captured in eval mode already; the flag only silences litert-torch's "converted in training mode" warning (an
    # exported GraphModule has no working .eval()).
    quantized.training = False
    with quiet_converter():
        edge = litert_torch.convert(quantized, sample_kwargs={INPUT_NAME: example},
                                    quant_config=QuantConfig(pt2e_quantizer=quantizer))
        content = bytes(edge.model_content())
    content = _set_io_type(content, io, ranges)
    content = embed_metadata(content, metadata or {})
    write_bytes_atomic(path, content)
    logger.info("quantized %s to INT8 on %d calibration images (%s; %s I/O; kept float: %s; %.1f MB)", path,
                len(calibration), ", ".join(INT8_OPS), io, ", ".join(exclude) or "nothing", len(content) / 1e6)
    return path


def _set_io_type(content: bytes, io: str, ranges: Mapping[str, tuple[float, float]]) -> bytes:
    """The flatbuffer with every signature input and output of type ``io`` (``float``, ``int8`` or ``uint8``).

    The static QDQ conversion folds the quantize / dequantize at the graph's edges into the I/O tensors: an input
    read by an int8 convolution becomes int8 and an output written by an int8 layer stays int8, each with its own
    scale; the others are float32. Each tensor of another type gets a converting op at the edge: QUANTIZE (float ->
    integer, and int8 <-> uint8 requantization, which keeps the scale and moves the zero point by 128) or
    DEQUANTIZE (integer -> float). A float tensor made integer takes an asymmetric 8-bit scale over its calibration
    range (``ranges``, by signature name).
    """
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    want = {"float": schema.TensorType.FLOAT32, "int8": schema.TensorType.INT8, "uint8": schema.TensorType.UINT8}[io]
    model = flatbuffer_utils.read_model_from_bytearray(bytearray(content))
    graph = model.subgraphs[0]
    (signature,) = model.signatureDefs

    def opcode(code: int) -> int:
        for i, op in enumerate(model.operatorCodes):
            if max(op.builtinCode, op.deprecatedBuiltinCode) == code:
                return i
        entry = schema.OperatorCodeT()
        entry.builtinCode, entry.deprecatedBuiltinCode, entry.version = code, min(code, 127), 1
        model.operatorCodes.append(entry)
        return len(model.operatorCodes) - 1

    def new_tensor(like: Any, type_: int, name: str, scale: float | None, zero_point: int) -> int:
        tensor = schema.TensorT()
        tensor.shape, tensor.shapeSignature = list(like.shape), like.shapeSignature
        tensor.type, tensor.name, tensor.buffer = type_, name, 0
        if scale is not None:
            tensor.quantization = schema.QuantizationParametersT()
            tensor.quantization.scale, tensor.quantization.zeroPoint = [scale], [zero_point]
        graph.tensors.append(tensor)
        return len(graph.tensors) - 1

    def params(index: int, name: str) -> tuple[float | None, int]:
        """Scale and zero point of the tensor ``index`` in the type ``io``."""
        tensor = graph.tensors[index]
        if want == schema.TensorType.FLOAT32:
            return None, 0
        if tensor.type in (schema.TensorType.INT8, schema.TensorType.UINT8):
            scale, zero = float(tensor.quantization.scale[0]), int(tensor.quantization.zeroPoint[0])
            signed = tensor.type == schema.TensorType.INT8
        else:
            low, high = ranges[name]
            scale = max(high - low, 1e-8) / 255
            zero, signed = int(round(-128 - low / scale)), True
        if signed and want == schema.TensorType.UINT8:
            zero += 128
        return scale, zero

    def convert(old: int, name: str, is_input: bool) -> int:
        tensor = graph.tensors[old]
        if tensor.type == want:
            return old
        scale, zero = params(old, name)
        new = new_tensor(tensor, want, f"{tensor.name.decode() if isinstance(tensor.name, bytes) else tensor.name}"
                         f"_{io}", scale, zero)
        source, target = (new, old) if is_input else (old, new)
        quantize = graph.tensors[target].type != schema.TensorType.FLOAT32
        op = schema.OperatorT()
        op.opcodeIndex = opcode(schema.BuiltinOperator.QUANTIZE if quantize else schema.BuiltinOperator.DEQUANTIZE)
        op.inputs, op.outputs = [source], [target]
        if is_input:
            graph.operators.insert(0, op)
        else:
            graph.operators.append(op)
        return new

    for entries, edge, is_input in ((signature.inputs, graph.inputs, True), (signature.outputs, graph.outputs, False)):
        for entry in entries:
            name = entry.name.decode() if isinstance(entry.name, bytes) else entry.name
            new = convert(entry.tensorIndex, name, is_input)
            edge[list(edge).index(entry.tensorIndex)] = new
            entry.tensorIndex = new
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))
