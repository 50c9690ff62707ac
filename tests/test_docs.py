"""The documentation is part of the contract: README.md and docs/*.md.

- The site builds with `mkdocs build --strict` (a broken link or anchor fails), every page is in its nav,
  README.md's own links (which the site does not contain) point at files and headings that exist, and
  prose lines stay short.
- Every shell command shown in a fenced bash / shell / console block is exercised here. `kdrun ...` goes
  through the real entry point (kdrun.cli.main, in this process) with `--cfg job` appended, so the
  command line passes kdrun's pre-flight checks and composes; `--help` and `--cfg` commands run as they
  are; a command on tiny synthetic data (`dataset=synthetic`, `dataset.train_size` of 512 or less) runs for
  real; `kdrun -m ...` composes the first job of its sweep through kdrun's sweeper. `kdrun-report ...`
  runs on run directories made at the paths it names; `python scripts/bench*.py ...` parses its
  arguments with the script's own parser; `scripts/reproduce_*.sh` must name a script and its options.
  A command that cannot run here is in NOT_RUN with the test that covers it or the reason; any other
  command fails `test_every_command_is_exercised_or_listed`.
- The walk-throughs (docs/adding-a-model.md, docs/adding-a-schedule.md) are followed as written: the
  code blocks with a `title="PATH"` are written to PATH in a fresh directory, where the pages' commands
  run, and the test functions they show pass.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import runpy
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from inprocess import kdrun_in_process, one_cpu_thread  # noqa: F401 (autouse: one CPU thread)

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
PAGES = [REPO / "README.md", *sorted(DOCS.glob("*.md"))]
SHELL = {"bash", "shell", "console", "sh"}

# Commands shown in the docs that this file does not run, each with the test that covers it or why it
# is not run here. Keys are the command as shown, without its trailing `# comment`.
NOT_RUN = {
    'pip install -e ".[dev]"': "installs packages (this test suite runs in such an install)",
    'pip install -e ".[slurm]"': "installs packages; the slurm launcher's configs compose here (hydra-submitit-launcher "
                                 "is in the dev extra): the `kdrun -m hydra/launcher=slurm ...` commands",
    "pytest": "the whole suite, this file included",
    "pytest -m slow": "the suite's long tests",
    "pytest tests/test_docs.py": "this file",
    "python -m pytest tests/test_mynet.py": "test_the_walkthroughs_tests_pass runs the page's test functions",
    "python -m pytest tests/test_warmup_then_kd.py": "test_the_walkthroughs_tests_pass runs the page's test functions",
    "python -m pytest tests/test_embed_l2.py": "test_the_walkthroughs_tests_pass runs the page's test functions",
    "mkdocs build --strict": "test_the_site_builds_strictly",
    'pip install -e ".[tensorboard]"': "installs packages (the dev extra has them); tests/test_tracking.py runs "
                                       "logger=tensorboard, and its refusal names this command",
    'pip install -e ".[wandb]"': "installs packages (the dev extra has them); tests/test_tracking.py runs logger=wandb "
                                 "offline, and its refusal names this command",
    'pip install -e ".[mlflow]"': "installs packages (the dev extra has them); tests/test_tracking.py runs "
                                  "logger=mlflow, and its refusal names this command",
    "tensorboard --logdir outputs/": "a web server; tests/test_tracking.py reads the event files with TensorBoard's "
                                     "EventAccumulator",
    "MLFLOW_ALLOW_FILE_STORE=true mlflow ui --backend-store-uri file:outputs/mlruns":
        "a web server (full mlflow); tests/test_tracking.py reads that store with MlflowClient",
    "wandb sync outputs/2025-01-31/12-00-00/wandb/offline-run-*": "uploads to wandb's servers; tests/test_tracking.py "
                                                                    "reads the offline run files",
    "apt-get install -y chromium": "installs a system package as root (.ci/run does); tests/test_html_report.py uses it",
    "mkdocs serve": "a local web server; the site it serves is built by test_the_site_builds_strictly",
    "scripts/gpu_check.sh wheels": "downloads wheels from PyPI; test_the_gpu_check_script_runs_what_exists "
                                   "checks the packages it names are kdrun's",
    "scripts/gpu_check.sh": "needs a CUDA GPU; test_the_gpu_check_script_runs_what_exists checks its steps",
    "pytest -m gpu": "needs a CUDA GPU (tests/test_gpu.py, skipped without one)",
    "torchrun --nproc-per-node=4 -m kdrun dataset=cifar100 teacher=resnet56 student=resnet20 method=kd":
        "needs 4 processes and CIFAR-100; tests/test_distributed.py runs torchrun --nproc-per-node=2 -m kdrun",
}
# Every scripts/reproduce_*.sh runs whole tables (GPU days); each script's --smoke run is
# tests/test_papers.py::test_smoke_run_produces_the_side_by_side_table.
REPRODUCE = re.compile(r"^scripts/reproduce_\w+\.sh( |$)")


# ---------------------------------------------------------------------------------------------------
# Reading the pages

FENCE = re.compile(r"^(?P<indent>\s*)```(?P<lang>[\w-]*)(?P<attrs>.*)$")


@dataclass(frozen=True)
class Block:
    page: Path
    line: int  # of the opening fence, 1-based
    lang: str
    attrs: str
    text: str

    @property
    def title(self) -> str | None:
        m = re.search(r'title="([^"]+)"', self.attrs)
        return m.group(1) if m else None


def fenced_blocks(page: Path) -> list[Block]:
    lines = page.read_text(encoding="utf-8").splitlines()
    out, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, body = len(m.group("indent")), []
        j = i + 1
        while j < len(lines) and not lines[j].strip().startswith("```"):
            body.append(lines[j][indent:])
            j += 1
        assert j < len(lines), f"{page.name}:{i + 1}: a fenced block that is never closed"
        out.append(Block(page, i + 1, m.group("lang"), m.group("attrs"), "\n".join(body) + "\n"))
        i = j + 1
    return out


@dataclass(frozen=True)
class Command:
    text: str  # as shown, continuation lines joined, without a trailing comment
    where: str  # page:line of its first occurrence

    @property
    def words(self) -> list[str]:
        return self.text.split()


def strip_comment(line: str) -> str:
    return re.sub(r"(^|\s+)#\s.*$|(^|\s+)#$", "", line).rstrip()


def shell_commands(page: Path) -> list[Command]:
    out = []
    for block in fenced_blocks(page):
        if block.lang not in SHELL:
            continue
        lines = block.text.splitlines()
        n = 0
        while n < len(lines):
            start, line = n, lines[n]
            while line.endswith("\\") and n + 1 < len(lines):
                n += 1
                line = line[:-1].rstrip() + " " + lines[n].strip()
            n += 1
            if block.lang == "console":
                if not line.startswith("$ "):
                    continue  # output shown under a command
                line = line[2:]
            line = strip_comment(line.strip())
            if line and not line.startswith("#"):
                out.append(Command(" ".join(line.split()), f"{page.relative_to(REPO)}:{block.line + 1 + start}"))
    return out


def all_commands() -> list[Command]:
    seen: dict[str, Command] = {}
    for page in PAGES:
        for cmd in shell_commands(page):
            seen.setdefault(cmd.text, cmd)
    return list(seen.values())


ENV_WORD = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


def shell_words(text: str, home: Path) -> tuple[dict, list[str]]:
    """(environment assignments, argv) as bash reads `text` (quotes, $HOME, ~), without globbing; of
    `srun kdrun ... || ...`, the kdrun command."""
    env_words = []
    rest = text
    if rest.startswith("srun "):
        rest = rest[len("srun "):].partition(" || ")[0]
    while ENV_WORD.match(rest):
        word, _, rest = rest.partition(" ")
        env_words.append(word)
    script = 'set -f; printf "%s\\0" ' + " ".join(env_words + [rest])
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True,
                          env={"PATH": os.environ.get("PATH", ""), "HOME": str(home)})
    words = done.stdout.split("\0")[:-1]
    env = dict(w.split("=", 1) for w in words[:len(env_words)])
    return env, words[len(env_words):]


def kind(cmd: Command) -> str:
    words = [w for w in cmd.words if not ENV_WORD.match(w)]
    first = words[0] if words else ""
    if cmd.text in NOT_RUN:
        return "listed"
    if REPRODUCE.match(cmd.text):
        return "reproduce"
    if first == "kdrun":
        return "kdrun"
    if first == "srun" and len(words) > 1 and words[1] == "kdrun":
        return "kdrun"  # the kdrun command of a batch script composes here; SLURM's part is not run
    if first == "kdrun-report":
        return "report"
    if first == "python" and len(words) > 1 and re.fullmatch(r"scripts/bench\w*\.py", words[1]):
        return "script"
    return "unknown"


COMMANDS = all_commands()


def by_kind(*kinds: str) -> list:
    return [pytest.param(c, id=f"{c.where} {c.text[:60]}") for c in COMMANDS if kind(c) in kinds]


# ---------------------------------------------------------------------------------------------------
# The site and README's links


def test_the_site_builds_strictly(tmp_path):
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-f", str(REPO / "mkdocs.yml"),
                           "-d", str(tmp_path / "site")], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "site" / "index.html").is_file()


def slug(heading: str) -> str:
    """The anchor Python-Markdown's toc extension gives a heading (what mkdocs links to)."""
    text = re.sub(r"`([^`]*)`", r"\1", heading)
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def anchors(page: Path) -> set[str]:
    out, seen = set(), {}
    in_fence = False
    for line in page.read_text(encoding="utf-8").splitlines():
        if line.strip().startswith("```"):
            in_fence = not in_fence
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m and not in_fence:
            base = slug(m.group(1))
            n = seen.get(base, 0)
            seen[base] = n + 1
            out.add(base if n == 0 else f"{base}_{n}")
        out.update(re.findall(r'\{#([\w-]+)\}', line))  # attr_list ids
    return out


LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")


def relative_links(page: Path) -> list[str]:
    text = "".join(b for b in re.split(r"```.*?```", page.read_text(encoding="utf-8"), flags=re.S))
    return [t for t in LINK.findall(text) if not re.match(r"^[a-z]+:", t)]


def test_readme_links_point_at_files_and_headings_that_exist():
    links = relative_links(REPO / "README.md")
    assert any(link.startswith("docs/") for link in links)
    for link in links:
        path, _, anchor = link.partition("#")
        target = (REPO / path).resolve() if path else REPO / "README.md"
        assert target.is_file(), f"README.md links to {link}: {target} does not exist"
        if anchor:
            assert anchor in anchors(target), f"README.md links to {link}: no heading with that anchor"


def test_every_docs_page_is_in_the_nav_and_every_nav_page_exists():
    nav = yaml.safe_load((REPO / "mkdocs.yml").read_text())["nav"]

    def pages(node):
        if isinstance(node, str):
            yield node
        elif isinstance(node, list):
            for item in node:
                yield from pages(item)
        elif isinstance(node, dict):
            for value in node.values():
                yield from pages(value)

    listed = set(pages(nav))
    assert listed == {p.name for p in DOCS.glob("*.md")}


def test_prose_lines_are_short():
    """Lines of prose stay readable in an editor and a diff (tables and code are what they are)."""
    long = []
    for page in PAGES:
        in_fence = False
        for n, line in enumerate(page.read_text(encoding="utf-8").splitlines(), start=1):
            if line.strip().startswith("```"):
                in_fence = not in_fence
                continue
            if not in_fence and not line.lstrip().startswith("|") and len(line) > 120:
                long.append(f"{page.relative_to(REPO)}:{n} ({len(line)} characters)")
    assert not long, long


