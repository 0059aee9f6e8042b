"""The MLflow UI, checked as a user would: after a small merge_search demo run and a promotion, Debian's
headless ``chromium`` renders the local server's pages (``--dump-dom``: the DOM after the React app has
fetched from the REST API) and their visible text must show the experiment, the nested candidate runs,
the frontier figure and the registered model with its staging version. Content, never pixels."""

from __future__ import annotations

import os
import re
import shutil
import signal
import struct
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from html import unescape
from html.parser import HTMLParser
from pathlib import Path

import pytest
from mlflow_api import api

pytestmark = [pytest.mark.slow, pytest.mark.integration]

# What this machine (and CI's closed network) needs: no sandbox as root, no GPU, and no network
# attempts of the browser's own (they would be refused), a fresh profile per start.
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--window-size=1400,1000"]


@pytest.fixture(scope="session")
def chromium_exe() -> str:
    """Listed before ``demo_models``, so a missing browser fails before a minute of setup."""
    exe = shutil.which("chromium")
    if exe is None:
        pytest.fail("Debian's chromium is not installed but this UI test needs it: as root, "
                    "`apt-get install -y chromium` (`make test`/`make install` do it when run as root)")
    return exe


def chromium(exe: str, url: str, tmp: Path, *args: str, timeout: float = 90) -> str:
    """Run one headless chromium on ``url`` with a fresh profile; its stdout. Its whole process group
    is killed if it overruns."""
    profile = tempfile.mkdtemp(prefix="chromium-", dir=tmp)
    proc = subprocess.Popen([exe, *FLAGS, f"--user-data-dir={profile}", *args, url], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return ""
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    if proc.returncode != 0:
        raise AssertionError(f"chromium exited with {proc.returncode} on {url}:\n{err.decode(errors='replace')[-2000:]}")
    return out.decode(errors="replace")


class _Page(HTMLParser):
    """Visible text (no script/style) and the attributes of every <img>."""

    def __init__(self):
        super().__init__()
        self.text: list[str] = []
        self.imgs: list[dict] = []
        self._skip = 0

    def handle_starttag(self, tag, attrs):
        if tag in ("script", "style"):
            self._skip += 1
        elif tag == "img":
            self.imgs.append(dict(attrs))

    def handle_endtag(self, tag):
        if tag in ("script", "style") and self._skip:
            self._skip -= 1

    def handle_data(self, data):
        if not self._skip:
            self.text.append(data)


def parse(dom: str) -> tuple[str, list[dict]]:
    p = _Page()
    p.feed(dom)
    return re.sub(r"\s+", " ", unescape(" ".join(p.text))), p.imgs


def render(exe: str, url: str, expect: list[str | re.Pattern], tmp: Path, deadline_s: float = 150):
    """The page's (text, imgs) once every ``expect`` (substring or regex) is in its visible text. The
    app fetches asynchronously, so it is re-rendered with a growing virtual-time budget until the
    deadline; on failure a screenshot is kept in ``tmp`` and the message names what is missing."""
    def missing(text):
        return [e for e in expect if (e.search(text) is None if isinstance(e, re.Pattern) else e not in text)]

    end, budget, text, imgs = time.monotonic() + deadline_s, 5_000, "", []
    while True:
        text, imgs = parse(chromium(exe, url, tmp, "--dump-dom", f"--virtual-time-budget={budget}"))
        if not missing(text):
            return text, imgs
        if time.monotonic() > end:
            break
        budget = min(budget * 2, 60_000)
        time.sleep(1)
    shot = tmp / (re.sub(r"\W+", "_", url.split("#", 1)[-1]).strip("_") + ".png")
    chromium(exe, url, tmp, f"--screenshot={shot}", "--virtual-time-budget=20000")
    raise AssertionError(f"{url} does not show {missing(text)} (screenshot: {shot}); its text:\n{text[:3000]}")


def test_mlflow_ui_shows_demo_run(chromium_exe, demo_search, tmp_path):
    """The session's demo run (conftest ``demo_search``: a small sweep through the real pipeline, the knee
    promoted by its promote step) as the UI shows it."""
    exe = chromium_exe
    out, ui, model, experiment = demo_search["out"], demo_search["uri"], demo_search["model"], demo_search["experiment"]
    knee, versions, results = out["frontier"].knee, out["versions"], out["results"]
    staged = versions[knee]
    eid, pid = results.experiment_id, results.parent_run_id
    parent_name = api(ui, "runs/get", run_id=pid)["run"]["info"]["run_name"]
    candidates = [f"{m}-{x}" for m in ("linear", "slerp") for x in ("0.0", "0.5", "1.0")]
    # the experiment is listed, and its runs table shows the parent run
    render(exe, f"{ui}/#/experiments", ["Experiments", experiment], tmp_path)
    render(exe, f"{ui}/#/experiments/{eid}/runs", [experiment, parent_name], tmp_path)

    # the parent run's page: finished, with every candidate as a nested (child) run by name
    # (its description summarises the frontier, the picks and the promotion)
    text, _ = render(exe, f"{ui}/#/experiments/{eid}/runs/{pid}",
                     [parent_name, "Child runs", "Finished", *candidates, "Frontier", "Picks", "Promotion"],
                     tmp_path)
    children = re.search(r"Child runs (.*?) Source", text)
    assert children and sorted(re.findall(r"(?:linear|slerp)-\d\.\d", children.group(1))) == sorted(candidates), text

    # the artifact browser lists both figures and previews frontier.png: the UI fetched the image
    # (an <img> with a blob: source) and the bytes it was served are a real PNG figure
    text, imgs = render(exe, f"{ui}/#/experiments/{eid}/runs/{pid}/artifacts/figures/frontier.png",
                        ["figures/frontier.png", "trajectories.png", "frontier.json"], tmp_path)
    assert any(i.get("alt") == "figures/frontier.png" and (i.get("src") or "").startswith("blob:") for i in imgs), imgs
    with urllib.request.urlopen(f"{ui}/get-artifact?" + urllib.parse.urlencode(
            {"path": "figures/frontier.png", "run_uuid": pid}), timeout=30) as r:
        png = r.read()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and png[12:16] == b"IHDR"
    width, height = struct.unpack(">II", png[16:24])
    assert width >= 300 and height >= 200 and len(png) > 10_000

    # the registry: the model with the staging alias on the promoted version, and that version in stage Staging
    # (the list shows one alias and "+N" for the rest: staging and the picks; the model page lists them all)
    render(exe, f"{ui}/#/models", [model, re.compile(r"@ ?(staging|pick-\w+)\s*:\s*Version \d+")], tmp_path)
    render(exe, f"{ui}/#/models/{model}",
           [model, *(f"Version {v}" for v in versions.values()), *(f"candidate : {c}" for c in versions),
            "@ staging", "@ pick-"], tmp_path)   # phase two's picks: pick-linear, pick-slerp
    render(exe, f"{ui}/#/models/{model}/versions/{staged}",
           [f"Version {staged}", re.compile(r"Aliases\s*:[^:]*@ ?staging"), re.compile(r"Stage[^:]*:\s*Staging"),
            f"Source Run : {knee}"], tmp_path)
