"""Peak memory of a block of work, measured the same way everywhere.

CPU: the resident-set high-water mark from the OS. Writing 5 to /proc/self/clear_refs
resets it, so a long-lived process (a Ray worker training many rounds) measures each
block on its own; the report is the peak *above* the RSS at the start of the block,
plus the absolute peak. CUDA: `torch.cuda.max_memory_allocated` after a reset.
(torch.profiler's memory view is wrong under forward AD, so it is not used.)

A training step's own peak is measured the same way everywhere (the memory
benchmark's worker, the memory model's probe, a client inside the simulation): the
weights made resident (`make_resident`), freed memory handed back
(`release_free_memory`), one baseline taken, then each step's high-water mark
(`StepPeaks`). On the CPU that figure means something only under the live allocator
(`LIVE_ENV`, `live_allocator`).
"""

from __future__ import annotations

import ctypes
import functools
import gc
import os
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import torch

_STATUS = "/proc/self/status"

# glibc setting that makes the CPU resident set track live tensors: every allocation
# of 64 KiB or more is its own mmap, returned to the OS when freed. As glibc comes, it
# raises its mmap threshold as a process runs, after which freed heap holes stay
# resident and a peak reflects allocator history as much as the work. Set it in the
# environment of a process before it starts.
LIVE_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536"}


@dataclass
class MemoryReport:
    """Peak memory and wall time of the tracked block.

    Parameters
    ----------
    device : str
        "cpu" or a CUDA device.
    baseline_bytes : int
        RSS (CPU) or allocated bytes (CUDA) when the block started.
    peak_bytes : int
        Absolute peak during the block.
    seconds : float
        Wall time of the block.
    exact : bool
        False when the CPU high-water mark could not be reset, so the peak may
        predate the block.
    """

    device: str = "cpu"
    baseline_bytes: int = 0
    peak_bytes: int = 0
    seconds: float = 0.0
    exact: bool = True

    @property
    def extra_bytes(self) -> int:
        """Peak above the baseline: what the block itself needed."""
        return max(self.peak_bytes - self.baseline_bytes, 0)


def _status_kib(field: str) -> int:
    with open(_STATUS) as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not found in {_STATUS}")


def reset_cpu_peak() -> bool:
    """Reset the process's RSS high-water mark; False where the OS refuses."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def cpu_rss_bytes() -> int:
    return _status_kib("VmRSS") * 1024


def cpu_peak_bytes() -> int:
    return _status_kib("VmHWM") * 1024


@contextmanager
def track_peak_memory(device: str | torch.device = "cpu") -> Iterator[MemoryReport]:
    """Measure the peak memory of the `with` block; the report fills in on exit."""
    device = torch.device(device)
    report = MemoryReport(device=str(device))
    start = time.perf_counter()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        report.baseline_bytes = torch.cuda.memory_allocated(device)
    else:
        report.exact = reset_cpu_peak()
        report.baseline_bytes = cpu_rss_bytes()
    try:
        yield report
    finally:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            report.peak_bytes = torch.cuda.max_memory_allocated(device)
        else:
            report.peak_bytes = cpu_peak_bytes()
        report.seconds = time.perf_counter() - start


@dataclass
class StepPeaks:
    """The largest single step's peak above one baseline taken before the steps.

    `start()` hands freed memory back and takes the baseline (the process holding
    its model, data and everything but the steps); each `with peaks.step(...)`
    resets the high-water mark, so what happens between steps (building the next
    batch) is not counted. The steps' peak is their largest, above that one
    baseline: what stays allocated from one step to the next (optimizer state made
    by the first step) counts in the steps after it.

    Parameters
    ----------
    device : str (default: "cpu")
        "cpu" or a CUDA device.
    """

    device: str = "cpu"
    baseline_bytes: int = 0
    peak_bytes: int = 0  # the largest step's absolute peak
    steps: int = 0
    tokens: int = 0  # the largest step's batch length (0: not a token batch)
    exact: bool = True
    seconds: float = 0.0  # all steps' wall time

    def start(self) -> None:
        """Hand freed memory back and take the baseline."""
        release_free_memory(self.device)
        if torch.device(self.device).type == "cuda":
            torch.cuda.synchronize(self.device)
            self.baseline_bytes = torch.cuda.memory_allocated(self.device)
        else:
            self.baseline_bytes = cpu_rss_bytes()
        self.peak_bytes = self.baseline_bytes

    @contextmanager
    def step(self, tokens: int = 0) -> Iterator[MemoryReport]:
        """Track one step; `tokens` is its batch's length, kept for the largest."""
        with track_peak_memory(self.device) as report:
            yield report
        self.steps += 1
        self.seconds += report.seconds
        self.exact = self.exact and report.exact
        if report.peak_bytes > self.peak_bytes or self.steps == 1:
            self.peak_bytes, self.tokens = report.peak_bytes, tokens

    @property
    def extra_bytes(self) -> int:
        """The largest step's peak above the baseline."""
        return max(self.peak_bytes - self.baseline_bytes, 0)


def tensor_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes held by `tensors`, each storage counted once (tied weights share one)."""
    seen: dict[int, int] = {}
    for tensor in tensors:
        storage = tensor.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


def make_resident(model: torch.nn.Module) -> None:
    """Read every weight once, so all of it is resident before the baseline.

    safetensors weights are mmapped from the file and enter RSS only when touched:
    a warm-up touches every matrix but few embedding rows, so the measured step
    would otherwise fault in most of the embedding (about 36 MiB for MiniLM).
    """
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            tensor.float().sum()


def release_free_memory(device: str) -> None:
    """Return freed memory to the OS/driver so the baseline holds live memory only."""
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        return
    try:  # glibc keeps freed heap pages resident; a step could reuse them unseen
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def live_env_set(environ: Mapping[str, str] | None = None) -> bool:
    """Whether `LIVE_ENV` is in this process's environment (default: os.environ)."""
    env = os.environ if environ is None else environ
    return all(env.get(k) == v for k, v in LIVE_ENV.items())


@functools.cache
def live_allocator() -> bool:
    """Whether this process runs the live allocator: `LIVE_ENV` set, and obeyed.

    The environment alone does not say it: glibc reads `MALLOC_MMAP_THRESHOLD_`
    once, when the process starts, so a variable set later changes nothing. So
    this also asks glibc: it frees a 4 MiB block (as glibc comes, it then raises
    its mmap threshold to 4 MiB), allocates 32 blocks of 512 KiB, writes them, and
    frees every other one. With the live threshold each block is its own mapping
    and the 8 MiB freed leave the resident set; as glibc comes they are holes
    between live heap blocks and stay. Live when at least 6 MiB came back. Checked
    once per process (about a millisecond). Not glibc (no `libc.so.6`): False.
    """
    return live_env_set() and freed_blocks_leave_rss()


def freed_blocks_leave_rss() -> bool:
    """Whether freed 512 KiB blocks leave the RSS (glibc's side of `live_allocator`)."""
    if not os.path.exists(_STATUS):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    block = 512 * 1024
    raise_threshold = libc.malloc(4 * 2**20)
    ctypes.memset(raise_threshold, 1, 4 * 2**20)
    libc.free(raise_threshold)
    blocks = [libc.malloc(block) for _ in range(32)]
    for address in blocks:
        ctypes.memset(address, 1, block)  # written, so resident
    before = cpu_rss_bytes()
    for address in blocks[::2]:
        libc.free(address)
    returned = before - cpu_rss_bytes()
    for address in blocks[1::2]:
        libc.free(address)
    return returned >= 6 * 2**20
