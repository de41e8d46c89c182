"""The work of the `freqtr-hf` commands, thin over the library; `freqtr_hf.cli` parses their arguments.

Every command turns the errors a user can cause (a bad flag value, an unreadable file, an unreachable Hub) into one
line on stderr and exit status 2.
"""

import argparse
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import huggingface_hub
from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled
from safetensors import SafetensorError

from .models.freqvit.configuration_freqvit import FREQ_PRESETS
from .devices import describe, resolve_device, resolve_dtype
from .evaluation import RESULTS_KIND, STATE_KIND, format_table, results_json, run_evaluation
from .parallel import from_main_process, process_device, process_state
from .runs import check_output_file, write_atomically
from .publishing import PublishError


def reduction_overrides(args: argparse.Namespace) -> dict:
    """Config fields from the reduction flags that were given (the others keep the checkpoint's or the defaults), for
    every command and script that has them (`evaluate`, `export`, `training/finetune.py`)."""
    fields = dict(FREQ_PRESETS[args.preset]) if args.preset else {}
    for name in ("keep_rate", "reduction_layers", "dc_window_sizes", "reduction_method", "score_source", "tome_r"):
        value = getattr(args, name, None)  # a flag the command lacks counts as not given
        if value is not None:
            fields[name] = tuple(value) if isinstance(value, list) else value
    if len(fields.get("keep_rate", ())) == 1:  # one rate for every layer
        fields["keep_rate"] = fields["keep_rate"][0]
    return fields


def prepare_output_files(args: argparse.Namespace) -> None:
    """Refuse, before a run starts, the files it may not write (`--output`, `--state-file`: see `runs`), create
    their folders and check that they take files, so that a long run never fails at its end for want of one."""
    if args.output and args.state_file and Path(args.output).resolve() == Path(args.state_file).resolve():
        raise ValueError("--output: the results would overwrite the --state-file; give them different files")
    for flag, kind in (("--output", RESULTS_KIND), ("--state-file", STATE_KIND)):
        path = getattr(args, flag[2:].replace("-", "_"), None)
        if path is not None:
            check_output_file(path, flag, kind)


def offline_hint() -> str:
    """huggingface_hub retries an unreachable Hub for about 20 s; its offline mode reads the cache at once."""
    if huggingface_hub.constants.HF_HUB_OFFLINE:
        return ""
    return " (or set HF_HUB_OFFLINE=1 to use the local cache without retrying)"


@contextmanager
def noting_ctrl_c() -> Iterator[list[int]]:
    """While inside, Ctrl-C raises `KeyboardInterrupt` as usual and is also noted in the list yielded: a library that
    turns the interruption into another error (an `OSError`, say) cannot make it look like the user's mistake.
    Where Ctrl-C is not Python's default (ignored, as in a job a shell started in the background, or handled by the
    caller) and outside the main thread, where no handler can be set, nothing changes and nothing is noted."""
    noted: list[int] = []

    def handler(signum, frame):
        noted.append(signum)
        signal.default_int_handler(signum, frame)

    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        yield noted
        return
    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield noted
    finally:
        signal.signal(signal.SIGINT, previous)


