"""Data-parallel runs under `accelerate launch`: this process's place in the run, its device, and the main process's
decisions given to every process.

Run alone, a command is the one process of its run, and these are no-ops: its main process, its `--device`, its own
values. Under the launcher every process runs the same command on its own share of the work; only the main process
touches the output files, and a refusal it meets stops every process rather than leaving the others waiting for it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from .devices import resolve_device

if TYPE_CHECKING:
    import torch
    from accelerate import PartialState

T = TypeVar("T")


def process_state(device: torch.device) -> PartialState:
    """This process's place in the run: its index, the number of processes, the launcher's device for it; the same
    object on every call (accelerate keeps one per process). A run on `device` the CPU, or under
    `accelerate launch --cpu`, is one of CPU processes, whatever GPUs the machine has."""
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    return PartialState(cpu=device.type == "cpu" or parse_flag_from_env("ACCELERATE_USE_CPU"))


def process_device(name: str = "auto") -> torch.device:
    """`resolve_device(name)` for this process. With several processes, `auto` and the launcher's own device type
    mean this process's device (`cuda:<local rank>`, or the CPU under `--cpu`): each process has a GPU to itself."""
    device = resolve_device(name)
    parallel = process_state(device)
    if parallel.num_processes > 1 and (name == "auto" or device.type == parallel.device.type):
        return parallel.device
    return device


def from_main_process(parallel: PartialState, compute: Callable[[], T]) -> T:
    """`compute()`, run by the main process alone; its value, or the error it raised, goes to every process, so that
    none goes on (or waits for the main process in a collective) after the main process has stopped."""
    from accelerate.utils import broadcast_object_list

    outcome = None
    if parallel.is_main_process:
        try:
            outcome = compute()
        except Exception as error:  # raised below, in every process
            outcome = error
    [outcome] = broadcast_object_list([outcome])
    if isinstance(outcome, Exception):
        raise outcome
    return outcome
