"""CPU, memory and GPU figures of the front-end's host for GET /v1/system. GPUs through NVML (nvidia-ml-py);
without an NVIDIA driver the list is empty and `gpu_error` says why."""

from __future__ import annotations

import os
import threading
from typing import Any

import psutil
import pynvml


class SystemProbe:
    def __init__(self) -> None:
        self.process = psutil.Process()
        # cpu_percent(None) measures since the previous call: prime both counters now, at start-up.
        psutil.cpu_percent(None)
        self.process.cpu_percent(None)
        self._nvml_lock = threading.Lock()
        self._nvml_error: str | None = None
        self._nvml_ready = False

    def snapshot(self) -> dict[str, Any]:
        """Blocking (NVML calls): run it in a thread."""
        memory = psutil.virtual_memory()
        gpus, gpu_error = self._gpus()
        return {
            "cpu": {
                "count": psutil.cpu_count(), "percent": psutil.cpu_percent(None),
                "load_average": [round(x, 2) for x in os.getloadavg()],
                "process_percent": self.process.cpu_percent(None),
            },
            "memory": {
                "total_bytes": memory.total, "available_bytes": memory.available,
                "percent": memory.percent, "process_rss_bytes": self.process.memory_info().rss,
            },
            "gpus": gpus,
            "gpu_error": gpu_error,
        }  # fmt: skip

    def _init_nvml(self) -> bool:
        with self._nvml_lock:
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
        with self._nvml_lock:
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
