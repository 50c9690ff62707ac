"""A student for the interruption tests: an MLP that misbehaves at a chosen training step.

Steps are counted over the whole run (training forwards only), so with 8 steps per epoch step 11 is
the third step of epoch 2. Set by environment variables, so the command line stays the user's:

- `KDRUN_TEST_PAUSE=STEP:MARKER[:SIGNAL]`: at STEP, create the file MARKER, then wait (for the test to
  kill or signal the process) or send SIGNAL to its own process. Only while MARKER does not exist, so
  rerunning the very same command into the same directory runs through.
- `KDRUN_TEST_NAN_STEP=STEP`: the logits of STEP are NaN (a loss that blows up at a known step).

Otherwise it computes exactly what `kdrun.models.mlp.MLP` does. Use it with `student=mlp
+student._target_=faulty_student.FaultyMLP` and `tests/` on the Python path.
"""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from kdrun.models.mlp import MLP


class FaultyMLP(MLP):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        spec = os.environ.get("KDRUN_TEST_PAUSE", "")
        step, marker, *sig = spec.split(":") if spec else ("0", "")
        self._pause_at, self._marker, self._signal = int(step), Path(marker), (sig or [None])[0]
        self._nan_at = int(os.environ.get("KDRUN_TEST_NAN_STEP", "0"))
        self._steps = 0

    def forward(self, x):
        if not self.training:
            return super().forward(x)
        self._steps += 1
        if self._steps == self._pause_at and not self._marker.exists():
            self._marker.write_text(str(os.getpid()))
            if self._signal:
                os.kill(os.getpid(), getattr(signal, self._signal))
            time.sleep(120)  # the test stops the process before this ends
        out = super().forward(x)
        return out * float("nan") if self._steps == self._nan_at else out
