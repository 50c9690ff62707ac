"""Which epoch's test accuracy: the last (RepDistiller), the best on the test set (mdistiller), or the one
at the best validation accuracy. What a run records in metrics.json, and `kdrun-report --select`."""
from __future__ import annotations

import csv
import io
import json
import logging

import pytest

from conftest import QUICK, compose_config
from kdrun.results.grouping import Group
from kdrun.results.metrics import RunRecord
from kdrun.results.paper import PaperComparison, load_paper
from kdrun.results.report import build_parser, summarise
from kdrun.results.runs import Run
from kdrun.results.selection import epoch_selections, selected_test_acc


def entry(stage, epoch, test, val=None):
    h = {"stage": stage, "epoch": epoch, "train_loss": 1.0, "losses": {"ce": 1.0}, "lr": 0.1, "test_acc": test}
    return h if val is None else {**h, "val_acc": val}


# An init stage (its model's accuracy is not the student's), then the student's stage: test accuracy ties
# at epochs 2 and 3 (70), validation accuracy ties at epochs 3 and 4 (66); the last epoch is 60.
HISTORY = [entry("init", 1, 90.0, 95.0), entry("init", 2, 91.0, 96.0),
           entry("kd", 1, 50.0, 40.0), entry("kd", 2, 70.0, 55.0), entry("kd", 3, 70.0, 66.0),
           entry("kd", 4, 60.0, 66.0)]


def test_best_and_best_val_from_a_history_ties_go_to_the_earliest_epoch_and_only_the_last_stage_counts():
    assert epoch_selections(HISTORY, "kd") == {"best_test_acc": 70.0, "best_test_epoch": 2,
                                               "test_acc_at_best_val": 70.0, "best_val_epoch": 3}
    # without validation accuracies: no validation keys, unless the run has a validation split
    plain = [{k: v for k, v in h.items() if k != "val_acc"} for h in HISTORY]
    assert epoch_selections(plain, "kd") == {"best_test_acc": 70.0, "best_test_epoch": 2}
    assert epoch_selections([], "kd", validation=True) == {"best_test_acc": None, "best_test_epoch": None,
                                                           "test_acc_at_best_val": None, "best_val_epoch": None}
    # epochs in any order in the file: the earliest of equal ones still wins
    assert epoch_selections(list(reversed(HISTORY)), "kd")["best_val_epoch"] == 3
    # an old metrics.json (no new keys): computed from the history, the last stage named by `stages`
    old = {"test_acc": 60.0, "history": HISTORY, "stages": [{"name": "init"}, {"name": "kd"}]}
    assert [selected_test_acc(old, s) for s in ("last", "best", "best_val")] == [60.0, 70.0, 70.0]
    assert selected_test_acc({**old, "stages": []}, "best") == 70.0  # else the stage of the last epoch
    assert selected_test_acc({"test_acc": 60.0, "history": plain}, "best_val") is None


