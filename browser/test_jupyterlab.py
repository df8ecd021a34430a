"""Real-browser test (`make test-browser`): notebook 02 run in JupyterLab through the UI, in headless Chromium.

JupyterLab starts on 127.0.0.1 with a random token in a temporary folder holding a papermill-prepared copy
of notebook 02 (tiny parameters injected, nothing executed). Playwright drives Debian's /usr/bin/chromium
(no browser download): Run > Run All Cells, wait for the kernel to finish, save, then check the page (an
image rendered, the form rendered as widgets) and the saved notebook (no error output). Screenshots go to
runs/browser-<timestamp>/. The server is stopped whatever happens.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import papermill
import pytest

from tools import runner
from tools.tiny import build_all

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run", "--disable-quic", "--disable-sync"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def shots() -> Path:
    return runner.new_run_folder(runner.RUNS.parent / "runs" / "browser")


@pytest.fixture(scope="module")
def lab(tmp_path_factory, shots):
    """A JupyterLab server with a prepared notebook 02; yields (url, notebook path); always stopped."""
    work = tmp_path_factory.mktemp("lab")
    tiny = build_all(runner.TINY_DIR)
    source = runner.NOTEBOOKS / "02_load_and_generate.ipynb"
    notebook = work / "02_load_and_generate.ipynb"
    papermill.execute_notebook(str(source), str(notebook), prepare_only=True,
                               parameters=runner.headless_parameters(source, tiny, shots / "images"))
    port, token = free_port(), secrets.token_hex(16)
    settings = work / ".lab-settings" / "@jupyterlab" / "notebook-extension"
    settings.mkdir(parents=True)
    # Render every cell (JupyterLab 4 virtualises long notebooks), so every prompt can be read.
    (settings / "tracker.jupyterlab-settings").write_text(json.dumps({"windowingMode": "none"}))
    env = {**os.environ, "KIT_QUIET": "1", "HF_HUB_OFFLINE": "1", "JUPYTER_CONFIG_DIR": str(work / ".jupyter"),
           "JUPYTERLAB_SETTINGS_DIR": str(work / ".lab-settings")}
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={work}", "--ServerApp.allow_root=True",
         "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
        env=env, stdout=open(shots / "jupyterlab.log", "w"), stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        deadline = time.time() + 60
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status?token={token}", timeout=2)
                break
            except OSError:
                if time.time() > deadline or server.poll() is not None:
                    raise RuntimeError(f"JupyterLab did not start; see {shots / 'jupyterlab.log'}") from None
                time.sleep(0.5)
        yield f"http://127.0.0.1:{port}/lab/tree/{notebook.name}?token={token}", notebook
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)


def prompts(page) -> list[str]:
    return page.locator(".jp-CodeCell .jp-InputArea-prompt").all_inner_texts()


def run_all_cells(page, attempts: int = 3) -> None:
    """Run > Run All Cells from the menu bar, until a cell has started (a click during start-up can be lost)."""
    for _ in range(attempts):
        page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
        page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()
        deadline = time.time() + 30
        while time.time() < deadline:
            if any("*" in p or any(ch.isdigit() for ch in p) for p in prompts(page)):
                return
            time.sleep(0.5)
        page.keyboard.press("Escape")
    raise TimeoutError(f"Run All Cells did not start a cell after {attempts} tries: {prompts(page)}")


def wait_for_run_all(page, code_cells: int, timeout: float = 300) -> None:
    """Until every code cell has an execution count, or an error stopped the run, with no cell still running."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        current = prompts(page)
        running = any("*" in p for p in current)
        done = sum(1 for p in current if any(ch.isdigit() for ch in p))
        errors = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr'] .ansi-red-fg,"
                              " .jp-RenderedText[data-mime-type='application/vnd.jupyter.error']").count()
        if not running and (done >= code_cells or (errors and done)):
            return
        time.sleep(1)
    raise TimeoutError(f"cells still running after {timeout} s: {prompts(page)}")


@pytest.fixture(scope="module")
def executed_page(lab, shots):
    from playwright.sync_api import sync_playwright

    url, notebook = lab
    code_cells = sum(1 for cell in nbformat.read(notebook, as_version=4).cells if cell.cell_type == "code")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        try:
            page.goto(url)
            page.locator(".jp-NotebookPanel .jp-Cell").first.wait_for(timeout=60_000)
            page.wait_for_function(
                "() => document.querySelector('.jp-Notebook-ExecutionIndicator')?.dataset.status === 'idle'",
                timeout=60_000)
            run_all_cells(page)
            wait_for_run_all(page, code_cells)
            page.keyboard.press("Control+s")
            time.sleep(2)
            image = page.locator(".jp-OutputArea-output img").first
            image.scroll_into_view_if_needed()
            page.screenshot(path=str(shots / "image.png"))
            form = page.locator(".widget-button", has_text="Generate")
            form.first.scroll_into_view_if_needed()
            page.screenshot(path=str(shots / "form.png"))
            facts = {
                "images": page.locator(".jp-OutputArea-output img").count(),
                "widget_buttons": page.locator(".jupyter-widgets .widget-button, .widget-button").count(),
                "generate_buttons": form.count(),
                "text_reprs": page.locator(".jp-OutputArea-output", has_text="GenerationForm object").count(),
            }
            # Click Generate in the form: a new image must appear in the form's own output.
            form_images = ".jupyter-widgets img, .widget-output img"
            before = page.locator(form_images).count()
            form.first.click()
            page.wait_for_function(f"() => document.querySelectorAll({form_images!r}).length > {before}",
                                   timeout=120_000)
            facts["form_images"] = page.locator(form_images).count() - before
            page.screenshot(path=str(shots / "form-generated.png"))
            (shots / "facts.json").write_text(json.dumps(facts, indent=2))
        except Exception:
            page.screenshot(path=str(shots / "failure.png"))
            raise
        try:
            yield facts, notebook
        finally:
            browser.close()


def test_no_cell_raised(executed_page):
    _, notebook = executed_page
    saved = nbformat.read(notebook, as_version=4)
    errors = [(cell.get("id"), o.get("ename"), o.get("evalue")) for cell in saved.cells
              for o in cell.get("outputs", []) if o.get("output_type") == "error"]
    assert errors == []
    counts = [cell.execution_count for cell in saved.cells if cell.cell_type == "code"]
    assert all(isinstance(n, int) for n in counts), counts


def test_generated_images_are_rendered(executed_page):
    facts, _ = executed_page
    assert facts["images"] >= 1


def test_form_renders_as_widgets_not_text(executed_page):
    facts, _ = executed_page
    assert facts["generate_buttons"] == 1 and facts["widget_buttons"] >= 3
    assert facts["text_reprs"] == 0


def test_form_generate_button_works_in_the_browser(executed_page):
    facts, _ = executed_page
    assert facts["form_images"] >= 1


def test_screenshots_were_saved(executed_page, shots):
    for name in ("image.png", "form.png", "form-generated.png"):
        assert (shots / name).stat().st_size > 10_000
