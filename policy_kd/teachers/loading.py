"""load_teacher: find where a teacher lives and load it (without unpickling more than SB3 must), old-gym
files included."""

from __future__ import annotations

import base64
import binascii
import importlib
import io
import os
import pickle
import sys
import warnings
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from stable_baselines3.common.preprocessing import is_image_space
from stable_baselines3.common.vec_env import (
    VecNormalize,
    VecTransposeImage,
)

from policy_kd.envs import ensure_registered
from policy_kd.errors import PolicyKDError
from policy_kd.teachers.protocol import BaseTeacher, TeacherProtocol
from policy_kd.teachers.sb3 import _detect_algo, _zip_data, algo_class
from policy_kd.teachers.sources import (
    HUB_PREFIX,
    TEACHER_FILE,
    _hub_folder,
    _run_folder_source,
    _Source,
    _zoo_params_dir,
    _zoo_source,
)
from policy_kd.teachers.teacher import Teacher
from policy_kd.teachers.vec_env import _vec_env

UNPICKLE_WARNING = "a .zip or .pkl teacher file is unpickled code: load only files you trust"
PY_PREFIX = "py:"
"""``--teacher py:PKG.MODULE:NAME``: a teacher made by a Python factory (code execution, like a ``.zip``)."""


def load_py_teacher(spec: str, env_id: str | None = None) -> BaseTeacher:
    """Import ``PKG.MODULE`` of ``py:PKG.MODULE:NAME``, call ``NAME()`` and check that it returned a teacher
    (:class:`~policy_kd.teachers.protocol.TeacherProtocol`); bind it to ``env_id`` if given."""
    module_name, sep, attr = spec[len(PY_PREFIX) :].partition(":")
    if not sep or not module_name or not attr.isidentifier():
        raise PolicyKDError(
            f"bad teacher {spec!r}; write py:PKG.MODULE:NAME (NAME a function returning a teacher)"
        )
    # as `python -m` does: modules in the current directory import without installing them
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.append(os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise PolicyKDError(
            f"teacher {spec}: cannot import {module_name} ({exc}); install it or run from the folder that holds it"
        ) from None
    factory = getattr(module, attr, None)
    if factory is None:
        raise PolicyKDError(
            f"teacher {spec}: module {module_name} has no {attr!r}; name a factory it defines"
        )
    teacher = factory() if callable(factory) and not isinstance(factory, TeacherProtocol) else factory
    if not isinstance(teacher, TeacherProtocol):
        raise PolicyKDError(
            f"teacher {spec}: {attr}() returned a {type(teacher).__name__}, not a teacher; return "
            "policy_kd.teachers.from_callable(...) or from_module(...)"
        )
    if env_id is not None and getattr(teacher, "env_id", None) != env_id:
        bind = getattr(teacher, "bind", None)
        if bind is None:
            raise PolicyKDError(f"teacher {spec} acts in {teacher.env_id}, not {env_id}; drop --env")
        bind(env_id)
    if getattr(teacher, "env_id", None) is None:
        raise PolicyKDError(f"teacher {spec} names no environment; pass --env ENV_ID")
    teacher.source = spec
    return teacher


def load_teacher(path: str | Path, env_id: str | None = None, *, algo: str | None = None) -> Teacher:
    """Load a teacher to act and label.

    ``path`` is one of:

    - a train-teacher run folder (``teacher.json`` names the model, env, normalisation and frame stack);
    - an rl-baselines3-zoo run folder such as ``logs/ppo/Acrobot-v1_1`` (``<env>.zip``, else
      ``best_model.zip``, and ``<env>/args.yml``, ``config.yml``, ``vecnormalize.pkl``): the algo and env come
      from ``args.yml``; ``normalize``, ``frame_stack``, ``env_kwargs`` and ``env_wrapper`` (an allow-list of
      known wrappers, see ``policy_kd.envs.ZOO_WRAPPERS``) from ``config.yml``, read as plain YAML (never
      evaluated). Like the zoo's own ``enjoy``, the final model is paired with ``vecnormalize.pkl``;
    - ``hf://ORG/REPO[@REVISION]``: a zoo agent on the Hugging Face Hub (``hf://sb3/dqn-CartPole-v1``),
      downloaded into the Hub cache (the ``hub`` extra) and loaded as a zoo run folder;
    - a plain SB3 ``.zip``, with ``env_id`` saying where it acts (no normalisation, no frame stacking).

    Files saved with OpenAI ``gym`` (the zoo's published agents, SB3 1.x) load without it. ``env_id`` may name
    another version of the env a folder's teacher was trained on (e.g. ``LunarLander-v3`` for
    ``LunarLander-v2``) if the spaces match; ``Teacher.trained_env_id`` then says where it was trained.

    ``algo`` overrides the detected algorithm (dqn, qrdqn, ppo, a2c). **Security: an SB3 ``.zip`` and a
    ``vecnormalize.pkl`` are unpickled, which runs code stored in them: load only files you trust.**

    ``py:PKG.MODULE:NAME`` imports ``PKG.MODULE`` (from the installed packages or the current directory)
    and calls ``NAME()``, a factory that returns a teacher that is not an SB3 model (see
    :func:`~policy_kd.teachers.from_callable`); ``env_id`` binds it to an environment. **This runs the
    module's code, as a ``.zip`` does: name only modules you trust.**
    """
    given = str(path)
    if given.startswith(PY_PREFIX):  # not an SB3 Teacher, but the same protocol (BaseTeacher)
        return load_py_teacher(given, env_id)  # type: ignore[return-value]
    path = _hub_folder(given) if given.startswith(HUB_PREFIX) else Path(path)
    if path.is_dir():
        params = _zoo_params_dir(path)
        if (path / TEACHER_FILE).is_file():
            source = _run_folder_source(path, env_id, algo)
        elif params is not None:
            source = _zoo_source(path, params, env_id, algo)
        elif given.startswith(HUB_PREFIX):
            raise PolicyKDError(
                f"{given} holds no rl-baselines3-zoo agent (no args.yml); pass a repository such as hf://sb3/dqn-CartPole-v1"
            )
        elif (path / "best_model.zip").is_file():
            raise PolicyKDError(
                f"{path} has no {TEACHER_FILE} (training did not finish); pass {path / 'best_model.zip'} with --env"
            )
        else:
            raise PolicyKDError(
                f"{path} is not a teacher run folder (no {TEACHER_FILE}, no zoo <env>/args.yml); "
                "pass a train-teacher --out folder, a zoo run folder, or an SB3 .zip with --env"
            )
    elif path.is_file():
        if env_id is None:
            raise PolicyKDError(
                f"{path} is a plain SB3 model; say which environment it acts in with --env ENV_ID"
            )
        ensure_registered(env_id)
        source = _Source(zip_path=path, env_id=env_id, algo=algo)
    else:
        raise PolicyKDError(
            f"teacher not found: {path} (expected a train-teacher run folder, a zoo run folder, hf://ORG/REPO or an SB3 .zip)"
        )
    teacher = _load_source(source)
    teacher.source = given if given.startswith(HUB_PREFIX) else str(Path(given).resolve())
    return teacher


class _GymCompatUnpickler(pickle.Unpickler):
    """Unpickles files saved with OpenAI ``gym`` (SB3 1.x): its ``gym.spaces.*`` classes are read as
    Gymnasium's, which took them over with the same names and accept their pickled state (and numpy 1.x's
    ``numpy.core`` as numpy 2's ``numpy._core``, without its deprecation warning)."""

    def find_class(self, module: str, name: str) -> Any:
        if module == "gym" or module.startswith("gym."):
            module = "gymnasium" + module[3:]
        elif module.startswith("numpy.core.") and hasattr(np, "_core"):  # numpy 1.x arrays, read by numpy 2
            module = "numpy._core." + module[len("numpy.core.") :]
        return super().find_class(module, name)


def _stored_space(data: dict[str, Any], key: str, zip_path: Path) -> gym.Space:
    """The ``observation_space``/``action_space`` pickled in an SB3 ``.zip``'s data, read without ``gym``."""
    entry = data.get(key)
    try:
        space = _GymCompatUnpickler(io.BytesIO(base64.b64decode(entry[":serialized:"]))).load()  # type: ignore[index]
    except (
        TypeError,
        KeyError,
        binascii.Error,
        pickle.UnpicklingError,
        ImportError,
        AttributeError,
        EOFError,
    ) as exc:
        why = f"{type(exc).__name__}: {exc}".splitlines()[0]
        raise PolicyKDError(
            f"could not read the {key} stored in {zip_path} ({why}); is it an SB3 model?"
        ) from None
    if not isinstance(space, gym.Space):
        raise PolicyKDError(f"{zip_path} stores {key} {space!r}, not a space; is it an SB3 model?")
    return space


def _network_obs_space(stored: gym.Space, env_space: gym.Space) -> gym.Space | None:
    """The env's observation space as the teacher's network takes it, or None if the teacher cannot take it.

    SB3 stores channel-last images transposed to channels-first (VecTransposeImage); preprocessing (uint8
    images are scaled by 1/255) must agree too. Bounds of non-image spaces may differ (a retired env version
    with tighter bounds): the network never reads them.
    """
    if not isinstance(stored, gym.spaces.Box) or not isinstance(env_space, gym.spaces.Box):
        return env_space if stored == env_space else None
    net_space = env_space
    if stored.shape != env_space.shape and is_image_space(env_space, check_channels=False):
        net_space = VecTransposeImage.transpose_space(env_space)
    same_kind = is_image_space(stored, check_channels=False) == is_image_space(
        net_space, check_channels=False
    )
    return net_space if stored.shape == net_space.shape and same_kind else None


def _load_source(src: _Source) -> Teacher:
    if not src.zip_path.is_file():
        raise PolicyKDError(f"teacher model file missing: {src.zip_path}; retrain the teacher")
    algo = src.algo or _detect_algo(src.zip_path)
    cls = algo_class(algo)
    probe = src.make_vec_env(1, None)
    obs_space, act_space = probe.observation_space, probe.action_space
    probe.close()
    data = _zip_data(src.zip_path)
    stored_obs = _stored_space(data, "observation_space", src.zip_path)
    stored_act = _stored_space(data, "action_space", src.zip_path)
    net_obs = _network_obs_space(stored_obs, obs_space)
    if net_obs is None or stored_act != act_space:
        trained = f" (trained on {src.trained_env_id})" if src.trained_env_id else ""
        raise PolicyKDError(
            f"teacher {src.zip_path}{trained} expects observations {stored_obs} and actions {stored_act}, "
            f"but {src.env_id} has {obs_space} and {act_space}; pass the environment it was trained on "
            "(a frame-stacked or normalised teacher loads from its run folder)"
        )
    # As rl_zoo3 loads old models: the spaces come from the env (SB3 1.x pickled gym's, which need gym),
    # and the training schedules, pickled functions that may not unpickle on another Python, become
    # constants (a teacher only acts).
    custom: dict[str, Any] = {"observation_space": net_obs, "action_space": act_space}
    custom |= {
        key: _frozen_schedule
        for key, value in data.items()
        if isinstance(value, dict) and value.get(":type:") == "<class 'function'>"
    }
    try:
        with warnings.catch_warnings():
            # SB3 >= 2.4 truncates the optimizer state of older DQN files, which a teacher never uses
            warnings.filterwarnings("ignore", "You are probably loading a DQN model saved with SB3 < 2.4")
            # arrays pickled by numpy 1.x name numpy.core, which numpy 2 reads with a deprecation warning
            warnings.filterwarnings("ignore", "numpy.core", DeprecationWarning)
            model = cls.load(src.zip_path, device="cpu", custom_objects=custom)
    except Exception as exc:
        why = f"{type(exc).__name__}: {exc}".splitlines()[0]
        raise PolicyKDError(f"could not load teacher {src.zip_path} ({UNPICKLE_WARNING}): {why}") from None
    teacher = Teacher(model=model, algo=algo, path=str(src.zip_path), **src.recipe())
    if src.vecnorm_path is not None:
        teacher.vec_normalize = _load_vec_normalize(src.vecnorm_path, teacher)
    if src.trained_env_id is not None:
        print(
            f"policy-kd: warning: teacher trained on {src.trained_env_id} runs on {src.env_id} "
            "(same observation and action spaces)",
            file=sys.stderr,
        )
    return teacher


def _frozen_schedule(_progress_remaining: float) -> float:
    return 0.0


def _load_vec_normalize(path: Path, teacher: Teacher) -> VecNormalize:
    if not path.is_file():
        raise PolicyKDError(f"normalisation statistics missing: {path}; retrain the teacher")
    # The statistics cover one frame when the zoo normalised before stacking, the whole stack otherwise.
    stack = None if teacher.normalize_before_stack else teacher.frame_stack
    dummy = _vec_env(lambda: teacher.make_env(stacked=False), 1, None, stack)
    try:
        with path.open("rb") as f:
            vec_normalize = _GymCompatUnpickler(f).load()
    except Exception as exc:
        why = f"{type(exc).__name__}: {exc}".splitlines()[0]
        raise PolicyKDError(
            f"could not load normalisation statistics {path} ({UNPICKLE_WARNING}): {why}"
        ) from None
    if not isinstance(vec_normalize, VecNormalize):
        raise PolicyKDError(f"{path} holds a {type(vec_normalize).__name__}, not VecNormalize statistics")
    stored = vec_normalize.observation_space
    if getattr(stored, "shape", None) != dummy.observation_space.shape:
        raise PolicyKDError(
            f"normalisation statistics {path} are for observations {getattr(stored, 'shape', stored)}, "
            f"but {teacher.env_id} has {dummy.observation_space.shape}; pass the teacher's own vecnormalize.pkl"
        )
    # the env's spaces, as for the model (the stored ones may be old gym's)
    vec_normalize.observation_space, vec_normalize.action_space = dummy.observation_space, dummy.action_space
    vec_normalize.set_venv(dummy)
    vec_normalize.training = False
    return vec_normalize
