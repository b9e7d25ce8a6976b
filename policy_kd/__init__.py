"""policy_kd: policy distillation for Stable-Baselines3 teachers.

Stages, one module each: ``teacher`` (train/load SB3 teachers), ``record`` and ``buffer`` (what the
teacher knows, on disk), ``losses``, ``students``, ``distill``, ``evaluate``; ``cli`` is a thin shell.

The names below are the Python API (:mod:`policy_kd.api`), one function per job::

    import policy_kd

    teacher = policy_kd.train_teacher("CartPole-v1", "runs/teacher")
    buffer = policy_kd.record_buffer(teacher, "runs/buffer", steps=50_000)
    student = policy_kd.distill_student(buffer, "runs/student", params_fraction=0.01)
    result = policy_kd.evaluate_students(teacher, student, episodes=100)

The job functions' names differ from their modules' (``record_buffer``, not ``record``) so that
importing ``policy_kd.record`` never replaces them.
"""

from policy_kd.api import (
    StudentPolicy,
    distill_student,
    distill_students,
    evaluate_students,
    export_student,
    load_student,
    load_teacher,
    open_buffer,
    record_buffer,
    train_teacher,
)
from policy_kd.errors import PolicyKDError

__version__ = "0.1.0"

__all__ = [
    "PolicyKDError",
    "StudentPolicy",
    "distill_student",
    "distill_students",
    "evaluate_students",
    "export_student",
    "load_student",
    "load_teacher",
    "open_buffer",
    "record_buffer",
    "train_teacher",
]
