"""`kdrun-report DIR --html`: report.html opened as a user would, in headless Chromium.

The dumped DOM of the page shows that every image loaded and every table has its rows; a screenshot shows
that something was drawn. Without Chromium the browser tests are skipped (with the apt command), except
where the environment variable CI is set: there they fail, since CI installs Chromium (.ci/run).
"""
from __future__ import annotations

import base64
import hashlib
import html
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from PIL import Image

from conftest import read_toml
from kdrun.results.html import NO_MATPLOTLIB, PAGE
from kdrun.results.report import main as report_main
from kdrun.results.selection import describe

REPO = Path(__file__).resolve().parents[1]
APT = "apt-get install -y chromium (Debian, as root)"
ERROR = "ValueError: <script>document.title = 'x'</script> & <b>bold</b>\nsecond line of the traceback"

# Added to a test copy of the page (and allowed by its hash in that copy's Content-Security-Policy): once
# the page has loaded, what the browser made of it, as JSON in <pre id="check">.
CHECK = """addEventListener('load', () => {
  const out = document.createElement('pre'); out.id = 'check';
  out.textContent = JSON.stringify({
    images: [...document.images].map(i => ({complete: i.complete, width: i.naturalWidth, alt: i.alt})),
    tables: [...document.querySelectorAll('table')].map(t => ({section: t.closest('section').id,
      rows: [...t.tBodies[0].rows].map(r => [...r.cells].map(c => c.textContent.trim()))})),
    scripts: document.scripts.length, selection: document.querySelector('.selection').textContent,
    resources: performance.getEntriesByType('resource').map(r => r.name)});
  document.body.append(out);
});"""


@pytest.fixture
def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path:
        return path
    if os.environ.get("CI"):
        pytest.fail(f"CI must open the HTML report in Chromium, which is not installed: {APT} (.ci/run does)")
    pytest.skip(f"needs Chromium to open the HTML report: {APT}")


