"""`bayesdyn demo` / `bayesdyn report`: the HTML report, rendered in headless Debian chromium.

The browser test needs Debian's ``chromium`` (``make install-test`` installs it). It is skipped
only when chromium is missing outside CI; with ``CI=true`` a missing browser fails the test.
"""

import base64
import html.parser
import os
import re
import shutil
import subprocess

import numpy as np
import pytest

from bayesdyn.cli import main

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
TINY = ["--steps", "3", "--latent-dim", "2", "--hidden-dim", "8", "--context-dim", "4", "--quiet"]
SECTIONS = ("run", "predictive", "latent", "training", "calibration", "summary", "loo", "jumps")


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """A tiny `bayesdyn demo` run (12 Brusselator series, 3 training steps), report included."""
    out = tmp_path_factory.mktemp("demo") / "run"
    argv = ["demo", "--out", str(out), "--num-series", "12", "--num-samples", "24", *TINY]
    assert main(argv) == 0
    return out


class _Parser(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.images, self.sections, self.links = [], [], []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.images.append(a)
        if tag == "section":
            self.sections.append(a.get("id"))
        if tag in ("link", "script") or (tag == "a" and not a.get("href", "#").startswith("#")):
            self.links.append((tag, a))


def _parse(path):
    p = _Parser()
    p.feed(path.read_text(encoding="utf-8"))
    return p


def test_demo_writes_a_self_contained_report(demo_run):
    report = demo_run / "report.html"
    assert (demo_run / "heldout.csv").is_file()
    p = _parse(report)
    assert tuple(p.sections) == SECTIONS
    assert p.links == []  # no external scripts, stylesheets or links
    assert len(p.images) >= 5  # predictive, latent, training, calibration, Pareto k
    for img in p.images:
        src = img["src"]
        assert src.startswith("data:image/png;base64,")
        png = base64.b64decode(src.split(",", 1)[1])
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 2000
        assert img.get("alt")
    text = report.read_text(encoding="utf-8")
    for needle in ("held-out future points", "single fit", "Pareto", "r_hat", "interpolation"):
        assert needle in text, needle


def test_report_command_writes_html(demo_run, tmp_path, capsys):
    out = tmp_path / "r.html"
    rc = main(
        ["report", str(demo_run), "--out", str(out), "--num-samples", "12", "--max-series", "2"]
    )
    assert rc == 0 and "report written to" in capsys.readouterr().out
    assert tuple(_parse(out).sections) == SECTIONS
    # a run directory without a model is refused with a clear message
    rc = main(["report", str(tmp_path), "--out", str(out)])
    assert rc == 2
    assert "has no model.pt" in capsys.readouterr().err


def _chromium(args, tmp_path, timeout=90):
    cmd = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--hide-scrollbars",
        f"--user-data-dir={tmp_path / 'profile'}",
        *args,
    ]
    env = {**os.environ, "HOME": str(tmp_path)}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


# Appended to a copy of the page: after load, record each image's decoded size in the DOM.
_CHECK = (
    "<script>window.addEventListener('load',()=>{const r=[...document.images].map("
    "i=>i.complete&&i.naturalWidth>0?'ok':'broken');const p=document.createElement('pre');"
    "p.id='imgcheck';p.textContent=r.join(',');document.body.appendChild(p);});</script>"
)


def _image_states(page, tmp_path):
    probe = tmp_path / f"probe_{page.stem}.html"
    probe.write_text(page.read_text(encoding="utf-8") + _CHECK, encoding="utf-8")
    res = _chromium(["--virtual-time-budget=10000", "--dump-dom", probe.as_uri()], tmp_path)
    m = re.search(r'<pre id="imgcheck">([^<]*)</pre>', res.stdout)
    assert m, res.stderr[-2000:]
    return m.group(1).split(",")


def _screenshot_std(page, tmp_path):
    from PIL import Image

    shot = tmp_path / f"{page.stem}.png"
    _chromium(["--window-size=1280,2400", f"--screenshot={shot}", page.as_uri()], tmp_path)
    assert shot.is_file(), f"chromium wrote no screenshot of {page}"
    with Image.open(shot) as im:
        return float(np.asarray(im.convert("L"), dtype=float).std())


@pytest.mark.integration
def test_report_renders_in_headless_chromium(demo_run, tmp_path):
    if CHROMIUM is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("chromium is not installed (make install-test installs it)")
        pytest.skip("chromium is not installed (make install-test installs it)")
    report = demo_run / "report.html"
    states = _image_states(report, tmp_path)
    assert len(states) >= 5 and set(states) == {"ok"}, states
    # the page is not blank: a screenshot of it has real contrast ...
    assert _screenshot_std(report, tmp_path) > 20
    # ... controls: a blank page has none, and the check catches a broken image
    blank = tmp_path / "blank.html"
    blank.write_text("<!DOCTYPE html><html><body></body></html>")
    assert _screenshot_std(blank, tmp_path) < 1
    broken = tmp_path / "broken.html"
    broken.write_text('<html><body><img src="data:image/png;base64,AAAA"></body></html>')
    assert _image_states(broken, tmp_path) == ["broken"]


def test_forecast_writes_inference_data_netcdf(demo_run, tmp_path):
    from bayesdyn.diagnostics import _arviz

    out = tmp_path / "f.csv"
    argv = ["forecast", str(demo_run), "--horizon", "3", "--out", str(out)]
    assert main([*argv, "--num-samples", "8", "--num-points", "25"]) == 0
    idata = _arviz.from_netcdf(tmp_path / "f.nc")
    t_max = float(idata.constant_data["last_observed"].max())
    fc = idata.predictions["forecast_time"].values
    assert fc.min() > t_max and fc.max() == pytest.approx(t_max + 3)
    assert idata.posterior.sizes["draw"] == 8
    assert "log_likelihood" in idata.groups()
