"""Student networks, looked up by name, sized by explicit widths or by a fraction of the teacher's parameters.

A student maps a batch of raw observations to one output per action (logits, or Q-values when trained
with ``mse``) and follows the same ``predict(obs, deterministic)`` protocol as a loaded teacher. It is
saved as ``student.json`` (architecture, sizes, env, action space: everything needed to rebuild it) plus
plain state-dict weight files, loaded with ``torch.load(weights_only=True)``: no pickle of code.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from policy_kd.errors import PolicyKDError
from policy_kd.run import write_json

STUDENT_FILE = "student.json"
ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh, "elu": nn.ELU, "gelu": nn.GELU}


@dataclass(frozen=True)
class StudentSpec:
    """Everything needed to rebuild a student network."""

    arch: str
    """Registry name (``mlp``)."""
    obs_shape: tuple[int, ...]
    """Shape of one raw observation."""
    n_outputs: int
    """Outputs per state (number of discrete actions)."""
    hidden: tuple[int, ...]
    """Hidden layer widths."""
    activation: str = "relu"
    """Hidden activation: relu, tanh, elu or gelu."""


class MLPStudent(nn.Module):
    """Standardise -> Flatten -> [Linear -> activation] * len(hidden) -> Linear(n_outputs).

    The standardisation uses the recorded observations' mean and std, held as buffers (saved with the
    weights, not trained, not counted as parameters): a tiny network otherwise spends its capacity on
    inputs of very different scales (CartPole's pole angle is ~100x smaller than its velocities).
    """

    def __init__(self, spec: StudentSpec):
        super().__init__()
        if spec.activation not in ACTIVATIONS:
            raise PolicyKDError(
                f"unknown activation {spec.activation!r}; choose one of {', '.join(ACTIVATIONS)}"
            )
        self.spec = spec
        in_dim = int(np.prod(spec.obs_shape))
        self.register_buffer("obs_mean", torch.zeros(spec.obs_shape))
        self.register_buffer("obs_std", torch.ones(spec.obs_shape))
        layers: list[nn.Module] = [nn.Flatten()]
        for width in spec.hidden:
            layers += [nn.Linear(in_dim, width), ACTIVATIONS[spec.activation]()]
            in_dim = width
        layers.append(nn.Linear(in_dim, spec.n_outputs))
        self.net = nn.Sequential(*layers)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        # (batch, *obs_shape) -> (batch, n_outputs)
        return self.net((obs.float() - self.obs_mean) / self.obs_std)

    def set_obs_stats(self, obs: torch.Tensor) -> None:
        """Standardise inputs with the mean/std of ``obs`` ``(N, *obs_shape)``; constant inputs keep std 1."""
        obs = obs.float()
        std = obs.std(dim=0)
        self.obs_mean.copy_(obs.mean(dim=0))
        self.obs_std.copy_(torch.where(std > 1e-6, std, torch.ones_like(std)))

    @torch.no_grad()
    def predict(self, obs: np.ndarray, deterministic: bool = True) -> np.ndarray:
        """Actions for a batch of raw observations; greedy unless ``deterministic`` is False (then sampled)."""
        out = self(torch.as_tensor(np.asarray(obs)))
        if deterministic:
            return out.argmax(dim=-1).numpy()
        return torch.distributions.Categorical(logits=out).sample().numpy()


STUDENTS: dict[str, Callable[[StudentSpec], nn.Module]] = {"mlp": MLPStudent}


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def mlp_params(in_dim: int, out_dim: int, hidden: tuple[int, ...]) -> int:
    """Parameter count of an MLP with these layer widths (weights and biases)."""
    dims = [in_dim, *hidden, out_dim]
    return sum(a * b + b for a, b in itertools.pairwise(dims))


def width_for_budget(budget: int, in_dim: int, out_dim: int, n_layers: int) -> int:
    """The largest equal width for ``n_layers`` hidden layers whose MLP has at most ``budget`` parameters."""
    if mlp_params(in_dim, out_dim, (1,) * n_layers) > budget:
        raise PolicyKDError(
            f"even width 1 needs {mlp_params(in_dim, out_dim, (1,) * n_layers)} parameters, over the budget of "
            f"{budget}; raise --params-fraction or use fewer --layers"
        )
    # Parameters grow monotonically with width, so a doubling search then bisection finds the largest fit.
    lo, hi = 1, 2
    while mlp_params(in_dim, out_dim, (hi,) * n_layers) <= budget:
        lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if mlp_params(in_dim, out_dim, (mid,) * n_layers) <= budget:
            lo = mid
        else:
            hi = mid
    return lo


def size_student(
    arch: str,
    obs_shape: tuple[int, ...],
    n_outputs: int,
    *,
    hidden: tuple[int, ...] | None,
    params_fraction: float | None,
    teacher_params: int | None,
    layers: int = 2,
    activation: str = "relu",
) -> StudentSpec:
    """A spec from explicit ``hidden`` widths, or solved for ``params_fraction`` x ``teacher_params``."""
    if arch not in STUDENTS:
        raise PolicyKDError(f"unknown student {arch!r}; choose one of {', '.join(STUDENTS)}")
    if hidden is None:
        if params_fraction is None or teacher_params is None:
            raise PolicyKDError("size the student with --hidden W [W ...] or --params-fraction F")
        if not params_fraction > 0:
            raise PolicyKDError(f"--params-fraction must be > 0, got {params_fraction}")
        budget = math.floor(params_fraction * teacher_params)
        width = width_for_budget(budget, int(np.prod(obs_shape)), n_outputs, layers)
        hidden = (width,) * layers
    if any(w <= 0 for w in hidden):
        raise PolicyKDError(f"--hidden widths must be > 0, got {hidden}")
    return StudentSpec(
        arch=arch,
        obs_shape=tuple(obs_shape),
        n_outputs=n_outputs,
        hidden=tuple(hidden),
        activation=activation,
    )


def build_student(spec: StudentSpec) -> nn.Module:
    return STUDENTS[spec.arch](spec)


def save_student(out: Path, spec: StudentSpec, info: dict[str, Any]) -> None:
    """Write ``student.json``: the spec plus ``info`` (env id, action space, weights file, teacher...)."""
    write_json(
        out / STUDENT_FILE, {"format": "policy_kd.student", "version": 1, "spec": asdict(spec), **info}
    )


@dataclass
class LoadedStudent:
    """A student network rebuilt from disk, with the metadata it was saved with."""

    net: nn.Module
    info: dict[str, Any]
    weights_path: Path

    def predict(self, obs: np.ndarray, deterministic: bool = True) -> np.ndarray:
        return self.net.predict(obs, deterministic)  # type: ignore[operator]

    def file_bytes(self) -> int:
        return self.weights_path.stat().st_size


def load_student(path: str | Path) -> LoadedStudent:
    """Load a student from a distill folder (its best weights) or from a weights file inside one."""
    path = Path(path)
    if path.is_file() and path.suffix == ".pt":
        folder, weights = path.parent, path
    elif path.is_dir():
        folder, weights = path, None
    else:
        raise PolicyKDError(f"student not found: {path} (expected a distill --out folder)")
    meta_path = folder / STUDENT_FILE
    if not meta_path.is_file():
        raise PolicyKDError(
            f"{folder} is not a student folder (no {STUDENT_FILE}); pass a distill --out folder"
        )
    try:
        info = json.loads(meta_path.read_text())
        s = info["spec"]
        spec = StudentSpec(
            arch=s["arch"],
            obs_shape=tuple(s["obs_shape"]),
            n_outputs=int(s["n_outputs"]),
            hidden=tuple(s["hidden"]),
            activation=s.get("activation", "relu"),
        )
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise PolicyKDError(f"{meta_path} is damaged ({exc}); distil the student again") from None
    if spec.arch not in STUDENTS:
        raise PolicyKDError(
            f"{meta_path} names student {spec.arch!r}, which this policy_kd does not know; upgrade policy-kd"
        )
    weights = weights or folder / info.get("weights", "best.pt")
    if not weights.is_file():
        raise PolicyKDError(f"student weights missing: {weights}; distil the student again")
    net = build_student(spec)
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        net.load_state_dict(state)
    except Exception as exc:
        raise PolicyKDError(
            f"could not load student weights {weights}: {type(exc).__name__}; distil the student again"
        ) from None
    net.eval()
    return LoadedStudent(net=net, info=info, weights_path=weights)
