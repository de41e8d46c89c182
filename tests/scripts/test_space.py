"""The Gradio Space: shared weights, safe inputs (images, model box), honest numbers, deployment, and a real browser."""

import ast
import json
import importlib.metadata
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import DEIT_TINY

from freqtr_hf import TRAINING_FREE_FREQ, FreqViTForImageClassification
from freqtr_hf.devices import describe, resolve_device
from freqtr_hf.visualization import stage_summary

ROOT = Path(__file__).resolve().parents[2]
SPACE = ROOT / "space"
sys.path.insert(0, str(SPACE))
gr = pytest.importorskip("gradio", reason="the Space needs gradio (pip install -e '.[test]')")
import app  # noqa: E402
import deploy  # noqa: E402

CHROMIUM = Path("/usr/bin/chromium")
CAT = app.example_images()[0]  # scikit-image's "chelsea", a tabby cat


@pytest.fixture
def default_deit(deit_tiny, monkeypatch):
    """The shared DeiT-Tiny as the Space's default model."""
    monkeypatch.setenv("FREQTR_MODEL", str(deit_tiny))
    return str(deit_tiny)


# ---- images: read by freqtr_hf.images.read_image, bad ones refused with the upload's own name

def test_grayscale_rgba_and_16bit_images_become_rgb(tmp_path):
    gray = tmp_path / "gray.png"
    Image.fromarray(np.full((20, 30), 128, dtype=np.uint8)).save(gray)
    rgba = tmp_path / "rgba.png"
    Image.fromarray(np.zeros((20, 30, 4), dtype=np.uint8)).save(rgba)  # fully transparent black
    deep = tmp_path / "deep.png"
    Image.fromarray(np.full((20, 30), 32768, dtype=np.uint16)).save(deep)
    assert app.read_upload(str(gray)).getpixel((0, 0)) == (128, 128, 128)
    assert app.read_upload(str(rgba)).getpixel((0, 0)) == (255, 255, 255)  # transparency over white
    assert app.read_upload(str(deep)).getpixel((0, 0)) == (128, 128, 128)  # 16-bit mid-grey stays mid-grey


@pytest.mark.parametrize("content", [b"just some text", b"\x89PNG\r\n\x1a\n" + b"\x00" * 40], ids=["text", "corrupt"])
def test_non_images_and_corrupt_files_get_a_clear_message_with_the_uploads_name(tmp_path, content):
    path = tmp_path / "server-side-name.png"
    path.write_bytes(content)
    with pytest.raises(gr.Error, match=r"holiday\.png: not a readable image") as error:
        app.read_upload({"path": str(path), "orig_name": "holiday.png"})
    assert str(tmp_path) not in str(error.value)  # the server's folders stay private


def test_an_image_over_16_megapixels_is_refused_before_decoding(tmp_path):
    path = tmp_path / "huge.png"
    Image.new("1", (6500, 6400)).save(path)  # 41.6 megapixels, a few kB as a one-bit PNG
    start = time.perf_counter()
    with pytest.raises(gr.Error, match=r"huge\.png: 6500x6400 is 42 megapixels, over the limit of 16"):
        app.read_upload(str(path))
    assert time.perf_counter() - start < 1.0  # refused from the header, not after decoding


def test_no_upload_asks_for_one():
    with pytest.raises(gr.Error, match="Upload an image"):
        app.read_upload(None)


# ---- the model box: default, Hub ids, allowed folders only

@pytest.fixture
def model_dirs(tmp_path, monkeypatch):
    """An allowed folder holding `models/deit`, and an `outside` folder next to it."""
    (tmp_path / "models" / "deit").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    monkeypatch.setenv("FREQTR_MODEL_DIRS", str(tmp_path / "models"))
    monkeypatch.setenv("FREQTR_MODEL", "facebook/deit-tiny-patch16-224")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_the_model_box_accepts_the_default_hub_ids_and_allowed_folders(model_dirs):
    assert app.model_source("") == "facebook/deit-tiny-patch16-224"
    assert app.model_source("  google/vit-base-patch16-224 ") == "google/vit-base-patch16-224"
    assert app.model_source(str(model_dirs / "models" / "deit")) == str((model_dirs / "models" / "deit").resolve())
    assert app.model_source("./models/deit/") == str((model_dirs / "models" / "deit").resolve())


