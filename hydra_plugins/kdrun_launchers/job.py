"""The process of one job of a local sweep: unpickles the job's composed config and runs it with
Hydra's `run_job`, as Hydra's basic launcher would in its own process. Writes the JobReturn back.
A packed group's process gets several configs and writes {job number: JobReturn} back."""
from __future__ import annotations

import importlib
import inspect
import pickle
import runpy
import sys
from pathlib import Path

# Started as `python -c BOOTSTRAP PAYLOAD SYS_PATH`: the job imports exactly what the sweep imported.
BOOTSTRAP = ("import json, sys; sys.path[:] = json.loads(sys.argv[2]); "
             "from hydra_plugins.kdrun_launchers.job import main; main(sys.argv[1])")


def task_reference(task_function) -> dict:
    module = task_function.__module__
    main_file = getattr(sys.modules.get(module), "__file__", None) if module == "__main__" else None
    return {"module": module, "qualname": task_function.__qualname__, "main_file": main_file}


def load_task(ref: dict):
    """The task function (undecorated: @hydra.main's wrapper keeps it as __wrapped__)."""
    if ref["main_file"]:
        namespace = runpy.run_path(ref["main_file"], run_name="__kdrun_job__")  # its `if __name__ == "__main__"` stays off
        obj = namespace[ref["qualname"].split(".")[0]]
        parts = ref["qualname"].split(".")[1:]
    else:
        obj = importlib.import_module(ref["module"])
        parts = ref["qualname"].split(".")
    for part in parts:
        obj = getattr(obj, part)
    return inspect.unwrap(obj)


class JobCallbacks:
    """The job's `hydra.callbacks`, told of the job's start and end as Hydra's own launchers tell them
    (instantiated with Hydra's public `instantiate`; the reverse order at the end is Hydra's)."""

    def __init__(self, config) -> None:
        from hydra.utils import instantiate

        self.callbacks = [instantiate(params) for params in (config.hydra.get("callbacks") or {}).values()]

    def on_job_start(self, config, **kwargs) -> None:
        for callback in self.callbacks:
            callback.on_job_start(config=config, **kwargs)

    def on_job_end(self, config, job_return, **kwargs) -> None:
        for callback in reversed(self.callbacks):
            callback.on_job_end(config=config, job_return=job_return, **kwargs)


def main(payload_path: str) -> None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.utils import JobRuntime, run_job, setup_globals
    from hydra.types import HydraContext

    payload = pickle.loads(Path(payload_path).read_bytes())
    configs = payload.get("configs") or [payload["config"]]
    config = configs[0]
    setup_globals()
    JobRuntime.instance().set("name", config.hydra.job.name)
    HydraConfig.instance().set_config(config)
    task = load_task(payload["task"])
    stop_signal = None
    if "configs" in payload:
        from hydra_plugins.kdrun_launchers.packed import run_group

        results, stop_signal = run_group({int(c.hydra.job.num): c for c in configs}, JobCallbacks(config), task,
                                         config.hydra.verbose)
        data = {idx: _portable(result) for idx, result in results.items()}
    else:
        result = run_job(
            hydra_context=HydraContext(config_loader=None, callbacks=JobCallbacks(config)),
            task_function=task,
            config=config,
            job_dir_key="hydra.sweep.dir",
            job_subdir_key="hydra.sweep.subdir",
        )
        data = _portable(result)
    Path(payload["result_path"]).write_bytes(pickle.dumps(data))
    if stop_signal is not None:
        sys.exit(128 + stop_signal)


def _portable(result):
    """The JobReturn in a form that unpickles in the launcher's process."""
    from omegaconf import OmegaConf

    # Plain copies of the configs: structured-config classes (e.g. Hydra's sweeper settings) pickle by
    # reference, which fails once a plugin scan in this process has re-imported their modules.
    for name in ("cfg", "hydra_cfg"):
        value = getattr(result, name)
        if value is not None:
            setattr(result, name, OmegaConf.create(OmegaConf.to_container(value, resolve=False)))
    try:
        pickle.dumps(result)
    except Exception:  # a return value or exception that does not pickle: keep its text
        result._return_value = RuntimeError(repr(result._return_value))
    return result
