"""Where a teacher lives: a train-teacher run folder, an rl-baselines3-zoo folder, or ``hf://ORG/REPO`` on
the Hugging Face Hub; each is read into a :class:`_Source` (the model file and how to rebuild its env)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import yaml

from policy_kd.envs import ensure_registered, zoo_wrapper
from policy_kd.errors import PolicyKDError
from policy_kd.teachers.sb3 import ALGOS
from policy_kd.teachers.teacher import _EnvRecipe

TEACHER_FILE = "teacher.json"


@dataclass(kw_only=True)
class _Source(_EnvRecipe):
    """What load_teacher found: the model file, and how to rebuild the env the teacher saw."""

    zip_path: Path
    algo: str | None = None
    vecnorm_path: Path | None = None


def _resolve_env_id(trained_on: str, requested: str | None, what: str) -> tuple[str, str | None]:
    """Where a teacher trained on ``trained_on`` runs: ``(env_id, trained_env_id)``.

    ``--env`` may name another version of the same env (``LunarLander-v3`` for a ``LunarLander-v2``
    teacher, a version Gymnasium 1.x retired): it runs there, ``trained_env_id`` remembering where it
    was trained, if its observation and action spaces match (``_load_source`` checks them).
    """
    if requested is None or requested == trained_on:
        try:
            ensure_registered(trained_on)
        except PolicyKDError:
            others = _other_versions(trained_on)
            if requested is not None or not others:
                raise
            raise PolicyKDError(
                f"{what} was trained on {trained_on}, which this Gymnasium does not register (it has "
                f"{', '.join(others)}); run it there with --env {others[-1]} (its spaces are checked)"
            ) from None
        return trained_on, None
    if _env_family(requested) != _env_family(trained_on):
        raise PolicyKDError(
            f"{what} was trained on {trained_on}, not {requested}; drop --env or pick another teacher"
        )
    return requested, trained_on


def _env_family(env_id: str) -> tuple[str | None, str]:
    namespace, name, _ = gym.envs.registration.parse_env_id(env_id)
    return namespace, name


def _other_versions(env_id: str) -> list[str]:
    """The registered ids of ``env_id``'s env under another version, oldest first."""
    try:
        family = _env_family(env_id)
    except gym.error.Error:
        return []
    specs = [s for s in gym.registry.values() if (s.namespace, s.name) == family and s.id != env_id]
    return [s.id for s in sorted(specs, key=lambda s: s.version or 0)]


def _run_folder_source(path: Path, env_id: str | None, algo: str | None) -> _Source:
    meta_path = path / TEACHER_FILE
    try:
        meta = json.loads(meta_path.read_text())
        source = _Source(
            zip_path=path / meta["model"],
            env_id=meta["env_id"],
            algo=algo or meta["algo"],
            vecnorm_path=path / meta["vecnormalize"] if meta.get("vecnormalize") else None,
            frame_stack=meta.get("frame_stack"),
        )
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise PolicyKDError(
            f"{meta_path} is damaged ({exc}); retrain the teacher or pass its .zip with --env"
        ) from None
    source.env_id, source.trained_env_id = _resolve_env_id(source.env_id, env_id, f"teacher {path}")
    return source


class _ZooLoader(yaml.SafeLoader):
    """SafeLoader that reads the ``!!python/...`` tags PyYAML writes (rl-baselines3-zoo's ``config.yml``
    and ``args.yml`` are dumped OrderedDicts, possibly with tuples) as plain lists, mappings and strings.
    It never constructs a Python object nor imports anything."""