@pytest.mark.parametrize(
    "text, message",
    [
        ("/etc", "is not under the folders this Space loads models from"),
        ("models/../outside", "is not under the folders"),  # a Hub-like name, but an existing folder here
        ("{root}/models/../outside", "is not under the folders"),
        ("{root}/models/escape", "is not under the folders"),  # a symlink out of the allowed folder
        ("~", "is not under the folders"),
        ("{root}/models/absent", "there is no folder"),
        ("a/b/c", "give a Hub id"),
        ("no spaces/allowed here", "give a Hub id"),
        ("owner/na..me", "give a Hub id"),
    ],
)
def test_the_model_box_refuses_other_folders_and_bad_names(model_dirs, text, message):
    (model_dirs / "models" / "escape").symlink_to(model_dirs / "outside")
    with pytest.raises(gr.Error, match=message):
        app.model_source(text.format(root=model_dirs))


def test_a_folder_is_refused_when_no_folders_are_allowed(model_dirs, monkeypatch):
    monkeypatch.delenv("FREQTR_MODEL_DIRS")
    with pytest.raises(gr.Error, match="FREQTR_MODEL_DIRS is not set"):
        app.model_source(str(model_dirs / "models" / "deit"))


def test_the_analysis_refuses_a_server_folder_before_loading_it(default_deit):
    misses = app.load_model.cache_info().misses
    with pytest.raises(gr.Error, match="is not under the folders"):
        app.analyse(CAT, "/etc", "freq", 0.7, "4, 7, 10", "2, 1, 1")
    assert app.load_model.cache_info().misses == misses


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("hub", ["offline", "refused"])
def test_a_hub_id_that_cannot_be_reached_fails_fast(monkeypatch, hub):
    import huggingface_hub.constants

    if hub == "offline":
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # what HF_HUB_OFFLINE=1 sets
    else:  # nothing listens there: the connection is refused
        monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", f"http://127.0.0.1:{free_port()}")
    start = time.perf_counter()
    message = r"The Hugging Face Hub cannot be reached \(.+\), and 'nobody/no-such-vit' is not in the local cache"
    with pytest.raises(gr.Error, match=message):
        app.load_model("nobody/no-such-vit")
    assert time.perf_counter() - start < 5


# ---- models: loaded once, reduced variants share the unreduced weights

def test_reduced_models_share_the_unreduced_models_tensors(default_deit):
    loaded = app.load_model(default_deit)
    reduced = loaded.reduced("freq", 0.7, (3, 6, 9), (2, 1, 1))
    unreduced = dict(loaded.unreduced.named_parameters())
    own = {name: p for name, p in reduced.named_parameters() if name not in unreduced}
    assert {name: p.data_ptr() for name, p in reduced.named_parameters() if name in unreduced} == {
        name: p.data_ptr() for name, p in unreduced.items()
    }  # every one of the 200 tensors, no copy
    assert len(unreduced) == 200 and own and all(name.endswith(("_gain", "dc_position_embeddings")) for name in own)
    assert all(not p.any() for p in own.values())  # the reduction parameters stay at zero
    # sharing changes nothing: the same logits as loading the reduced model from the checkpoint
    pixels = torch.randn(2, 3, 224, 224)
    loaded_freq = FreqViTForImageClassification.from_pretrained(default_deit, keep_rate=0.7).eval()
    with torch.inference_mode():
        torch.testing.assert_close(reduced(pixels).logits, loaded_freq(pixels).logits, rtol=0, atol=0)


def test_models_load_once_and_settings_reuse_them(default_deit):
    app.analyse(CAT, "", "topk", 0.5, "4, 7, 10", "2, 1, 1")
    loads = app.load_model.cache_info().misses
    stages, reduced, unreduced, stats, _ = app.analyse(CAT, default_deit, "freq", 0.5, "4, 7, 10", "2, 1, 1")
    assert app.load_model.cache_info().misses == loads  # another setting, the same model: no reload
    assert stages.size == (3 * 460, 560) and len(reduced) == 5 and len(unreduced) == 5 and "GMACs" in stats


