"""Persistent IO-binding buffers, one set per shape bucket, for the GPU providers.

A batch of ``rows`` records padded to ``width`` tokens is rounded up to a *shape bucket* (a power
of two of rows up to ``max_batch_size``; a power of two of tokens from 16 up to ``max_length``).
Each bucket gets, on first use and never again: host staging arrays for the inputs (registered
as pinned memory with the CUDA runtime when it can be loaded, so host-to-device copies are DMA),
device buffers for the inputs, a host array for the logits and an IO binding that ties them to
the session. A call then only fills the staging arrays, copies them into the device buffers in
place and runs: no allocation on the hot path, and a bounded set of shapes for CUDA/TensorRT.

Padding is exact for an encoder with an attention mask: extra positions are masked out, and an
extra row (one [PAD] token attended, so no row is fully masked) is dropped from the result.
"""

from __future__ import annotations

import ctypes
import logging
from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnxruntime as ort
from tokenizers import Encoding

log = logging.getLogger(__name__)

#: ORT tensor types of the inputs and logits the engine handles.
NUMPY_TYPES = {"tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(float)": np.float32,
               "tensor(float16)": np.float16}
MIN_BUCKET_LENGTH = 16


class ShapeBuckets:
    """The (rows, tokens) shapes batches are padded to: powers of two, capped at the configured maxima."""

    def __init__(self, max_batch_size: int, max_length: int, *, min_length: int = MIN_BUCKET_LENGTH) -> None:
        if max_batch_size < 1 or max_length < 1:
            raise ValueError(f"buckets need max_batch_size and max_length >= 1, got {max_batch_size}, {max_length}")
        self.batch_sizes = _powers_of_two(1, max_batch_size)
        self.lengths = _powers_of_two(min(min_length, max_length), max_length)

    def fit(self, rows: int, width: int) -> tuple[int, int] | None:
        """The smallest bucket holding ``rows`` x ``width``; None when it is larger than every bucket."""
        if rows < 1 or width < 1:
            raise ValueError(f"a batch has at least one row and one token, got {rows} x {width}")
        i, j = bisect_left(self.batch_sizes, rows), bisect_left(self.lengths, width)
        if i == len(self.batch_sizes) or j == len(self.lengths):
            return None
        return self.batch_sizes[i], self.lengths[j]

    def __len__(self) -> int:
        return len(self.batch_sizes) * len(self.lengths)


def _powers_of_two(start: int, stop: int) -> list[int]:
    sizes, size = [], max(1, start)
    while size < stop:
        sizes.append(size)
        size *= 2
    return [*sizes, stop]


@dataclass
class _Slot:
    """The buffers and binding of one bucket."""

    host: dict[str, np.ndarray]
    device: dict[str, ort.OrtValue]
    logits: np.ndarray
    binding: Any  # ort.IOBinding


