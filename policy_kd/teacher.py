"""Compatibility shim: teachers moved to the :mod:`policy_kd.teachers` package (issue 23).

Kept for one release so ``from policy_kd.teacher import load_teacher`` (other modules, tests, experiments/,
benchmarks/, user code) keeps working; import from :mod:`policy_kd.teachers` in new code.
"""

from policy_kd.teachers import *  # noqa: F403
from policy_kd.teachers import __all__  # noqa: F401