def test_layers_are_numbered_from_1_in_the_ui_and_from_0_in_the_config(default_deit):
    _, reduced_top5, _, stats, plot = app.analyse(CAT, "", "freq", 0.7, "4, 7, 10", "2, 1, 1")
    assert app.load_model(default_deit).reduced("freq", 0.7, (3, 6, 9), (2, 1, 1)).config.reduction_layers == (3, 6, 9)
    assert app.load_model(default_deit).reduced.cache_info().hits >= 1  # the setting analyse built
    assert "Tokens: 197 → 142 → 97 → 68, reducing after layer 4, 7, 10" in stats  # the paper's schedule
    assert [line.get_xdata()[0] for line in plot.axes[0].lines[2:]] == [4, 7, 10]  # the plot's reduction markers
    assert "tabby" in " ".join(reduced_top5).lower()


def test_the_training_free_preset_shows_patches_merged_into_kept_tokens(default_deit):
    stages, reduced_top5, _, stats, _ = app.analyse(CAT, "", app.PRESET_METHOD, 0.7, "4, 7, 10", "2, 1, 1")
    reduced = app.load_model(default_deit).reduced(app.PRESET_METHOD, 0.7, (3, 6, 9), (2, 1, 1))
    assert all(getattr(reduced.config, key) == value for key, value in TRAINING_FREE_FREQ.items())
    assert "Tokens: 197 → 142 → 97 → 68" in stats  # the paper's token budget
    with torch.inference_mode():
        stage = reduced(app.load_model(default_deit).processor(app.read_upload(CAT), return_tensors="pt")[
            "pixel_values"], output_token_provenance=True).token_provenance[0]
    assert "merged into kept tokens" in stage_summary(stage)
    assert "tabby" in " ".join(reduced_top5).lower()


def test_a_keep_rate_of_1_reduces_nothing_and_still_answers(default_deit):
    stages, reduced_top5, base_top5, stats, _ = app.analyse(CAT, "", "freq", 1.0, "4, 7, 10", "2, 1, 1")
    assert stages.size == (224, 224) and "Tokens: 197, reducing after layer none" in stats
    assert list(reduced_top5) == list(base_top5)


def test_latency_is_stated_with_its_runs_batch_size_and_device(default_deit):
    *_, stats, _ = app.analyse(CAT, "", "freq", 0.7, "4, 7, 10", "2, 1, 1")
    assert f"median of 5 runs after 1 warm-up, batch size 1, {describe(resolve_device('auto'))}, float32" in stats
    assert app.DEVICE == resolve_device("auto")


def test_median_latency_is_not_charged_with_a_cold_first_run():
    calls = []

    def cold_model(pixels):  # the first call is slow, as a model's first run is
        calls.append("cold")
        time.sleep(0.3 if len(calls) == 1 else 0.01)

    def warm_model(pixels):
        calls.append("warm")
        time.sleep(0.02)

    cold, warm = app.median_latencies([cold_model, warm_model], torch.zeros(1))
    assert calls == ["cold", "warm", "warm", "cold"] * 3  # 1 warm-up and 5 timed rounds, turns in rotating order
    assert 0.005 < cold < 0.05 and 0.015 < warm < 0.1 and cold < warm


@pytest.mark.parametrize(
    "method, layers, windows, message",
    [
        ("freq", "three", "2, 1, 1", "Reduction layers: give whole numbers"),
        ("freq", "0, 7, 10", "2, 1, 1", "Reduction layers: strictly increasing layer numbers from 1 to 12"),
        ("freq", "4, 7, 13", "2, 1, 1", "from 1 to 12"),
        ("freq", "7, 4", "2, 1", "strictly increasing"),
        ("freq", "4, 7, 10", "2, 1", "dc_window_sizes"),
        ("dynamicvit", "4, 7, 10", "2, 1, 1", "Method: one of freq"),
    ],
)
def test_bad_settings_get_a_clear_message(default_deit, method, layers, windows, message):
    with pytest.raises(gr.Error, match=message):
        app.analyse(CAT, "", method, 0.7, layers, windows)


def test_every_output_has_a_name_in_the_api(default_deit):
    info = app.build_demo().get_api_info()["named_endpoints"]
    assert list(info) == ["/analyse"]  # the upload check stays private
    labels = [output["label"] for output in info["/analyse"]["returns"]]
    assert labels == ["Reduction stages", "Reduced model: top-5", "Unreduced model: top-5", "Cost and latency",
                      "High-frequency log amplitude per layer"]


