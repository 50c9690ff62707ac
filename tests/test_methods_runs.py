"""fitnet, at, fsp, ab, nst, ft and kd's options end to end on zoo models: a same-family pair and a
heterogeneous one, tiny synthetic data, one epoch; metrics.json completed with the method's terms.
The small members of each family keep it fast; the README lists the published pairs run by hand."""
import pytest

from conftest import compose_config, kdrun_cli, read_json
from kdrun.errors import UserError
from kdrun.run import run

TINY = ["dataset=synthetic", "dataset.train_size=16", "dataset.test_size=8", "dataset.image_size=16",
        "dataset.num_classes=4", "train.epochs=1", "train.batch_size=16", "teacher.train.epochs=1",
        "teacher.train.batch_size=16", "progress=false"]
PAIRS = [("wrn16_1", "wrn10_1"), ("resnet8", "vgg8")]


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory):
    """One teacher cache for the module: each teacher is trained once."""
    return tmp_path_factory.mktemp("cache")


@pytest.mark.parametrize("teacher,student", PAIRS)
@pytest.mark.parametrize("name", ["fitnet", "at", "fsp", "ab", "nst", "ft"])
def test_feature_method_runs_on_zoo_pairs(name, teacher, student, shared_cache, tmp_path):
    cfg = compose_config(TINY + [f"method={name}", f"teacher={teacher}", f"student={student}",
                                 f"cache_dir={shared_cache}"])
    if name == "fsp" and student == "vgg8":  # unequal widths: refused as they are, run with the projections
        with pytest.raises(UserError, match="equal widths.*method.projection=auto"):
            run(cfg, tmp_path / "refused")
        cfg = compose_config(TINY + [f"method={name}", "method.projection=auto", f"teacher={teacher}",
                                     f"student={student}", f"cache_dir={shared_cache}"])
    metrics = run(cfg, tmp_path / "run")
    assert metrics["status"] == "completed"
    assert read_json(tmp_path / "run" / "metrics.json")["status"] == "completed"
    assert name in metrics["history"][0]["losses"]


def test_kd_ensemble_of_zoo_teachers_runs(shared_cache, tmp_path):
    cfg = compose_config(TINY + ["method=kd", "teacher=wrn16_1", "student=wrn10_1", "method.teachers=[resnet8]",
                                 "method.variant=dkpp", f"cache_dir={shared_cache}"])
    metrics = run(cfg, tmp_path / "run")
    assert metrics["status"] == "completed" and metrics["teacher"] == "wrn16_1+resnet8"


def test_cli_refuses_a_feature_path_that_does_not_exist(tmp_path):
    result = kdrun_cli(TINY + ["method=fitnet", "teacher=wrn16_1", "student=wrn10_1",
                               "method.student_features=[block9]"], cwd=tmp_path)
    assert result.returncode == 2
    assert "no module 'block9'" in result.stderr + result.stdout
    assert "Valid module paths" in result.stderr + result.stdout and "Traceback" not in result.stderr
