"""Conformance vectors: the float64 oracle's answers, written for implementations in any language.

`write_vectors` writes one directory per test case, in the layout of ONNX's backend tests,
which every ONNX runtime's test runner reads::

    OUT_DIR/index.json                      every case: what it computes, shapes, tolerance
    OUT_DIR/<case>/case.json                the same entry for this case alone
    OUT_DIR/<case>/model.onnx               the case as an ONNX graph (with ``onnx`` only)
    OUT_DIR/<case>/test_data_set_0/input_0.pb, input_1.pb, ..., output_0.pb

Without the ``onnx`` package (or with ``encoding="npy"``) the arrays are ``.npy`` files of
the same names and there is no ``model.onnx``; ``case.json`` says what to compute.

The cases cover each kernel (convolution padding forms, odd and non-square sizes,
strides; max-pooling with floors, overlaps, negative inputs and ties; dense; ReLU;
softmax with overflowing logits; flatten; dropout with its mask given) and each layer of a
VGG16, every layer's input being the previous layer's exact output rounded to float32.

Every array is in ONNX's layout: activations NCHW, convolution weights OIHW, dense
kernels ``(in, out)`` as ONNX ``Gemm`` takes them (an NHWC implementation transposes
activations by ``(0, 2, 3, 1)`` and kernels by ``(2, 3, 1, 0)``; fc1's rows then follow the
C, H, W order of an NCHW flatten). Inputs are float32 numbers; the expected outputs are
computed from them in float64 (by the loop definitions ``*_naive`` for the small kernel
cases) and rounded to float32, so they are the best float32 answer there is. Each case
states its tolerance for a float32 implementation as ONNX's ``rtol`` and ``atol``
(``|actual - expected| <= atol + rtol * |expected|``) and the rule it came from.

This package sits above `vgg_np.model` in the package map (it reads weight files through
it) and below the command line (``vgg-np vectors``).
"""

# `NAME as NAME`: names outside `__all__` keep their address `vgg_np.vectors.NAME` too.
from vgg_np.vectors.cases import DOT_TOL as DOT_TOL
from vgg_np.vectors.cases import DROPOUT_RTOL as DROPOUT_RTOL
from vgg_np.vectors.cases import NARROW_VGG16, Case, evaluate, kernel_cases
from vgg_np.vectors.cases import SOFTMAX_TOL as SOFTMAX_TOL
from vgg_np.vectors.cases import layer_cases as layer_cases
from vgg_np.vectors.files import ENCODINGS, load_case, write_vectors
from vgg_np.vectors.run import KERNEL_OF_OP, CaseResult, VectorsReport, run_vectors

__all__ = [
    "ENCODINGS",
    "KERNEL_OF_OP",
    "NARROW_VGG16",
    "Case",
    "CaseResult",
    "VectorsReport",
    "evaluate",
    "kernel_cases",
    "load_case",
    "run_vectors",
    "write_vectors",
]
