"""No user file lost: what every command may write, replace and leave behind (`freqtr_hf.runs`), and the remote code
an exported folder names."""

import json
import os
import re
import stat
from pathlib import Path

import pytest

from conftest import write_images, write_tiny_vit
from freqtr_hf.exporting import export_model
from freqtr_hf.evaluation import RESULTS_KIND, STATE_KIND
from freqtr_hf.runs import (
    BENCHMARK_KIND, MARKER, OutputRefused, check_output_file, check_output_folder, exclusive_use, lock_path,
    write_atomically, write_json, write_marker,
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
    return sorted(p.name for p in folder.iterdir() if p.name.endswith((".freqtr-hf.lock", ".staging", ".replaced",
                                                                        ".partial", ".probe")))


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
    with pytest.raises(OutputRefused, match="is the current folder or one above it"):
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
        "AutoBackbone": "modeling_freqvit.FreqViTBackbone",  # its own, not the source's
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
    assert leftovers(tmp_path) == [] and (tmp_path / "results.json.lock").read_text() == "the user's results.json.lock"


def test_a_state_file_where_no_file_can_be_written_is_refused_before_the_run(tiny, capsys):
    folder = Path("/proc")  # takes no new file, even as root
    assert main(evaluate(tiny, "--state-file", str(folder / "freqtr-state.json"))) == 2
    assert "--state-file: cannot write in the folder of /proc/freqtr-state.json" in capsys.readouterr().err


def test_a_benchmark_output_is_checked_before_it_runs(tmp_path):
    unrelated = tmp_path / "methods.json"
    unrelated.write_text("[1, 2, 3]")
    with pytest.raises(OutputRefused, match="was not written by freqtr-hf"):
        check_output_file(unrelated, "--output", BENCHMARK_KIND)
    write_json(tmp_path / "own.json", {"rows": []}, BENCHMARK_KIND)
    assert check_output_file(tmp_path / "own.json", "--output", BENCHMARK_KIND) == tmp_path / "own.json"


def test_a_file_of_another_kind_a_marker_and_names_that_are_no_file_are_refused(tiny, tmp_path):
    write_json(tmp_path / "state.json", {}, STATE_KIND)
    with pytest.raises(OutputRefused, match="holds freqtr-hf's evaluation state, not evaluation results"):
        check_output_file(tmp_path / "state.json", "--output", RESULTS_KIND)
    export = export_model(str(tiny / "model"), str(tmp_path / "export"), REDUCTION)
    with pytest.raises(OutputRefused, match="is the marker of a folder freqtr-hf wrote"):
        check_output_file(export / MARKER, "--output", RESULTS_KIND)
    for name in ("", str(tmp_path / "new") + "/"):
        with pytest.raises(OutputRefused, match="is no file name"):
            check_output_file(name, "--output", RESULTS_KIND)


def test_an_interrupted_atomic_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "results.json"
    write_json(path, {"rows": [1]}, BENCHMARK_KIND)

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
    assert "is the current folder or one above it" in capsys.readouterr().err and not lock_path("/").exists()


def test_an_analysis_refused_for_its_settings_leaves_no_folder(tiny, tmp_path, capsys):
    pytest.importorskip("scipy", reason="the analysis needs the analysis extra")
    from transformers import ViTConfig, ViTForImageClassification

    plain = ViTConfig(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64, image_size=64,
                      patch_size=8, num_labels=10)  # no schedule of its own: the default (3, 6, 9) does not fit
    ViTForImageClassification(plain).save_pretrained(tmp_path / "vit")
    (tmp_path / "vit" / "preprocessor_config.json").write_bytes((tiny / "model" / "preprocessor_config.json").read_bytes())
    argv = ["analyze", "--model", str(tmp_path / "vit"), "--data", str(tiny / "data"), "--methods", "freq",
            "--keep-rates", "0.7", "--device", "cpu", "--output", str(tmp_path / "report")]
    assert main(argv) == 2
    assert "reduction_layers" in capsys.readouterr().err and not (tmp_path / "report").exists()


def test_a_folder_of_another_kind_is_refused(tmp_path):
    export = tmp_path / "export"
    export.mkdir()
    write_marker(export, "model", [])
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


def test_a_hand_written_marker_or_a_changed_file_never_gets_a_file_replaced(tiny, tmp_path):
    forged = tmp_path / "forged"
    forged.mkdir()
    (forged / "notes.txt").write_text("precious")
    (forged / MARKER).write_text(json.dumps({"written_by": "freqtr-hf", "kind": "model", "files": ["notes.txt"]}))
    edited = export_model(str(tiny / "model"), str(tmp_path / "edited"), REDUCTION)
    with open(edited / "README.md", "a") as card:
        card.write("\nthe user's own paragraph\n")
    for folder, name in ((forged, "notes.txt"), (edited, "README.md (changed since)")):
        before = user_files(folder)
        with pytest.raises(OutputRefused, match=re.escape(name)):
            export_model(str(tiny / "model"), str(folder), REDUCTION, overwrite=True)
        assert user_files(folder) == before


def test_the_current_folder_is_refused_as_an_output_folder(tiny, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for output in (".", "..", str(tmp_path)):
        with pytest.raises(OutputRefused, match="is the current folder or one above it"):
            export_model(str(tiny / "model"), output, REDUCTION)
    assert leftovers(tmp_path) == [] and leftovers(tmp_path.parent) == []


def test_what_a_killed_export_left_is_removed_by_the_next_run_on_that_output(tiny, tmp_path):
    staging = tmp_path / ".X.k1ll3d_x.staging"  # as staged_folder names them
    staging.mkdir()
    (staging / "model.safetensors").write_bytes(b"half written")
    (tmp_path / ".X.freqtr-hf.lock").write_text("")  # the killed run's lock, no longer held
    (tmp_path / ".X.user-own.staging").mkdir()  # not a name of ours: left alone
    export_model(str(tiny / "model"), str(tmp_path / "X"), REDUCTION)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".X.user-own.staging", "X"]


def test_an_interruption_between_the_renames_puts_the_old_folder_back(tiny, tmp_path, monkeypatch):
    output = export_model(str(tiny / "model"), str(tmp_path / "out"), REDUCTION)
    before = user_files(output)
    real_replace, calls = os.replace, []

    def interrupted_second_rename(source, target):
        calls.append(target)
        if len(calls) == 2:
            raise KeyboardInterrupt
        real_replace(source, target)

    monkeypatch.setattr(os, "replace", interrupted_second_rename)
    from freqtr_hf import runs

    staging = tmp_path / "new"
    staging.mkdir()
    with pytest.raises(KeyboardInterrupt):
        runs.replace_folder(staging, output)
    monkeypatch.setattr(os, "replace", real_replace)
    assert user_files(output) == before
