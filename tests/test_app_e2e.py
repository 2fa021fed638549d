"""The web demo served for real: a headless Chromium drives it, gradio_client loads it.

The server runs in this process on a free localhost port with a tiny random
model. The browser is Debian's ``/usr/bin/chromium`` driven by Playwright
(never a downloaded browser). Screenshots go to ``$SEGEIG_SCREENSHOT_DIR``
when set, else to the test's temp dir.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from segeig.app.ui import build_demo, close, serve

import segeig
from segeig.backbone import Backbone
from segeig.config import HeadConfig
from segeig.labelmaps import read_segments
from segeig.model import build_model
from tests.app_helpers import write_image, write_tiny_checkpoint
from tests.conftest import random_image, tiny_backbone_config

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update"]
MAX_SIDE = 96
MAX_UPLOAD_MB = 1


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("app-e2e")
    rng = np.random.default_rng(0)
    bad = root / "upload" / "corrupt.jpg"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"\xff\xd8\xff\xe0 truncated, not really a jpeg")
    examples = root / "examples"
    for name in ("chelsea.jpg", "coffee.jpg"):  # the real bundled photos
        examples.mkdir(exist_ok=True)
        shutil.copy(Path(__file__).parents[1] / "examples" / name, examples / name)
    return {
        "root": root,
        "wide": write_image(root / "upload" / "wide scene.png", random_image(rng, 90, 160)),
        "small": write_image(root / "upload" / "small.png", random_image(rng, 48, 64)),
        "bad": bad,
        "examples": examples,
        "big": root / "upload" / "big.bin",
    }


@pytest.fixture(scope="module")
def server(files):
    """URL of a running demo with a tiny random model (examples offered, CRF available)."""
    torch.manual_seed(0)
    model = build_model(Backbone(tiny_backbone_config()), HeadConfig(kind="mlp", k=12)).eval()
    ckpt = write_tiny_checkpoint(model, files["root"] / "ckpt")
    # The same loading path as the CLI. Without propagation: the test needs several
    # segments to merge, and on the 6×4-patch grid of a 96×54 noise image every
    # patch is a colour/position neighbour of most others, so propagating the
    # random head's near-uniform probabilities leaves one segment.
    seg = segeig.load(ckpt, device="cpu", propagation_steps=0)
    examples = sorted(files["examples"].iterdir())
    demo = build_demo(seg, examples=examples, max_side=MAX_SIDE, max_images=4,
                      how="test model", download_root=files["root"])
    port = _free_port()
    serve(demo, "127.0.0.1", port, max_upload_mb=MAX_UPLOAD_MB, concurrency=2,
          allowed_paths=[files["examples"]], block=False, quiet=True)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        close(demo)


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    folder = os.environ.get("SEGEIG_SCREENSHOT_DIR")
    path = Path(folder) if folder else tmp_path_factory.mktemp("screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="module")
def browser():
    playwright = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium chromium-driver "
                    "(.ci/run does this)")
    with playwright.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@contextlib.contextmanager
def _browser_page(browser, url: str):
    tab = browser.new_page(viewport={"width": 1400, "height": 1000})
    try:
        tab.set_default_timeout(30_000)
        tab.goto(url)
        tab.wait_for_selector("#run")
        yield tab
    finally:
        tab.close()


@pytest.fixture(scope="module")
def page(browser, server):
    with _browser_page(browser, server) as tab:
        yield tab


def _images_loaded(page, selector: str) -> int:
    """Number of fully decoded, non-empty images under ``selector``."""
    return page.eval_on_selector_all(
        f"{selector} img", "els => els.filter(e => e.complete && e.naturalWidth > 0).length")


def _wait_images(page, selector: str, count: int = 1, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while _images_loaded(page, selector) < count:
        if time.monotonic() > deadline:
            raise AssertionError(f"fewer than {count} images appeared in {selector}")
        page.wait_for_timeout(200)


@pytest.mark.browser
def test_browser_upload_segment_and_explore(page, files, shots):
    page.screenshot(path=str(shots / "01_start.png"), full_page=True)
    page.locator("#upload input[type=file]").set_input_files([str(files["wide"]),
                                                             str(files["small"])])
    page.wait_for_selector("#upload >> text=small")  # stem and suffix are separate spans
    page.click("#run")
    _wait_images(page, "#compare", 2)  # before and after
    _wait_images(page, "#results", 2)
    summary = page.inner_text("#summary")
    assert "wide scene.png (96×54)" in summary
    assert "wide scene.png was downscaled from 160×90 to 96×54 (max side 96 px)" in summary
    downloads = page.inner_text("#downloads").replace("\n.png", ".png")  # name, suffix split
    assert "01_wide_scene_labels.png" in downloads and "02_small_overlay.png" in downloads
    page.screenshot(path=str(shots / "02_segmented.png"), full_page=True)

    # Coarser: merge down to one segment (the number box applies on blur), then back.
    found = int(re.search(r"(\d+) segments?,", summary).group(1))
    assert found >= 2, "the test image should show several segments"
    merge_box = page.locator("input[aria-label='number input for Number of segments']")
    merge_box.fill("1")
    merge_box.blur()
    page.wait_for_selector("#summary >> text=1 segment,")
    merge_box.fill("0")
    merge_box.blur()
    page.wait_for_selector(f"#summary >> text={found} segments,")

    # Eigenfunctions tab: heatmaps, then click a segment to explain it.
    page.get_by_role("tab", name="Eigenfunctions").click()
    _wait_images(page, "#eigen-grid")
    clickable = page.locator("#clickable img")
    box = clickable.bounding_box()
    # The picture is drawn centred in the <img> box (scaled down only): click
    # left of its centre, inside the picture.
    natural = clickable.evaluate("e => [e.naturalWidth, e.naturalHeight]")
    scale = min(1.0, box["width"] / natural[0], box["height"] / natural[1])
    clickable.click(position={"x": box["width"] / 2 - 0.2 * natural[0] * scale,
                              "y": box["height"] / 2})
    page.wait_for_selector("#explanation >> text=covers")
    _wait_images(page, "#mask")
    assert "of wide scene.png" in page.inner_text("#explanation")
    page.screenshot(path=str(shots / "03_eigenfunctions.png"), full_page=True)

    # Name the selected segment: a names file for `segeig label --names` to download.
    page.locator("#segment-name textarea, #segment-name input").first.fill("rooftops")
    page.click("#save-name")
    page.wait_for_selector("#names-note >> text=segeig label --checkpoint CKPT --names")
    assert "rooftops" in page.inner_text("#names-note")
    page.wait_for_selector("#names-file >> text=names-eigen")  # the default method's
    assert "names-eigen_kmeans" not in page.inner_text("#names-file")

    # Pick a bundled example: it is loaded and segmented at once.
    page.get_by_role("tab", name="Segment").click()
    page.locator("#examples img").first.click()
    page.wait_for_selector("#summary >> text=chelsea.jpg")
    _wait_images(page, "#compare", 2)
    page.screenshot(path=str(shots / "04_example.png"), full_page=True)


@pytest.fixture(scope="module")
def labelled_server(files):
    """URL of a demo serving a checkpoint whose eigen+kmeans clusters carry class names."""
    from segeig.checkpoint import save_class_map
    from segeig.evaluation import class_map_from_names

    torch.manual_seed(0)
    model = build_model(Backbone(tiny_backbone_config()), HeadConfig(kind="mlp", k=12)).eval()
    ckpt = write_tiny_checkpoint(model, files["root"] / "ckpt-unlabelled")
    names = {0: "sky", 1: "grass", 2: "sky", 3: "red roof", 4: "grass", 5: "water"}
    class_map = class_map_from_names(names, 6, "eigen+kmeans")
    labelled = save_class_map(ckpt, files["root"] / "ckpt-labelled", class_map)
    demo = build_demo(segeig.load(labelled, device="cpu"), max_side=MAX_SIDE, max_images=2,
                      how="labelled test model", download_root=files["root"])
    port = _free_port()
    serve(demo, "127.0.0.1", port, concurrency=1, block=False, quiet=True)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        close(demo)


@pytest.mark.browser
def test_browser_labelled_checkpoint_shows_class_names(browser, labelled_server, files, shots):
    with _browser_page(browser, labelled_server) as page:
        assert "named classes (sky, grass, red roof, water)" in page.inner_text("#model-summary")
        page.locator("#upload input[type=file]").set_input_files([str(files["wide"])])
        page.wait_for_selector("#upload >> text=wide")
        page.click("#run")
        _wait_images(page, "#compare", 2)
        page.wait_for_selector("#summary >> text=class map")
        legend = page.inner_text("#legend")
        found = [n for n in ("sky", "grass", "red roof", "water") if f"{n} · " in legend]
        assert found, legend
        assert "segment " not in legend
        downloads = page.inner_text("#downloads").replace("\n.", ".")
        assert "classes.txt" in downloads and "legend.png" in downloads
        page.screenshot(path=str(shots / "06_class_names.png"), full_page=True)


@pytest.mark.browser
def test_browser_corrupt_upload_shows_clean_message(page, files, shots):
    page.get_by_role("tab", name="Segment").click()
    # Added to a good image: the bad one is skipped with a warning, the rest is shown.
    page.locator("#upload input[type=file]").set_input_files([str(files["bad"])])
    page.wait_for_selector("#upload >> text=corrupt")
    page.click("#run")
    page.wait_for_selector("#summary >> text=Skipped corrupt.jpg: ")
    page.wait_for_selector("text=skipped corrupt.jpg: ")  # the warning toast
    # Alone: an error message, and nothing else.
    page.locator("#upload button[aria-label='Clear']").click()
    page.locator("#upload input[type=file]").set_input_files([str(files["bad"])])
    page.wait_for_selector("#upload >> text=corrupt")
    page.click("#run")
    toast = page.wait_for_selector(".toast-body.error")
    assert toast.inner_text().count("corrupt.jpg: ") == 1
    page.wait_for_timeout(800)  # let the toast finish fading in for the screenshot
    page.screenshot(path=str(shots / "05_error.png"), full_page=True)
    html = page.content()
    body = page.inner_text("body")
    for leak in (str(files["root"]), "Traceback", 'File "', "/tmp/"):
        assert leak not in body
    assert str(files["root"]) not in html  # not even hidden in the markup


def test_load_20_concurrent_requests(server, files):
    from gradio_client import Client, handle_file

    client = Client(server, verbose=False)
    inputs = [files["small"], files["wide"]]
    jobs = [client.submit([handle_file(str(inputs[i % 2]))], "eigen+kmeans" if i % 3 else "eigen",
                          i % 2 == 0, 0.5, i % 4, api_name="/segment") for i in range(20)]
    results = [job.result(timeout=120) for job in jobs]
    assert len(results) == 20
    for i, out in enumerate(results):
        selector, summary, compare, legend, gallery, downloads, *_ = out
        name = inputs[i % 2].name
        assert summary.startswith(f"**{name}**"), summary
        assert len(gallery) == 1 and len(compare) == 2
        labels = read_segments(downloads[0])
        assert labels.shape == ((48, 64) if i % 2 == 0 else (54, 96))
        if i % 4:  # merged to at most i % 4 segments
            assert len(np.unique(labels)) <= i % 4


def test_upload_limit_is_enforced(server, files):
    big = files["big"]
    big.write_bytes(os.urandom(int((MAX_UPLOAD_MB + 0.5) * 1024 * 1024)))
    with big.open("rb") as handle:
        response = httpx.post(f"{server}gradio_api/upload",
                              files={"files": ("big.png", handle, "image/png")}, timeout=60)
    assert response.status_code == 413


def _start_cli(args: list[str], cwd: Path) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    repo = str(Path(__file__).resolve().parents[1])  # importable without an install
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (repo, os.environ.get("PYTHONPATH")) if p)}
    proc = subprocess.Popen([sys.executable, "-m", "segeig", "demo", "--port", str(port),
                             "--device", "cpu", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"segeig demo exited early:\n{proc.stdout.read()}")
        try:
            if httpx.get(f"{url}config", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise AssertionError("segeig demo did not start within 120 s")


def _stop(proc: subprocess.Popen) -> str:
    proc.terminate()
    try:
        out, _ = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    return out


def _page_texts(url: str) -> str:
    config = httpx.get(f"{url}config", timeout=10).json()
    return " ".join(str(c.get("props", {}).get("value", "")) for c in config["components"])


def test_cli_serves_weights_error_page(files):
    """`segeig demo` started as users start it, with backbone weights it cannot get:
    it serves a page naming the offline options, and logs the details."""
    ckpt = files["root"] / "ckpt"  # written by the `server` fixture's model
    if not (ckpt / "checkpoint.safetensors").exists():
        torch.manual_seed(0)
        model = build_model(Backbone(tiny_backbone_config()), HeadConfig(kind="mlp", k=12))
        write_tiny_checkpoint(model.eval(), ckpt)
    missing = files["root"] / "nowhere" / "dino.pth"
    proc, url = _start_cli(["--checkpoint", str(ckpt), "--backbone-weights", str(missing)],
                           files["root"])
    try:
        texts = _page_texts(url)
        assert "backbone weights for `vit_small_patch16_224.dino` are unavailable" in texts
        assert "Offline options" in texts and str(files["root"]) not in texts
    finally:
        log = _stop(proc)
    assert "backbone weights file not found" in log  # the details go to the server log
