"""A streaming safetensors writer whose header is planned before any data is written.

The safetensors header lists every tensor's dtype, shape and byte range, so a plain
writer must hold a whole shard in memory. Merges know every output's name, dtype and
shape in advance, so we write the header first and then each tensor's bytes as soon as
it is computed: memory stays at one tensor however large the model.
"""

from __future__ import annotations

import json
import struct
import threading
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import torch

from medmerge.io.checkpoint import ST_INDEX, ST_SINGLE, TORCH_TO_ST

DEFAULT_MAX_SHARD_BYTES = 5 * 1024**3


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n * torch.empty((), dtype=self.dtype).element_size()


SIZE_UNITS = {"B": 1, "KB": 1000, "MB": 1000**2, "GB": 1000**3, "TB": 1000**4,
              "KIB": 1024, "MIB": 1024**2, "GIB": 1024**3, "TIB": 1024**4}


def parse_size(value: str | int) -> int:
    """'5GB' / '500MB' / '2GiB' / '1.5GB' / 1234 -> a positive whole number of bytes.

    ``ValueError`` (naming the value) for anything else: no number, an unknown unit, zero, a negative,
    a non-finite number, or less than one byte."""
    import math
    import re

    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a size")
    if isinstance(value, int):
        n = value
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([A-Za-z]*)\s*", str(value))
        if m is None:
            raise ValueError(f"{value!r} is not a size (use e.g. 500MB, 2GiB or a number of bytes)")
        unit = m.group(2).upper() or "B"
        if unit not in SIZE_UNITS:
            raise ValueError(f"{value!r}: unknown unit {m.group(2)!r} (use B, KB, MB, GB, TB, KiB, MiB, GiB or TiB)")
        x = float(m.group(1)) * SIZE_UNITS[unit]
        if not math.isfinite(x):
            raise ValueError(f"{value!r} is not a finite size")
        n = int(x)
    if n < 1:
        raise ValueError(f"{value!r} is not a positive size (at least 1 byte)")
    return n


def plan_shards(specs: list[TensorSpec], max_shard_bytes: int) -> list[list[TensorSpec]]:
    shards: list[list[TensorSpec]] = [[]]
    size = 0
    for spec in specs:
        if shards[-1] and size + spec.nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(spec)
        size += spec.nbytes
    return shards


