"""The Python API: one function per job, for notebooks and scripts.

Each job function takes the job's options as keyword arguments with the command line's names written
with underscores (``params_fraction=0.01`` is ``--params-fraction 0.01``), builds the job's config with
:func:`policy_kd.config.config_from_mapping` (so unknown options and values of the wrong type are refused
the way a ``--config`` YAML file's are) and runs the same code as ``policy-kd COMMAND``. Jobs write
folders and return them; nothing is replaced without ``force=True``.

Heavy modules (torch, SB3) are imported inside the functions, so ``import policy_kd`` stays cheap.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from policy_kd.config import config_from_mapping
from policy_kd.errors import PolicyKDError

if TYPE_CHECKING:
    from policy_kd.buffer import Buffer
    from policy_kd.teacher import Teacher

PathLike = str | Path


def _config(cls: type, job: str, options: dict[str, Any]) -> Any:
    """``cls`` from keyword options; paths become strings, as the config fields hold them."""
    plain = {k: str(v) if isinstance(v, Path) else v for k, v in options.items()}
    # the source names the call, so an unknown option reads "policy_kd.distill_student(): unknown option(s) ..."
    return config_from_mapping(cls, plain, source=f"policy_kd.{job}()")


def train_teacher(env: str, out: PathLike, *, algo: str = "dqn", **options: Any) -> Path:
    """Train an SB3 teacher with the tuned preset for ``env`` (``policy-kd train-teacher``).

    :param env: Gymnasium environment id, e.g. ``"CartPole-v1"``.
    :param out: run folder to create.
    :param algo: ``dqn``, ``qrdqn``, ``ppo``, ``a2c``, ``sac``, ``tqc``, ``td3`` or ``ddpg``.
    :param options: any other ``train-teacher`` option (``seed``, ``n_timesteps``, ``eval_freq``, ``force``...).
    :return: the run folder (``teacher.json``, ``best_model.zip``, ...).

    Example::

        teacher = policy_kd.train_teacher("CartPole-v1", "runs/teacher", n_timesteps=50_000)
    """
    from policy_kd.teacher import TrainTeacherConfig
    from policy_kd.teacher import train_teacher as run

    return run(
        _config(TrainTeacherConfig, "train_teacher", {"env": env, "out": out, "algo": algo, **options})
    )


def load_teacher(path: PathLike, env: str | None = None) -> Teacher:
    """Load a teacher: a ``train-teacher`` or rl-baselines3-zoo run folder, ``hf://ORG/REPO``, or an SB3
    ``.zip`` (then ``env`` is required). Its ``.zip``/``.pkl`` files are unpickled code: load only trusted ones.

    :return: a :class:`policy_kd.teacher.Teacher`; ``teacher.label(obs)`` gives its outputs and greedy actions.

    Example::

        teacher = policy_kd.load_teacher("runs/teacher")
        labels = teacher.label(obs_batch)  # labels.outputs (batch, n_actions), labels.greedy (batch,)
    """
    from policy_kd.teacher import load_teacher as load

    return load(path, env)


def record_buffer(teacher: PathLike, out: PathLike, *, steps: int = 50_000, **options: Any) -> Path:
    """Let the teacher act and record its outputs at every state into a buffer (``policy-kd record``).

    :param teacher: teacher run folder, zoo folder, ``hf://ORG/REPO`` or SB3 ``.zip`` (with ``env=...``).
    :param out: buffer folder to create.
    :param steps: transitions to record.
    :param options: any other ``record`` option (``behaviour``, ``epsilon``, ``n_envs``, ``seed``, ``force``...).
    :return: the buffer folder; open it with :func:`open_buffer`.

    Example::

        buffer = policy_kd.record_buffer("runs/teacher", "runs/buffer", steps=50_000)
    """
    from policy_kd.record import RecordConfig, record

    return record(
        _config(RecordConfig, "record_buffer", {"teacher": teacher, "out": out, "steps": steps, **options})
    )


def open_buffer(path: PathLike, *, verify: bool = True) -> Buffer:
    """Open a buffer read-only; ``verify`` checks every chunk against its sha256 first.

    :return: a :class:`policy_kd.buffer.Buffer`: ``buf.rows``, ``buf.field("teacher")`` (memory-mapped),
        ``buf.meta`` (env, spaces, teacher).

    Example::

        buf = policy_kd.open_buffer("runs/buffer")
        q_values = buf.field("teacher")  # (rows, n_actions)
    """
    from policy_kd.buffer import Buffer

    return Buffer.open(path, verify=verify)


def distill_student(buffer: PathLike, out: PathLike, **options: Any) -> Path:
    """Train a student on a buffer (``policy-kd distill``).

    :param buffer: buffer folder written by :func:`record_buffer`.
    :param out: student folder to create.
    :param options: any other ``distill`` option (``params_fraction``, ``loss``, ``tau``, ``steps``,
        ``hidden``, ``seed``, ``force``...).
    :return: the student folder; load it with :func:`load_student`.

    Example::

        student = policy_kd.distill_student("runs/buffer", "runs/student", params_fraction=0.01, loss="kl")
    """
    from policy_kd.distill import DistillConfig, distill

    return distill(_config(DistillConfig, "distill_student", {"buffer": buffer, "out": out, **options}))


def evaluate_students(
    teacher: PathLike, students: PathLike | Sequence[PathLike] = (), **options: Any
) -> dict[str, Any]:
    """Play the teacher and each student on the same seeded episodes and compare them (``policy-kd evaluate``).

    :param teacher: teacher run folder, zoo folder, ``hf://ORG/REPO`` or SB3 ``.zip`` (with ``env=...``).
    :param students: one student (a distill folder or an export folder) or several; none scores the teacher alone.
    :param options: any other ``evaluate`` option (``episodes``, ``buffer``, ``mode``, ``out``...).
    :return: the ``eval.json`` contents (also written to ``out`` when given).

    Example::

        result = policy_kd.evaluate_students("runs/teacher", "runs/student", episodes=100)
        result["normalized_score"]["value"], result["student"]["agreement"]
    """
    from policy_kd.evaluate import EvaluateConfig, evaluate

    listed = [students] if isinstance(students, str | Path) else list(students)
    opts = {"teacher": teacher, "student": [str(s) for s in listed], **options}
    return evaluate(_config(EvaluateConfig, "evaluate_students", opts))


def export_student(student: PathLike, out: PathLike, *, format: str = "onnx", **options: Any) -> Path:
    """Export a student and check it against the eager one (``policy-kd export``).

    :param student: a student folder from :func:`distill_student`.
    :param out: folder for the exported file and ``export.json``.
    :param format: ``onnx``, ``torchscript``, ``int8``, ``numpy`` or ``sb3``.
    :param options: ``parity_rows``, ``force``.
    :return: the export folder; :func:`load_student` and ``evaluate_students`` accept it.

    Example::

        exported = policy_kd.export_student("runs/student", "runs/student_numpy", format="numpy")
    """
    from policy_kd.export import ExportConfig
    from policy_kd.export import export_student as run

    opts = {"student": student, "out": out, "format": format, **options}
    return run(_config(ExportConfig, "export_student", opts))


class StudentPolicy:
    """A loaded student with SB3's ``predict`` signature, so SB3's ``evaluate_policy`` (and any code written
    for an SB3 model) can run it. ``student`` is the loaded student itself (its ``info`` is ``student.json``)."""

    def __init__(self, student: Any) -> None:
        self.student = student
        self.info: dict[str, Any] = student.info
        self._obs_ndim = len(student.info["spec"]["obs_shape"])

    def predict(
        self,
        observation: np.ndarray,
        state: Any = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = True,
    ) -> tuple[np.ndarray, None]:
        """Actions for one observation or a batch; ``(actions, None)`` as SB3 returns (a student has no
        recurrent state, so ``state`` and ``episode_start`` are ignored)."""
        obs = np.asarray(observation)
        single = obs.ndim == self._obs_ndim  # SB3's predict also takes one unbatched observation
        actions = np.asarray(self.student.predict(obs[None] if single else obs, deterministic))
        return (actions[0] if single else actions), None


def load_student(path: PathLike) -> StudentPolicy:
    """Load a student: a distill folder (its best weights), a ``.pt`` inside one, or an export folder.

    :return: a :class:`StudentPolicy` whose ``predict(obs, deterministic=True)`` returns ``(actions, None)``
        like an SB3 model's.

    Example::

        from stable_baselines3.common.evaluation import evaluate_policy

        policy = policy_kd.load_student("runs/student")
        mean, std = evaluate_policy(policy, gym.make("CartPole-v1"), n_eval_episodes=10)
    """
    from policy_kd.export import is_export, load_exported
    from policy_kd.students import load_student as load_eager

    if not Path(path).exists():
        raise PolicyKDError(f"student not found: {path} (pass a distill --out folder or an export folder)")
    return StudentPolicy(load_exported(path) if is_export(path) else load_eager(path))
