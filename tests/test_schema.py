"""The config's schema: OmegaConf checks types and keys as Hydra composes, once, in every launcher; kdrun
composes nothing of its own and uses no private Hydra API."""
import re
from pathlib import Path

import pytest
from hydra._internal.config_loader_impl import ConfigLoaderImpl  # the test counts Hydra's compositions

from conftest import QUICK, REPO, compose_config, read_json, run_dirs
from inprocess import kdrun_in_process, one_cpu_thread  # noqa: F401  (autouse fixture)
from kdrun.methods.kd import KD
from kdrun.schema.models import model_schema


@pytest.fixture
def compositions(monkeypatch):
    """How often the config is composed (Hydra's config loader: a run's config, a sweep job's config)."""
    calls = []
    for name in ("load_configuration", "load_sweep_config"):
        original = getattr(ConfigLoaderImpl, name)

        def counted(self, *args, _original=original, _name=name, **kwargs):
            calls.append(_name)
            return _original(self, *args, **kwargs)
        monkeypatch.setattr(ConfigLoaderImpl, name, counted)
    return calls


def test_a_run_is_composed_once(tmp_path, monkeypatch, capsys, compositions):
    code, out = kdrun_in_process([*QUICK, f"hydra.run.dir={tmp_path / 'run'}"], tmp_path, monkeypatch, capsys)
    assert code == 0, out
    # Hydra's own two (hydra.main reads the mode from one, runs the other), and nothing of kdrun's
    assert compositions == ["load_configuration"] * 2


def test_a_sweep_composes_each_job_before_any_starts_and_once_more_to_launch_it(tmp_path, monkeypatch, capsys,
                                                                                 compositions):
    code, out = kdrun_in_process(["-m", *QUICK, "method.T=2,4", f"hydra.sweep.dir={tmp_path / 's'}"], tmp_path,
                                 monkeypatch, capsys)
    assert code == 0, out
    # Hydra: the sweep's config, then each job's as its launcher starts it; kdrun's sweeper: each job's
    # once, before any starts (a key or value the schema refuses in any job stops the whole sweep).
    assert compositions.count("load_sweep_config") == 4


@pytest.mark.parametrize("schedule,stages", [([], 1), (["schedule=ban", "schedule.generations=2"], 2)])
def test_the_method_is_validated_and_built_once_per_stage(tmp_path, monkeypatch, capsys, schedule, stages):
    validated, built = [], []
    original_validate, original_init = KD.validate.__func__, KD.__init__
    monkeypatch.setattr(KD, "validate", classmethod(lambda cls, cfg: validated.append(1) or original_validate(cls, cfg)))
    monkeypatch.setattr(KD, "__init__", lambda self, *a: built.append(1) or original_init(self, *a))
    code, out = kdrun_in_process([*QUICK, *schedule, f"hydra.run.dir={tmp_path / 'run'}"], tmp_path, monkeypatch,
                                 capsys)
    assert code == 0, out
    assert (len(validated), len(built)) == (stages, stages)


def test_the_issues_examples(tmp_path, monkeypatch, capsys):
    convnets = [o for o in QUICK if not o.startswith(("teacher", "student"))] + [
        "student=resnet8", "teacher=resnet8", "teacher.train.epochs=1", "teacher.train.batch_size=32"]
    code, out = kdrun_in_process([*convnets, "method=nst", "method.degree=2.5", f"hydra.run.dir={tmp_path / 'nst'}"],
                                 tmp_path, monkeypatch, capsys)
    assert code == 0, out
    assert read_json(tmp_path / "nst" / "metrics.json")["status"] == "completed"
    for override, needle in [("method.alpha_anneal=banana", "method.alpha_anneal=banana: expected a list of numbers"),
                             ("teacher.checkpoint=[1,2]", "teacher.checkpoint=[1,2]: expected a string or null")]:
        code, out = kdrun_in_process([*QUICK, override], tmp_path, monkeypatch, capsys)
        assert code == 2 and needle in out and "Traceback" not in out, out


@pytest.mark.parametrize("launcher", ["local_gpus", "submitit_local", "packed"])
def test_a_mistyped_key_stops_a_sweep_under_every_launcher(tmp_path, monkeypatch, capsys, launcher):
    sweep = tmp_path / "sweep"
    code, out = kdrun_in_process(["-m", f"hydra/launcher={launcher}", *QUICK, "method=kd,fitnet", "method.variant=cwtm",
                                  f"hydra.sweep.dir={sweep}"], tmp_path, monkeypatch, capsys)
    assert code == 2, out
    assert "method.variant is not a key" in out and "in job #1: method=fitnet" in out, out
    assert not run_dirs(tmp_path)


def test_a_key_added_with_plus_is_refused_in_the_job_itself(tmp_path, monkeypatch, capsys):
    code, out = kdrun_in_process([*QUICK, "+method.Tx=3", f"hydra.run.dir={tmp_path / 'run'}"], tmp_path, monkeypatch,
                                 capsys)
    assert code == 2 and "method.Tx is not a key of this config (method has: name, ce_weight, T" in out, out


def test_model_nodes_are_typed_from_their_constructors():
    fields = model_schema("mlp").__dataclass_fields__
    assert {"name", "hidden", "dropout"} <= set(fields)
    assert "num_classes" not in fields  # the dataset's
    teacher = compose_config(["teacher=mlp"]).teacher  # and a teacher's own keys, typed
    assert {"checkpoint", "seed", "train"} <= set(teacher) and teacher.train.epochs == 30
    assert compose_config(["student=wrn16_2", "student.drop_rate=0.3"]).student.drop_rate == 0.3


