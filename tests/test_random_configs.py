"""Random combinations of config groups and values, good and bad: each one either trains (one epoch on
tiny data) or stops with a UserError and a one-paragraph message, never with any other exception.

The groups come from the config tree (`group_options`), so methods, datasets and schedules join as
their configs land; the perturbed keys are whatever numeric keys the composed config has. Seeded: a
failure prints the overrides of its case, which reproduce it with `kdrun OVERRIDES`.
"""
import random
import traceback

from conftest import compose_config, group_options
from inprocess import one_cpu_thread  # noqa: F401  (autouse fixture)
from omegaconf import OmegaConf

from kdrun.errors import UserError
from kdrun.schema.errors import user_error
from kdrun.schema.keys import check_keys
from kdrun.run import run

SEED = 2026
CASES = 20
# Models fast enough on 8x8 images; whichever of them the zoo has take part.
SMALL_MODELS = ("mlp", "mlp_800", "resnet8", "wrn16_1", "plain2")
EMBEDDED_DATASETS = ("synthetic", "digits")  # the others read files: here from an empty folder
TINY = {"dataset.train_size": 64, "dataset.test_size": 32, "train.epochs": 1, "train.batch_size": 32,
        "teacher.train.epochs": 1, "teacher.train.batch_size": 32, "progress": False}
TINY_METHOD = {"nce_k": 16}  # sizes of method state that must fit the tiny training split
BAD_NUMBERS = [0, -1, 0.5, 2, 3.0, "abc", None]


def numeric_keys(node, prefix=""):
    for key, value in node.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            yield from numeric_keys(value, f"{path}.")
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            yield path


def value_text(value) -> str:
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def random_case(rng: random.Random, options: dict, empty_dir) -> tuple[dict, list[str]]:
    models = [m for m in SMALL_MODELS if m in options["student"]]
    embedded = [d for d in options["dataset"] if d in EMBEDDED_DATASETS]
    groups = {"dataset": rng.choice(embedded if rng.random() < 0.8 else options["dataset"]),
              "method": rng.choice(options["method"]),
              "schedule": "single" if rng.random() < 0.6 else rng.choice(options["schedule"]),
              "teacher": rng.choice(models), "student": rng.choice(models)}
    if options["experiment"] and rng.random() < 0.25:  # a published recipe, cut down to tiny sizes below
        groups["experiment"] = rng.choice(options["experiment"])
        del groups["method"], groups["schedule"]  # the recipe's own method and schedule (its keys go with them)
    overrides = [f"{g}={o}" for g, o in groups.items()]
    try:
        plain = OmegaConf.to_container(compose_config(overrides))  # the keys these choices have
    except Exception:  # noqa: BLE001  (choices that do not compose: the case is their refusal)
        return groups, overrides
    overrides += [f"{k}={value_text(v)}" for k, v in TINY.items()]
    overrides += [f"method.{k}={v}" for k, v in TINY_METHOD.items() if k in plain["method"]]
    if "assistants" in plain["schedule"]:  # takd: a chain through one small model
        overrides.append(f"schedule.assistants=[{rng.choice(models)}]")
    if "generations" in plain["schedule"]:  # ban
        overrides.append("schedule.generations=2")
    if groups["dataset"] == "synthetic":
        overrides += ["dataset.image_size=8", f"dataset.channels={rng.choice([1, 3])}"]
    elif groups["dataset"] not in EMBEDDED_DATASETS:
        overrides += [f"dataset.root={empty_dir}", "dataset.download=false"]
    candidates = [k for k in numeric_keys({g: plain[g] for g in ("method", "schedule", "dataset", "train")})
                  if k not in TINY and not k.endswith(("image_size", "channels", "generations"))]
    candidates += ["seed", "teacher.train.lr"]
    for key in rng.sample(candidates, k=min(len(candidates), rng.choice([0, 0, 1, 1, 2]))):
        pool = BAD_NUMBERS + ([1e30] if key.endswith("lr") else [])
        overrides.append(f"{key}={value_text(rng.choice(pool))}")
    if rng.random() < 0.15:
        overrides.append(f"device={rng.choice(['cuda:7', 'tpu', 'cpu'])}")
    else:
        overrides.append("device=cpu")
    return groups, overrides


def test_random_configs_train_or_fail_with_a_clean_message(tmp_path):
    rng = random.Random(SEED)
    options = {g: group_options(g) for g in ("dataset", "method", "schedule", "student", "experiment")}
    empty = tmp_path / "no-data"
    empty.mkdir()
    outcomes, bugs = {"completed": 0, "refused": 0}, []
    for i in range(CASES):
        groups, overrides = random_case(rng, options, empty)
        try:
            try:
                cfg = compose_config(overrides)
            except Exception as e:  # noqa: BLE001  (the CLI words what the schema refuses)
                raise user_error(e) from e
            check_keys(cfg)
            metrics = run(cfg, tmp_path / f"case{i}")
            assert metrics["status"] == "completed" and 0 <= metrics["test_acc"] <= 100, overrides
            outcomes["completed"] += 1
        except UserError as e:
            message = str(e)
            if not message.strip() or "\n\n" in message or "Traceback" in message:
                bugs.append(f"kdrun {' '.join(overrides)}\n  not a one-paragraph message: {message!r}")
            outcomes["refused"] += 1
        except Exception:
            bugs.append(f"kdrun {' '.join(overrides)}\n{traceback.format_exc()}")
    assert not bugs, "\n\n".join(bugs)
    # Both outcomes must be common, or the cases test little.
    assert outcomes["completed"] >= 4 and outcomes["refused"] >= 4, outcomes