def browse(chromium: str, profile: Path, *args: str) -> str:
    done = subprocess.run([chromium, "--headless", "--disable-gpu", "--no-sandbox", "--no-first-run",
                           "--disable-dev-shm-usage", f"--user-data-dir={profile}", *args],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def write_run(path: Path, T: float, alpha: float, seed: int, status="completed", error=None) -> None:
    """A kd run of resnet56 -> resnet20 on CIFAR-100 (a cell of crd_cifar100), as kdrun leaves it."""
    config = {"seed": seed, "dataset": {"name": "cifar100", "val_size": 0},
              "teacher": {"name": "resnet56"}, "student": {"name": "resnet20"},
              "method": {"name": "kd", "T": T, "alpha": alpha}, "train": {"epochs": 3}}
    choices = {"dataset": "cifar100", "teacher": "resnet56", "student": "resnet20", "method": "kd"}
    (path / ".hydra").mkdir(parents=True)
    (path / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    (path / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([f"method.T={T}", f"method.alpha={alpha}",
                                                                    f"seed={seed}"]))
    (path / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump({"hydra": {"runtime": {"choices": choices}}}))
    acc = 60 + 2 * T + 10 * alpha + seed
    history = [{"stage": "kd", "epoch": e, "test_acc": acc - 4 + e * e} for e in (1, 2, 3)]  # best: epoch 3
    metrics = {"status": status, "test_acc": acc if status == "completed" else None, "teacher_test_acc": 72.0,
               "seed": seed, "history": history if status == "completed" else [], "error": error}
    (path / "metrics.json").write_text(json.dumps(metrics))


@pytest.fixture
def sweep(tmp_path) -> Path:
    """method.T=1,4 x method.alpha=0.5,0.9 x seed=0,1; one run failed with markup in its error."""
    out = tmp_path / "sweep"
    for n, (T, alpha, seed) in enumerate((T, a, s) for T in (1, 4) for a in (0.5, 0.9) for s in (0, 1)):
        failed = (T, alpha, seed) == (4, 0.9, 1)
        write_run(out / str(n), T, alpha, seed, "failed" if failed else "completed", ERROR if failed else None)
    return out


def md_table(md: str, heading: str = "") -> list[list[str]]:
    """The body rows of summary.md's first table after `heading`."""
    lines = md[md.index(heading):].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| "))
    end = next((i for i, line in enumerate(lines[start:], start) if not line.startswith("|")), len(lines))
    return [[c.strip() for c in line.strip("|").split(" | ")] for line in lines[start + 2:end]]


def test_the_report_opens_in_chromium_with_every_image_loaded_and_every_table_filled(sweep, chromium, tmp_path,
                                                                                   capsys):
    report_main([str(sweep), "--html", "--pivot", "method.T", "method.alpha", "--paper", "crd_cifar100",
                 "--select", "best"])
    assert str(sweep / PAGE) in capsys.readouterr().out.replace("\n", "")  # the console wraps long paths
    page = (sweep / PAGE).read_text(encoding="utf-8")
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//|file:)""", page)  # nothing from elsewhere
    assert "<script" not in page and html.escape(ERROR.splitlines()[0]) in page  # run text escaped

    policy = 'content="default-src'
    digest = base64.b64encode(hashlib.sha256(CHECK.encode()).digest()).decode()
    checked = page.replace(policy, f"content=\"script-src 'sha256-{digest}'; default-src", 1)
    assert checked != page
    (sweep / "check.html").write_text(checked.replace("</body>", f"<script>{CHECK}</script></body>"),
                                      encoding="utf-8")
    dom = browse(chromium, tmp_path / "profile", "--dump-dom", (sweep / "check.html").as_uri())
    found = re.search(r'<pre id="check">(.*?)</pre>', dom, re.S)
    assert found, f"the check script did not run: {dom[-2000:]}"
    seen = json.loads(html.unescape(found.group(1)))

    assert seen["resources"] == [] and seen["scripts"] == 1  # the check's own; the error's <script> is text
    assert seen["selection"].startswith(describe("best"))
    assert [i["alt"].split(":")[0] for i in seen["images"]] == ["Heatmap of test acc, best epoch (%)",
                                                                "Test accuracy per epoch, mean over seeds, one line per configuration"]
    assert all(i["complete"] and i["width"] > 0 for i in seen["images"]), seen["images"]
    tables = {}
    for t in seen["tables"]:
        tables.setdefault(t["section"], []).append(t["rows"])
    assert set(tables) == {"summary", "failures", "grids", "paper"}
    md = (sweep / "summary.md").read_text()
    assert tables["summary"][0] == md_table(md)  # the rows and values summary.md shows
    assert tables["grids"][0] == md_table(md, "## test acc, best epoch (%): method.T × method.alpha")
    assert tables["paper"][0] == md_table(md, "## Beside the paper")
    assert len(tables["summary"][0]) == 4 and tables["summary"][0][0][:3] == ["1", "0.5", "72.50 ± 0.71"]  # best epochs, not 67.50
    (failure,) = tables["failures"][0]
    assert failure[:2] == ["7", "failed"] and "<script>" in failure[2] and "second line" in failure[2]
    assert [row[:2] for row in tables["grids"][0]] == [["1", "72.50 ± 0.71"], ["4", "78.50 ± 0.71"]]
    kd = next(row for row in tables["paper"][0] if row[0] == "KD")
    assert "76.71 ± 3.45 (7)* vs 70.66 (+6.05)" in kd  # 4 configurations' 7 completed runs in one cell

    shot = tmp_path / "page.png"
    browse(chromium, tmp_path / "profile", f"--screenshot={shot}", "--window-size=1200,1600", "--hide-scrollbars",
           (sweep / PAGE).as_uri())
    with Image.open(shot) as image:
        assert image.format == "PNG" and image.size == (1200, 1600)
        colours = image.convert("RGB").getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 50  # text, tables and plots, not a blank or one-colour page


def test_without_matplotlib_the_page_has_the_tables_and_says_how_to_get_the_plots(sweep, monkeypatch, capsys):
    with monkeypatch.context() as patch:
        patch.setitem(sys.modules, "matplotlib.figure", None)  # import fails as if missing
        report_main([str(sweep), "--html", "--pivot", "method.T", "method.alpha"])
    printed = capsys.readouterr().out
    assert f"{PAGE} has the tables but no plots" in " ".join(printed.split())
    page = (sweep / PAGE).read_text(encoding="utf-8")
    assert "<img" not in page and html.escape(NO_MATPLOTLIB) in page and "<td>0.9</td>" in page
    # The advice holds: the plot extra installs matplotlib, and with it the same command embeds the plots.
    extras = read_toml((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(req.startswith("matplotlib") for req in extras["plot"])
    assert 'pip install -e ".[plot]"' in NO_MATPLOTLIB
    report_main([str(sweep), "--html", "--pivot", "method.T", "method.alpha"])
    page = (sweep / PAGE).read_text(encoding="utf-8")
    assert page.count('src="data:image/png;base64,') == 2 and html.escape(NO_MATPLOTLIB) not in page


def test_one_page_per_directory_with_its_own_paths(sweep, tmp_path):
    other = tmp_path / "other"
    write_run(other / "0", 8, 0.5, 0, "failed", "RuntimeError: out of memory")
    report_main([str(sweep), str(other), "--html"])
    for d, mine, theirs in ((sweep, "7", other / "0"), (other, "0", sweep / "7")):
        page = (d / PAGE).read_text(encoding="utf-8")
        for path in (mine, html.escape(str(theirs))):  # as summary.md: below DIR from it, others in full
            assert f'<tr class="failed"><td>{path}</td>' in page, path
        assert page.count('src="data:image/png;base64,') == 1  # the learning curves of both directories' runs


def test_ci_installs_chromium_before_the_readmes_two_set_up_commands():
    setup = re.search(r"## Set-up\n\n```bash\n(.*?)```", (REPO / "README.md").read_text(), re.S).group(1)
    readme = [line.split("#")[0].strip() for line in setup.splitlines() if line.strip()]
    ci = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()
          if line.strip() and not line.strip().startswith("#")]
    assert len(readme) == 2 and ci[-2:] == readme  # exactly as the README shows them, last
    update = next(i for i, line in enumerate(ci) if line.startswith("apt-get update"))
    install = next(i for i, line in enumerate(ci) if "apt-get install" in line and "chromium" in line.split())
    assert update < install < len(ci) - 2 and "DEBIAN_FRONTEND=noninteractive" in ci[install]
    assert 'export CI="${CI:-true}"' in ci[:install]  # so that a missing Chromium fails the test there
