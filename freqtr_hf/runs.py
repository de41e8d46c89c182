"""Where a run writes: the one output policy of every command and script, and the lock that keeps two runs apart.

The policy: nothing the project did not write is ever deleted or replaced.
- A file output (`evaluate --output`, `--state-file`, a benchmark's `--output` or `--plot`) may be a new path or a
  file the project wrote of the same kind (a JSON object with `"written_by": "freqtr-hf"` and its `"kind"`, a PNG
  with that text chunk); a symlink, a folder, a device, a folder's marker or any other file is refused before any
  work, and the folder it goes into must take a file.
- A folder output carries a marker, `.freqtr-hf.json`, saying which kind of folder it is and, for a folder that is
  replaced whole (a model folder), the SHA-256 of every file it holds. A non-empty folder without the marker, of
  another kind, or holding a file the marker does not list or that changed since, is refused, naming those files.
- Writes go to hidden, uniquely named temporary files and folders beside the output, created by a run and removed
  by it, or by the next run on the same output if a kill stopped it; they cannot collide with a user's
  `<output>.tmp` or `<output>.old`.
- The lock beside an output is removed when the run ends.
"""

import json
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from .fingerprint import file_digest


PRODUCER = "freqtr-hf"
MARKER = ".freqtr-hf.json"
MODEL_FOLDER = "model"  # a folder kind replaced whole: weights, config, code, processor, card
SHOWN_FILES = 5  # the files a refusal names before "and N more"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
FIGURE = "figure"
BENCHMARK_KIND = "benchmark results"  # the rows a benchmark script writes
# the names mkstemp/mkdtemp give this module's temporaries of an output NAME: .NAME.<8 characters>.<suffix>
TEMPORARY_SUFFIXES = ("staging", "replaced", "partial", "probe")


class OutputRefused(ValueError):
    """An output path the run may not write, with the flag and the reason in the message."""


class RunInUseError(ValueError):
    """A state file or output folder is held by another run."""


def stamp(record: dict, kind: str) -> dict:
    """A JSON record as the project writes it: with `"written_by"` and its `"kind"`, so that a later run knows it may
    replace it, and with what."""
    return {"written_by": PRODUCER, "kind": kind, **record}


def project_kind(path: Path) -> str | None:
    """The kind of a regular file the project wrote (a JSON record's `"kind"`, `FIGURE` for a PNG of
    `write_figure`), None for any other file."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(len(PNG_SIGNATURE))
            if head == PNG_SIGNATURE:
                from PIL import Image

                with Image.open(path, formats=["PNG"]) as image:
                    return FIGURE if getattr(image, "text", {}).get("written_by") == PRODUCER else None
            record = json.loads(head + handle.read(64 << 20))
    except (OSError, ValueError, SyntaxError):
        return None
    if not isinstance(record, dict) or record.get("written_by") != PRODUCER:
        return None
    return str(record.get("kind"))


def check_output_file(path: str | os.PathLike, flag: str, kind: str) -> Path:
    """Refuse, before any work, a file output the run may not write (one of `kind` may be replaced); create its
    folder and check that it takes a file. Returns the path."""
    text = os.fspath(path)
    if not text or text.endswith(("/", os.sep)):
        raise OutputRefused(f"{flag}: {text!r} is no file name; give the path of a file")
    path = Path(text)
    if path.name == MARKER:
        raise OutputRefused(f"{flag}: {path} is the marker of a folder freqtr-hf wrote; give another file name")
    if path.is_symlink():
        raise OutputRefused(f"{flag}: {path} is a symbolic link; give the path of a regular file")
    if path.exists():
        mode = path.stat().st_mode
        if stat.S_ISDIR(mode):
            raise OutputRefused(f"{flag}: {path} is a folder; give a file name")
        if not stat.S_ISREG(mode):
            raise OutputRefused(f"{flag}: {path} is not a regular file (a device, a pipe or a socket); give a file name")
        found = project_kind(path)
        if found is None:
            raise OutputRefused(
                f"{flag}: {path} exists and was not written by freqtr-hf; it is left as it is: give a new file name"
            )
        if found != kind:
            raise OutputRefused(f"{flag}: {path} holds freqtr-hf's {found}, not {kind}; give another file name")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputRefused(f"{flag}: cannot create the folder of {path} ({error.strerror or error})") from error
    check_writable(path.parent, flag, path)
    return path


def check_writable(folder: Path, flag: str, path: Path) -> None:
    """Refuse a folder that takes no new file (read-only, full), by writing and removing a file of our own."""
    try:
        handle, probe = tempfile.mkstemp(dir=folder, prefix=f".{path.name[:64]}.", suffix=".probe")
    except OSError as error:
        raise OutputRefused(f"{flag}: cannot write in the folder of {path} ({error.strerror or error})") from error
    os.close(handle)
    os.unlink(probe)


def write_atomically(path: str | os.PathLike, content: str | bytes) -> None:
    """Write a hidden temporary file beside `path`, flush it to disk and rename it over `path`, so that an
    interruption never leaves a half-written file. The temporary file is this call's own and is removed on failure."""
    path = Path(path)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name[:64]}.", suffix=".partial")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(content.encode() if isinstance(content, str) else content)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temporary, 0o666 & ~_umask())
        os.replace(temporary, path)
    except BaseException:
        with suppress(OSError):
            os.unlink(temporary)
        raise


