"""policy_kd: policy distillation for Stable-Baselines3 teachers.

Stages, one module each: ``teacher`` (train/load SB3 teachers), ``record`` and ``buffer`` (what the
teacher knows, on disk), ``losses``, ``students``, ``distill``, ``evaluate``; ``cli`` is a thin shell.
"""

__version__ = "0.1.0"
