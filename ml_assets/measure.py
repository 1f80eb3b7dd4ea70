"""What each asset's step cost: its duration, the rows it read and wrote, and its peak memory,
recorded in the metadata of its materialisations so the Dagster UI shows where time and memory
go. One decorator, on every asset."""

import functools
import inspect
import resource
import time
from collections.abc import Callable
from pathlib import Path

import dagster as dg

from resources.warehouse import io_counts

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _reset_peak_memory() -> bool:
    """Restart the kernel's peak-RSS count of this process (Linux); False where unsupported."""
    try:
        _CLEAR_REFS.write_text("5")
        return True
    except OSError:
        return False


def _peak_memory_mb(reset: bool) -> float:
    if reset:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _figures(started: float, reset: bool) -> dict:
    seconds = time.monotonic() - started
    counts = io_counts()
    return {
        "step_seconds": round(seconds, 3),
        "step_rows_in": counts.rows_in,
        "step_rows_out": counts.rows_out,
        "step_rows_per_second": round(counts.rows_out / seconds) if seconds else 0,
        ("step_peak_memory_mb" if reset else "process_peak_memory_mb"):
            round(_peak_memory_mb(reset), 1),
    }


def measured(compute: Callable) -> Callable:
    """Wrap an asset's compute function (plain or generator) to record what its step cost."""
    if inspect.isgeneratorfunction(compute):
        @functools.wraps(compute)
        def generator(context: dg.AssetExecutionContext, *args, **kwargs):
            started, reset = time.monotonic(), _reset_peak_memory()
            io_counts().reset()
            for item in compute(context, *args, **kwargs):
                if isinstance(item, dg.MaterializeResult):
                    item = dg.MaterializeResult(
                        asset_key=item.asset_key, check_results=item.check_results,
                        data_version=item.data_version, tags=item.tags,
                        metadata={**(item.metadata or {}), **_figures(started, reset)})
                yield item
        return generator

    @functools.wraps(compute)
    def plain(context: dg.AssetExecutionContext, *args, **kwargs):
        started, reset = time.monotonic(), _reset_peak_memory()
        io_counts().reset()
        result = compute(context, *args, **kwargs)
        context.add_output_metadata(_figures(started, reset))
        return result
    return plain
