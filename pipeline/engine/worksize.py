"""How much work the engine puts in flight at once, sized for the device; and what it does
when the device runs out of memory anyway.

On the CPU the sizes are the constants tuned for its caches (docs/benchmarks.md): 64 segments
in flight, chains of 256 vertices, blocks of 16 to 256 rows per heavy layer. A GPU is only busy
with tens of thousands of rows in flight, and how many fit depends on the network: so on CUDA
the sizes come from the device's free memory and the bytes one input row needs in a forward
of this network, measured once (:func:`bytes_per_row`). Every size can be given instead; none
changes a result, so none is part of any identity.

Memory stays bounded either way, and an out-of-memory error is caught where the work can be
redone (a batch of segments, a chunk of planes, a certificate pass): the size is halved, a
warning is logged, and the work is redone smaller (:func:`shrink_on_oom`). The smaller size is
kept for the rest of the call.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch
from torch.overrides import TorchFunctionMode

from pipeline.engine.rowblock import default_row_block

__all__ = ["WorkSizes", "work_sizes", "largest_activation", "bytes_per_row", "shrink_on_oom", "DeviceMemoryError"]

log = logging.getLogger("pipeline.engine.worksize")
T = TypeVar("T")

# the live set of the subdivision and the planes per vertex, in forwards of one row: the values
# the graph still needs, the copies _insert makes when it grows a chain, a conv's workspace
LIVE_FACTOR = 6
# the walk holds 2 rows per segment (x and x + d) and their tangent bookkeeping
WALK_FACTOR = 2 * LIVE_FACTOR
MEMORY_FRACTION = 0.5  # of the free device memory, for the engine's own tensors
# rows per forward of the 1-D certificate on the CPU (at least; chains of more vertices pass as
# many): chains got smaller (256 vertices), its passes did not
CPU_CERTIFY_ROWS = 1024


class DeviceMemoryError(MemoryError):
    """Out of memory even at the smallest work size."""


@dataclass(frozen=True)
class WorkSizes:
    batch_size: int  # segments in flight (walk: slots; subdivide: segments per chain)
    max_vertices: int  # vertices of a chain (1-D) or a tile (planes) before it is split
    row_block: int  # rows per call of a heavy layer (0: all at once)
    certify_rows: int  # rows per forward of the certificate
    why: str  # one line: where the sizes came from


def largest_activation(prepared, example: torch.Tensor) -> int:
    """Elements per row of the largest tensor a forward of one input of ``prepared`` makes
    (run once on ``example``'s first row; functional ops included)."""
    biggest = example[0].numel()

    class _Sizes(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            nonlocal biggest
            out = func(*args, **(kwargs or {}))
            if isinstance(out, torch.Tensor) and out.ndim >= 1 and out.shape[0] == 1:
                biggest = max(biggest, out[0].numel())
            return out

    with torch.no_grad(), _Sizes():
        prepared.work(example[:1].to(device=prepared.device, dtype=prepared.dtype))
    return biggest


def bytes_per_row(prepared, example: torch.Tensor) -> int:
    """Bytes of the largest tensor one input row makes in a forward of ``prepared``."""
    return largest_activation(prepared, example) * torch.finfo(prepared.dtype).bits // 8


def _free_bytes(device: torch.device) -> int:
    free, _total = torch.cuda.mem_get_info(device)
    return int(free)


def work_sizes(prepared, example: torch.Tensor, method: str, *, batch_size: int | None = None,
               max_vertices: int | None = None, row_block: int | None = None,
               memory_bytes: int | None = None) -> WorkSizes:
    """The work sizes for ``method`` ("walk", "subdivide" or "planes") on ``prepared``'s device;
    the ones given are kept. ``memory_bytes``: the memory the engine may use (default: half the
    device's free memory on CUDA; the CPU's tuned constants when None on the CPU)."""
    device, dtype = prepared.device, prepared.dtype
    if row_block is None:
        row_block = default_row_block(device, dtype, "subdivide" if method == "planes" else method)
    if memory_bytes is None and device.type == "cpu":
        if max_vertices is None:  # planes: tiles of at most 64 MiB of float64 activations
            max_vertices = (int(min(16384, max(256, 2 ** 23 // largest_activation(prepared, example))))
                            if method == "planes" else 256)
        return WorkSizes(batch_size or 64, max_vertices, row_block, max(max_vertices, CPU_CERTIFY_ROWS),
                         "CPU defaults (tuned for its caches)")
    if memory_bytes is None:
        memory_bytes = int(MEMORY_FRACTION * _free_bytes(device))
        source = f"{device}: {memory_bytes / 2**30:.1f} GiB (half the free memory)"
    else:
        source = f"{device}: a budget of {memory_bytes / 2**20:.0f} MiB"
    per_row = bytes_per_row(prepared, example)
    rows = max(16, memory_bytes // (LIVE_FACTOR * per_row))
    vertices = max_vertices or int(min(1 << 20, rows))
    batch = batch_size or int(max(1, min(8192, memory_bytes // (WALK_FACTOR * per_row) if method == "walk"
                                         else vertices // 64)))
    return WorkSizes(batch, vertices, row_block, max(16, min(vertices, rows)),
                     f"{source}, {per_row / 2**10:.0f} KiB per row of this network")


def shrink_on_oom(what: str, size: int, attempt: Callable[[int], T], floor: int = 1) -> tuple[T, int]:
    """``attempt(size)``; on out-of-memory, halve ``size`` (not below ``floor``), log it and try
    again. Returns the result and the size that worked. ``attempt`` must leave nothing behind
    when it fails (it redoes its whole unit of work)."""
    while True:
        try:
            return attempt(size), size
        except torch.OutOfMemoryError as err:
            if size <= floor:
                raise DeviceMemoryError(
                    f"{what}: out of memory even at {size} (the smallest size): free memory on the device "
                    f"(other jobs on the GPU?) or run on a larger one") from err
            smaller = max(floor, size // 2)
            log.warning("%s: out of memory at %d; redoing it at %d", what, size, smaller)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            size = smaller
