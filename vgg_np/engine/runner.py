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
import os
import threading
import time
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence

import numpy as np
import numpy.typing as npt

from vgg_np import ops
from vgg_np.engine.conv import ConvRun, Pass, conv_input, conv_output
from vgg_np.engine.layout import Buffers, Padded, padded
from vgg_np.engine.lowering import CONV_EPILOGUE
from vgg_np.engine.measure import Planner, layer_key
from vgg_np.engine.plan import (
    Choice,
    ConvPlan,
    allowed_algorithms,
    check_choice,
    choose_algorithm,
    default_choice,
    pack,
    tiles_high,
    variations,
)
from vgg_np.engine.threads import BLAS_SINGLE, MAX_THREADS, Workers, cpu_count
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

#: Most images a measured candidate runs on (`vgg_np.engine.measure.IMAGES`).
MEASURE_IMAGES = 2
#: A candidate is timed on a band of an image's rows of about this many multiply-adds
#: (a quarter of VGG16's 224x224 block1_conv2), its time scaled to the whole image.
MEASURE_MACS = 500_000_000

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
    plan : {"default", "measure"} or path, optional
        How each convolution's algorithm, chunks, channel blocks and order are chosen
        (`vgg_np.engine.measure`): the built-in rules, or measured on this machine at
        first use and cached on disk, or read from (and measured into) a plan file.
        Default: ``$VGG_NP_PLAN``, else ``"default"``. Results depend on the plan within
        each algorithm's tolerance; for a given plan they do not depend on the batch or
        the threads.

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
        plan: str | os.PathLike | None = None,
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
        self.planner = Planner(plan, self.threads)
        self._plans: dict[tuple, ConvPlan] = {}
        self._packed: dict[tuple, list[np.ndarray]] = {}
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
        relu = layer.activation == "relu"
        if algorithm == "naive":
            return ConvPlan(layer.name, None, kernel, bias, False, relu)
        choice = default_choice(algorithm, (h, w, c, o), kernel.itemsize, pool)
        if self.planner.measures:
            choice = self._measured_choice(index, (h, w, c, o), pool) or choice
        return self._conv_plan(index, choice, (h, w, c, o), pool)

    def _measured_choice(self, index: int, shape: tuple, pool: bool) -> Choice | None:
        """Return layer `index`'s choice from the plan file, or measure it (see `measure`).

        None if the measuring budget is spent. Candidates run on `MEASURE_IMAGES` random
        images, into buffers of their own; kernels packed for the losers are dropped.
        """
        kernel = self.weights[self.layers[index].name][0]
        allowed = allowed_algorithms(self.conv_algorithm, kernel.dtype)
        key = layer_key(self.conv_algorithm, kernel.dtype, shape, pool)

        def valid(choice: Choice) -> bool:
            try:
                check_choice(choice, shape, pool)
            except ValueError:
                return False
            return choice.algorithm in allowed

        choice = self.planner.lookup(key, valid)
        if choice is not None:
            return choice
        # The built-in table's algorithm first: a challenger must beat it by the margin.
        builtin = choose_algorithm(self.conv_algorithm, shape[0], shape[2], kernel.dtype)
        order = sorted(allowed, key=lambda a: a != builtin)
        first = [default_choice(a, shape, kernel.itemsize, pool) for a in order]
        prepare = self._trial(index, shape, pool, kernel.dtype)
        with BLAS_SINGLE:
            choice = self.planner.measure(key, first, lambda c: variations(c, shape, pool), prepare)
        # Keep only the packed kernels a plan uses (measuring packed every candidate's).
        used = {(p.name, p.algorithm, p.channel_block) for p in self._plans.values() if p.choice}
        if choice is not None:
            used.add((self.layers[index].name, choice.algorithm, choice.channel_block))
        for packing in [k for k in self._packed if k[0] == self.layers[index].name]:
            if packing not in used:
                del self._packed[packing]
        return choice

    def _trial(
        self, index: int, shape: tuple[int, int, int, int], pool: bool, dtype: npt.DTypeLike
    ) -> Callable[[Choice, int], tuple[Callable[[], float], float]]:
        """Return ``prepare(choice, images)`` for the planner: layer `index` run alone.

        Each candidate runs on the same random images, laid out in its algorithm's padded
        input, into a buffer of its own; `prepare` packs the kernel and returns the run and
        the factor that scales its time to whole images. A run returns the CPU seconds of
        its busiest thread (`Workers.map`'s meter). A layer of more than `MEASURE_MACS`
        multiply-adds per image is timed on a band of its first rows (whole chunks) of
        about that size. Everything is made on the first call, inside the planner's
        measured time.
        """
        h, w, c, o = shape
        state, made = Pass(Buffers()), dict[str, np.ndarray]()
        meter: list[float] = []
        state.meter = meter

        def prepare(choice: Choice, images: int) -> tuple[Callable[[], float], float]:
            if not made:
                rng = np.random.default_rng(0)
                made["x"] = rng.standard_normal((MEASURE_IMAGES, h, w, c), np.float32)
                made["out"] = state.buffers.get(
                    "out", (MEASURE_IMAGES, *((h // 2, w // 2) if pool else (h, w)), o), dtype
                )
            x, out = made["x"], made["out"]
            plan = self._conv_plan(index, choice, shape, pool)
            name = f"in{plan.m}-{images}"
            source = padded(images, h, w, c, plan.m, dtype, state.buffers, name, plan.tiles_h)
            source.interior()[...] = x[:images]  # in the model's dtype
            wanted = -(-plan.tiles_h * MEASURE_MACS // (h * w * c * o * 9))  # tile rows
            rows = min(plan.tiles_h, -(-wanted // choice.rows_per_chunk) * choice.rows_per_chunk)
            task = ConvRun(plan, source, list(out[:images]), pool, rows)

            def run() -> float:
                meter.clear()
                task.run(self._workers, state)
                return sum(meter)

            return run, plan.tiles_h / rows

        return prepare

    def _conv_plan(self, index: int, choice: Choice, shape: tuple, pool: bool) -> ConvPlan:
        """Return layer `index`'s plan for `choice`; its kernel packed once per engine."""
        layer = self.layers[index]
        kernel, bias = self.weights[layer.name]
        key = (layer.name, choice.algorithm, choice.channel_block)
        if key not in self._packed:
            self._packed[key] = pack(kernel, choice.algorithm, choice.channel_block)
        tiles_h = tiles_high(choice.algorithm, shape[0], pool)
        relu = layer.activation == "relu"
        return ConvPlan(layer.name, choice, kernel, bias, pool, relu, self._packed[key], tiles_h)

    def algorithms(self, input_shape: tuple) -> dict[str, str]:
        """Return which algorithm each convolution uses for a per-image input ``(H, W, C)``.

        With ``plan="measure"`` this plans the layers (measuring those not cached).

        Examples
        --------
        >>> from vgg_np import VGG16
        >>> VGG16(include_top=False, seed=0).engine.algorithms((224, 224, 3))["block5_conv1"]
        'winograd-2'
        """
        return {name: plan.algorithm for name, plan in self.plans(input_shape).items()}

    def plans(self, input_shape: tuple) -> dict[str, ConvPlan]:
        """Return each convolution's plan for a per-image input ``(H, W, C)``.

        A plan's `choice` (None for ``naive``) is what the planner chose: algorithm, tile
        rows per chunk, output channels per block, order. With ``plan="measure"`` the
        layers not in the plan file are measured now (`planner.seconds` adds up the time).

        Examples
        --------
        >>> from vgg_np import VGG16
        >>> plans = VGG16(include_top=False, seed=0).engine.plans((224, 224, 3))
        >>> plans["block4_conv2"].choice
        Choice(algorithm='winograd-4', rows_per_chunk=7, channel_block=128, order='position')
        """
        found = {}
        for index, (layer, shape, _) in enumerate(shapes(self.layers, input_shape)):
            if layer.kind == "conv":
                found[layer.name] = self._plan(index, *shape)
        self._save_plans()
        return found

    def _save_plans(self) -> None:
        if self.planner.measures:
            with self._lock:
                self.planner.save()

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
            self._save_plans()

    def _macs(self, input_shape: tuple) -> int:
        """Multiply-adds of the convolutions and dense layers for one image."""
        macs = 0
        for layer, shape, _ in shapes(self.layers, input_shape):
            if layer.kind == "conv":
                macs += math.prod(shape[:2]) * shape[2] * layer.units * 9
            elif layer.kind == "dense":
                macs += self.weights[layer.name][0].size
        return macs

    def predict(self, x: np.ndarray, timings: list | None = None) -> np.ndarray:
        """Return the last layer's output for an NHWC batch (a new array).

        The batch runs in slices of `slice_images` images. `timings`, if given, receives
        ``(layer, algorithm, seconds)`` per step and slice (as `run`'s, but with the
        buffers a call keeps for the next). See the class example.
        """
        result = None
        with self._call(x) as (state, step):
            for s in range(0, len(x), step):
                passes = self._run(state, x[s : s + step], timings=timings)
                ((_, y),) = collections.deque(passes, maxlen=1)
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
        try:
            with BLAS_SINGLE:  # never recycled: the last yielded view stays valid
                yield from self._run(Pass(Buffers()), x, keep, timings)
        finally:
            self._save_plans()

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
