"""The engine: a lowered network run layer after layer, in slices of the batch.

Three promises, each tested:

- **Safe sharing.** Any number of threads may call one engine at once. Every call has
  its own activation buffers; the worker threads are shared (calls queue their chunks on
  them), and each worker's scratch arrays serve one chunk at a time.
- **Batch invariance.** An image's outputs are bitwise the same whatever batch it is in
  and whatever `threads` is: a chunk never spans two images, its shapes (hence every
  BLAS call's shapes, hence the reduction order) depend only on the layer and the
  image size, output channels are split in blocks fixed per layer, and the dense layers
  multiply one image at a time in fixed blocks of input rows.
- **Bounded memory.** A batch runs in slices of at most `slice_images` images; between
  calls an engine keeps at most `KEEP_BYTES` of activation buffers and each thread that
  ran a chunk at most `SCRATCH_BYTES` of scratch.
"""

from __future__ import annotations

import collections
import contextlib
import math
import threading
import time
from collections.abc import Generator, Iterator, Mapping, Sequence

import numpy as np
import numpy.typing as npt

from vgg_np import ops
from vgg_np.engine.conv import ConvRun, Pass, conv_input, conv_output
from vgg_np.engine.layout import Buffers, Padded, padded
from vgg_np.engine.lowering import CONV_EPILOGUE
from vgg_np.engine.plan import ConvPlan, choose_algorithm, default_layout
from vgg_np.engine.threads import BLAS_SINGLE, MAX_THREADS, Workers, cpu_count
from vgg_np.engine.winograd import winograd_kernel
from vgg_np.layers import ACTIVATIONS, KINDS, Layer, shapes

#: What ``conv_algorithm`` accepts.
ALGORITHMS = ("auto", "gemm", "winograd", "naive")

#: A batch runs in slices of at most this many activation values in the largest layer
#: output per slice: 8 images at 224x224 (64 channels), more for smaller images.
SLICE_VALUES = 8 * 224 * 224 * 64

#: Activation buffers an engine keeps after a call for the next one (enough for one
#: 224x224 image); larger sets are released when the call returns.
KEEP_BYTES = 64 << 20

#: Calls with fewer multiply-adds per slice take turns rather than run at once.
SERIAL_MACS = 100_000_000

#: Dense layers multiply one image at a time, in blocks of this many input rows whose
#: partial sums are added in order: the same BLAS calls whatever the batch or threads.
#: A block of fc1 (4 MB) stays in cache for the next image: at batch 8 the dense layers
#: cost about what one GEMM over the batch did (measured 87 against 83 ms of CPU).
DENSE_ROWS = 256


