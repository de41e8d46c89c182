"""No user file lost: what every command may write, replace and leave behind (`freqtr_hf.runs`), and the remote code
an exported folder names."""

import json
import os
import stat
from pathlib import Path

import pytest

from conftest import write_images, write_tiny_vit
from freqtr_hf.exporting import export_model
from freqtr_hf.runs import (
    MARKER, OutputRefused, check_output_file, check_output_folder, exclusive_use, lock_path, write_atomically,
    write_json,
)
from freqtr_hf.cli import main

REDUCTION = {"reduction_method": "freq", "keep_rate": 0.5, "reduction_layers": [1, 2], "dc_window_sizes": [2, 1]}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tiny")
    write_tiny_vit(root / "model")
    write_images(root / "data", ["class 0", "class 1"], 2)
    return root


def user_files(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` with its content."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def leftovers(folder: Path) -> list[str]:
    """Hidden temporaries and locks a run may leave in `folder`."""
    return sorted(p.name for p in folder.iterdir() if p.name.endswith((".lock", ".staging", ".replaced", ".partial",
                                                                        ".probe")))


# ---- export

def test_an_export_leaves_the_users_neighbour_folders_alone(tiny, tmp_path):
    for name in ("X.old", "X.tmp"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "notes.md").write_text(f"the user's {name}")
    before = user_files(tmp_path)
    export_model(str(tiny / "model"), str(tmp_path / "X"), REDUCTION)
    export_model(str(tiny / "model"), str(tmp_path / "X"), REDUCTION, overwrite=True)  # a replacement too
    after = user_files(tmp_path)
    assert {k: v for k, v in after.items() if not k.startswith("X/")} == before
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("files", [
    {"thesis.txt": "chapter 1", "sub/notes.md": "notes", ".git/HEAD": "ref: refs/heads/main"},
    {"notes.md": "added by the user to an export"},
], ids=["a user's folder", "an export the user added to"])
def test_overwrite_refuses_a_folder_with_files_the_project_did_not_write(tiny, tmp_path, files):
    output = tmp_path / "out"
    if "notes.md" in files:
        export_model(str(tiny / "model"), str(output), REDUCTION)
    for name, text in files.items():
        (output / name).parent.mkdir(parents=True, exist_ok=True)
        (output / name).write_text(text)
    before = user_files(output)
    with pytest.raises(OutputRefused, match="did not write") as refusal:
        export_model(str(tiny / "no-such-model"), str(output), REDUCTION, overwrite=True)  # refused before loading
    assert all(name.split("/")[0] in str(refusal.value) for name in files)  # what it would lose, named
    assert user_files(output) == before and leftovers(tmp_path) == []


def test_an_earlier_export_needs_overwrite_and_is_then_replaced(tiny, tmp_path):
    output = tmp_path / "out"
    export_model(str(tiny / "model"), str(output), REDUCTION)
    with pytest.raises(OutputRefused, match="pass --overwrite to replace it"):
        export_model(str(tiny / "model"), str(output), {**REDUCTION, "keep_rate": 0.7})
    export_model(str(tiny / "model"), str(output), {**REDUCTION, "keep_rate": 0.7}, overwrite=True)
    assert json.loads((output / "config.json").read_text())["keep_rate"] == 0.7
    assert sorted(json.loads((output / MARKER).read_text())["files"]) == sorted(
        name for name in user_files(output) if name != MARKER)


def test_an_export_refused_at_the_root_leaves_no_lock(tiny):
    with pytest.raises(OutputRefused, match="did not write"):
        export_model(str(tiny / "model"), "/", REDUCTION, overwrite=True)
    assert not lock_path("/").exists()


def test_an_export_names_only_the_code_it_carries_in_its_auto_map(tiny, tmp_path):
    base = tmp_path / "base"
    write_tiny_vit(base)
    config = json.loads((base / "config.json").read_text())
    config["auto_map"] = {"AutoBackbone": "evil.Evil", "AutoModelForCausalLM": "attacker/repo--evil.Evil"}
    (base / "config.json").write_text(json.dumps(config))
    folder = export_model(str(base), str(tmp_path / "out"), REDUCTION)
    auto_map = json.loads((folder / "config.json").read_text())["auto_map"]
    assert auto_map == {
        "AutoConfig": "configuration_freqvit.FreqViTConfig",
        "AutoModel": "modeling_freqvit.FreqViTModel",
        "AutoModelForImageClassification": "modeling_freqvit.FreqViTForImageClassification",
    }
    assert all((folder / f"{reference.split('.')[0]}.py").is_file() for reference in auto_map.values())


# ---- file outputs: evaluate --output and --state-file, the benchmarks' --output

def evaluate(tiny: Path, *extra: str) -> list[str]:
    return ["evaluate", "--model", str(tiny / "model"), "--data", str(tiny / "data"), "--batch-size", "4",
            "--device", "cpu", "--methods", "freq", *extra]


def refused_paths(tmp_path: Path) -> dict[str, Path]:
    unrelated = tmp_path / "README.md"
    unrelated.write_text("# the user's own file")
    target = tmp_path / "target.json"
    target.write_text(json.dumps({"the user's": "data"}))
    (tmp_path / "link.json").symlink_to(target)
    os.mkfifo(tmp_path / "pipe.json")
    (tmp_path / "folder.json").mkdir()
    return {"was not written by freqtr-hf": unrelated, "symbolic link": tmp_path / "link.json",
            "not a regular file": tmp_path / "pipe.json", "is a folder": tmp_path / "folder.json"}


@pytest.mark.parametrize("flag", ["--output", "--state-file"])
def test_evaluate_refuses_a_path_it_did_not_write_before_any_work(tiny, tmp_path, capsys, flag):
    for message, path in refused_paths(tmp_path).items():
        before = user_files(tmp_path)
        assert main(evaluate(tiny, flag, str(path))) == 2
        assert message in capsys.readouterr().err
        assert user_files(tmp_path) == before and stat.S_ISFIFO(os.lstat(tmp_path / "pipe.json").st_mode)
        assert (tmp_path / "link.json").is_symlink()
    assert leftovers(tmp_path) == []


def test_evaluate_replaces_its_own_output_and_keeps_the_users_tmp_file(tiny, tmp_path):
    output, state = tmp_path / "results.json", tmp_path / "state.json"
    for name in ("results.json.tmp", "state.json.tmp", "results.json.lock"):
        (tmp_path / name).write_text(f"the user's {name}")
    before = user_files(tmp_path)
    for _ in range(2):  # the second run replaces the first one's results and re-reports its finished state
        assert main(evaluate(tiny, "--output", str(output), "--state-file", str(state))) == 0
    assert json.loads(output.read_text())["written_by"] == "freqtr-hf"
    assert {k: v for k, v in user_files(tmp_path).items() if k in before} == before
    assert leftovers(tmp_path) == ["results.json.lock"]  # the user's, as it was; none of the run's


def test_a_state_file_where_no_file_can_be_written_is_refused_before_the_run(tiny, capsys):
    folder = Path("/proc")  # takes no new file, even as root
    assert main(evaluate(tiny, "--state-file", str(folder / "freqtr-state.json"))) == 2
    assert "--state-file: cannot write in the folder of /proc/freqtr-state.json" in capsys.readouterr().err


def test_a_benchmark_output_is_checked_before_it_runs(tmp_path):
    unrelated = tmp_path / "methods.json"
    unrelated.write_text("[1, 2, 3]")
    with pytest.raises(OutputRefused, match="was not written by freqtr-hf"):
        check_output_file(unrelated, "--output")
    write_json(tmp_path / "own.json", {"rows": []})
    assert check_output_file(tmp_path / "own.json", "--output") == tmp_path / "own.json"


def test_an_interrupted_atomic_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "results.json"
    write_json(path, {"rows": [1]})

    class Interrupted(str):  # Ctrl-C while the new content is written
        def encode(self, *args):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_atomically(path, Interrupted("new"))
    assert json.loads(path.read_text())["rows"] == [1] and leftovers(tmp_path) == []


# ---- folders written into: analyze --output, training/finetune.py --output_dir

def test_analyze_refuses_a_users_folder_and_the_root(tiny, tmp_path, capsys):
    pytest.importorskip("scipy", reason="the analysis needs the analysis extra")
    folder = tmp_path / "report"
    folder.mkdir()
    (folder / "report.md").write_text("the user's report")
    argv = ["analyze", "--model", str(tiny / "model"), "--data", str(tiny / "data"), "--methods", "topk",
            "--keep-rates", "0.5", "--device", "cpu"]
    assert main([*argv, "--output", str(folder)]) == 2
    assert "holds files that freqtr-hf did not write there (report.md)" in capsys.readouterr().err
    assert (folder / "report.md").read_text() == "the user's report"
    assert main([*argv, "--output", "/"]) == 2
    assert "did not write" in capsys.readouterr().err and not lock_path("/").exists()


def test_a_folder_of_another_kind_is_refused(tmp_path):
    export = tmp_path / "export"
    export.mkdir()
    write_json(export / MARKER, {"kind": "model", "files": []})
    with pytest.raises(OutputRefused, match="holds a model folder, not a report folder"):
        check_output_folder(export, "--output", "report")


def test_the_lock_is_removed_when_the_run_ends_and_a_second_run_is_refused(tmp_path):
    path = tmp_path / "out"
    with exclusive_use(path, "--output"):
        assert lock_path(path).exists()
        with pytest.raises(ValueError, match="in use by another run"):
            with exclusive_use(tmp_path / "." / "out", "--output"):  # another spelling of the same path
                pass
    assert not lock_path(path).exists() and leftovers(tmp_path) == []