def one_line_errors(run: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Report the errors a user can cause in one line that names the problem, and exit with status 2; an error
    raised by an interruption is the interruption."""

    def guarded(args: argparse.Namespace) -> int:
        with noting_ctrl_c() as interrupted:
            try:
                return run(args)
            except Exception as error:
                if interrupted:
                    raise KeyboardInterrupt from error
                line = one_line(args, error)
                if line is None:
                    raise
                return _fail(line)

    return guarded


def one_line(args: argparse.Namespace, error: Exception) -> str | None:
    """The line that names the problem, for an error a user can cause; None for any other."""
    if isinstance(error, SafetensorError):
        return f"{args.model}: its weights file cannot be read ({error}); download or export it again"
    if isinstance(error, (HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled, ConnectionError)):
        return f"cannot reach the Hugging Face Hub ({_first_line(error)}); offline, pass local folders{offline_hint()}"
    if isinstance(error, OSError):
        hint = ""
        names = [args.model, *(args.data if isinstance(args.data, list) else [args.data])]
        if any(name and not Path(name).exists() for name in names):
            hint = "; offline or without the Hugging Face Hub, pass local folders with --model and --data"
            hint += offline_hint()
        return f"{_first_line(error)}{hint}"
    if isinstance(error, (ValueError, PublishError)):
        return str(error)
    return None


@one_line_errors
def run_evaluate(args: argparse.Namespace) -> int:
    # under `accelerate launch` each process evaluates its share; the main process checks, prints and writes
    device = process_device(args.device)
    parallel = process_state(device)
    dtype = resolve_dtype(args.dtype, device)
    from_main_process(parallel, partial(prepare_output_files, args))
    processes = {"processes": parallel.num_processes} if parallel.num_processes > 1 else {}
    if parallel.is_main_process:
        each = f" in each of {parallel.num_processes} processes" if processes else ""
        print(f"freqtr-hf evaluate: {args.model} on {describe(device)}{each}, {args.dtype}", file=sys.stderr)
    results, skipped = run_evaluation(
        args.model, args.data, args.methods, batch_size=args.batch_size, every=args.every,
        split=args.split, dataset_config=args.dataset_config, synsets=args.synsets, dtype=dtype, device=device,
        state_file=args.state_file, restart=args.restart, skip_bad_images=args.skip_bad_images,
        overrides=reduction_overrides(args),
    )
    parallel.destroy_process_group()  # every process is past the last gather; NCCL warns of a group left open
    if not parallel.is_main_process:
        return 0
    run = {
        "model": args.model, "data": args.data, "every": args.every, "batch_size": args.batch_size,
        "device": describe(device), **processes, "dtype": args.dtype, "reduction": reduction_overrides(args),
        "skipped": skipped,
    }
    text = results_json(results, **run)
    print(format_table(results))
    labelled, images = results[0].labelled, results[0].images
    if not labelled:
        print("top-1 is not reported: no image has a label among the model's classes (class sub-folders named by "
              "WordNet id with --synsets, or by the model's label names, give them)", file=sys.stderr)
    elif labelled < images:
        print(f"top-1 is over the {labelled} of {images} images whose class is one of the model's (the others' "
              "classes are not among its labels); agreement is over all of them", file=sys.stderr)
    if skipped:
        images = "image" if len(skipped) == 1 else "images"
        print(f"skipped {len(skipped)} unreadable {images} (listed in the JSON)", file=sys.stderr)
    print(text)
    if args.output:
        write_atomically(args.output, text + "\n")
    return 0


@one_line_errors
def run_export(args: argparse.Namespace) -> int:
    from .exporting import export_model

    reduction = {"reduction_method": args.method, **reduction_overrides(args)}
    if args.data:  # the weights are written as they are; only the measurement for the card runs the model
        print(f"freqtr-hf export: measuring on {describe(resolve_device(args.device))}", file=sys.stderr)
    folder = export_model(
        args.model, args.output, reduction=reduction, data=args.data, every=args.every, synsets=args.synsets,
        device=args.device, batch_size=args.batch_size, push_to_hub=args.push_to_hub, token=args.token,
        license=args.license, overwrite=args.overwrite,
    )
    print(f"freqtr-hf export: wrote {folder}")
    return 0


@one_line_errors
def run_analyze(args: argparse.Namespace) -> int:
    try:
        from .analysis.report import run_analysis
    except ImportError as error:  # scipy, scikit-learn, matplotlib: the analysis extra
        return _fail(f"the analysis needs {error.name}: pip install -e \".[analysis]\" (or pip install {error.name})")

    if len(args.every) not in (1, len(args.data)):
        raise ValueError(f"--every: give one value, or one per --data ({len(args.data)}), got {len(args.every)}")
    every = args.every[0] if len(args.every) == 1 else args.every
    run_analysis(
        args.model, args.data, args.methods, args.keep_rates, args.output, every=every, synsets=args.synsets,
        device=args.device, batch_size=args.batch_size, preset=args.preset,
    )
    print(f"freqtr-hf analyze: wrote {Path(args.output) / 'report.md'}")
    return 0


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0].removesuffix(".") if text else type(error).__name__


def _fail(message: str) -> int:
    print(f"freqtr-hf: {message}", file=sys.stderr)
    return 2