class BucketBuffers:
    """IO binding over buffers allocated once per shape bucket; see the module docstring.

    ``device`` is ``cuda`` on a GPU; ``cpu`` binds the host arrays directly (the same code path,
    which the CPU tests run). Thread-compatible: one caller at a time.
    """

    def __init__(self, session: ort.InferenceSession, buckets: ShapeBuckets, *, output: str, width: int,
                 pad_id: int, device: str = "cuda", device_id: int = 0, pin: bool = True) -> None:
        self.session = session
        self.buckets = buckets
        self.device = device
        self.device_id = device_id
        self._pad_id = pad_id
        self._output = output
        self._inputs = {i.name: NUMPY_TYPES.get(i.type, np.int64) for i in session.get_inputs()}
        out = next(o for o in session.get_outputs() if o.name == output)
        self._logit_type = NUMPY_TYPES.get(out.type, np.float32)
        self._width = width  # logits per row (the graph may leave the dimension symbolic)
        self._slots: dict[tuple[int, int], _Slot] = {}
        self._pinner = _HostPinner() if pin and device == "cuda" else None

    @property
    def allocated(self) -> list[tuple[int, int]]:
        """Buckets whose buffers exist, in the order they were first used."""
        return list(self._slots)

    def run(self, encodings: Sequence[Encoding]) -> np.ndarray | None:
        """Logits of the batch (rows in order; a view of the bucket's array, valid until the next call).

        None when the batch is larger than every bucket: the caller runs it the plain way.
        """
        rows, width = len(encodings), max(len(e.ids) for e in encodings)
        shape = self.buckets.fit(rows, width)
        if shape is None:
            return None
        slot = self._slots.get(shape) or self._allocate(shape)
        self._fill(slot, encodings)
        if self.device != "cpu":
            for name, value in slot.device.items():
                value.update_inplace(slot.host[name])  # host (pinned) -> device, into the same buffer
        self.session.run_with_iobinding(slot.binding)
        return slot.logits[:rows]

    def close(self) -> None:
        """Release the buffers (and unpin their host memory)."""
        if self._pinner is not None:
            self._pinner.release_all()
        self._slots.clear()

    def _fill(self, slot: _Slot, encodings: Sequence[Encoding]) -> None:
        ids, mask = slot.host["input_ids"], slot.host["attention_mask"]
        types = slot.host.get("token_type_ids")
        ids.fill(self._pad_id)
        mask.fill(0)
        mask[len(encodings):, 0] = 1  # padding rows attend to one [PAD] token: never a fully masked row
        if types is not None:
            types.fill(0)
        for row, enc in enumerate(encodings):
            k = len(enc.ids)
            ids[row, :k] = enc.ids
            mask[row, :k] = 1
            if types is not None:
                types[row, :k] = enc.type_ids

    def _allocate(self, shape: tuple[int, int]) -> _Slot:
        rows, length = shape
        binding = self.session.io_binding()
        host: dict[str, np.ndarray] = {}
        device: dict[str, ort.OrtValue] = {}
        for name, dtype in self._inputs.items():
            host[name] = self._host_array((rows, length), dtype)
            if self.device == "cpu":
                binding.bind_input(name, "cpu", 0, dtype, [rows, length], host[name].ctypes.data)
            else:
                device[name] = ort.OrtValue.ortvalue_from_shape_and_type(
                    [rows, length], dtype, self.device, self.device_id)
                binding.bind_ortvalue_input(name, device[name])
        logits = self._host_array((rows, self._width), self._logit_type)
        # Logits land in the (pinned) host array: ORT copies device -> host into it, no new array per call.
        binding.bind_output(self._output, "cpu", 0, self._logit_type, [rows, self._width], logits.ctypes.data)
        slot = _Slot(host=host, device=device, logits=logits, binding=binding)
        self._slots[shape] = slot
        log.debug("IO-binding buffers for bucket %d x %d on %s", rows, length, self.device)
        return slot

    def _host_array(self, shape: tuple[int, int], dtype: Any) -> np.ndarray:
        if self._pinner is None:
            return np.zeros(shape, dtype=dtype)
        array = _page_aligned_zeros(shape, dtype)  # whole pages of its own: pinning never overlaps another array
        self._pinner.pin(array)
        return array


PAGE = 4096


def _page_aligned_zeros(shape: tuple[int, int], dtype: Any) -> np.ndarray:
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    raw = np.zeros(_pages(nbytes) + PAGE, dtype=np.uint8)
    offset = (-raw.ctypes.data) % PAGE
    return raw[offset:offset + nbytes].view(dtype).reshape(shape)


def _pages(nbytes: int) -> int:
    return -(-nbytes // PAGE) * PAGE


class _HostPinner:
    """Page-locks numpy arrays with ``cudaHostRegister`` (CUDA runtime via ctypes; no torch needed)."""

    _LIBRARIES = ("libcudart.so.13", "libcudart.so.12", "libcudart.so.11.0", "libcudart.so")

    def __init__(self) -> None:
        self._cudart = self._load()
        self._pinned: list[np.ndarray] = []

    def _load(self) -> Any:
        # The runtime ONNX Runtime's CUDA provider already loaded, when it can be found; else by name.
        for name in [*_loaded_cudart(), *self._LIBRARIES]:
            try:
                return ctypes.CDLL(name)
            except OSError:
                continue
        log.warning("pinned host memory unavailable (no loadable libcudart): host-device copies use pageable memory")
        return None

    def pin(self, array: np.ndarray) -> bool:
        """Register ``array``'s memory as pinned; False (logged) when the runtime refuses."""
        if self._cudart is None:
            return False
        status = self._cudart.cudaHostRegister(ctypes.c_void_p(array.ctypes.data),
                                               ctypes.c_size_t(_pages(array.nbytes)), 0)
        if status != 0:
            self._cudart.cudaGetLastError()  # clear it: ORT's own error checks must not see our failure
            log.warning("cudaHostRegister failed (error %d): this buffer stays pageable", status)
            return False
        self._pinned.append(array)
        return True

    def release_all(self) -> None:
        """Unregister every pinned array (before numpy frees it)."""
        if self._cudart is not None:
            for array in self._pinned:
                self._cudart.cudaHostUnregister(ctypes.c_void_p(array.ctypes.data))
        self._pinned.clear()


def _loaded_cudart() -> list[str]:
    """Paths of CUDA runtimes mapped into this process (Linux), most likely the one ORT uses."""
    try:
        with open("/proc/self/maps", encoding="utf-8") as maps:
            paths = {line.split()[-1] for line in maps if "libcudart.so" in line}
    except OSError:
        return []
    return sorted(paths)