# ---- deployment

class RecordingHfApi:
    """Stands in for huggingface_hub.HfApi (the Hub is unreachable here): records each call, and the files of the
    folder uploaded (which is temporary)."""

    def __init__(self):
        self.calls = []

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs))
        return f"https://huggingface.co/spaces/{repo_id}"

    def upload_folder(self, **kwargs):
        folder = Path(kwargs["folder_path"])
        files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
        self.calls.append(("upload_folder", files, kwargs))

    def add_space_variable(self, repo_id, key, value):
        self.calls.append(("add_space_variable", repo_id, key, value))


def test_deploy_creates_a_gradio_space_and_uploads_app_and_package_in_one_commit():
    api = RecordingHfApi()
    url = deploy.deploy("user/freqvit-tokens", default_model="facebook/deit-small-patch16-224", api=api)
    assert url == "https://huggingface.co/spaces/user/freqvit-tokens"
    (create, repo_id, options), (upload, files, upload_options), variable = api.calls
    assert (create, repo_id) == ("create_repo", "user/freqvit-tokens")
    assert options == {"repo_type": "space", "space_sdk": "gradio", "private": False, "exist_ok": True}
    assert upload_options["repo_id"] == "user/freqvit-tokens" and upload_options["repo_type"] == "space"
    package = sorted(f"freqtr_hf/{p.relative_to(ROOT / 'freqtr_hf').as_posix()}"
                     for p in (ROOT / "freqtr_hf").rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    assert files == sorted(["README.md", "app.py", "requirements.txt", *package])
    assert "freqtr_hf/metrics/top1_agreement.py" in files and "deploy.py" not in files
    assert variable == ("add_space_variable", "user/freqvit-tokens", "FREQTR_MODEL", "facebook/deit-small-patch16-224")


def test_the_space_card_names_gradio_and_the_app():
    from huggingface_hub import SpaceCard

    card = SpaceCard.load(SPACE / "README.md").data
    assert card.sdk == "gradio" and card.app_file == "app.py"
    assert card.sdk_version.split(".")[0] == gr.__version__.split(".")[0]


def imported_names(module: Path) -> set[str]:
    """The absolute names of the modules `module` imports (a relative import is a flat freqtr_hf sibling)."""
    names = set()
    for node in ast.walk(ast.parse(module.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level:
            names |= {f"freqtr_hf.{node.module}"} if node.module else {f"freqtr_hf.{a.name}" for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            names.add(node.module)
    return names


def third_party_imports(module: Path, seen: set[Path]) -> set[str]:
    """The top-level third-party packages imported by `module` and, recursively, by the freqtr_hf modules it uses."""
    seen.add(module)
    packages = set()
    for name in imported_names(module):
        top, *rest = name.split(".")
        if top == "freqtr_hf":
            package = ROOT / "freqtr_hf"
            for file in (package / "__init__.py", package / Path(*rest or ["__init__"]).with_suffix(".py")):
                if file.exists() and file not in seen:
                    packages |= third_party_imports(file, seen)
        elif top not in sys.stdlib_module_names:
            packages.add(top)
    return packages


def test_requirements_install_everything_the_space_imports():
    from packaging.requirements import Requirement

    lines = (SPACE / "requirements.txt").read_text().splitlines()
    required = {Requirement(line).name.lower().replace("_", "-") for line in lines if line.strip()}
    distributions = importlib.metadata.packages_distributions()
    needed = {dist.lower().replace("_", "-") for name in third_party_imports(SPACE / "app.py", set())
              for dist in distributions[name]}
    assert {"torch", "transformers", "gradio", "scikit-image", "matplotlib", "pillow", "numpy"} <= needed
    assert needed <= required, f"space/requirements.txt lacks {needed - required}"


# ---- the running Space, in a real browser

@pytest.fixture(scope="module")
def running_space(tmp_path_factory):
    if not DEIT_TINY.exists():
        pytest.skip(f"real-weight check: {DEIT_TINY} is absent (the shared offline assets are not beside the repo)")
    port, log_path = free_port(), tmp_path_factory.mktemp("space") / "space.log"
    env = os.environ | {"FREQTR_MODEL": str(DEIT_TINY), "GRADIO_SERVER_PORT": str(port),
                        "GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_ANALYTICS_ENABLED": "False",
                        "HF_HUB_OFFLINE": "1", "FREQTR_QUEUE_SIZE": "1"}
    with open(log_path, "w") as log:
        process = subprocess.Popen([sys.executable, str(SPACE / "app.py")], env=env, stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2)
            break
        except OSError:
            if process.poll() is not None:
                pytest.fail(f"the Space exited: {log_path.read_text()[-2000:]}")
            time.sleep(1)
    else:
        process.kill()
        pytest.fail("the Space did not start within 120 s")
    yield url
    process.terminate()
    process.wait(timeout=30)


@pytest.mark.slow
def test_a_full_queue_asks_to_retry(running_space):
    from gradio_client import Client, handle_file

    client = Client(running_space, verbose=False)
    # two run at a time and one may wait (FREQTR_QUEUE_SIZE=1): of six at once, some are turned away. Each asks
    # for another keep rate: identical answers share Gradio's cached output files, and a second job rewriting one
    # while the first is downloaded cuts that download short
    jobs = [client.submit(handle_file(CAT), "", "freq", keep_rate, "4, 7, 10", "2, 1, 1", api_name="/analyse")
            for keep_rate in (0.5, 0.55, 0.6, 0.65, 0.7, 0.75)]
    outcomes = []
    for job in jobs:
        try:
            outcomes.append(job.result(timeout=120)[3])
        except Exception as error:  # noqa: BLE001 - the client raises its own error types for a full queue
            outcomes.append(str(error))
    full = [outcome for outcome in outcomes if "Queue is full" in outcome]
    done = [outcome for outcome in outcomes if "GMACs" in outcome]
    assert full and done and len(full) + len(done) == 6, outcomes


@pytest.mark.slow
@pytest.mark.skipif(not CHROMIUM.exists(), reason="browser test: no Debian chromium (apt-get install chromium)")
def test_in_a_real_browser(running_space, tmp_path):
    # FREQTR_SCREENSHOT=docs/space.png refreshes the README's picture
    screenshot = Path(os.environ.get("FREQTR_SCREENSHOT", tmp_path / "space.png"))
    playwright = pytest.importorskip("playwright.sync_api", reason="browser test: pip install playwright")
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("not an image")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM),
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run"],
        )
        page = browser.new_page(viewport={"width": 1400, "height": 1200})
        page.goto(running_space)
        page.locator("img[src*='chelsea']").first.wait_for(timeout=30_000)  # the examples show thumbnails
        upload = page.locator("#image-upload input[type=file]")

        # a bad upload gets its message, and the app keeps serving
        upload.set_input_files(str(not_an_image))
        page.get_by_text("notes.png: not a readable image").first.wait_for(timeout=30_000)
        page.reload()

        # a Hub id while the Hub is unreachable (HF_HUB_OFFLINE=1): a one-line message within seconds
        page.locator("#image-upload input[type=file]").set_input_files(CAT)
        page.locator("#image-upload img").first.wait_for(timeout=30_000)  # the preview of the upload
        model_box = page.get_by_label("Model (Hub id, or a folder this Space allows)")
        model_box.fill("nobody/no-such-vit")
        start = time.time()
        page.locator("#run").click()
        page.get_by_text("The Hugging Face Hub cannot be reached").first.wait_for(timeout=10_000)
        assert time.time() - start < 10
        model_box.fill(str(DEIT_TINY))

        page.locator("#run").click()
        page.locator("#stages img").wait_for(timeout=120_000)  # the reduction stages, side by side
        page.get_by_text("Egyptian cat").first.wait_for(timeout=30_000)
        assert page.locator("#stages img").evaluate("image => image.naturalWidth") == 3 * 460  # three stages
        assert "tabby" in page.locator("#reduced-top5").inner_text().lower()
        stats = page.locator("#stats").inner_text()
        assert "GMACs" in stats and "batch size 1" in stats and "median of 5 runs" in stats
        page.locator("#amplitude").get_by_role("img").first.wait_for(timeout=30_000)
        # closed in the page in one go: a message that closes by itself (after 10 s) between a listing and a click
        # would leave that click waiting for a button that is gone
        page.locator(".toast-close").evaluate_all("buttons => buttons.forEach(button => button.click())")
        page.locator(".toast-body").first.wait_for(state="detached", timeout=30_000)
        page.screenshot(path=str(screenshot), full_page=True)
        info = page.request.get(f"{running_space}gradio_api/info").json()
        browser.close()
    assert [output["label"] for output in info["named_endpoints"]["/analyse"]["returns"]][0] == "Reduction stages"
    assert screenshot.stat().st_size > 10_000


# ---- hostile input: documents, oversized models and uploads, names that break path functions

def test_a_postscript_file_named_png_is_refused_without_starting_ghostscript(tmp_path, monkeypatch):
    ran = tmp_path / "gs-ran"
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "gs").write_text(f"#!/bin/sh\ntouch {ran}\nexit 1\n")
    (fake_bin / "gs").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake_bin}{os.pathsep}{os.environ['PATH']}")
    upload = tmp_path / "photo.png"
    upload.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 64 64\n0 0 moveto 64 64 lineto stroke\nshowpage\n")
    with pytest.raises(gr.Error, match=r"holiday\.png: is a PostScript document, not an image; the images read here"):
        app.check_upload({"path": str(upload), "orig_name": "holiday.png"})
    assert not ran.exists()