def test_no_private_hydra_or_omegaconf_api():
    pattern = re.compile(r"_internal|\._get_node|_is_none|\._key\(\)|\._get_full_key")
    found = [f"{path.relative_to(REPO)}:{n}: {line.strip()}"
             for folder in ("kdrun", "hydra_plugins") for path in sorted((REPO / folder).rglob("*.py"))
             for n, line in enumerate(path.read_text().splitlines(), 1) if pattern.search(line)]
    assert not found, "\n".join(found)


def test_stage_recipes_hold_only_what_differs_from_train():
    interpolated = [f"{path.relative_to(REPO)}: {line.strip()}" for path in sorted((REPO / "conf" / "schedule").glob("*.yaml"))
                    for line in path.read_text().splitlines() if re.search(r"^\s+\w+: \$\{train\.\w+\}", line)]
    assert not interpolated, "\n".join(interpolated)
    cfg = compose_config(["schedule=fitnet", "train.lr=0.3", "schedule.hint.epochs=2"])
    assert Path(REPO / "conf" / "schedule" / "fitnet.yaml").read_text().count("${train.") == 0
    from kdrun.schedules.spec import stage_recipe
    hint = stage_recipe(cfg, "schedule.hint", "test")
    assert (hint.lr, hint.epochs) == (0.3, 2)


def test_no_import_cycles_between_the_packages():
    """methods, training, schedules and results import one another in one direction only (kdrun/run.py,
    the run as a whole, sits above them)."""
    import ast
    import itertools

    edges = set()
    for path in (REPO / "kdrun").rglob("*.py"):
        parts = path.relative_to(REPO).with_suffix("").parts
        if len(parts) < 3:
            continue  # a module at kdrun's top level
        for node in ast.walk(ast.parse(path.read_text())):
            names = [node.module] if isinstance(node, ast.ImportFrom) and node.module else \
                [a.name for a in node.names] if isinstance(node, ast.Import) else []
            edges |= {(parts[1], n.split(".")[1]) for n in names if n.startswith("kdrun.") and n.count(".") >= 1}
    packages = ("methods", "training", "schedules", "results")
    cycles = [(a, b) for a, b in itertools.combinations(packages, 2) if (a, b) in edges and (b, a) in edges]
    assert not cycles, cycles


def test_a_stage_with_every_weight_at_zero_says_so(tmp_path, monkeypatch, capsys):
    code, out = kdrun_in_process([*QUICK, "method.alpha=0", "method.ce_weight=0", f"hydra.run.dir={tmp_path / 'r'}"],
                                 tmp_path, monkeypatch, capsys)
    assert code == 2 and "nothing to train" in out and "weights ce 0, kd 0" in out, out


def test_help_lists_the_groups_a_user_chooses_from(tmp_path, monkeypatch, capsys):
    (tmp_path / "myconf" / "student").mkdir(parents=True)
    (tmp_path / "myconf" / "student" / "mynet.yaml").write_text("_target_: mypkg.MyNet\nwidth: 3\n")
    code, out = kdrun_in_process(["-cd", str(tmp_path / "myconf"), "--help", "method=at"], tmp_path, monkeypatch,
                                 capsys)
    assert code == 0, out
    section = out.split("== Config groups (choose with GROUP=OPTION) ==")[1].split("== Config (override")[0]
    groups = dict(line.split(": ", 1) for line in section.splitlines() if ": " in line)
    assert set(groups) == {"dataset", "teacher", "student", "method", "schedule", "experiment", "pair", "sweep",
                           "logger", "hydra/launcher"}  # not the schemas' or the presets' own groups
    assert groups["logger"] == "csv, many, mlflow, tensorboard, wandb"
    assert "mynet" in groups["student"].split(", ") and "wrn40_2" in groups["teacher"].split(", ")
    assert "name: at" in out.split("== Config (")[1]  # the config of this command line
    code, out = kdrun_in_process(["--help", "method.Tx=3"], tmp_path, monkeypatch, capsys)
    assert code == 2 and "Did you mean method.T?" in out, out


@pytest.mark.parametrize("overrides,identity,teacher_key", [
    ([], "2ce19144d1583356", "164a9d50ff16270c"),
    (["schedule=ban"], "e6341ebd4c7c4608", "164a9d50ff16270c"),  # before schedule.ensemble_teacher
    (["method=fsp"], "dc049b52a1db41c8", "164a9d50ff16270c"),  # before method.projection
    (["method=at"], "f6eea6574ae60219", "164a9d50ff16270c"),
    (["dataset=synthetic"], "d6905dc70deab969", "371f19056cea5a87"),
])
def test_identities_made_before_the_schema_are_kept(overrides, identity, teacher_key):
    """A run's config_id and its teacher's cache key, as kdrun computed them before the typed schema."""
    from kdrun.results.identity import config_identity
    from kdrun.training.recipe import TeacherRecipe
    from kdrun.training.teacher import cache_key

    cfg = compose_config(overrides)
    assert config_identity(cfg) == identity
    assert cache_key(cfg.teacher, cfg.dataset, TeacherRecipe.from_config(cfg.teacher.train, "teacher.train"), 0) == teacher_key