# ---------------------------------------------------------------------------------------------------
# Every command


def test_every_command_is_exercised_or_listed():
    unknown = [f"{c.where}: {c.text}" for c in COMMANDS if kind(c) == "unknown"]
    assert not unknown, ("commands in the docs that no test runs; run them in tests/test_docs.py or list them in "
                         f"NOT_RUN with the test that covers them or the reason: {unknown}")
    shown = {c.text for c in COMMANDS}
    stale = [text for text in NOT_RUN if text not in shown]
    assert not stale, f"NOT_RUN lists commands the docs no longer show: {stale}"
    assert len(by_kind("kdrun")) >= 40


def walkthrough_files(root: Path) -> None:
    """The code blocks of the pages that name a file (```python title="mypkg/mynet.py"), written there."""
    for page in PAGES:
        for block in fenced_blocks(page):
            if block.title:
                path = root / block.title
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(block.text, encoding="utf-8")


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    """A fresh directory holding the walk-throughs' files, where a user would type the commands."""
    root = tmp_path / "work"
    root.mkdir()
    walkthrough_files(root)
    monkeypatch.setenv("KDRUN_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("KDRUN_DATA_DIR", raising=False)
    return root


def apply_env(env: dict, cwd: Path, monkeypatch) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
        if key == "PYTHONPATH":  # what a new interpreter would put on sys.path
            for entry in reversed(value.split(os.pathsep)):
                monkeypatch.syspath_prepend(str((cwd / entry).resolve()))


@pytest.fixture
def first_job_only(monkeypatch):
    """`kdrun -m ...` composes the first job of its sweep (as kdrun's sweeper does before any job starts:
    the same schema checks, under any launcher) and prints its config instead of launching anything."""
    from hydra_plugins.kdrun_launchers.sweeper import KdrunSweeper

    composed = []

    def sweep(self, arguments):
        jobs = self.jobs(arguments)
        config = self.checked_configs(jobs[:1])[0]
        _, task = self.resolved(config)
        composed.append((jobs, task))
        print(json.dumps(task, indent=1, default=str))
        return []

    monkeypatch.setattr(KdrunSweeper, "sweep", sweep)
    return composed


def tiny_run(args: list[str]) -> bool:
    """A kdrun command that trains in seconds: random images, at most 512 of them, a single run."""
    size = next((a.partition("=")[2] for a in args if a.startswith("dataset.train_size=")), "")
    return "dataset=synthetic" in args and size.isdigit() and int(size) <= 512 and "-m" not in args


@pytest.fixture
def no_user_modules():
    """The walk-throughs' packages are imported afresh from each test's directory, and forgotten after."""
    def forget():
        for name in [n for n in sys.modules
                     if n.split(".")[0] in ("mypkg", "test_mynet", "test_warmup_then_kd", "test_embed_l2")]:
            del sys.modules[name]

    forget()
    yield
    forget()


@pytest.mark.parametrize("cmd", by_kind("kdrun"))
def test_kdrun_command(cmd, workspace, monkeypatch, capsys, first_job_only, no_user_modules):
    env, argv = shell_words(cmd.text, workspace.parent / "home")
    apply_env(env, workspace, monkeypatch)
    args = argv[1:]
    where = f"{cmd.where}: {cmd.text}"
    if "--help" in args or "-h" in args:
        code, out = kdrun_in_process(args, workspace, monkeypatch, capsys)
        assert code == 0 and "Config groups" in out, f"{where}\n{out}"
        return
    if tiny_run(args):  # run for real: the walk-throughs' commands, among others
        code, out = kdrun_in_process(args, workspace, monkeypatch, capsys)
        assert code == 0, f"{where}\n{out}"
        records = sorted((workspace / "outputs").rglob("metrics.json"))
        assert len(records) == 1, f"{where}\n{out}"
        assert json.loads(records[0].read_text())["status"] == "completed", f"{where}\n{out}"
        return
    sweep = "-m" in args or "--multirun" in args
    if not sweep and "--cfg" not in args and "-c" not in args:
        args += ["--cfg", "job"]
    code, out = kdrun_in_process(args, workspace, monkeypatch, capsys)
    assert code == 0, f"{where}\n{out}"
    assert "Traceback" not in out, f"{where}\n{out}"
    if sweep:
        assert first_job_only, f"{where}: the sweep composed no job\n{out}"
        jobs, task = first_job_only[-1]
        assert "???" not in json.dumps(task, default=str), f"{where}: a required value is left open\n{out}"
    elif "hydra" in args[args.index("--cfg") + 1:args.index("--cfg") + 2]:
        assert "launcher:" in out, f"{where}\n{out}"
    else:
        assert out.startswith("seed:") or "\nseed:" in out, f"{where}\n{out}"
        assert "???" not in out, f"{where}: the composed config leaves a required value open (???)\n{out}"


# ---------------------------------------------------------------------------------------------------
# kdrun-report on run directories made where the command looks


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from kdrun.configs import CONFIG_DIR, register_configs

    register_configs()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(version_base="1.3", config_dir=CONFIG_DIR):
            return hydra_compose("config", overrides=overrides)
    finally:
        GlobalHydra.instance().clear()


def make_runs(sweep_dir: Path) -> None:
    """A finished sweep as kdrun writes it: method.T x method.alpha x seed=0,1, CIFAR-100, resnet56 ->
    resnet20 (a cell of the CRD table), with validation accuracies and a history per run."""
    from omegaconf import OmegaConf

    from kdrun.results.identity import config_identity

    n = 0
    for T in (1, 4):
        for alpha in (0.5, 0.9):
            overrides = [f"method.T={T}", f"method.alpha={alpha}", "dataset=cifar100", "dataset.val_size=5000",
                         "teacher=resnet56", "student=resnet20", "train.epochs=2"]
            cfg = compose(overrides)
            for seed in (0, 1):
                cfg.seed = seed
                run_dir = sweep_dir / str(n)
                (run_dir / ".hydra").mkdir(parents=True)
                (run_dir / ".hydra" / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
                (run_dir / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides + [f"seed={seed}"]))
                acc = 60 + 2 * T + 10 * alpha + seed
                history = [{"stage": "kd", "epoch": e, "train_loss": 1.0 / e, "losses": {"ce": 0.5, "kd": 0.5},
                            "lr": 0.05, "test_acc": acc - 2 + e, "val_acc": acc - 3 + e} for e in (1, 2)]
                metrics = {"status": "completed", "test_acc": acc, "val_acc": acc - 1, "teacher_test_acc": 72.0,
                           "dataset": "cifar100", "teacher": "resnet56", "student": "resnet20", "method": "kd",
                           "schedule": "single", "seed": seed, "epochs": 2, "device": "cpu",
                           "config_id": config_identity(cfg), "history": history,
                           "stages": [{"name": "kd", "model": "resnet20", "test_acc": acc, "checkpoint": "-"}]}
                (run_dir / "metrics.json").write_text(json.dumps(metrics))
                n += 1


@pytest.mark.parametrize("cmd", by_kind("report"))
def test_kdrun_report_command(cmd, workspace, monkeypatch, capsys):
    from kdrun.results.report import build_parser, main

    _, argv = shell_words(cmd.text, workspace.parent / "home")
    args = argv[1:]
    monkeypatch.chdir(workspace)
    code = 0
    if "--help" not in args and "-h" not in args:
        for d in build_parser().parse_args(args).dirs:
            make_runs(workspace / d / "sweep")
    capsys.readouterr()
    try:
        main(args)
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    assert code in (0, None), f"{cmd.where}: {cmd.text}\n{out.out}{out.err}"
    if "--help" in args:
        return
    parsed = build_parser().parse_args(args)
    for d in parsed.dirs:
        assert (workspace / d / "summary.md").is_file(), f"{cmd.where}: no summary.md in {d}"
    text = "".join((workspace / d / "summary.md").read_text() for d in parsed.dirs)
    assert "method.T" in text and "method.alpha" in text and "| 2 |" in text, text  # 2 seeds pooled per row
    if parsed.plot:
        assert list(workspace.rglob("heatmap_*.png")) and list(workspace.rglob("curves.png"))
    if parsed.html:  # tests/test_html_report.py opens the page in Chromium
        for d in parsed.dirs:
            page = (workspace / d / "report.html").read_text(encoding="utf-8")
            assert "method.T" in page and page.count("data:image/png;base64,") == 1 + bool(parsed.pivot), page[:3000]
    if parsed.paper:
        assert "resnet56" in text and "resnet20" in text and "CRD" in text, text


# ---------------------------------------------------------------------------------------------------
# Scripts


class Parsed(Exception):
    pass


@pytest.mark.parametrize("cmd", by_kind("script"))
def test_benchmark_script_takes_its_arguments(cmd, workspace, monkeypatch):
    """The benchmarks run for minutes: their arguments are parsed by the script's own parser, then it stops
    (tests/test_speed.py::test_bench_script_runs_both_loops runs scripts/bench.py on a tiny model)."""
    _, argv = shell_words(cmd.text, workspace.parent / "home")
    parsed_arguments(REPO / argv[1], argv[2:], monkeypatch)


def parsed_arguments(script: Path, args: list[str], monkeypatch) -> argparse.Namespace:
    """What the script's own parser makes of `args`; the script stops there."""
    real = argparse.ArgumentParser.parse_args

    def parse_only(self, args=None, namespace=None):
        raise Parsed(real(self, args, namespace))

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_only)
    monkeypatch.setattr(sys, "argv", [str(script), *args])
    monkeypatch.syspath_prepend(str(script.parent))
    with pytest.raises(Parsed) as parsed:
        runpy.run_path(str(script), run_name="__main__")
    return parsed.value.args[0]


