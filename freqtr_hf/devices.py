"""Where models run: `--device auto|cpu|cuda|mps` and `--dtype`, resolved once for every command and the Space.

The choices are read by the command line before anything heavy loads: torch is imported where it is used.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")
DTYPE_CHOICES = ("float32", "bfloat16", "float16")


def resolve_device(name: str = "auto") -> torch.device:
    """`auto`: the CUDA GPU when there is one, else Apple's MPS, else the CPU. An explicit device that this machine
    lacks raises `ValueError` naming it."""
    import torch

    if name not in DEVICE_CHOICES:
        raise ValueError(f"device: must be one of {DEVICE_CHOICES}, got {name!r}")
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device: 'cuda' was asked for, but torch sees no CUDA GPU on this machine")
    if name == "mps" and not torch.backends.mps.is_available():
        raise ValueError("device: 'mps' was asked for, but torch sees no Apple MPS device on this machine")
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """The torch dtype of `--dtype`; float16 only where the device computes it (not on the CPU)."""
    import torch

    if name not in DTYPE_CHOICES:
        raise ValueError(f"dtype: must be one of {DTYPE_CHOICES}, got {name!r}")
    if name == "float16" and device.type == "cpu":
        raise ValueError("dtype: float16 is not supported on the CPU; use bfloat16 or float32")
    return getattr(torch, name)


def describe(device: torch.device) -> str:
    """'cuda (NVIDIA H100 80GB HBM3)', 'cpu (2 threads)', for the line a command prints before it runs."""
    import torch

    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    if device.type == "cpu":
        return f"cpu ({torch.get_num_threads()} threads)"
    return device.type


def synchronize(device: torch.device) -> None:
    """Wait for the kernels queued on an accelerator, so that a clock read next measures them (the CPU runs them
    as they are called)."""
    import torch

    if device.type != "cpu":
        torch.accelerator.synchronize(device)


def take_turns(
    calls: list[Callable[[], object]], round_index: int, device: torch.device
) -> tuple[list[float], list[object]]:
    """Round `round_index` of a side-by-side timing: every call once, starting with call `round_index % len(calls)`
    and wrapping around, so that over rounds drift hits the calls alike and none always runs first (or after the
    same one). Returns the seconds of every call and what it returned, in the order of `calls`."""
    seconds, outputs = [0.0] * len(calls), [None] * len(calls)
    shift = round_index % len(calls)
    for index in [*range(shift, len(calls)), *range(shift)]:
        synchronize(device)
        start = time.perf_counter()
        outputs[index] = calls[index]()
        synchronize(device)
        seconds[index] = time.perf_counter() - start
    return seconds, outputs


def time_in_turns(calls: list[Callable[[], object]], rounds: int, device: torch.device) -> list[list[float]]:
    """Seconds of every call in each of `rounds` rounds of `take_turns`."""
    times = [[] for _ in calls]
    for round_index in range(rounds):
        seconds, _ = take_turns(calls, round_index, device)
        for record, second in zip(times, seconds):
            record.append(second)
    return times
