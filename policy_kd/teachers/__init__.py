"""Teachers: train SB3 DQN/QR-DQN/PPO/A2C/SAC/TQC/TD3/DDPG from the presets in ``agents/``, and load them to
act and label.

A loaded :class:`Teacher` gives, in one forward pass, both the outputs the buffer records and the greedy
action taken from them, so what the teacher does and what it is recorded to know can never disagree.
What the outputs are (``Teacher.kind``):

========================  ===============================  ==============================================
kind                      teacher                          extra fields
========================  ===============================  ==============================================
``q_values`` (DQN)        Q-values ``(n_actions,)``        none
``quantiles`` (QR-DQN)    mean of the quantiles            ``teacher_quantiles`` ``(n_quantiles, n_actions)``
``logits`` (PPO/A2C)      action logits ``(n_actions,)``   none
``gaussian`` (PPO/A2C)    Gaussian mean ``(action_dim,)``  ``teacher_log_std`` ``(action_dim,)``
``squashed_gaussian``     pre-tanh mean ``(action_dim,)``  ``teacher_log_std`` ``(action_dim,)`` per state
``deterministic``         action in [-1, 1]                none
========================  ===============================  ==============================================

``squashed_gaussian`` is SAC's and TQC's, ``deterministic`` TD3's and DDPG's (their actor's tanh output, the
action scale their critic takes). ``record --record-q`` adds ``teacher_q`` ``()`` for these four: the
critic's value at the teacher's deterministic action.

(``squashed_gaussian``: a Gaussian policy whose actions SB3 squashes with tanh, gSDE with
``squash_output``; the fields are the pre-squash mean and log std, as for ``gaussian``. A MultiDiscrete or
MultiBinary PPO/A2C teacher is ``logits`` too: every component's logits side by side, a MultiBinary bit as
the 2-way logits ``[0, l]``; ``Teacher.nvec`` says how they split. With ``Teacher.values`` set, as
``record --values`` does, a PPO/A2C teacher also labels ``teacher_value``, its critic's V(s).)

Teachers load from a train-teacher run folder, an rl-baselines3-zoo run folder (also ``hf://ORG/REPO`` from
the Hugging Face Hub), or a plain SB3 ``.zip``; files SB3 1.x saved with OpenAI ``gym`` load without it.
Loading a ``.zip`` (and a ``vecnormalize.pkl``) unpickles code (SB3 stores classes and schedules with
cloudpickle): load only files you trust.

Teachers that are not SB3 models (a CleanRL checkpoint, a ``torch.nn.Module``, a scripted controller, kind
``actions`` for one that exposes only what it does) implement the same protocol
(:mod:`~policy_kd.teachers.protocol`): :func:`from_callable`, :func:`from_module`, and on the command line
``--teacher py:PKG.MODULE:NAME`` (:mod:`~policy_kd.teachers.custom`, examples in
:mod:`~policy_kd.teachers.examples`).

Modules: :mod:`~policy_kd.teachers.sb3` (every per-algorithm access), :mod:`~policy_kd.teachers.presets`
(``agents/<algo>.yml``), :mod:`~policy_kd.teachers.train` (train-teacher), :mod:`~policy_kd.teachers.vec_env`,
:mod:`~policy_kd.teachers.teacher` (the :class:`Teacher` adapter), :mod:`~policy_kd.teachers.sources` (run, zoo
and Hub folders) and :mod:`~policy_kd.teachers.loading` (:func:`load_teacher`).
"""

from policy_kd.teachers.custom import CustomTeacher, from_callable, from_module
from policy_kd.teachers.loading import PY_PREFIX, UNPICKLE_WARNING, load_teacher
from policy_kd.teachers.presets import algo_kwargs, load_preset
from policy_kd.teachers.protocol import KINDS, BaseTeacher, TeacherProtocol, teacher_digest
from policy_kd.teachers.sb3 import ALGOS, CONTRIB_HINT, algo_class, policy_param_count
from policy_kd.teachers.sources import HUB_HINT, HUB_PREFIX, TEACHER_FILE, read_zoo_yaml
from policy_kd.teachers.teacher import Labels, Teacher
from policy_kd.teachers.train import (
    CHECKPOINT_DIR,
    TrainTeacherConfig,
    save_checkpoint,
    save_model,
    save_vecnormalize,
    train_teacher,
)

__all__ = [
    "ALGOS",
    "CHECKPOINT_DIR",
    "CONTRIB_HINT",
    "HUB_HINT",
    "HUB_PREFIX",
    "KINDS",
    "PY_PREFIX",
    "TEACHER_FILE",
    "UNPICKLE_WARNING",
    "BaseTeacher",
    "CustomTeacher",
    "Labels",
    "Teacher",
    "TeacherProtocol",
    "TrainTeacherConfig",
    "algo_class",
    "algo_kwargs",
    "from_callable",
    "from_module",
    "load_preset",
    "load_teacher",
    "policy_param_count",
    "read_zoo_yaml",
    "save_checkpoint",
    "save_model",
    "save_vecnormalize",
    "teacher_digest",
    "train_teacher",
]
