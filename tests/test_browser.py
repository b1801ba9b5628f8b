"""A real browser: JupyterLab on 127.0.0.1 with a token, headless Chromium (Debian's, driven by Playwright's
Python package; no browser download), a notebook that shows Workbench(). Clicking Launch starts a 2-process
run; the loss figure must gain points while it trains, and the status must read finished.
A screenshot lands in test-artifacts/ (gitignored)."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICKSTART = os.path.join(ROOT, "configs", "quickstart.yaml")

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]  # fmt: skip

pytestmark = pytest.mark.skipif(
    not os.path.exists(CHROMIUM), reason="needs /usr/bin/chromium (apt-get install chromium)"
)

NOTEBOOK_CELL = """\
import workbench as wb
from widgets import Workbench

cfg = wb.RunConfig.from_yaml({quickstart!r}).override({overrides!r})
bench = Workbench(cfg)
bench
"""

OVERRIDES = {"name": "browser", "max_steps": 80, "log_every": 2, "eval_every": 20, "grad_accum_steps": 2}

# the number of points of the dashboard's raw train-loss trace, as plotly.js holds it in the page
LOSS_POINTS_JS = """() => {
  for (const gd of document.querySelectorAll('.js-plotly-plot')) {
    const t = gd.layout && gd.layout.title;
    const text = t && (typeof t === 'string' ? t : t.text);
    if (text === 'loss' && gd.data && gd.data[0]) return (gd.data[0].x || []).length;
  }
  return -1;
}"""


# the loss figure's placeholder before its first point: the start-up phase and its seconds ("2 processes up: ...")
PLACEHOLDER_JS = """() => {
  for (const gd of document.querySelectorAll('.js-plotly-plot')) {
    const t = gd.layout && gd.layout.title;
    const text = t && (typeof t === 'string' ? t : t.text);
    if (text === 'loss') return ((gd.layout && gd.layout.annotations) || []).map(a => a.text || '').join(' ');
  }
  return '';
}"""


# figures whose laid-out axes have a non-finite position or length (what plotly's "Infinity" errors come from)
BAD_AXES_JS = """() => {
  const out = [];
  for (const gd of document.querySelectorAll('.js-plotly-plot')) {
    const fl = gd._fullLayout || {};
    const t = fl.title && fl.title.text;
    for (const k of Object.keys(fl)) {
      if (!/^[xy]axis\\d*$/.test(k)) continue;
      const a = fl[k];
      if (![a._offset, a._length].every(Number.isFinite) || (a.range || []).some(v => !Number.isFinite(+v)))
        out.push([t, k, a._offset, a._length, a.range, gd.offsetWidth, gd.offsetHeight]);
    }
  }
  return out;
}"""


# the dashboard's status line ("finished · browser · step 80 / 80 · elapsed 0:21 · ..."), or ""
STATUS_JS = """() => {
  for (const e of document.querySelectorAll('.widget-html-content')) {
    if (e.innerText.includes('elapsed')) return e.innerText;
  }
  return '';
}"""


# the dashboard after the run: Stop's state, the comm figure's trace type, and whether any figure's title box
# overlaps its legend box on screen
DASHBOARD_JS = """() => {
  const stop = [...document.querySelectorAll('button.widget-button')].find(b => b.innerText.trim() === 'Stop');
  const overlaps = [];
  let comm = null;
  for (const gd of document.querySelectorAll('.js-plotly-plot')) {
    const t = gd.layout && gd.layout.title;
    const text = (t && (typeof t === 'string' ? t : t.text)) || '';
    if (text.startsWith('comm_bytes')) comm = gd.data.map(d => d.type || 'scatter');
    const title = gd.querySelector('.gtitle'), legend = gd.querySelector('.legend');
    if (!title || !legend) continue;
    const a = title.getBoundingClientRect(), b = legend.getBoundingClientRect();
    if (a.left < b.right && b.left < a.right && a.top < b.bottom && b.top < a.bottom) overlaps.push(text);
  }
  return {stop: stop ? {disabled: stop.disabled, warning: stop.classList.contains('mod-warning')} : null,
          comm: comm, overlaps: overlaps};
}"""


def _free_port() -> int:
    from workbench.launch import free_port

    return free_port()


def _wait_http(url: str, timeout: float) -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"{url} did not answer in {timeout:.0f} s")


@pytest.mark.slow
def test_workbench_launch_in_jupyterlab(tmp_path):
    import nbformat
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import sync_playwright

    nb_dir = tmp_path / "nb"
    nb_dir.mkdir()
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(NOTEBOOK_CELL.format(quickstart=QUICKSTART, overrides=OVERRIDES))]
    # a kernelspec, or JupyterLab asks which kernel to start
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
    nbformat.write(nb, str(nb_dir / "bench.ipynb"))

    env = dict(os.environ)
    for var, sub in (("JUPYTER_CONFIG_DIR", "config"), ("JUPYTER_DATA_DIR", "data"), ("JUPYTER_RUNTIME_DIR", "runtime"),
                     ("IPYTHONDIR", "ipython"), ("JUPYTERLAB_SETTINGS_DIR", "lab-settings"),
                     ("JUPYTERLAB_WORKSPACES_DIR", "lab-workspaces")):  # fmt: skip
        env[var] = str(tmp_path / sub)
        os.makedirs(env[var], exist_ok=True)
    # no "Jupyter news" toast over the widgets
    news = tmp_path / "lab-settings" / "@jupyterlab" / "apputils-extension"
    news.mkdir(parents=True)
    (news / "notification.jupyterlab-settings").write_text(json.dumps({"fetchNews": "false"}))

    port, token = _free_port(), secrets.token_hex(16)
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip", "127.0.0.1", "--port", str(port),
           f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={nb_dir}"]  # fmt: skip
    if os.geteuid() == 0:
        cmd.append("--allow-root")
    log = open(tmp_path / "jupyter.log", "wb")
    server = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    artifacts = os.path.join(ROOT, "test-artifacts")
    os.makedirs(artifacts, exist_ok=True)
    errors: list[str] = []
    try:
        _wait_http(f"http://127.0.0.1:{port}/api/status?token={token}", 60)
        with pytest.raises(urllib.error.HTTPError) as refused:  # without the token: refused
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/contents", timeout=5)
        assert refused.value.code == 403
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1300})
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            try:
                url = f"http://127.0.0.1:{port}/lab/workspaces/wb-{uuid.uuid4().hex[:8]}/tree/bench.ipynb?token={token}&reset"
                page.goto(url, timeout=60_000)
                page.wait_for_function("document.title.includes('bench.ipynb')", timeout=60_000)
                # JupyterLab 4 may ask which kernel to start even with a kernelspec: take the preselected one
                dialog = page.locator(".jp-Dialog")
                try:
                    dialog.wait_for(timeout=5_000)
                    dialog.locator("button", has_text="Select").click()
                except PlaywrightTimeout:
                    pass
                page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
                page.locator(".lm-Menu-itemLabel").get_by_text("Run All Cells", exact=True).click()
                launch = page.locator("button.widget-button", has_text="Launch")
                launch.wait_for(timeout=90_000)
                page.wait_for_function(f"({LOSS_POINTS_JS})() >= 0", timeout=60_000)
                assert page.evaluate(LOSS_POINTS_JS) == 0
                launch.click()
                counts, status, phases = [], "", []
                t0 = time.monotonic()
                while time.monotonic() - t0 < 240:
                    counts.append(page.evaluate(LOSS_POINTS_JS))
                    if counts[-1] <= 0:
                        phases.append(page.evaluate(PLACEHOLDER_JS))
                    status = page.evaluate(STATUS_JS)
                    if status.startswith(("finished", "failed", "stopped")):
                        break
                    time.sleep(0.25)
                time.sleep(1.0)  # the last redraw after the status turned
                final = page.evaluate(LOSS_POINTS_JS)
                dashboard = page.evaluate(DASHBOARD_JS)
                page_text = page.evaluate("() => document.body.innerText")
                bad_axes = page.evaluate(BAD_AXES_JS)
                # JupyterLab scrolls the notebook inside the page: bring the dashboard into view for the picture
                page.locator(".widget-html-content", has_text="elapsed").first.evaluate("e => e.scrollIntoView()")
                time.sleep(0.5)
                page.screenshot(path=os.path.join(artifacts, "browser_workbench.png"))
            except Exception:
                page.screenshot(path=os.path.join(artifacts, "browser_workbench_failure.png"), full_page=True)
                raise
            browser.close()
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
        log.close()

    assert status.startswith("finished"), (status, counts[-20:])
    assert final == 40, (final, counts)  # 80 steps, logged every 2
    during = sorted({c for c in counts if 0 < c < final})
    assert len(during) >= 2, counts  # the figure grew while the run trained, not only at the end
    assert counts == sorted(counts), counts  # and only grew
    # the finished run's dashboard: Stop disabled and not highlighted; comm bytes as bars (a 2-process ddp run
    # reports them), not a flat line per rank; no title drawn over its legend
    assert dashboard["stop"] == {"disabled": True, "warning": False}, dashboard
    assert dashboard["comm"] == ["bar"], dashboard
    assert dashboard["overlaps"] == [], dashboard
    # the run trained exactly the config the notebook gave: rendering the controls in the browser changed no value
    import workbench as wb

    launched = wb.RunConfig.from_yaml(str(nb_dir / "runs" / "browser" / "config.yaml"))
    assert launched == wb.RunConfig.from_yaml(QUICKSTART).override(OVERRIDES)
    # before the first point the figures said what the run was doing (a start-up phase with its seconds)
    assert any(w in t for t in phases for w in ("process", "supervisor", "first steps")), phases
    # after the launch the panel lists no problem (it moved on to the next free run name)
    assert "no problems: ready to launch" in page_text and "Launch is disabled" not in page_text
    # No console error over the whole run, except one known, still open bug: plotly places a y-axis title at
    # x = Infinity during some redraws ('<text> attribute x: Expected length, "Infinity"' and the matching
    # rotate(-90,Infinity,...) transform); every laid-out axis is finite at the end (bad_axes).
    known = ('attribute x: Expected length, "Infinity"', "rotate(-90,Infinity,")
    assert [e for e in errors if not any(k in e for k in known)] == [], errors
    assert bad_axes == [], bad_axes
