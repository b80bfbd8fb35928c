"""The per-layer table of a network (the classic VGG16 table, computed from the code)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from vgg_np.config import _fmt_shape
from vgg_np.layers import ACTIVATIONS, KINDS, Layer, shapes

__all__ = ["CLASSIC_VGG16_ACTIVATIONS", "Summary", "SummaryRow"]

#: What the rows of the classic VGG16 table (224x224, input counted) add up to.
CLASSIC_VGG16_ACTIVATIONS = 15_237_608


@dataclass(frozen=True)
class SummaryRow:
    """One layer of `Summary`: per-image output shape, counts and work.

    Examples
    --------
    >>> from vgg_np.config import CONFIGS, layer_table
    >>> row = Summary.of(layer_table(CONFIGS["vgg16"]), (224, 224, 3), "VGG16").rows[2]
    >>> row.name, row.output_shape, row.weights, row.macs
    ('block1_conv2', (224, 224, 64), 36864, 1849688064)
    """

    name: str
    output_shape: tuple
    activations: int
    weights: int
    biases: int
    macs: int
    is_view: bool = False  # flatten: a reshaped view of its input, no memory of its own
    kept: int = 0  # values this layer keeps for the backward pass (`vgg_np.train.Tape`)


@dataclass(frozen=True)
class Summary:
    """The per-layer table of a model, with totals, computed from the layer table.

    Counts are per image. Like the classic VGG16 table, the input is a row of its own
    and "weights" excludes biases, which have their own column.

    Examples
    --------
    >>> from vgg_np.config import CONFIGS, layer_table
    >>> s = Summary.of(layer_table(CONFIGS["vgg16"]), (224, 224, 3), "VGG16")
    >>> s.parameters, s.weights, s.biases
    (138357544, 138344128, 13416)
    >>> s.activations, round(2 * s.macs / 1e9, 2)  # values per image, GFLOP per image
    (15237608, 30.94)
    """

    title: str
    rows: tuple[SummaryRow, ...]

    @classmethod
    def of(cls, layers: Sequence[Layer], input_shape: tuple, title: str) -> Summary:
        """Compute the table of a layer table for a per-image ``(H, W, C)`` input.

        No weights are needed: the counts follow from the shapes.

        Examples
        --------
        >>> from vgg_np.config import CONFIGS, layer_table
        >>> Summary.of(layer_table(CONFIGS["vgg19"]), (224, 224, 3), "vgg19").parameters
        143667240
        """
        if None in input_shape:
            raise ValueError(
                f"the summary needs a static input shape, got {_fmt_shape(input_shape)}"
            )
        rows = [SummaryRow("input", tuple(input_shape), math.prod(input_shape), 0, 0, 0)]
        for layer, shape, out in shapes(layers, input_shape):
            kind = KINDS[layer.kind]
            params = kind.parameter_shapes(layer, shape) if kind.parameter_shapes else ()
            weights = math.prod(params[0]) if params else 0
            # One multiply-accumulate per weight per output position (H*W for a
            # convolution, 1 for a dense layer).
            macs = weights * math.prod(out[:-1])
            # What the backward pass reads (`vgg_np.train`): the layer's input and its
            # activation's output, as the tables say (convolution: both; pool: its input).
            sizes = {"input": math.prod(shape), "output": math.prod(out)}
            keeps = kind.keeps + ACTIVATIONS[layer.activation].keeps
            rows.append(
                SummaryRow(
                    layer.name,
                    out,
                    math.prod(out),
                    weights,
                    sum(math.prod(p) for p in params[1:]),
                    macs,
                    is_view=kind.view,
                    kept=sum(sizes[k] for k in keeps),
                )
            )
        return cls(title, tuple(rows))

    @property
    def weights(self) -> int:
        """Total weights (kernels), biases excluded. See `Summary` for an example."""
        return sum(r.weights for r in self.rows)

    @property
    def biases(self) -> int:
        """Total biases. See `Summary` for an example."""
        return sum(r.biases for r in self.rows)

    @property
    def parameters(self) -> int:
        """Weights plus biases. See `Summary` for an example."""
        return self.weights + self.biases

    @property
    def activations(self) -> int:
        """Values held by one image's forward pass, the input included, views excluded.

        See `Summary` for an example.
        """
        return sum(r.activations for r in self.rows if not r.is_view)

    @property
    def kept(self) -> int:
        """Values a training step keeps for its backward pass, the logits included.

        See `Summary` for an example.
        """
        return sum(r.kept for r in self.rows) + self.rows[-1].activations

    @property
    def macs(self) -> int:
        """Multiply-accumulates of one image's forward pass. See `Summary` for an example."""
        return sum(r.macs for r in self.rows)

    def __str__(self) -> str:
        lines = [self.title, ""]
        header = f"{'layer':<26}{'output':>14}{'activations':>14}{'weights':>14}"
        lines.append(f"{header}{'biases':>9}{'MACs':>16}{'kept (bwd)':>13}")
        for r in self.rows:
            lines.append(
                f"{r.name:<26}{_fmt_shape(r.output_shape):>14}{r.activations:>14,}"
                f"{r.weights:>14,}{r.biases:>9,}{r.macs:>16,}{r.kept:>13,}"
            )
        mb = self.activations / 1e6
        lines += [
            "",
            f"parameters: {self.parameters:,} = {self.weights:,} weights + {self.biases:,} biases",
            f"activations per image, forward: {self.activations:,} values = "
            f"{mb * 4:.1f} MB in float32, {mb * 8:.1f} MB in float64",
            f"a training step keeps for its backward pass: {self.kept:,} values = "
            f"{self.kept * 4 / 1e6:.1f} MB in float32 (column 'kept', vgg_np.train)",
            f"work per image: {self.macs / 1e9:.2f} GMAC = {2 * self.macs / 1e9:.2f} GFLOP",
            "",
            "Counted as in the classic VGG16 table: the input is a row, weights exclude",
            "biases (their own column), a convolution's output is counted once (ReLU in",
            "place) and flatten, a view of the last pool, not at all.",
        ]
        if self.activations == CLASSIC_VGG16_ACTIVATIONS:
            lines += [
                "The classic table's rows add up to these same 15.2M values; its total line",
                "'24M * 4 bytes ~= 93MB' does not follow from its own rows.",
            ]
        return "\n".join(lines)