class StreamingCheckpointWriter:
    """Write tensors, in the planned order, into (sharded) safetensors under ``out_dir``."""

    def __init__(self, out_dir: Path, specs: list[TensorSpec], max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
                 metadata: dict[str, str] | None = None):
        self.out_dir = Path(out_dir)
        self.specs = list(specs)
        names = [s.name for s in self.specs]
        if len(set(names)) != len(names):
            raise ValueError("duplicate tensor names in the write plan")
        self.metadata = {"format": "pt", **(metadata or {})}
        self.shards = plan_shards(self.specs, max_shard_bytes)
        n = len(self.shards)
        self.filenames = [ST_SINGLE] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
        self._order = [(si, spec) for si, shard in enumerate(self.shards) for spec in shard]
        self._pos = 0
        self._partial = 0  # bytes of the current tensor written so far (row blocks)
        self._shard_idx = -1
        self._file: BinaryIO | None = None

    def _open_shard(self, si: int) -> None:
        if self._file is not None:
            self._file.close()
        header: dict[str, object] = {"__metadata__": self.metadata}
        offset = 0
        for spec in self.shards[si]:
            header[spec.name] = {
                "dtype": TORCH_TO_ST[spec.dtype],
                "shape": list(spec.shape),
                "data_offsets": [offset, offset + spec.nbytes],
            }
            offset += spec.nbytes
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)  # safetensors aligns the data start to 8 bytes
        self._file = f = open(self.out_dir / self.filenames[si], "wb")
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        self._shard_idx = si

    def write(self, name: str, tensor: torch.Tensor) -> None:
        """Write ``tensor`` (a whole tensor, or its next block of rows) for the next planned name."""
        if self._pos >= len(self._order):
            raise ValueError(f"unexpected tensor {name}: every planned tensor was already written")
        si, spec = self._order[self._pos]
        if name != spec.name:
            raise ValueError(f"tensor {name} written out of order; expected {spec.name}")
        whole = tuple(tensor.shape) == spec.shape
        rows_ok = len(spec.shape) >= 1 and tensor.dim() == len(spec.shape) and tuple(tensor.shape[1:]) == spec.shape[1:]
        if tensor.dtype != spec.dtype or not (whole or rows_ok):
            raise ValueError(
                f"tensor {name} is {tensor.dtype} {tuple(tensor.shape)}, planned {spec.dtype} {spec.shape}"
            )
        if si != self._shard_idx:
            self._open_shard(si)
        data = tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy()
        if self._partial + data.nbytes > spec.nbytes:
            raise ValueError(f"tensor {name}: more rows written than its planned shape {spec.shape}")
        assert self._file is not None   # _open_shard above
        self._file.write(memoryview(data))  # type: ignore[arg-type]  # an ndarray is a buffer; its stubs say not
        self._partial += data.nbytes
        if self._partial == spec.nbytes:
            self._pos += 1
            self._partial = 0

    def close(self) -> None:
        if self._pos != len(self._order):
            missing = self._order[self._pos][1].name
            raise ValueError(f"checkpoint incomplete: tensor {missing} was never written")
        if self._file is not None:
            self._file.close()
            self._file = None
        if len(self.filenames) > 1:
            index = {
                "metadata": {"total_size": sum(s.nbytes for s in self.specs)},
                "weight_map": {spec.name: self.filenames[si] for si, spec in self._order},
            }
            (self.out_dir / ST_INDEX).write_text(json.dumps(index, indent=2))

    def abort(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class BackgroundWriter:
    """Hands tensors to :class:`StreamingCheckpointWriter` s on background threads.

    File writes (the kernel's copies into the page cache, and its dirty-page throttling) then
    overlap with the merge math. With several outputs (a sweep), writer ``i`` belongs to
    thread ``i % threads``, so each file is still written in order while copies for different
    files run in parallel. Tensors waiting to be written are bounded by ``max_pending_bytes``
    in total (one tensor may always wait), so memory stays independent of model size. An error
    on a writer thread is re-raised in the caller at its next ``put`` or at ``finish``.
    """

    def __init__(self, writers: list[StreamingCheckpointWriter], max_pending_bytes: int = 256 * 1024**2,
                 threads: int = 2):
        self.writers = writers
        self.limit = max_pending_bytes
        n = max(1, min(threads, len(writers)))
        self._queues: list[deque] = [deque() for _ in range(n)]
        self._pending = 0
        self._cv = threading.Condition()
        self._error: BaseException | None = None
        self._closed = False
        self._threads = [threading.Thread(target=self._run, args=(q,), name=f"medmerge-writer-{i}", daemon=True)
                         for i, q in enumerate(self._queues)]
        for t in self._threads:
            t.start()

    @property
    def threads(self) -> int:
        """How many writer threads copy outputs (each may keep a core busy)."""
        return len(self._threads)

    def put(self, index: int, name: str, tensor: torch.Tensor) -> None:
        n = tensor.numel() * tensor.element_size()
        with self._cv:
            while self._error is None and self._pending and self._pending + n > self.limit:
                self._cv.wait()
            if self._error is not None:
                raise self._error
            self._queues[index % len(self._queues)].append((index, name, tensor, n))
            self._pending += n
            self._cv.notify_all()

    def _run(self, queue: deque) -> None:
        while True:
            with self._cv:
                while not queue and not self._closed and self._error is None:
                    self._cv.wait()
                if not queue or self._error is not None:
                    return
                index, name, tensor, n = queue.popleft()
            try:
                self.writers[index].write(name, tensor)
            except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
                with self._cv:
                    if self._error is None:
                        self._error = exc
                    for q in self._queues:
                        q.clear()
                    self._cv.notify_all()
                return
            with self._cv:
                self._pending -= n
                self._cv.notify_all()

    def finish(self) -> None:
        """Wait until everything queued is written; re-raise a writer error."""
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        for t in self._threads:
            t.join()
        if self._error is not None:
            raise self._error