def write_json(path: str | os.PathLike, record: dict, kind: str) -> None:
    """A JSON record of `kind`, stamped as the project's (`stamp`), written atomically."""
    write_atomically(path, json.dumps(stamp(record, kind), indent=2) + "\n")


def write_figure(figure, path: str | os.PathLike, dpi: int = 110) -> None:
    """A matplotlib figure as a PNG that carries the project's `written_by` text chunk, written atomically."""
    import io

    image = io.BytesIO()
    figure.savefig(image, dpi=dpi, format="png", metadata={"written_by": PRODUCER})
    write_atomically(path, image.getvalue())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def read_marker(folder: Path) -> dict | None:
    """A folder's marker (`{"written_by", "kind", "files"?}`), None where it has none or an unreadable one."""
    marker = folder / MARKER
    if marker.is_symlink() or not marker.is_file() or project_kind(marker) is None:
        return None
    record = json.loads(marker.read_text())
    files = record.get("files", {})
    return record if isinstance(files, dict) and all(isinstance(v, str) for v in files.values()) else None


def write_marker(folder: Path, kind: str, files: list[str] | None = None) -> None:
    """Mark `folder` as a `kind` folder the project wrote; `files` lists what a folder replaced whole holds, each
    with its SHA-256, so that a file changed or added since is never replaced."""
    record = {"files": {name: file_digest(folder / name) for name in sorted(files)}} if files is not None else {}
    write_atomically(folder / MARKER, json.dumps(stamp(record, kind), indent=1) + "\n")


def foreign_files(folder: Path, kind: str) -> list[str]:
    """The entries of `folder` that a run writing a `kind` folder there would have to leave or lose: without the
    marker, or with another kind's, its top-level entries (a folder as `name/`); else those the marker does not list,
    where it lists files."""
    marker = read_marker(folder)
    if marker is None or marker["kind"] != kind:
        return sorted(f"{p.name}/" if p.is_dir() and not p.is_symlink() else p.name for p in folder.iterdir())
    if "files" not in marker:
        return []
    listed = marker["files"]
    foreign = []
    for name in sorted(_relative_files(folder)):
        if name == MARKER:
            continue
        path = folder / name
        if name not in listed or path.is_symlink() or not path.is_file():
            foreign.append(name)
        elif file_digest(path) != listed[name]:
            foreign.append(f"{name} (changed since)")
    return foreign


def _relative_files(folder: Path) -> Iterator[str]:
    """Every file, link and empty folder under `folder`, relative to it (a non-empty folder by its files)."""
    for root, folders, files in os.walk(folder):
        base = Path(root).relative_to(folder)
        for name in files + [f for f in folders if os.path.islink(Path(root, f))]:
            yield str(base / name)
        if not folders and not files and Path(root) != folder:
            yield f"{base}/"


