"""Student networks, looked up by name, sized by explicit widths or by a fraction of the teacher's parameters.

A student maps a batch of raw observations to one output per action (logits, or Q-values when trained
with ``mse``; the action mean for a Gaussian head) and follows the same ``predict(obs, deterministic)`` protocol as a loaded teacher. It is
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
from policy_kd.heads import DISCRETE_HEADS, GAUSSIAN_HEADS, HEADS, rescale_to_bounds, to_bounds
from policy_kd.run import write_json

STUDENT_FILE = "student.json"
#: The convolutions a CNN student may have (``StudentSpec.conv``).
CONVS = ("standard", "separable")
#: The strides ``minatar_cnn``'s convolution may have (``StudentSpec.conv_stride``).
CONV_STRIDES = (1, 2)
ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh, "elu": nn.ELU, "gelu": nn.GELU}


@dataclass(frozen=True)
class StudentSpec:
    """Everything needed to rebuild a student network."""

    arch: str
    """Registry name: ``mlp``, ``nature_cnn`` or ``minatar_cnn``."""
    obs_shape: tuple[int, ...]
    """Shape of one raw observation (images channels-first or channels-last, as recorded)."""
    n_outputs: int
    """Outputs per state: number of discrete actions, or action dimensions for a Gaussian head."""
    hidden: tuple[int, ...]
    """Fully connected hidden widths (after the convolutions for a CNN)."""
    activation: str = "relu"
    """Hidden activation: relu, tanh, elu or gelu."""
    channels: tuple[int, ...] = ()
    """Convolution channels of a CNN student (empty for an MLP)."""
    pad_channels: int = 0
    """CNN students: zero-pad the input channels up to this many (a multi-task trunk shared by games with
    different channel counts); 0: no padding."""
    head: str = "discrete"
    """``discrete`` (logits), ``gaussian`` (action mean + state-independent log-std, actions clipped to
    the bounds), ``squashed_gaussian`` (pre-tanh mean, actions squashed into the bounds, as SAC),
    ``deterministic`` (tanh output: the action scaled to ``[-1, 1]``, rescaled to the bounds, as TD3/DDPG), or
    ``multi_discrete`` (one block of logits per component of a MultiDiscrete/MultiBinary action, ``nvec``)."""
    nvec: tuple[int, ...] = ()
    """``multi_discrete`` head: choices per action component (2 per bit of a MultiBinary); ``n_outputs`` is
    their sum. Empty for every other head."""
    conv: str = "standard"
    """CNN students: ``standard`` convolutions, or ``separable`` ones (each a depthwise kxk convolution,
    one filter per input channel, then a pointwise 1x1 convolution to the layer's channels)."""
    conv_stride: int = 1
    """``minatar_cnn``: stride of its convolution, 1 (the published network) or 2 (padded by 1, so the
    10x10 frame gives 5x5 feature maps instead of 8x8: a flatten 2.56x smaller)."""


class Student(nn.Module):
    """Standardise -> ``net[:-1]`` (the body: features) -> ``net[-1]`` (a linear head).

    The standardisation uses the recorded observations' mean and std, held as buffers (saved with the
    weights, not trained, not counted as parameters): a tiny network otherwise spends its capacity on
    inputs of very different scales (CartPole's pole angle is ~100x smaller than its velocities).
    ``features(obs)`` is the body's output, the layer that hint (feature) distillation matches to the
    teacher's. A Gaussian head adds a state-independent ``log_std`` parameter, as SB3's PPO has.
    """

    def __init__(self, spec: StudentSpec, body: list[nn.Module], feature_dim: int):
        super().__init__()
        if spec.head not in HEADS:
            raise PolicyKDError(f"unknown student head {spec.head!r}; choose one of {', '.join(HEADS)}")
        self.spec = spec
        self.feature_dim = feature_dim
        self.register_buffer("obs_mean", torch.zeros(spec.obs_shape))
        self.register_buffer("obs_std", torch.ones(spec.obs_shape))
        self.net = nn.Sequential(*body, nn.Linear(feature_dim, spec.n_outputs))
        if spec.head == "multi_discrete" and sum(spec.nvec) != spec.n_outputs:
            raise PolicyKDError(f"a multi_discrete student needs sum(nvec) = n_outputs, got {spec.nvec}")
        if spec.head in GAUSSIAN_HEADS:
            self.log_std = nn.Parameter(torch.zeros(spec.n_outputs))
        if spec.head not in DISCRETE_HEADS:
            self.register_buffer("action_low", -torch.ones(spec.n_outputs))
            self.register_buffer("action_high", torch.ones(spec.n_outputs))

    def _prepare(self, obs: torch.Tensor) -> torch.Tensor:
        return (obs.float() - self.obs_mean) / self.obs_std

    def features(self, obs: torch.Tensor) -> torch.Tensor:
        """The body's output ``(batch, feature_dim)`` for a batch of raw observations."""
        return self.net[:-1](self._prepare(obs))

    def head_outputs(self, features: torch.Tensor) -> torch.Tensor:
        """The head on the body's output: ``net[-1]``, then tanh for a ``deterministic`` head (its outputs
        are the action scaled to ``[-1, 1]``, as a TD3/DDPG actor's)."""
        out = self.net[-1](features)
        return torch.tanh(out) if self.spec.head == "deterministic" else out

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        # (batch, *obs_shape) -> (batch, n_outputs): logits, the Gaussian's (pre-squash) mean, or the
        # deterministic head's [-1, 1]-scaled action
        out = self.net(self._prepare(obs))  # one call of net: what the numpy export's tracer reads
        return torch.tanh(out) if self.spec.head == "deterministic" else out

    def set_obs_stats(self, obs: torch.Tensor) -> None:
        """Standardise inputs with the mean/std of ``obs`` ``(N, *obs_shape)``; constant inputs keep std 1."""
        obs = obs.float()
        std = obs.std(dim=0)
        self.obs_mean.copy_(obs.mean(dim=0))
        self.obs_std.copy_(torch.where(std > 1e-6, std, torch.ones_like(std)))

    def set_action_bounds(self, low: np.ndarray, high: np.ndarray) -> None:
        """Bounds a Gaussian head clips (or squashes) its actions into, as the env's Box says."""
        self.action_low.copy_(torch.as_tensor(low, dtype=torch.float32))
        self.action_high.copy_(torch.as_tensor(high, dtype=torch.float32))

    @torch.no_grad()
    def predict(self, obs: np.ndarray, deterministic: bool = True) -> np.ndarray:
        """Actions for a batch of raw observations: greedy/mean, or sampled when ``deterministic`` is False."""
        out = self(torch.as_tensor(np.asarray(obs)))
        if self.spec.head == "multi_discrete":  # one choice per component: (batch, len(nvec))
            parts = out.split(list(self.spec.nvec), dim=-1)
            if deterministic:
                return torch.stack([p.argmax(dim=-1) for p in parts], dim=-1).numpy()
            return torch.stack(
                [torch.distributions.Categorical(logits=p).sample() for p in parts], -1
            ).numpy()
        if self.spec.head == "discrete":
            if deterministic:
                return out.argmax(dim=-1).numpy()
            return torch.distributions.Categorical(logits=out).sample().numpy()
        if self.spec.head == "deterministic":  # a deterministic actor: sampling is acting
            return rescale_to_bounds(out.numpy(), self.action_low.numpy(), self.action_high.numpy())
        # the noise stays torch's (torch.manual_seed governs it); clip/squash is the shared numpy head
        action = out if deterministic else out + torch.randn_like(out) * self.log_std.exp()
        squash = self.spec.head == "squashed_gaussian"
        return to_bounds(action.numpy(), self.action_low.numpy(), self.action_high.numpy(), squash=squash)


def _activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise PolicyKDError(f"unknown activation {name!r}; choose one of {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


def _dense(in_dim: int, hidden: tuple[int, ...], activation: str) -> tuple[list[nn.Module], int]:
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [nn.Linear(in_dim, width), _activation(activation)]
        in_dim = width
    return layers, in_dim


class MLPStudent(Student):
    """Flatten -> [Linear -> activation] * len(hidden) -> Linear(n_outputs)."""

    def __init__(self, spec: StudentSpec):
        layers, width = _dense(int(np.prod(spec.obs_shape)), spec.hidden, spec.activation)
        super().__init__(spec, [nn.Flatten(), *layers], width)


class _ToChannelsFirst(nn.Module):
    """(B, H, W, C) -> (B, C, H, W); recorded image observations may be channels-last (Atari frame stacks)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(0, 3, 1, 2)


def _image_layout(obs_shape: tuple[int, ...], arch: str) -> tuple[bool, int]:
    """(channels_last, channels) of an image observation, by SB3's rule: the smallest axis holds channels."""
    if len(obs_shape) != 3:
        raise PolicyKDError(
            f"student {arch} needs image observations (C, H, W) or (H, W, C), got shape {obs_shape}; use --student mlp"
        )
    channels_last = int(np.argmin(obs_shape)) == 2
    return channels_last, obs_shape[2] if channels_last else obs_shape[0]


class _PadChannels(nn.Module):
    """(B, C, H, W) -> (B, target, H, W), zeros in the added channels."""

    def __init__(self, target: int):
        super().__init__()
        self.target = target

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.pad(x, (0, 0, 0, 0, 0, self.target - x.shape[1]))


def _conv_layers(c_in: int, c_out: int, kernel: int, stride: int, padding: int, kind: str) -> list[nn.Module]:
    """One convolution of a CNN student: ``standard`` (``c_in * c_out * k * k + c_out`` parameters) or
    ``separable`` (depthwise ``k x k``, one filter per input channel, then pointwise ``1 x 1`` to ``c_out``:
    ``c_in * k * k + c_in + c_in * c_out + c_out``), with the same output size.

    No activation between the depthwise and the pointwise convolution (as Xception, Chollet 2017, found
    best): the pair is then a factorised (rank-limited) standard convolution, and the budget it saves goes
    to more channels or a wider hidden layer."""
    if kind == "separable":
        return [
            nn.Conv2d(c_in, c_in, kernel, stride, padding, groups=c_in),
            nn.Conv2d(c_in, c_out, 1),
        ]
    return [nn.Conv2d(c_in, c_out, kernel, stride, padding)]


class _CNNStudent(Student):
    """[Conv -> ReLU] per channel count -> Flatten -> [Linear -> activation] * len(hidden) -> Linear."""

    kernels: tuple[tuple[int, int], ...] = ()  # (kernel, stride) per conv layer

    def __init__(self, spec: StudentSpec):
        if len(spec.channels) != len(self.kernels):
            raise PolicyKDError(
                f"student {spec.arch} has {len(self.kernels)} conv layers; got --channels {list(spec.channels)}"
            )
        if spec.conv not in CONVS:
            raise PolicyKDError(f"unknown --conv {spec.conv!r}; choose one of {', '.join(CONVS)}")
        if spec.conv_stride not in CONV_STRIDES:
            raise PolicyKDError(
                f"--conv-stride must be one of {', '.join(map(str, CONV_STRIDES))}, got {spec.conv_stride}"
            )
        kernels = self.kernels
        if spec.conv_stride != 1:
            if len(kernels) != 1:
                raise PolicyKDError(
                    f"--conv-stride applies to minatar_cnn (one convolution); {spec.arch}'s strides are fixed "
                    f"({', '.join(str(s) for _, s in kernels)}): drop --conv-stride"
                )
            # A strided convolution, not pooling, shrinks the maps: DQN's Nature CNN downsamples by strides
            # alone (pooling throws away where an object is, which is what a policy acts on), and a stride
            # adds no layer for the exports and the group trainer to know.
            kernels = ((kernels[0][0], spec.conv_stride),)
        convs: list[nn.Module] = []
        channels_last, c_in = _image_layout(spec.obs_shape, spec.arch)
        convs += [_ToChannelsFirst()] if channels_last else []
        if spec.pad_channels:  # present even when nothing is padded: every task's trunk has one layout
            if spec.pad_channels < c_in:
                raise PolicyKDError(f"cannot pad {c_in} input channels down to {spec.pad_channels}")
            convs.append(_PadChannels(spec.pad_channels))
            c_in = spec.pad_channels
        for c_out, (k, stride) in zip(spec.channels, kernels, strict=True):
            # --conv-stride 2 pads by (k - 1) // 2: unpadded, 3x3 windows at stride 2 on a 10x10 frame start
            # at rows 0, 2, 4, 6 and never see row 9 (where SpaceInvaders' cannon and Breakout's paddle are)
            padding = (k - 1) // 2 if spec.conv_stride != 1 else 0
            convs += [*_conv_layers(c_in, c_out, k, stride, padding, spec.conv), nn.ReLU()]
            c_in = c_out
        convs.append(nn.Flatten())
        with torch.no_grad():
            try:
                flat = nn.Sequential(*convs)(torch.zeros(1, *spec.obs_shape)).shape[1]
            except RuntimeError:
                raise PolicyKDError(
                    f"observations {spec.obs_shape} are too small for student {spec.arch}; use minatar_cnn or mlp"
                ) from None
        layers, width = _dense(flat, spec.hidden, spec.activation)
        super().__init__(spec, [*convs, *layers], width)


class NatureCNNStudent(_CNNStudent):
    """SB3's NatureCNN (Mnih et al. 2015: 8x8/4, 4x4/2, 3x3/1 convolutions) with scalable widths."""

    kernels = ((8, 4), (4, 2), (3, 1))
    default_channels = (32, 64, 64)
    default_hidden = (512,)


class MinAtarCNNStudent(_CNNStudent):
    """The MinAtar baseline network (Young & Tian 2019): one 3x3 convolution and one hidden layer."""

    kernels = ((3, 1),)
    default_channels = (16,)
    default_hidden = (128,)


STUDENTS: dict[str, type[Student]] = {
    "mlp": MLPStudent,
    "nature_cnn": NatureCNNStudent,
    "minatar_cnn": MinAtarCNNStudent,
}


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def count_nonfinite(module: nn.Module) -> int:
    """NaN/Inf values among ``module``'s parameters (a diverged training run's weights)."""
    return sum(int((~torch.isfinite(p)).sum()) for p in module.parameters())


def spec_params(spec: StudentSpec) -> int:
    """Parameters of the student ``spec`` describes, counted without allocating its weights (on torch's
    meta device), so that an absurd size is refused before it is built."""
    with torch.device("meta"):
        return count_params(STUDENTS[spec.arch](spec))


def check_fits_in_memory(spec: StudentSpec, batch_size: int) -> None:
    """Refuse a student whose training would need more memory than the machine has available.

    Training holds each parameter about five times (weights, gradient, Adam's two moments, a saved
    copy), plus a batch of activations per layer; the estimate is rough but errs on the small side.
    """
    params = spec_params(spec)
    need = 4 * (5 * params + 3 * batch_size * (sum(spec.hidden) + sum(spec.channels) * 64))
    available = available_memory()
    if available is not None and need > available:
        raise PolicyKDError(
            f"a student of {params:,} parameters needs about {need / 2**30:.1f} GiB to train, and "
            f"{available / 2**30:.1f} GiB are available; choose a smaller --params-fraction or --hidden"
        )


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation (MemAvailable on Linux), or None when unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def mlp_params(in_dim: int, out_dim: int, hidden: tuple[int, ...]) -> int:
    """Parameter count of an MLP with these layer widths (weights and biases)."""
    dims = [in_dim, *hidden, out_dim]
    return sum(a * b + b for a, b in itertools.pairwise(dims))


def width_for_budget(budget: int, in_dim: int, out_dim: int, n_layers: int) -> int:
    """The largest equal width for ``n_layers`` hidden layers whose MLP has at most ``budget`` parameters."""
    return _largest_fit(lambda w: mlp_params(in_dim, out_dim, (w,) * n_layers), budget, "--layers")


def _largest_fit(params_at: Callable[[int], int], budget: int, fewer: str) -> int:
    """The largest integer k >= 1 with ``params_at(k) <= budget`` (``params_at`` grows with k)."""
    if params_at(1) > budget:
        raise PolicyKDError(
            f"the smallest student has {params_at(1)} parameters, over the budget of {budget}; raise "
            f"--params-fraction or use fewer {fewer}"
        )
    # A doubling search then bisection finds the largest fit.
    lo, hi = 1, 2
    while params_at(hi) <= budget:
        lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if params_at(mid) <= budget:
            lo = mid
        else:
            hi = mid
    return lo


def _cnn_widths(
    cls: type[Student],
    make: Callable[[tuple[int, ...], tuple[int, ...]], StudentSpec],
    budget: int,
    extra: int,
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """A CNN's (channels, hidden) for ``budget`` parameters: its defaults scaled by one factor, then the
    hidden layers widened, channels fixed, to fill the rest."""
    base_c, base_h = cls.default_channels, cls.default_hidden  # type: ignore[attr-defined]

    def scaled(k: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
        return (
            tuple(max(1, round(c * k / 64)) for c in base_c),
            tuple(max(1, round(h * k / 64)) for h in base_h),
        )

    def params_at(k: int) -> int:
        c, h = scaled(k)
        return spec_params(make(h, c)) - extra

    channels = scaled(_largest_fit(params_at, budget, "channels"))[0]
    # A channel is a coarse step (it adds a whole feature map to the dense layer's input), so the
    # factor that first overshoots the budget often does so by one channel while the hidden layers
    # could still grow: widen them, channels fixed, to fill the budget.
    base_w = base_h[0]

    def widened(w: int) -> tuple[int, ...]:
        return tuple(max(1, round(h * w / base_w)) for h in base_h)

    return channels, widened(
        _largest_fit(lambda w: spec_params(make(widened(w), channels)) - extra, budget, "channels")
    )


def hidden_widths(hidden: tuple[int, ...] | None) -> tuple[int, ...] | None:
    """``hidden`` with ``(0,)`` (``--hidden 0``, the spelling of "no hidden layer") read as ``()``."""
    return () if hidden is not None and tuple(hidden) == (0,) else hidden


def _cnn_channels(
    cls: type[Student],
    make: Callable[[tuple[int, ...], tuple[int, ...]], StudentSpec],
    budget: int,
    extra: int,
) -> tuple[int, ...]:
    """A CNN's channels for ``budget`` parameters with no hidden layer: its default channels scaled by one
    factor (in steps of 1/64), the largest that fits."""
    base_c = cls.default_channels  # type: ignore[attr-defined]

    def scaled(k: int) -> tuple[int, ...]:
        return tuple(max(1, round(c * k / 64)) for c in base_c)

    return scaled(_largest_fit(lambda k: spec_params(make((), scaled(k))) - extra, budget, "channels"))


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
    channels: tuple[int, ...] | None = None,
    head: str = "discrete",
    pad_channels: int = 0,
    nvec: tuple[int, ...] = (),
    conv: str = "standard",
    conv_stride: int = 1,
) -> StudentSpec:
    """A spec from explicit widths, or solved for ``params_fraction`` x ``teacher_params``.

    An MLP sized by budget gets ``layers`` hidden layers of one equal width; a CNN keeps its
    architecture's proportions (channels and hidden width scaled by one factor, in steps of 1/64), then
    widens its hidden layers to fill what the channels' coarse steps leave of the budget. ``hidden=()``
    (``--hidden 0``) gives a CNN no hidden layer (the convolutions' features straight to the head); its
    channels are then solved for the budget unless ``channels`` gives them.
    """
    if arch not in STUDENTS:
        raise PolicyKDError(f"unknown student {arch!r}; choose one of {', '.join(STUDENTS)}")
    cls = STUDENTS[arch]
    is_cnn = issubclass(cls, _CNNStudent)
    if not is_cnn and channels:
        raise PolicyKDError("--channels applies to CNN students only; use --hidden for an mlp")
    if not is_cnn and (conv != "standard" or conv_stride != 1):
        raise PolicyKDError("--conv and --conv-stride apply to CNN students only; drop them for an mlp")
    hidden = hidden_widths(hidden)
    extra = n_outputs if head in GAUSSIAN_HEADS else 0  # the Gaussian head's log-std

    def make(h: tuple[int, ...], c: tuple[int, ...]) -> StudentSpec:
        return StudentSpec(
            arch=arch,
            obs_shape=tuple(obs_shape),
            n_outputs=n_outputs,
            hidden=h,
            activation=activation,
            channels=c,
            head=head,
            pad_channels=pad_channels,
            nvec=tuple(nvec),
            conv=conv,
            conv_stride=conv_stride,
        )

    # --hidden 0 on a CNN: the budget goes to its channels, unless --channels gives them or nothing sizes it
    channels_only = (
        is_cnn and hidden == () and channels is None and params_fraction is not None and teacher_params
    )
    if channels_only or (hidden is None and (not is_cnn or channels is None)):
        if params_fraction is None or teacher_params is None:
            raise PolicyKDError("size the student with --hidden W [W ...] or --params-fraction F")
        if not params_fraction > 0:
            raise PolicyKDError(f"--params-fraction must be > 0, got {params_fraction}")
        budget = math.floor(params_fraction * teacher_params) - extra
        if not is_cnn:
            width = width_for_budget(budget, int(np.prod(obs_shape)), n_outputs, layers)
            hidden = (width,) * layers
        elif channels_only:
            channels = _cnn_channels(cls, make, budget, extra)
        else:
            channels, hidden = _cnn_widths(cls, make, budget, extra)
    if is_cnn:
        channels = channels or cls.default_channels  # type: ignore[attr-defined]
        hidden = cls.default_hidden if hidden is None else hidden  # type: ignore[attr-defined]
    assert hidden is not None
    if any(w <= 0 for w in (*hidden, *(channels or ()))):
        raise PolicyKDError(
            f"--hidden and --channels must be > 0 (--hidden 0 alone: no hidden layer), got {hidden} and {channels}"
        )
    spec = make(tuple(hidden), tuple(channels or ()))
    spec_params(spec)  # refuses shapes the architecture cannot take, here rather than mid-run
    return spec


def build_student(spec: StudentSpec) -> Student:
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
            channels=tuple(s.get("channels", ())),
            head=s.get("head", "discrete"),
            pad_channels=int(s.get("pad_channels", 0)),
            nvec=tuple(int(n) for n in s.get("nvec", ())),
            # students saved before these options had the standard, stride-1 convolution
            conv=s.get("conv", "standard"),
            conv_stride=int(s.get("conv_stride", 1)),
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
    bad = count_nonfinite(net)
    if bad:  # a diverged run's weights: every output would be NaN, whatever runs or exports them
        raise PolicyKDError(
            f"student weights {weights} hold {bad:,} NaN/Inf value(s) of {count_params(net):,} (its training "
            "diverged); distil it again with a lower --lr or --max-grad-norm"
        )
    net.eval()
    return LoadedStudent(net=net, info=info, weights_path=weights)