def test_the_run_records_them_and_a_resumed_run_gives_the_same_values(tmp_path, monkeypatch, caplog):
    from kdrun.run import run

    cfg = compose_config(QUICK + ["method=ce", "train.epochs=3", "dataset.val_size=16", "device=cpu"])
    add_epoch = RunRecord.add_epoch

    def stop_after_epoch_2(self, e):
        add_epoch(self, e)
        if e["epoch"] == 2:
            raise KeyboardInterrupt  # the checkpoint of epoch 2 is written before the record

    monkeypatch.setattr(RunRecord, "add_epoch", stop_after_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        run(cfg, tmp_path / "run")
    before = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert before["status"] == "running" and "best_test_acc" not in before
    monkeypatch.setattr(RunRecord, "add_epoch", add_epoch)
    caplog.set_level(logging.INFO, logger="kdrun")
    m = run(cfg, tmp_path / "run")  # resumes after epoch 2: epochs 1 and 2 are replayed from the checkpoint
    assert "resuming from" in caplog.text and "after epoch 2" in caplog.text
    assert m["history"][:2] == before["history"] and [h["epoch"] for h in m["history"]] == [1, 2, 3]
    assert m == json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert {k: m[k] for k in ("best_test_acc", "best_test_epoch", "test_acc_at_best_val", "best_val_epoch")} \
        == epoch_selections(m["history"], "ce")  # what an uninterrupted run with this history records
    reference = run(cfg, tmp_path / "uninterrupted")
    assert reference["history"] == m["history"]
    assert {k: reference[k] for k in ("best_test_acc", "best_test_epoch", "test_acc_at_best_val", "best_val_epoch")} \
        == {k: m[k] for k in ("best_test_acc", "best_test_epoch", "test_acc_at_best_val", "best_val_epoch")}
    tests = [h["test_acc"] for h in m["history"]]
    assert m["best_test_acc"] == max(tests) and tests[m["best_test_epoch"] - 1] == max(tests)
    assert m["test_acc"] == tests[-1] and m["val_acc"] == m["history"][-1]["val_acc"]


def write_run(path, method, seed, history, **keys):
    path.mkdir(parents=True)
    kd = [h for h in history if h["stage"] == "kd"]
    metrics = {"status": "completed", "test_acc": kd[-1]["test_acc"], "teacher_test_acc": 80.0,
               "dataset": "cifar100", "teacher": "resnet56", "student": "resnet20", "method": method,
               "schedule": "single", "seed": seed, "epochs": 4, "history": history,
               "stages": [{"name": "kd", "test_acc": kd[-1]["test_acc"]}], **keys}
    if "val_acc" in kd[-1]:
        metrics["val_acc"] = kd[-1]["val_acc"]
    (path / "metrics.json").write_text(json.dumps(metrics))


@pytest.fixture
def runs(tmp_path):
    """`new`: metrics.json with the keys (seed 1 better by 2 points); `old`: without them (made before);
    `noval`: no validation split."""
    root = tmp_path / "runs"
    for seed in (0, 1):
        shifted = [{**h, "test_acc": h["test_acc"] + 2 * seed} for h in HISTORY]
        write_run(root / f"new{seed}", "kd", seed, shifted, **epoch_selections(shifted, "kd"))
    write_run(root / "old", "crd", 0, HISTORY)
    write_run(root / "noval", "fitnet", 0, [{k: v for k, v in h.items() if k != "val_acc"} for h in HISTORY])
    return root


def table(text: str) -> dict:
    """summary.md's first table: {method: {column: cell}}."""
    block = next(b for b in text.split("\n\n") if b.startswith("|"))
    lines = block.splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:]]
    return {row[0]: dict(zip(header, row)) for row in rows}


