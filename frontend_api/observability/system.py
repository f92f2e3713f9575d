"""CPU, memory and GPU figures of the front-end's host for GET /v1/system. GPUs through NVML (nvidia-ml-py);
without an NVIDIA driver the list is empty and `gpu_error` says why."""

from __future__ import annotations

import asyncio
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psutil
import pynvml


class SystemProbe:
    """Reads everything in one thread of its own: NVML calls block, and psutil.cpu_percent(None), which measures
    since the previous call, keeps that previous reading per thread."""

    def __init__(self) -> None:
        self.process = psutil.Process()
        self._nvml_error: str | None = None
        self._nvml_ready = False
        self._closed = False
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="system-probe")
        self._thread.submit(self._prime_cpu_percent).result()

    def _prime_cpu_percent(self) -> None:
        psutil.cpu_percent(None)
        self.process.cpu_percent(None)

    async def snapshot(self) -> dict[str, Any]:
        return await asyncio.get_running_loop().run_in_executor(self._thread, self.read)

    def read(self) -> dict[str, Any]:
        """Blocking; only from the probe's thread (snapshot())."""
        memory = psutil.virtual_memory()
        gpus, gpu_error = self._gpus()
        return {
            "cpu": {
                "count": psutil.cpu_count(),
                "percent": psutil.cpu_percent(None),
                "load_average": [round(x, 2) for x in os.getloadavg()],
                "process_percent": self.process.cpu_percent(None),
            },
            "memory": {
                "total_bytes": memory.total,
                "available_bytes": memory.available,
                "percent": memory.percent,
                "process_rss_bytes": self.process.memory_info().rss,
            },
            "gpus": gpus,
            "gpu_error": gpu_error,
        }

    def _init_nvml(self) -> bool:
        if not self._nvml_ready and self._nvml_error is None:
            try:
                pynvml.nvmlInit()
                self._nvml_ready = True
            except pynvml.NVMLError as exc:  # no library or no driver: a CPU host, say so once
                self._nvml_error = f"NVML is not available: {exc}"
        return self._nvml_ready

    def _gpus(self) -> tuple[list[dict[str, Any]], str | None]:
        if not self._init_nvml():
            return [], self._nvml_error
        try:
            return [gpu_figures(index) for index in range(pynvml.nvmlDeviceGetCount())], None
        except pynvml.NVMLError as exc:  # e.g. a GPU fell off the bus
            return [], f"NVML query failed: {exc}"

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._thread.submit(self._shutdown_nvml).result()
        self._thread.shutdown()

    def _shutdown_nvml(self) -> None:
        if self._nvml_ready:
            pynvml.nvmlShutdown()
            self._nvml_ready = False


def gpu_figures(index: int) -> dict[str, Any]:
    handle = pynvml.nvmlDeviceGetHandleByIndex(index)
    memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
    utilization = pynvml.nvmlDeviceGetUtilizationRates(handle)
    name = pynvml.nvmlDeviceGetName(handle)
    return {
        "index": index,
        "name": name.decode() if isinstance(name, bytes) else name,
        "memory_total_bytes": memory.total,
        "memory_used_bytes": memory.used,
        "utilization_percent": utilization.gpu,
        "temperature_c": pynvml.nvmlDeviceGetTemperature(handle, pynvml.NVML_TEMPERATURE_GPU),
    }