def test_the_gpu_check_script_runs_what_exists(monkeypatch):
    """scripts/gpu_check.sh needs a GPU: here its steps' files exist and their options parse, and the packages
    whose wheels it fetches are installed (it asks for the versions installed)."""
    import importlib.metadata
    import shlex

    text = (REPO / "scripts" / "gpu_check.sh").read_text().replace("\\\n", " ")
    steps = [shlex.split(line)[3:] for line in text.splitlines() if line.startswith("step ")]
    assert [s[:4] for s in steps if s[:2] == ["python3", "-m"]] == [["python3", "-m", "pytest", "tests/test_gpu.py"]]
    assert (REPO / "tests" / "test_gpu.py").is_file()
    scripts = [s for s in steps if s[0] == "python3" and s[1].startswith("scripts/")]
    assert [s[1] for s in scripts] == ["scripts/bench.py", "scripts/bench_sweep.py", "scripts/bench_sweep.py"]
    for argv in scripts:
        assert parsed_arguments(REPO / argv[1], argv[2:], monkeypatch).device == "cuda"
    fetched = re.findall(r'"([\w-]+)==\$\(version [\w-]+\)"', text)
    assert sorted(fetched) == ["antlr4-python3-runtime", "greenlet", "hydra-core", "omegaconf", "rich"]
    for name in fetched:
        importlib.metadata.version(name)