@pytest.mark.parametrize("select, label, kd, crd, fitnet, note", [
    ("last", "test acc (%)", "61.00 ± 1.41", "60.00", "60.00",
     "Test accuracy (--select last): the last epoch's, no selection (as RepDistiller reports)."),
    ("best", "test acc, best epoch (%)", "71.00 ± 1.41", "70.00", "70.00",
     "Test accuracy (--select best): the best epoch's of the last stage, selected on the test set (as mdistiller "
     "reports): an optimistic number."),
    ("best_val", "test acc at best val (%)", "71.00 ± 1.41", "70.00", "-",
     "Test accuracy (--select best_val): at the epoch of the last stage with the best validation accuracy"),
])
def test_report_select(runs, select, label, kd, crd, fitnet, note, capsys, monkeypatch):
    monkeypatch.chdir(runs)
    summary, _ = summarise([runs], ["method", "student"], select=select)
    out, md = " ".join(capsys.readouterr().out.split()), (runs / "summary.md").read_text()  # unwrapped
    rows = table(md)
    assert [rows[m][label] for m in ("kd", "crd", "fitnet")] == [kd, crd, fitnet]
    assert rows["kd"]["val acc (%)"] == "66.00 ± 0.00"  # other metrics: the last epoch's, whatever --select
    assert rows["fitnet"]["n"] == ("0" if select == "best_val" else "1")
    assert note in md and note in out
    assert f"## {label}: method × student" in md
    grid = md.split(f"## {label}: method × student")[1]
    assert f"| {kd} |" in grid and f"| {fitnet} |" in grid
    missing = "1 completed run(s) have no validation split (dataset.val_size): their test acc at best val (%) is missing"
    assert (missing in md) == (select == "best_val") and (missing in out) == (select == "best_val")
    head = next(csv.reader(io.StringIO((runs / "summary.csv").read_text())))
    key = {"last": "test_acc", "best": "best_test_acc", "best_val": "test_acc_at_best_val"}[select]
    assert head[1:3] == [f"{key}_mean", f"{key}_std"]
    # --metric val_acc: --select applies to test accuracy only
    summarise([runs], ["method", "student"], metric="val_acc", select=select)
    assert "| 66.00 ± 0.00 |" in (runs / "summary.md").read_text().split("## val acc (%)")[1]


def test_select_option_and_its_default():
    assert build_parser().parse_args(["d"]).select == "last"
    assert build_parser().parse_args(["d", "--select", "best_val"]).select == "best_val"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["d", "--select", "max"])


def fake(tmp_path, i, seed, history, stages=(), **choices):
    metrics = {"status": "completed", "test_acc": history[-1]["test_acc"], "teacher_test_acc": 72.0, "seed": seed,
               "history": history, "stages": [{"name": n, "test_acc": a} for n, a in stages]}
    return Run(path=tmp_path / str(i), metrics=metrics, config={"seed": seed}, choices=choices)


def test_the_paper_comparison_uses_the_selected_accuracy(tmp_path):
    pair = {"teacher": "resnet56", "student": "resnet20", "dataset": "cifar100", "method": "kd"}
    kd = Group([fake(tmp_path, 0, 0, HISTORY, **pair)])  # an old run: no keys, computed from its history
    col = [c["label"] for c in load_paper("crd_cifar100")["columns"]].index("resnet56→resnet20")
    cells = {}
    for select in ("last", "best", "best_val"):
        comparison = PaperComparison.of(load_paper("crd_cifar100"), [kd], select)
        rows = {r[0]: r[1:] for r in comparison.rows()}
        cells[select] = rows["KD"][col]
        assert rows["Teacher"][col].startswith("72.00 (1)")  # the teacher: as recorded
        assert any(n.startswith(f"Ours: Test accuracy (--select {select}): ") for n in comparison.notes())
    assert cells == {"last": "60.00 (1) vs 70.66 (-10.66)", "best": "70.00 (1) vs 70.66 (-0.66)",
                     "best_val": "70.00 (1) vs 70.66 (-0.66)"}
    # a stage's row (BAN's first generation): from that stage's epochs
    ban = {"teacher": "wrn28_1", "student": "wrn28_1", "dataset": "cifar100", "schedule": "ban"}
    history = [entry("gen1", 1, 69.0), entry("gen1", 2, 71.0), entry("gen1", 3, 70.0),
               entry("gen2", 1, 72.0), entry("gen2", 2, 71.5)]
    run = Group([fake(tmp_path, 1, 0, history, stages=[("gen1", 70.0), ("gen2", 71.5)], **ban)])
    first = {s: {r[0]: r[1:] for r in PaperComparison.of(load_paper("ban_cifar100"), [run], s).rows()}
             for s in ("last", "best")}
    assert first["last"]["BAN-1 (first generation)"][0].startswith("70.00 (1)")
    assert first["best"]["BAN-1 (first generation)"][0].startswith("71.00 (1)")
    assert first["best"]["BAN, last generation"][0].startswith("72.00 (1)")