def test_an_upload_over_the_size_limit_is_refused_unread(tmp_path, monkeypatch):
    monkeypatch.setattr(app, "MAX_UPLOAD_MB", 0.001)
    upload = tmp_path / "big.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(upload)
    with pytest.raises(gr.Error, match=r"big\.png: 0\.0 MB is over this Space's limit of 0.001 MB"):
        app.check_upload(str(upload))


@pytest.mark.parametrize(("change", "message"), [
    ({"image_size": 4096}, r"Model: \d+ GMACs per image \(4096 px, 4 layers, width 32\) is over"),
    ({"hidden_size": 4096, "num_attention_heads": 32, "intermediate_size": 16384, "patch_size": 64},
     r"Model: \d+ M parameters \(64 px, 4 layers, width 4096, 10 classes\) is over"),
    ({"num_labels": 10_000_000, "id2label": None, "label2id": None}, r"Model: 10000000 classes is over"),
], ids=["compute", "parameters", "classes"])
def test_a_model_too_costly_for_the_space_is_refused_from_its_config_in_under_a_second(model_dirs, change, message):
    from conftest import write_tiny_vit

    folder = write_tiny_vit(model_dirs / "models" / "huge")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **change}))
    (folder / "model.safetensors").write_bytes(b"never read")
    start = time.perf_counter()
    with pytest.raises(gr.Error, match=message):
        app.analyse(CAT, str(folder), "freq", 0.7, "2, 3", "2, 1")
    assert time.perf_counter() - start < 1.0


