"""`kdrun ARGS` run inside the test process: the same entry point as the console script (Hydra, the
callbacks, the CLI's error handling and exit status) without a second of interpreter start-up per call.
Anything that escapes as an exception instead of an exit status fails the calling test.

Test modules that import `one_cpu_thread` from here run their tests on one CPU thread."""
from __future__ import annotations

import logging
import sys

import pytest
import torch
from hydra.core.global_hydra import GlobalHydra


@pytest.fixture(autouse=True)
def one_cpu_thread(monkeypatch):
    """Tiny models on one thread, here and in subprocesses (kdrun keeps OMP_NUM_THREADS when it is set):
    several OpenMP threads on a busy CI machine turn each millisecond step into a hundred."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def kdrun_in_process(args, cwd, monkeypatch, capsys) -> tuple[int, str]:
    """Returns (exit status, everything printed to stdout and stderr)."""
    from kdrun.cli import main

    monkeypatch.chdir(cwd)
    monkeypatch.setattr(sys, "argv", ["kdrun", *args])
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    capsys.readouterr()
    GlobalHydra.instance().clear()
    code = 0
    try:
        main()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        GlobalHydra.instance().clear()
        for h in root.handlers:  # Hydra configured logging for the run: put the test's back
            if h not in handlers:
                h.close()
        root.handlers[:] = handlers
        root.setLevel(level)
    out = capsys.readouterr()
    return code, out.out + out.err