def _plain(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
    if isinstance(node, yaml.MappingNode):
        return loader.construct_mapping(node, deep=True)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    return loader.construct_scalar(node)  # type: ignore[arg-type]


_ZooLoader.add_constructor(None, _plain)  # type: ignore[arg-type]


def read_zoo_yaml(path: Path) -> dict[str, Any]:
    """A zoo ``config.yml``/``args.yml`` as a plain dict (a dumped OrderedDict is a list of [key, value])."""
    try:
        data = yaml.load(path.read_text(), Loader=_ZooLoader)  # _ZooLoader is a SafeLoader
    except (OSError, yaml.YAMLError) as exc:
        raise PolicyKDError(
            f"{path} is not readable YAML ({type(exc).__name__}); pass another run folder"
        ) from None
    # !!python/object/apply:collections.OrderedDict holds one argument: the list of [key, value] pairs.
    if isinstance(data, list) and len(data) == 1 and isinstance(data[0], list):
        data = data[0]
    if isinstance(data, list) and all(isinstance(p, list) and len(p) == 2 for p in data):
        data = {k: v for k, v in data}
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise PolicyKDError(f"{path} is not a zoo config (expected a mapping); pass another run folder")
    return data


def _zoo_params_dir(path: Path) -> Path | None:
    """Where a zoo run keeps ``args.yml``: ``<env>/`` in a ``logs/<algo>/<env>_1`` run, the folder itself
    in a Hugging Face ``sb3/<algo>-<env>`` repository."""
    if (path / "args.yml").is_file():
        return path
    dirs = [p for p in sorted(path.iterdir()) if p.is_dir() and (p / "args.yml").is_file()]
    return dirs[0] if len(dirs) == 1 else None


def _zoo_wrappers(value: Any, config_path: Path) -> tuple[tuple[str, dict[str, Any]], ...]:
    # The zoo accepts one import path, or a list of paths and {path: {kwarg: value}} mappings.
    if value is None:
        return ()
    items = value if isinstance(value, list) else [value]
    wrappers = []
    for item in items:
        if isinstance(item, str):
            name, kwargs = item, {}
        elif isinstance(item, dict) and len(item) == 1:
            ((name, kwargs),) = item.items()
            if kwargs is not None and not isinstance(kwargs, dict):
                raise PolicyKDError(
                    f"{config_path}: env_wrapper {name} arguments must be a mapping, got {kwargs!r}"
                )
            name, kwargs = str(name), dict(kwargs or {})
        else:
            raise PolicyKDError(
                f"{config_path}: cannot read env_wrapper entry {item!r}; expected an import path"
            )
        zoo_wrapper(name, kwargs)  # refuses names off the allow-list and non-plain arguments, now
        wrappers.append((name, kwargs))
    return tuple(wrappers)


def _zoo_source(path: Path, params: Path, env_id: str | None, algo: str | None) -> _Source:
    """An rl-baselines3-zoo run folder: ``<env>.zip`` (or ``best_model.zip``), ``<env>/{args,config}.yml``."""
    args = read_zoo_yaml(params / "args.yml")
    config = read_zoo_yaml(params / "config.yml") if (params / "config.yml").is_file() else {}
    zoo_env, zoo_algo = args.get("env"), args.get("algo")
    if not isinstance(zoo_env, str) or not isinstance(zoo_algo, str):
        raise PolicyKDError(f"{params / 'args.yml'} names no env or algo; pass a complete zoo run folder")
    if zoo_algo not in ALGOS:
        raise PolicyKDError(
            f"zoo teacher {path} is {zoo_algo}; supported teacher algorithms are {', '.join(ALGOS)}"
        )
    run_env, trained_env_id = _resolve_env_id(zoo_env, env_id, f"zoo teacher {path}")
    # logs/<algo>/<env>_1/<env>.zip (else the run's best_model.zip); <algo>-<env>.zip on the Hub
    names = [
        f"{params.name}.zip",
        "best_model.zip",
        f"{zoo_algo}-{zoo_env.replace('/', '-')}.zip",
    ]
    zip_path = next((path / n for n in names if (path / n).is_file()), None)
    if zip_path is None:
        raise PolicyKDError(f"zoo run folder {path} has none of {', '.join(names)}; finish or rerun training")
    if config.get("vec_env_wrapper"):
        raise PolicyKDError(
            f"{params / 'config.yml'} uses vec_env_wrapper {config['vec_env_wrapper']!r}, which policy_kd cannot rebuild; "
            "use a teacher trained without it"
        )
    env_kwargs = args.get("env_kwargs") or config.get("env_kwargs") or {}
    if not isinstance(env_kwargs, dict) or not all(
        isinstance(v, (bool, int, float, str, type(None))) for v in env_kwargs.values()
    ):
        raise PolicyKDError(f"zoo teacher {path}: env_kwargs {env_kwargs!r} must map names to plain values")
    frame_stack = config.get("frame_stack")
    if frame_stack is not None and (not isinstance(frame_stack, int) or frame_stack < 1):
        raise PolicyKDError(
            f"{params / 'config.yml'}: frame_stack must be a positive integer, got {frame_stack!r}"
        )
    # vecnormalize.pkl in a run, vec_normalize.pkl on the Hub
    vecnorm_path = next(
        (params / n for n in ("vecnormalize.pkl", "vec_normalize.pkl") if (params / n).is_file()), None
    )
    if vecnorm_path is None and config.get("normalize") not in (None, False, "False", "false"):
        raise PolicyKDError(
            f"zoo teacher {path} was trained with normalize but {params / 'vecnormalize.pkl'} is missing; copy it back or retrain"
        )
    return _Source(
        zip_path=zip_path,
        env_id=run_env,
        trained_env_id=trained_env_id,
        algo=algo or zoo_algo,
        vecnorm_path=vecnorm_path,
        frame_stack=frame_stack,
        env_kwargs=dict(env_kwargs),
        env_wrappers=_zoo_wrappers(config.get("env_wrapper"), params / "config.yml"),
        raw_env=True,  # the zoo makes envs with plain gym.make; its env_wrapper does the rest
        normalize_before_stack=True,
    )


HUB_PREFIX = "hf://"
HUB_HINT = "pip install 'policy-kd[hub]'"
# What an sb3/<algo>-<env> repository holds beside the zoo's files: training curves and a video.
_HUB_SKIP = ["train_eval_metrics.zip", "*.mp4", "*.md", "*.json", "*.png", ".gitattributes"]


def _hub_folder(uri: str) -> Path:
    """The local snapshot of ``hf://ORG/REPO[@REVISION]`` in the Hugging Face cache, downloaded if missing."""
    repo_id, _, revision = uri[len(HUB_PREFIX) :].partition("@")
    if repo_id.count("/") != 1 or not all(repo_id.split("/")) or (revision == "" and "@" in uri):
        raise PolicyKDError(f"bad Hub teacher {uri!r}; write hf://ORG/REPO or hf://ORG/REPO@REVISION")
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import (
            HfHubHTTPError,
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )
    except ImportError:
        raise PolicyKDError(f"hf:// teachers need huggingface_hub; install it with: {HUB_HINT}") from None
    try:
        folder = snapshot_download(repo_id, revision=revision or None, ignore_patterns=_HUB_SKIP)
    except RepositoryNotFoundError:
        raise PolicyKDError(
            f"no Hugging Face model repository {repo_id} (or it is private: log in with `hf auth login`); "
            "check the name, e.g. hf://sb3/dqn-CartPole-v1"
        ) from None
    except RevisionNotFoundError:
        raise PolicyKDError(
            f"{repo_id} has no revision {revision!r} on the Hub; drop @{revision} or fix it"
        ) from None
    except LocalEntryNotFoundError:
        raise PolicyKDError(
            f"{uri} is not in the Hugging Face cache and the Hub cannot be reached (offline: HF_HUB_OFFLINE "
            "or no network); download it once with network access"
        ) from None
    except (HfHubHTTPError, OSError) as exc:
        why = f"{type(exc).__name__}: {exc}".splitlines()[0]
        raise PolicyKDError(f"could not download {uri} from the Hugging Face Hub ({why})") from None
    return Path(folder)