def check_output_folder(folder: str | os.PathLike, flag: str, kind: str, overwrite_flag: str | None = None,
                        overwrite: bool = False) -> Path:
    """Refuse, before any work, a folder output the run may not write: a symlink, a file, a folder that holds
    files the project did not write (named), and, where `overwrite_flag` is given, a non-empty folder without
    `overwrite`. Creates the parent folder and checks that it takes new files. Returns the folder."""
    folder = Path(folder)
    if not os.fspath(folder) or Path.cwd().is_relative_to(folder.resolve()):
        raise OutputRefused(f"{flag}: {os.fspath(folder)!r} is the current folder or one above it; give a folder below it")
    if folder.is_symlink():
        raise OutputRefused(f"{flag}: {folder} is a symbolic link; give a folder path")
    if folder.exists() and not folder.is_dir():
        raise OutputRefused(f"{flag}: {folder} is a file; give a folder")
    if folder.is_dir() and any(folder.iterdir()):
        marker = read_marker(folder)
        if marker is not None and marker["kind"] != kind:
            raise OutputRefused(f"{flag}: {folder} holds a {marker['kind']} folder, not a {kind} folder; give another")
        foreign = foreign_files(folder, kind)
        if foreign:
            shown = ", ".join(foreign[:SHOWN_FILES]) + (f" and {len(foreign) - SHOWN_FILES} more"
                                                        if len(foreign) > SHOWN_FILES else "")
            raise OutputRefused(
                f"{flag}: {folder} holds files that freqtr-hf did not write there ({shown}); they are left as they "
                "are: give an empty or new folder"
            )
        if overwrite_flag and not overwrite:
            raise OutputRefused(
                f"{flag}: {folder} holds an earlier {kind} folder; pass {overwrite_flag} to replace it, or give another "
                "folder"
            )
    parent = folder.resolve().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputRefused(f"{flag}: cannot create the folder of {folder} ({error.strerror or error})") from error
    check_writable(folder if folder.is_dir() else parent, flag, folder)
    return folder


@contextmanager
def staged_folder(folder: str | os.PathLike, kind: str = MODEL_FOLDER) -> Iterator[Path]:
    """A fresh hidden folder beside `folder` to fill; when the block completes it gets the marker listing its files
    and replaces `folder`, whose previous content (checked by `check_output_folder`) is moved to a hidden folder
    and removed last, so that a kill at any moment leaves the old or the new folder complete under its name. On
    failure the staging folder, this run's own, is removed."""
    folder = Path(os.path.abspath(folder))
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.", suffix=".staging"))
    try:
        staging.chmod(0o777 & ~_umask())  # mkdtemp's folder is private; the output is an ordinary folder
        yield staging
        write_marker(staging, kind, [str(p.relative_to(staging)) for p in staging.rglob("*") if not p.is_dir()])
        replace_folder(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def replace_folder(source: Path, target: Path) -> None:
    """Move the complete folder `source` (this run's own) to `target`: an existing `target` is renamed to a hidden
    folder of this run's first, and removed once `source` is in place."""
    if not target.exists():
        os.replace(source, target)
        return
    backup = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".replaced"))
    os.replace(target, backup)  # onto the empty folder just made: a rename
    try:
        os.replace(source, target)
    except BaseException:  # interrupted between the renames: the old folder goes back under its name
        os.replace(backup, target)
        raise
    shutil.rmtree(backup, ignore_errors=True)


def lock_path(path: str | os.PathLike) -> Path:
    """The lock file of an output: hidden beside it, one for every spelling of the path."""
    real = Path(os.path.realpath(path))
    return real.parent / f".{real.name or 'root'}.freqtr-hf.lock"


@contextmanager
def exclusive_use(path: str | os.PathLike, flag: str) -> Iterator[None]:
    """Hold the lock of `path` (a state file, an output folder) while a run writes it. A second run on the same path
    raises `RunInUseError` naming `flag` and the path at once. The operating system releases the lock of a process
    that dies; the lock file itself is removed when the run ends."""
    import fcntl  # POSIX; the project's commands run on Linux and macOS

    lock_file = lock_path(path)
    while True:
        try:
            lock_file.parent.mkdir(parents=True, exist_ok=True)
            descriptor = os.open(lock_file, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        except OSError as error:
            raise OutputRefused(f"{flag}: cannot create the lock {lock_file} ({error.strerror or error})") from error
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(descriptor)
            raise RunInUseError(
                f"{flag}: {path} is in use by another run (it holds {lock_file}); wait for that run to end, or give "
                f"another {flag}"
            ) from None
        try:  # the run before us may have removed the file between our open and our lock: lock the new one
            same = os.stat(lock_file).st_ino == os.fstat(descriptor).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(descriptor)
    try:
        remove_stale_temporaries(Path(os.path.realpath(path)))
        yield
    finally:
        with suppress(OSError):
            os.unlink(lock_file)  # while held: a run waiting on this file sees it gone and takes a new one
        os.close(descriptor)


def remove_stale_temporaries(path: Path) -> None:
    """Remove the temporaries a killed run left beside `path` (hidden, named by this module for this output alone);
    called under the output's lock, so no run is writing them."""
    pattern = re.compile(rf"\.{re.escape(path.name[:64])}\.[A-Za-z0-9_]{{8}}\.({'|'.join(TEMPORARY_SUFFIXES)})")
    with suppress(OSError):
        for entry in path.parent.iterdir():
            if pattern.fullmatch(entry.name) and not entry.is_symlink():
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