@pytest.mark.parametrize("text", ["models/\x00deit", "x" * 100_000, "{root}/models/loop"],
                         ids=["a NUL byte", "a 100k-character name", "a symlink loop"])
def test_names_that_break_path_functions_get_one_line_without_server_paths(model_dirs, text):
    (model_dirs / "models" / "loop").symlink_to(model_dirs / "models" / "loop")
    with pytest.raises(gr.Error) as error:
        app.analyse(CAT, text.format(root=model_dirs), "freq", 0.7, "4, 7, 10", "2, 1, 1")
    message = error.value.message
    assert message.startswith("Model: ") and "\n" not in message and len(message) < 300
    assert str(model_dirs) not in message


def test_refusals_and_failures_show_no_server_path(model_dirs, monkeypatch):
    with pytest.raises(gr.Error) as error:
        app.analyse(CAT, str(model_dirs / "outside"), "freq", 0.7, "4, 7, 10", "2, 1, 1")
    assert str(model_dirs) not in error.value.message  # neither the name given nor the allowed folders

    def broken(source):
        raise OSError(f"[Errno 5] Input/output error: '{model_dirs}/models/deit/model.safetensors'")

    assert app.public_message(f"cannot read {model_dirs}/models/secret dir/x.bin") == "cannot read secret dir/x.bin"
    monkeypatch.setattr(app, "load_model", broken)
    with pytest.raises(gr.Error) as error:
        app.analyse(CAT, str(model_dirs / "models" / "deit"), "freq", 0.7, "4, 7, 10", "2, 1, 1")
    assert error.value.message == "The request failed (OSError); nothing was kept of it."
