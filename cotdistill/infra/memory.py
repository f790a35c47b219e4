"""Peak memory of one stage, measured while the stage runs (not over the process lifetime).

`ru_maxrss` only ever grows, so inside one `cotdistill run` a later stage would inherit an
earlier stage's peak. `PeakMemory` instead samples resident memory on a thread while its
`with` block runs, and on GPU reads what torch's allocator or the driver saw during the block:

    with PeakMemory(children=True, gpu="device" if cuda else None) as memory:
        ...
    memory.peak_bytes, memory.what   # the figure and a sentence saying what it measured

CPU: resident memory (RSS) of this process, plus its child processes with `children=True`
(vLLM's engine runs in one), except the multiprocessing forkserver's tree, where math-verify's
workers live: their memory belongs to answer checking, not to the model. GPU: with
`gpu="torch"`, the peak of torch's allocator in this process (training); with `gpu="device"`,
the peak of the GPU memory the driver reports for the process tree (vLLM allocates in its own
process, invisible to this process's torch), falling back to the whole device's used memory.
"""

from __future__ import annotations

import threading
from typing import Any, Literal

GpuMode = Literal["torch", "device"] | None


def _forkserver_pid() -> int | None:
    """The forkserver that math-verify's workers fork from (cotdistill/verify.py), if started."""
    try:
        from multiprocessing import forkserver

        return getattr(forkserver._forkserver, "_forkserver_pid", None)
    except (ImportError, AttributeError):
        return None


def _process_tree(children: bool) -> list[Any]:
    import psutil

    me = psutil.Process()
    if not children:
        return [me]
    skip = _forkserver_pid()
    tree = [me]
    try:
        kids = me.children(recursive=False)
    except psutil.Error:
        kids = []
    for kid in kids:
        if kid.pid == skip:
            continue  # math-verify workers, not the model
        tree.append(kid)
        try:
            tree.extend(kid.children(recursive=True))
        except psutil.Error:
            continue
    return tree


def _rss(processes: list[Any]) -> int:
    import psutil

    total = 0
    for process in processes:
        try:
            total += process.memory_info().rss
        except psutil.Error:
            continue  # a worker exited between listing and reading
    return total


def _device_used(processes: list[Any]) -> int:
    """GPU memory the driver reports for these processes; else the whole device's used memory."""
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            pids = {p.pid for p in processes}
            used = 0
            for index in range(pynvml.nvmlDeviceGetCount()):
                handle = pynvml.nvmlDeviceGetHandleByIndex(index)
                for proc in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
                    if proc.pid in pids and proc.usedGpuMemory:
                        used += int(proc.usedGpuMemory)
            return used
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # no NVML: device-wide figure (may include other users of the GPU)
        import torch

        free, total = torch.cuda.mem_get_info()
        return int(total - free)


class PeakMemory:
    """Peak memory while the `with` block runs; `what` says what the figure is."""

    def __init__(self, children: bool = False, gpu: GpuMode = None,
                 interval_s: float = 0.1) -> None:
        self.children = children
        self.gpu = gpu
        self.interval_s = interval_s
        self.peak_bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @property
    def what(self) -> str:
        if self.gpu == "torch":
            return "GPU memory allocated by torch in this process during the stage"
        if self.gpu == "device":
            return ("GPU memory the driver reports for this process and its children "
                    "(the engine, with its KV cache reservation) during the stage")
        who = ("this process and its children (the engine), math-verify workers excluded"
               if self.children else "this process")
        return f"peak resident memory (RSS) of {who}, sampled every {self.interval_s} s " \
               "during the stage"

    def _sample(self) -> None:
        if self.gpu == "torch":
            return  # torch keeps the exact peak itself
        processes = _process_tree(self.children)
        value = _device_used(processes) if self.gpu == "device" else _rss(processes)
        self.peak_bytes = max(self.peak_bytes, value)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def __enter__(self) -> PeakMemory:
        if self.gpu == "torch":
            import torch

            torch.cuda.reset_peak_memory_stats()
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()
        if self.gpu == "torch":
            import torch

            self.peak_bytes = int(torch.cuda.max_memory_allocated())

    @property
    def peak_mb(self) -> float:
        return round(self.peak_bytes / 2**20, 1)
