"""kdrun-report on hand-written runs: grouping over seeds, the shown keys, the pivot, the files, plots."""
import csv
import io
import json
import statistics
from pathlib import Path

import pytest
import yaml

from kdrun.errors import UserError
from kdrun.results.grouping import columns, group_runs
from kdrun.results.pivot import pivot
from kdrun.results.report import main as report_main
from kdrun.results.report import summarise
from kdrun.results.runs import NOT_IN_CONFIGURATION, find_runs
from kdrun.results import sweep
from kdrun.results.sweep import begin_sweep, finish_sweep
from kdrun.results.tables import Summary
from kdrun.results.identity import NOT_IN_IDENTITY


def base_config(**method) -> dict:
    return {"seed": 0, "device": "auto", "progress": "auto", "cache_dir": "outputs/cache",
            "dataset": {"name": "digits", "val_size": 0},
            "teacher": {"name": "mlp_1200", "hidden": [1200, 1200], "checkpoint": None},
            "method": {"name": "kd", "T": 4.0, "alpha": 0.9, "ce_weight": None, **method},
            "train": {"epochs": 2, "milestones": [20, 25]}}


def write_run(path: Path, overrides: list, config: dict, status="completed", test_acc=None, history=None, **extra):
    (path / ".hydra").mkdir(parents=True)
    for o in overrides:  # what Hydra would have composed
        key, value = o.split("=", 1)
        if key in ("method", "dataset"):
            continue
        node = config
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = yaml.safe_load(value)
    choices = {"dataset": config["dataset"]["name"], "method": config["method"]["name"], "teacher": "mlp_1200",
               "experiment": None, "hydra/launcher": "basic"}
    (path / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    (path / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (path / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump({"hydra": {"runtime": {"choices": choices}}}))
    metrics = {"status": status, "test_acc": test_acc, "teacher_test_acc": 98.0, "seed": config["seed"],
               "dataset": "digits", "method": config["method"]["name"],
               "history": history if history is not None else ([{"stage": "kd", "epoch": 1, "test_acc": test_acc - 5},
                                                                {"stage": "kd", "epoch": 2, "test_acc": test_acc}]
                                                               if test_acc is not None else []), **extra}
    (path / "metrics.json").write_text(json.dumps(metrics))


def acc(T, alpha, seed) -> float:
    return 80 + 3 * T + 10 * alpha + 0.5 * seed * seed


@pytest.fixture
def grid_sweep(tmp_path) -> Path:
    """method.T=1,4 x method.alpha=0.5,0.9 x seed=0,1,2; one run failed, one unfinished."""
    sweep = tmp_path / "sweep"
    n = 0
    for T in (1, 4):
        for alpha in (0.5, 0.9):
            for seed in (0, 1, 2):
                overrides = [f"method.T={T}", f"method.alpha={alpha}", f"seed={seed}", "train.epochs=2"]
                if (T, alpha, seed) == (4, 0.9, 2):
                    write_run(sweep / str(n), overrides, base_config(), status="failed", error="RuntimeError: boom\nmore")
                elif (T, alpha, seed) == (1, 0.5, 1):
                    write_run(sweep / str(n), overrides, base_config(), status="running", test_acc=None)
                else:
                    write_run(sweep / str(n), overrides, base_config(), test_acc=acc(T, alpha, seed))
                n += 1
    return sweep


def test_runs_differing_only_by_seed_form_one_group(grid_sweep):
    runs = find_runs([grid_sweep])
    assert len(runs) == 12
    groups = group_runs(runs)
    assert len(groups) == 4
    assert columns(groups) == ["method.T", "method.alpha"]
    by_key = {(g.value("method.T"), g.value("method.alpha")): g for g in groups}
    full = by_key[(4, 0.9)]  # seeds 0 and 1 completed, seed 2 failed
    s = full.stat()
    expected = [acc(4, 0.9, 0), acc(4, 0.9, 1)]
    assert (s.n, len(full.failed), len(full.unfinished)) == (2, 1, 0)
    assert s.mean == pytest.approx(statistics.fmean(expected)) and s.std == pytest.approx(statistics.stdev(expected))
    three = by_key[(1, 0.9)].stat()
    values = [acc(1, 0.9, seed) for seed in (0, 1, 2)]
    assert three.n == 3 and three.std == pytest.approx(statistics.stdev(values))  # sample std (n - 1)
    assert three.std != pytest.approx(statistics.pstdev(values))
    assert by_key[(1, 0.5)].stat().n == 2 and len(by_key[(1, 0.5)].unfinished) == 1
    assert sorted(by_key[(1, 0.9)].seeds) == [0, 1, 2]


def test_keys_that_never_change_results_do_not_split_groups(tmp_path):
    assert set(NOT_IN_IDENTITY) <= set(NOT_IN_CONFIGURATION)  # kdrun.results.identity's list, plus the seed
    assert "seed" in NOT_IN_CONFIGURATION
    for i, (beta, device) in enumerate([(6.0, "cpu"), (8.0, "auto")]):  # a nested key below per_pair too
        write_run(tmp_path / str(i), [f"seed={i}"], {**base_config(), "device": device, "per_pair": {"dkd_beta": beta}},
                  test_acc=90.0 + i)
    (group,) = group_runs(find_runs([tmp_path]))
    assert group.stat().n == 2 and "per_pair.dkd_beta" not in group.values


def test_summary_files_list_failures(grid_sweep):
    summary, written = summarise([grid_sweep])
    assert {p.name for p in written} == {"summary.csv", "summary.md"}
    rows = list(csv.DictReader(io.StringIO((grid_sweep / "summary.csv").read_text())))
    assert len(rows) == 4
    assert list(rows[0])[:2] == ["method.T", "method.alpha"]
    row = next(r for r in rows if (r["method.T"], r["method.alpha"]) == ("4", "0.9"))
    assert (row["n"], row["failed"], row["unfinished"]) == ("2", "1", "0")
    assert float(row["test_acc_mean"]) == pytest.approx(statistics.fmean([acc(4, 0.9, 0), acc(4, 0.9, 1)]), abs=1e-4)
    assert float(row["teacher_test_acc_mean"]) == 98.0 and row["val_acc_mean"] == ""
    assert row["seeds"] == "0 1"
    md = (grid_sweep / "summary.md").read_text()
    assert "Runs that did not complete" in md
    assert "| 11 | failed | RuntimeError: boom |" in md and "more" not in md
    assert "| 1 | running |" in md
    assert "12 run(s) in 4 configuration(s): 10 completed, 1 failed, 1 unfinished" in md


def test_pivot_grid_and_facets(grid_sweep, tmp_path):
    summary = Summary.of(find_runs([grid_sweep]))
    (grid,) = pivot(summary.groups, "method.alpha", "method.T", summary.columns)
    assert grid.rows == [0.5, 0.9] and grid.cols == [1, 4] and grid.fixed == {}
    assert grid.cell(0.9, 1).stat().mean == pytest.approx(statistics.fmean(acc(1, 0.9, s) for s in (0, 1, 2)))

    # A third varying key: one grid per value of it.
    other = tmp_path / "other"
    for i, (T, alpha, epochs) in enumerate([(1, 0.5, 2), (4, 0.5, 2), (1, 0.5, 5), (4, 0.9, 5)]):
        write_run(other / str(i), [f"method.T={T}", f"method.alpha={alpha}", f"train.epochs={epochs}"], base_config(),
                  test_acc=acc(T, alpha, 0) + epochs)
    summary = Summary.of(find_runs([other]))
    assert summary.columns == ["method.T", "method.alpha", "train.epochs"]
    grids = pivot(summary.groups, "method.T", "method.alpha", summary.columns)
    assert [g.fixed for g in grids] == [{"train.epochs": 2}, {"train.epochs": 5}]
    assert grids[0].cols == [0.5] and grids[1].cols == [0.5, 0.9]
    assert grids[1].cell(1, 0.9) is None
    assert grids[1].cell(4, 0.9).stat().mean == pytest.approx(acc(4, 0.9, 0) + 5)

    with pytest.raises(UserError, match="method.tau"):
        pivot(summary.groups, "method.tau", "method.alpha", summary.columns)
    with pytest.raises(UserError, match="pooled"):
        pivot(summary.groups, "seed", "method.alpha", summary.columns)


def test_choice_of_a_group_is_shown_instead_of_its_keys(tmp_path):
    root = tmp_path / "m"
    write_run(root / "0", ["method=kd"], base_config(), test_acc=90.0)
    write_run(root / "1", ["method=ce"], {**base_config(), "method": {"name": "ce", "ce_weight": 1.0}}, test_acc=85.0)
    summary = Summary.of(find_runs([root]))
    assert summary.columns == ["method"]  # not method.T, method.alpha, method.ce_weight, method.name
    # A key that differs without being asked for is shown: it tells configurations apart.
    write_run(root / "2", ["method=ce"], {**base_config(), "method": {"name": "ce", "ce_weight": 1.0},
                                          "train": {"epochs": 7, "milestones": [20, 25]}}, test_acc=86.0)
    summary = Summary.of(find_runs([root]))
    assert summary.columns == ["method", "train.epochs"] and len(summary.groups) == 3


def test_job_directory_without_metrics_is_listed_as_not_started(grid_sweep):
    (grid_sweep / "12" / ".hydra").mkdir(parents=True)
    (grid_sweep / "12" / ".hydra" / "config.yaml").write_text(yaml.safe_dump(base_config()))
    summary = Summary.of(find_runs([grid_sweep]))
    assert {(r.path.name, r.status) for r in summary.not_completed} == {("1", "running"), ("11", "failed"),
                                                                          ("12", "not started")}
    assert len(summary.groups) == 4  # its config is that of method.T=4 method.alpha=0.9 (4 == 4.0)
    # A run with nothing but a metrics.json (its process died at once) does not make every key vary.
    (grid_sweep / "13").mkdir()
    (grid_sweep / "13" / "metrics.json").write_text(json.dumps({"status": "failed", "error": "killed"}))
    summary = Summary.of(find_runs([grid_sweep]))
    assert summary.columns == ["method.T", "method.alpha"] and len(summary.groups) == 5
    assert ("13", "failed") in {(r.path.name, r.status) for r in summary.not_completed}


def test_one_configuration_and_runs_made_without_hydra(tmp_path):
    for seed in (0, 1):
        path = tmp_path / f"run{seed}"
        path.mkdir()
        (path / "metrics.json").write_text(json.dumps({
            "status": "completed", "test_acc": 90.0 + seed, "dataset": "digits", "teacher": "mlp_1200",
            "student": "mlp_800", "method": "kd", "schedule": "single", "seed": seed, "epochs": 3, "history": []}))
    summary = Summary.of(find_runs([tmp_path]))
    assert len(summary.groups) == 1 and summary.groups[0].stat().n == 2
    assert summary.key_headers == ["configuration"]


def test_cli_prints_grid_and_writes_plots(grid_sweep, capsys):
    report_main([str(grid_sweep), "--pivot", "method.T", "method.alpha", "--plot"])
    out = capsys.readouterr().out
    assert "method.T (rows) × method.alpha (columns)" in out
    assert f"{statistics.fmean(acc(1, 0.9, s) for s in (0, 1, 2)):.2f} ±" in out
    for name in ("summary.csv", "summary.md", "heatmap_method.T_method.alpha.png", "curves.png"):
        assert (grid_sweep / name).stat().st_size > 0, name
    assert (grid_sweep / "heatmap_method.T_method.alpha.png").read_bytes()[:4] == b"\x89PNG"
    assert "## test acc (%): method.T × method.alpha" in (grid_sweep / "summary.md").read_text()


def test_cli_user_errors(tmp_path, grid_sweep, capsys):
    with pytest.raises(SystemExit) as exit_info:
        report_main([str(grid_sweep), "--metric", "val_acc"])
    assert exit_info.value.code == 2 and "dataset.val_size" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit) as exit_info:
        report_main([str(tmp_path / "empty")])
    assert exit_info.value.code == 2 and "No kdrun runs below" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        report_main([str(tmp_path / "nope")])
    assert exit_info.value.code == 2 and "is not a directory" in capsys.readouterr().err


def test_sweep_summary_written_once_and_exit_status(grid_sweep, monkeypatch):
    monkeypatch.setattr(sweep, "_state", sweep._SweepState())
    assert finish_sweep() == 0  # no sweep began: nothing to do
    begin_sweep(grid_sweep)
    assert finish_sweep() == 1  # a failed and an unfinished run
    assert (grid_sweep / "summary.md").is_file()
    (grid_sweep / "summary.md").unlink()
    assert finish_sweep() == 1 and not (grid_sweep / "summary.md").exists()  # not written twice


def test_plot_without_matplotlib_says_how_to_install(grid_sweep, monkeypatch, capsys):
    monkeypatch.setitem(__import__("sys").modules, "matplotlib.figure", None)  # import fails as if missing
    with pytest.raises(SystemExit) as exit_info:
        report_main([str(grid_sweep), "--plot"])
    assert exit_info.value.code == 2 and "kdrun[plot]" in capsys.readouterr().err
    assert not (grid_sweep / "summary.csv").exists()  # refused before any work