class Engine:
    """Runs the steps of a lowered network fast; built by the model, not by users.

    Safe to share: any number of threads may call one engine (hence one model) at once,
    and each gets exactly, bitwise, the result it would get alone. Every call has its own
    activation buffers; the worker threads are shared, so concurrent calls queue their
    chunks on them rather than oversubscribing the cores (four callers get about the
    throughput of one, measured in docs/performance.md), and calls too small to gain
    from running at once (`SERIAL_MACS`) take turns.

    Parameters
    ----------
    layers : list of Layer
        The steps of a `vgg_np.engine.lowering.Plan` (any layer table whose convolutions
        end in ReLU or nothing runs as it is).
    weights : dict
        Step name -> (kernel, bias), already in the model dtype (not copied).
    conv_algorithm : {"auto", "gemm", "winograd", "naive"}
    threads : int, optional
        Threads that share a call's work: the calling thread and ``threads - 1`` workers;
        default: the CPUs this process may use, at most `MAX_THREADS`. Results do not
        depend on it.

    Examples
    --------
    >>> from vgg_np import VGG, VGGConfig
    >>> tiny = VGGConfig("tiny", ((4,), (4,), (8,), (8,), (8,)), fc=(16,), default_size=32)
    >>> model = VGG(tiny, classes=3, seed=0)
    >>> engine = Engine(model.layers, model.weights, "gemm", threads=2)
    >>> x = np.ones((1, 32, 32, 3), np.float32)
    >>> engine.predict(x).shape
    (1, 3)
    >>> timings = []
    >>> *_, (name, y) = engine.run(x, timings=timings)
    >>> name, bool((y == engine.predict(x)).all()), timings[1][:2]
    ('predictions', True, ('block2_conv1', 'gemm + pool'))
    >>> engine.close()
    """

    def __init__(
        self,
        layers: Sequence[Layer],
        weights: Mapping[str, tuple[np.ndarray, ...]],
        conv_algorithm: str = "auto",
        threads: int | None = None,
    ):
        if conv_algorithm not in ALGORITHMS:
            raise ValueError(
                f"`conv_algorithm` must be one of {ALGORITHMS}, got {conv_algorithm!r}"
            )
        unfused = [
            f"{layer.name} ({layer.activation})"
            for layer in layers
            if layer.kind == "conv" and layer.activation not in CONV_EPILOGUE
        ]
        if unfused:
            raise ValueError(
                f"the engine's convolutions end in ReLU or nothing, got {', '.join(unfused)}: "
                "lower the table first (vgg_np.engine.lowering.lower)"
            )
        self.layers = layers
        self.weights = weights
        self.conv_algorithm = conv_algorithm
        self.threads = threads or min(cpu_count(), MAX_THREADS)
        self._plans: dict[tuple, ConvPlan] = {}
        self._packed: dict[tuple, np.ndarray] = {}
        self._lock = threading.Lock()  # guards the plans and the spare buffers
        self._workers = Workers(self.threads)
        self._spare: Buffers | None = None  # one call's buffers, kept up to KEEP_BYTES
        self._turns = threading.Lock()  # small calls take turns (see `_call`)

    # -- planning ---------------------------------------------------------------------

    def _plan(self, index: int, h: int, w: int, c: int) -> ConvPlan:
        key = (index, h, w)
        plan = self._plans.get(key)
        if plan is None:
            with self._lock:
                plan = self._plans.get(key) or self._make_plan(index, h, w, c)
                self._plans[key] = plan
        return plan

    def _make_plan(self, index: int, h: int, w: int, c: int) -> ConvPlan:
        layer = self.layers[index]
        kernel, bias = self.weights[layer.name]
        o = kernel.shape[3]
        algorithm = choose_algorithm(self.conv_algorithm, h, c, kernel.dtype)
        following = self.layers[index + 1] if index + 1 < len(self.layers) else None
        pool = following is not None and following.kind == "pool" and algorithm != "naive"
        plan = ConvPlan(layer.name, algorithm, kernel, bias, pool, layer.activation == "relu")
        if algorithm == "naive":
            return plan
        plan.kernel = self._packed_kernel(layer.name, algorithm, plan.m)
        for field, value in default_layout(algorithm, (h, w, c, o), kernel.itemsize, pool).items():
            setattr(plan, field, value)
        return plan

    def _packed_kernel(self, name: str, algorithm: str, m: int) -> np.ndarray:
        """Return the kernel of layer `name` packed for `algorithm` (once per engine)."""
        if (name, algorithm) not in self._packed:
            kernel = self.weights[name][0]
            self._packed[name, algorithm] = (
                winograd_kernel(kernel, m) if m > 1 else kernel.reshape(-1, kernel.shape[3])
            )  # (a*a, C, O) or (9*C, O)
        return self._packed[name, algorithm]

    def algorithms(self, input_shape: tuple) -> dict[str, str]:
        """Return which algorithm each convolution uses for a per-image input ``(H, W, C)``.

        Examples
        --------
        >>> from vgg_np import VGG16
        >>> VGG16(include_top=False, seed=0).engine.algorithms((224, 224, 3))["block5_conv1"]
        'winograd-2'
        """
        return {
            layer.name: choose_algorithm(
                self.conv_algorithm, shape[0], shape[2], self.weights[layer.name][0].dtype
            )
            for layer, shape, _ in shapes(self.layers, input_shape)
            if layer.kind == "conv"
        }

    def slice_images(self, input_shape: tuple) -> int:
        """Images per slice for a per-image input ``(H, W, C)``; large batches run in slices.

        At most `SLICE_VALUES` values in the largest convolution output of a slice, so a
        call's activation buffers stay the size of about 8 images at 224x224 whatever
        the batch.

        Examples
        --------
        >>> from vgg_np import VGG16
        >>> engine = VGG16(include_top=False, seed=0).engine
        >>> engine.slice_images((224, 224, 3)), engine.slice_images((32, 32, 3))
        (8, 392)
        """
        outputs = [math.prod(s.output) for s in shapes(self.layers, input_shape)]
        convs = [
            size for size, layer in zip(outputs, self.layers, strict=True) if layer.kind == "conv"
        ]
        return max(1, SLICE_VALUES // max(convs, default=1))

    # -- buffers ----------------------------------------------------------------------

    def _acquire(self) -> Pass:
        with self._lock:
            buffers, self._spare = self._spare, None
        return Pass(buffers or Buffers())

    def _release(self, state: Pass) -> None:
        if state.buffers.nbytes <= KEEP_BYTES:
            with self._lock:
                self._spare = state.buffers

    def close(self) -> None:
        """Stop the worker threads and drop the kept buffers (see the class example).

        The engine starts them again on its next call.
        """
        with self._lock:
            self._spare = None
        self._workers.close()

    # -- running ----------------------------------------------------------------------

    @staticmethod
    def _check_batch(x: np.ndarray) -> None:
        if x.ndim != 4 or x.shape[0] == 0:
            raise ValueError(f"`x` must be a non-empty batch (N, H, W, C), got shape {x.shape}")

    @contextlib.contextmanager
    def _call(self, x: np.ndarray) -> Iterator[tuple[Pass, int]]:
        """One call's state and slice size; BLAS at one thread; a turn if the call is small.

        Concurrent calls each have their own buffers and run at once, except calls under
        `SERIAL_MACS` per slice, which take turns: their time goes to Python and tiny
        NumPy calls, and threads that interleave those wait on each other for the GIL
        (measured: 4 threads sharing a small model got half one thread's throughput,
        taking turns 0.94 of it).
        """
        self._check_batch(x)
        step = self.slice_images(x.shape[1:])
        small = self._macs(x.shape[1:]) * min(step, len(x)) < SERIAL_MACS
        state = self._acquire()
        try:
            with self._turns if small else contextlib.nullcontext(), BLAS_SINGLE:
                yield state, step
        finally:
            self._release(state)

    def _macs(self, input_shape: tuple) -> int:
        """Multiply-adds of the convolutions and dense layers for one image."""
        macs = 0
        for layer, shape, _ in shapes(self.layers, input_shape):
            if layer.kind == "conv":
                macs += math.prod(shape[:2]) * shape[2] * layer.units * 9
            elif layer.kind == "dense":
                macs += self.weights[layer.name][0].size
        return macs

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Return the last layer's output for an NHWC batch (a new array).

        The batch runs in slices of `slice_images` images. See the class example.
        """
        result = None
        with self._call(x) as (state, step):
            for s in range(0, len(x), step):
                ((_, y),) = collections.deque(self._run(state, x[s : s + step]), maxlen=1)
                if result is None:
                    result = np.empty((len(x), *y.shape[1:]), y.dtype)
                result[s : s + len(y)] = y
        assert result is not None, "_call refuses an empty batch"
        return result

    def outputs(self, x: np.ndarray, names: set[str] | None = None) -> dict[str, np.ndarray]:
        """Return the outputs of `names` (default: every layer) for an NHWC batch.

        The pass stops after the deepest layer named; the outputs are new arrays, in layer
        order. A convolution named is run unfused from the pool after it.

        Examples
        --------
        >>> from vgg_np import VGG, VGGConfig
        >>> tiny = VGGConfig("tiny", ((4,), (4,), (8,), (8,), (8,)), fc=(16,), default_size=32)
        >>> outputs = VGG(tiny, classes=3, seed=0).engine.outputs(np.ones((2, 32, 32, 3)))
        >>> list(outputs)[:3], outputs["block1_pool"].shape
        (['block1_conv1', 'block1_pool', 'block2_conv1'], (2, 16, 16, 4))
        """
        order = [layer.name for layer in self.layers]
        wanted = None if names is None else set(names)
        last = order[-1] if wanted is None else max(wanted, key=order.index)
        keep = True if wanted is None else wanted
        result = {}
        with self._call(x) as (state, step):
            for s in range(0, len(x), step):
                with contextlib.closing(self._run(state, x[s : s + step], keep)) as run:
                    for name, y in run:
                        if wanted is None or name in wanted:
                            if name not in result:
                                result[name] = np.empty((len(x), *y.shape[1:]), y.dtype)
                            result[name][s : s + len(y)] = y
                        if name == last:
                            break
        return result

    def run(
        self, x: np.ndarray, keep: bool | set[str] = False, timings: list | None = None
    ) -> Generator[tuple[str, np.ndarray], None, None]:
        """Yield (layer name, output) layer after layer, the whole batch at once.

        With ``keep=False`` a 2x2 pool that follows a convolution runs inside it, and the
        pair is yielded once under the pool's name; ``keep=True`` yields every layer, and
        a set of names yields those layers unfused, the others fused. A caller may stop
        early (``close()`` the generator). Yielded arrays may be views of this call's
        buffers, which later layers overwrite: copy what you keep (`predict` and
        `outputs` do, and bound the memory by slicing the batch). `timings`, if given,
        receives ``(layer, algorithm, seconds)`` per step. See the class example.
        """
        self._check_batch(x)
        with BLAS_SINGLE:  # never recycled: the last yielded view stays valid
            yield from self._run(Pass(Buffers()), x, keep, timings)

    def _run(
        self,
        state: Pass,
        x: np.ndarray,
        keep: bool | set[str] = False,
        timings: list | None = None,
    ) -> Generator[tuple[str, np.ndarray], None, None]:
        # BLAS stays single-threaded for the whole pass (the caller holds BLAS_SINGLE),
        # every layer being split between our threads: idle OpenBLAS workers would spin
        # and steal our cores.
        state.staged = None
        index = 0
        while index < len(self.layers):
            layer, start = self.layers[index], time.perf_counter()
            if layer.kind == "conv":
                plan = self._plan(index, *x.shape[1:])
                fused = plan.pool and not (keep is True or (keep and layer.name in keep))
                x = self._conv(state, index, x, fuse_pool=fused)
                label = plan.algorithm + (" + pool" if fused else "")
                index += 2 if fused else 1
            else:
                x = self.other(layer, x)
                label = layer.kind
                index += 1
            if timings is not None:
                timings.append((layer.name, label, time.perf_counter() - start))
            yield self.layers[index - 1].name, x

    def _conv(self, state: Pass, index: int, x: np.ndarray, fuse_pool: bool) -> np.ndarray:
        """Convolution + bias (+ ReLU) of layer `index` (and the next pool if fused).

        Each chunk's output goes, pooled, biased and rectified while in cache, straight
        into the next layer's padded input when that is a convolution, else into an
        ``(N, H, W, O)`` buffer. Returns the layer's output as an ``(N, H, W, O)`` view.
        """
        n, h, w, c = x.shape
        plan = self._plan(index, h, w, c)
        if plan.algorithm == "naive":
            y = ops.conv2d_naive(x, plan.kernel, plan.bias)
            return ACTIVATIONS[self.layers[index].activation].forward(y)
        o = plan.bias.shape[0]
        source = conv_input(state, index, x, plan)
        pool = fuse_pool and plan.pool
        h_out, w_out = (h // 2, w // 2) if pool else (h, w)
        following = index + (2 if pool else 1)
        staging = self._next_input(state, following, source, h_out, w_out, o, x.dtype)
        result, destinations = conv_output(state, staging, (n, h_out, w_out, o), x.dtype)
        ConvRun(plan, source, destinations, pool).run(self._workers, state)
        if staging is not None:
            state.staged = (following, staging)
        return result

    def _next_input(
        self,
        state: Pass,
        index: int,
        current: Padded,
        h: int,
        w: int,
        c: int,
        dtype: npt.DTypeLike,
    ) -> Padded | None:
        """Lay out the padded input of layer `index` if it is a convolution to fill."""
        if index >= len(self.layers) or self.layers[index].kind != "conv":
            return None
        plan = self._plan(index, h, w, c)
        if plan.algorithm == "naive":
            return None
        storage = "in_b" if current.storage == "in_a" else "in_a"
        return padded(current.n, h, w, c, plan.m, dtype, state.buffers, storage, plan.tiles_h)

    def other(self, layer: Layer, x: np.ndarray) -> np.ndarray:
        """Compute a layer that is not a convolution; see the class example.

        Dense layers multiply each image alone, in fixed blocks of input rows shared by
        the threads (`_dense`: batch-invariant; at batch 1 bound by memory bandwidth);
        any other kind (pools, flatten, global pools) is its forward call in
        `vgg_np.layers.KINDS`, then its activation.
        """
        if layer.kind == "dense":
            kernel, bias = self.weights[layer.name]
            y = self._dense(x, kernel)
            y += bias
            if layer.activation == "relu":
                np.maximum(y, 0, out=y)  # in place
            else:
                y = ACTIVATIONS[layer.activation].forward(y)
            return y
        y = KINDS[layer.kind].forward(layer, self.weights.get(layer.name), x)
        return ACTIVATIONS[layer.activation].forward(y)

    def _dense(self, x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
        """``x @ kernel``, each image alone, as partial sums over fixed blocks of rows.

        One image at a time: NumPy multiplies a single row with BLAS's gemv, several rows
        with gemm, and the two round differently. The blocks of `DENSE_ROWS` rows of the
        kernel go to the threads; their partial sums are added in order.
        """
        x = np.ascontiguousarray(x)  # (N, in)
        starts = range(0, x.shape[1], DENSE_ROWS)
        partial = np.empty((len(starts), x.shape[0], kernel.shape[1]), np.result_type(x, kernel))

        def rows(b: int, r0: int) -> None:
            block = kernel[r0 : r0 + DENSE_ROWS]  # (rows, out)
            for i, image in enumerate(x):
                np.matmul(image[r0 : r0 + DENSE_ROWS], block, out=partial[b, i])  # (out,)

        self._workers.map(rows, list(enumerate(starts)), x.shape[0] * kernel.size)
        y: np.ndarray = partial[0]
        for part in partial[1:]:
            y += part  # (N, out), in block order
        return y
