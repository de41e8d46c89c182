"""The wheel and the sdist: they build, pass `twine check`, install in a fresh venv and run there."""

import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # builds and installs in a fresh venv

ROOT = Path(__file__).resolve().parents[2]
SMOKE = """
import sys, freqtr_hf, freqtr_hf.cli
from pathlib import Path
assert sys.prefix in freqtr_hf.__file__, freqtr_hf.__file__  # the installed copy, not the checkout
assert (Path(freqtr_hf.__file__).parent / "metrics" / "top1_agreement.py").exists()
from freqtr_hf import FreqViTConfig, FreqViTForImageClassification
config = FreqViTConfig(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64,
                       image_size=32, patch_size=8, reduction_layers=(1, 2), dc_window_sizes=(2, 1))
import torch

print(FreqViTForImageClassification(config).eval()(torch.randn(1, 3, 32, 32)).logits.shape)
"""


@pytest.fixture(scope="module")
def distributions(tmp_path_factory) -> list[Path]:
    pytest.importorskip("build", reason="the packaging check needs `build` (the test extra)")
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(ROOT)], check=True,
                   capture_output=True)
    return sorted(out.iterdir())


def test_wheel_and_sdist_build_and_pass_twine_check(distributions):
    assert {p.suffix for p in distributions} == {".whl", ".gz"}
    if shutil.which("twine") is None and subprocess.run([sys.executable, "-m", "twine", "--version"]).returncode:
        pytest.skip("twine is not installed")
    result = subprocess.run([sys.executable, "-m", "twine", "check", "--strict", *map(str, distributions)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("kind", [".whl", ".gz"])
def test_each_installs_in_a_fresh_venv_and_runs(distributions, tmp_path, kind):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python, package = venv / "bin" / "python", next(p for p in distributions if p.suffix == kind)
    if kind == ".gz":  # the sdist holds all it needs: unpack it and build the wheel from it alone
        shutil.unpack_archive(package, tmp_path / "sdist")
        source = next((tmp_path / "sdist").iterdir())
        subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(tmp_path / "w"),
                        str(source)], check=True, capture_output=True)
        package = next((tmp_path / "w").glob("*.whl"))
    # the dependencies (torch, transformers, ...) come from this environment, listed after the venv's own packages;
    # a plain path entry does not run this environment's .pth files, so its editable install stays out of sight
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    parents = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    (Path(site) / "parent_environment.pth").write_text("\n".join(parents) + "\n")
    subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", str(package)],
                   check=True, capture_output=True)
    version = subprocess.run([venv / "bin" / "freqtr-hf", "--version"], capture_output=True, text=True, check=True)
    assert version.stdout.strip().startswith("freqtr-hf 0.")
    run = subprocess.run([python, "-c", SMOKE], capture_output=True, text=True, cwd=tmp_path)
    assert run.returncode == 0 and "torch.Size([1, 2])" in run.stdout, run.stderr[-2000:]
