"""The CPU time of each system's loop thread: a measure this machine's noise moves less than events/s.

Events per second on a shared two-core machine move by a third from run to run with whatever else runs;
the CPU a loop thread spends per event moves less, since time it waits for a core (or for the GIL) is not
counted, though caches shared with busy neighbours still move it (docs/benchmarks.md, 8 Dec).
Each system names its loop threads as (process id, thread id): a passthrough's thread in the bench's
own process, Quix's main thread (which writes its RocksDB state too), each worker's main thread
(which writes its state stores; RocksDB's background, the Feast writer's and librdkafka's threads apart,
as librdkafka's are apart in the others). Read from the kernel's
`/proc/<pid>/task/<tid>/schedstat` (nanoseconds on a CPU).

`CpuSampler` reads them every `interval` seconds, so the CPU spent between two moments known only
afterwards (a phase's first and last output, from their Kafka timestamps) can be interpolated: that
leaves out a system's start-up (imports, group join), as the throughput's own clock does.

>>> import os, threading
>>> me = [(os.getpid(), threading.get_native_id())]
>>> before = thread_cpu_seconds(me)
>>> _ = sum(range(2_000_000))
>>> thread_cpu_seconds(me) > before
True
"""

from __future__ import annotations

import bisect
import threading
import time
from pathlib import Path

Threads = list[tuple[int, int]]  # (process id, thread id)


def thread_cpu_seconds(threads: Threads) -> float:
    """CPU seconds these threads have used so far, added up; a thread that has exited counts nothing."""
    total = 0
    for pid, tid in threads:
        try:
            total += int(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[0])
        except (OSError, IndexError, ValueError):
            continue
    return total / 1e9


class CpuSampler:
    """Samples `threads()` CPU time every `interval` seconds in a thread, until the block ends."""

    def __init__(self, threads, interval: float = 0.02):
        self._threads = threads  # called at each sample: a system may start its threads after the sampler
        self._interval = interval
        self._times_ms: list[float] = []
        self._cpu: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="cpu-sampler", daemon=True)

    def __enter__(self) -> CpuSampler:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        while True:
            self._times_ms.append(time.time() * 1000)
            self._cpu.append(thread_cpu_seconds(self._threads()))
            if self._stop.wait(self._interval):
                return

    def between(self, start_ms: float | None, end_ms: float | None) -> float | None:
        """CPU seconds used from start_ms to end_ms (epoch milliseconds), interpolated between samples;
        None when the samples do not cover that span."""
        if start_ms is None or end_ms is None or not self._times_ms:
            return None
        if start_ms < self._times_ms[0] or end_ms > self._times_ms[-1]:
            return None
        return max(self._at(end_ms) - self._at(start_ms), 0.0)

    def _at(self, moment_ms: float) -> float:
        times, cpu = self._times_ms, self._cpu
        if len(times) == 1:
            return cpu[0]
        right = min(max(bisect.bisect_left(times, moment_ms), 1), len(times) - 1)
        left = right - 1
        span = times[right] - times[left]
        if span <= 0:
            return cpu[right]
        return cpu[left] + (cpu[right] - cpu[left]) * (moment_ms - times[left]) / span