REPRODUCE_OPTIONS = {"--smoke", "--out", "--seeds", "--teacher-seed", "--help", "-h"}


@pytest.mark.parametrize("cmd", by_kind("reproduce"))
def test_reproduce_command_names_a_script_and_its_options(cmd):
    """The scripts run whole tables (GPU days); each script's --smoke run is
    tests/test_papers.py::test_smoke_run_produces_the_side_by_side_table."""
    words = cmd.words
    assert (REPO / words[0]).is_file(), cmd.where
    assert "def test_smoke_run_produces_the_side_by_side_table" in (REPO / "tests" / "test_papers.py").read_text()
    options = {w for w in words[1:] if w.startswith("-")}
    assert options <= REPRODUCE_OPTIONS, f"{cmd.where}: {options - REPRODUCE_OPTIONS}"


# ---------------------------------------------------------------------------------------------------
# The walk-throughs


def test_the_walkthroughs_tests_pass(workspace, monkeypatch, capsys, tmp_path, no_user_modules):
    """The test files that docs/adding-a-model.md and docs/adding-a-schedule.md show, run as a user runs
    them (`python -m pytest tests/...` from the project directory: that directory on sys.path). A test's
    `subprocess.run([sys.executable, "-m", "kdrun", ...])` runs kdrun's entry point (what `python -m kdrun`
    runs) in this process, to spare an interpreter's start-up; any other command runs as it is."""
    import inspect

    real_run = subprocess.run

    def run(argv, *args, cwd=None, **kwargs):
        if list(argv[:3]) == [sys.executable, "-m", "kdrun"]:
            code, out = kdrun_in_process([str(a) for a in argv[3:]], cwd or os.getcwd(), monkeypatch, capsys)
            return subprocess.CompletedProcess(argv, code, out, out)
        return real_run(argv, *args, cwd=cwd, **kwargs)

    monkeypatch.setattr(subprocess, "run", run)
    monkeypatch.chdir(workspace)
    monkeypatch.syspath_prepend(str(workspace))
    files = sorted((workspace / "tests").glob("test_*.py"))
    assert {f.name for f in files} >= {"test_mynet.py", "test_warmup_then_kd.py", "test_embed_l2.py"}
    ran = []
    for path in files:
        module = runpy.run_path(str(path))
        for name, fn in module.items():
            if name.startswith("test_") and callable(fn):
                params = inspect.signature(fn).parameters
                kwargs = {"tmp_path": tmp_path / name} if "tmp_path" in params else {}
                if kwargs:
                    kwargs["tmp_path"].mkdir()
                fn(**kwargs)
                ran.append(name)
    assert len(ran) >= 3, ran


def test_a_model_added_to_the_zoo_is_an_option_at_once(workspace):
    """docs/adding-a-model.md's file for kdrun's zoo, registered as kdrun/models/__init__.py would import
    it: `student=mynet` and `teacher=mynet_wide` compose, with the constructor's arguments as keys."""
    zoo_file = workspace / "kdrun" / "models" / "mynet.py"
    code = ("import runpy, sys; runpy.run_path(sys.argv[1], run_name='kdrun.models.mynet'); "
            "sys.argv = ['kdrun', 'student=mynet', 'student.width=8', 'teacher=mynet_wide', '--cfg', 'job']; "
            "from kdrun.cli import main; main()")
    done = subprocess.run([sys.executable, "-c", code, str(zoo_file)], cwd=workspace.parent, capture_output=True,
                          text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stdout + done.stderr
    composed = yaml.safe_load(done.stdout)
    assert composed["student"] == {"name": "mynet", "width": 8}
    assert composed["teacher"]["name"] == "mynet_wide" and composed["teacher"]["width"] == 64
    assert {"checkpoint", "seed", "train"} <= set(composed["teacher"])
