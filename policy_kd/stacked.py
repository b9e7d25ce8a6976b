"""K students of one architecture as one stacked network, its per-student losses and its AdamW.

What ``policy_kd.group`` trains a group of students with. Every parameter of the K students lives in one
flat tensor: parameter ``j`` of the students (in ``named_parameters`` order) is a block ``(K, *shape)`` of
it, so student ``k``'s tensors are the ``k``-th slices and the optimiser updates all of them in a handful
of whole-tensor operations, whatever K and the number of layers.

- Fully connected layers are batched matmuls (``torch.baddbmm``) over the K stacked weights; convolutions
  are one grouped convolution (``groups=K``) over the K students' channels side by side.
- MLP students with a ReLU, tanh or ELU activation get a hand-written backward pass (a two- or three-layer
  MLP's is a few matmuls), which skips autograd's per-operation bookkeeping; CNN and GELU students use
  autograd from the outputs' gradient.
- :func:`stacked_loss` gives each student's loss (a batch mean, as ``policy_kd.losses`` computes it) and
  its gradient with respect to that student's outputs in closed form, for students whose losses and
  their settings (tau, temperature, ...) differ.
- :class:`StackedAdamW` is ``torch.optim.AdamW``'s single-tensor update written on the flat tensor, with a
  learning rate, weight decay and gradient-norm clip per student: given the same gradients it computes
  the same bits as one AdamW per student.

Nothing here knows about buffers, folders or the training loop.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from policy_kd.losses import DISCRETE_LOSSES, LossConfig
from policy_kd.students import Student

#: Activations whose derivative the hand-written backward takes from the activation's output.
HAND_ACTIVATIONS = (nn.ReLU, nn.Tanh, nn.ELU)


@dataclass(frozen=True)
class _Op:
    """One step of a student's ``net`` as the stacked forward applies it."""

    kind: str  # linear, conv, act, flatten, channels_first, pad
    module: nn.Module
    param: int = -1  # index of its weight among the parameters (its bias follows); -1: none


class StackedStudents:
    """K students of one spec stacked into one flat parameter tensor.

    ``flat`` holds the parameters, ``grad`` their gradients, both ``(N,)`` with ``N = K * params``;
    ``owner[i]`` is the student that element ``i`` belongs to. ``forward`` maps observations
    ``(K, batch, *obs_shape)`` to outputs ``(K, batch, n_outputs)``; ``backward`` takes the outputs'
    gradient and fills ``grad``.
    """

    def __init__(self, nets: Sequence[Student]):
        first = nets[0]
        if first.spec.head != "discrete":
            raise ValueError("stacked students have a discrete head (a Gaussian head trains alone)")
        if any(n.spec != first.spec for n in nets):
            raise ValueError("stacked students must share one StudentSpec")
        self.K, self.spec = len(nets), first.spec
        names = [name for name, _ in first.named_parameters()]
        shapes = [p.shape for p in first.parameters()]
        sizes = [p.numel() for p in first.parameters()]
        self.flat = torch.cat(
            [
                torch.stack([dict(n.named_parameters())[name].detach() for n in nets]).reshape(-1)
                for name in names
            ]
        )
        self.grad = torch.zeros_like(self.flat)
        self.names, self.shapes = names, shapes
        self.params: list[Tensor] = []  # (K, *shape) views of flat
        self.grads: list[Tensor] = []  # the same views of grad
        self.blocks: list[tuple[int, int]] = []  # (offset, per-student size) of each parameter's block
        offset = 0
        for shape, size in zip(shapes, sizes, strict=True):
            self.params.append(self.flat[offset : offset + self.K * size].view(self.K, *shape))
            self.grads.append(self.grad[offset : offset + self.K * size].view(self.K, *shape))
            self.blocks.append((offset, size))
            offset += self.K * size
        self.owner = torch.cat([torch.arange(self.K).repeat_interleave(size) for size in sizes])
        # every student standardises its inputs with the same buffer's statistics
        self.obs_mean, self.obs_std = first.obs_mean.clone(), first.obs_std.clone()
        self.ops = self._ops(first)
        self.channels_last, self.conv, self.dense = self._hand_plan(self.ops)
        self.hand = self.dense is not None
        self._leaves: list[Tensor] = []
        if not self.hand:  # autograd fills each leaf's .grad; backward copies them into ``grad``
            self._leaves = [p.detach().requires_grad_() for p in self.params]
        self._saved: list[Tensor] = []
        self._windows: list[Tensor] = []
        self._padded: Tensor | None = None  # the convolution's input, kept between steps
        self._full: Tensor | None = None  # its output's gradient at every column

    @staticmethod
    def _ops(net: Student) -> list[_Op]:
        index = {id(p): i for i, p in enumerate(net.parameters())}
        ops = []
        for m in net.net:
            if isinstance(m, nn.Linear):
                ops.append(_Op("linear", m, index[id(m.weight)]))
            elif isinstance(m, nn.Conv2d):
                ops.append(_Op("conv", m, index[id(m.weight)]))
            elif isinstance(m, nn.Flatten):
                ops.append(_Op("flatten", m))
            elif type(m).__name__ == "_ToChannelsFirst":
                ops.append(_Op("channels_first", m))
            elif type(m).__name__ == "_PadChannels":
                ops.append(_Op("pad", m))
            elif isinstance(m, nn.ReLU | nn.Tanh | nn.ELU | nn.GELU):
                ops.append(_Op("act", m))
            else:
                raise ValueError(f"no stacked version of layer {type(m).__name__}")
        return ops

    @staticmethod
    def _hand_plan(ops: list[_Op]) -> tuple[bool, _Op | None, list[_Op] | None]:
        """Whether the hand-written path can run this network: (channels last, its convolution, the dense
        ops after it); dense ops None: autograd. It takes an MLP, or one stride-1 convolution with a ReLU
        before the dense layers (the MinAtar CNN), with ReLU, tanh or ELU hidden activations."""
        channels_last = bool(ops) and ops[0].kind == "channels_first"
        rest = ops[1:] if channels_last else ops
        conv = None
        if rest and rest[0].kind == "conv":
            m: nn.Conv2d = rest[0].module  # type: ignore[assignment]
            plain = m.stride == (1, 1) and m.padding == (0, 0) and m.dilation == (1, 1) and m.groups == 1
            if not (
                plain and len(rest) > 2 and isinstance(rest[1].module, nn.ReLU) and rest[2].kind == "flatten"
            ):
                return channels_last, None, None
            conv, rest = rest[0], rest[3:]
        if not all(
            op.kind in ("linear", "flatten") or isinstance(op.module, HAND_ACTIVATIONS) for op in rest
        ):
            return channels_last, None, None
        return channels_last, conv, rest

    # -- forward and backward ---------------------------------------------------------------------------------

    def standardize(self, obs: Tensor) -> Tensor:
        """Raw observations ``(..., *obs_shape)`` standardised as every student of the group does it."""
        return (obs.float() - self.obs_mean) / self.obs_std

    def forward(self, obs: Tensor, *, standardized: bool = False) -> Tensor:
        """Outputs ``(K, n_outputs, batch)`` of observations ``(K, batch, *obs_shape)`` (raw, as recorded).

        ``standardized``: the hand-written path's own input instead, standardised observations laid out
        ``(K, obs_dim, batch)``. Outputs (and the activations within) are feature-major, batch last: a
        softmax over 2-18 actions is then a long vectorised loop instead of a short one per row. The
        hand-written path keeps what its backward needs; the autograd path records a graph."""
        if standardized:
            return self._forward_hand(obs)
        if self.conv is not None and self.hand:
            return self._forward_hand(self._conv_forward(obs))
        x = self.standardize(obs)
        if not self.hand:
            return self._forward_autograd(x)
        K, B = x.shape[:2]
        return self._forward_hand(x.reshape(K, B, -1).transpose(1, 2))

    def _conv_forward(self, obs: Tensor) -> Tensor:
        """Standardisation, the convolution and its ReLU: raw observations ``(K, batch, *obs_shape)`` ->
        ``(K, C_out * H' * W', batch)``.

        Each student's image is kept as ``(C, H * W * batch)`` (plus ``kw - 1`` zero rows): the input of
        kernel offset ``(di, dj)`` at every output position is then one contiguous window of it, so the
        convolution is ``kh * kw`` batched matmuls over the windows, with no copy of them (im2col) and
        without a grouped convolution's small per-group kernels. Outputs are computed at all ``W`` columns
        and the last ``kw - 1`` of each row (which straddle two rows) dropped."""
        conv: nn.Conv2d = self.conv.module  # type: ignore[union-attr,assignment]
        w, b = self.params[self.conv.param], self.params[self.conv.param + 1]  # type: ignore[union-attr]
        K, B = obs.shape[:2]
        # (K, C, H, W, B), and the statistics (C, H, W, 1) to match
        if self.channels_last:
            x, mean, std = (
                obs.permute(0, 4, 2, 3, 1),
                self.obs_mean.permute(2, 0, 1),
                self.obs_std.permute(2, 0, 1),
            )
        else:
            x, mean, std = obs.permute(0, 2, 3, 4, 1), self.obs_mean, self.obs_std
        C, H, W = x.shape[1:4]
        kh, kw = conv.kernel_size
        Ho, Wo = H - kh + 1, W - kw + 1
        shape = (K, C, H * W + kw - 1, B)
        if self._padded is None or self._padded.shape != shape:  # its last kw - 1 rows stay zero
            self._padded = torch.zeros(shape)
        # standardised as ``standardize`` does it (the same operations on each element), written in place
        image = self._padded[:, :, : H * W].view(K, C, H, W, B)
        image.copy_(x).sub_(mean.unsqueeze(-1)).div_(std.unsqueeze(-1))
        flat = self._padded.view(K, C, -1)
        span = Ho * W * B
        windows = [
            flat[:, :, (di * W + dj) * B : (di * W + dj) * B + span] for di in range(kh) for dj in range(kw)
        ]
        # a contiguous (K, C_out, C) weight per kernel offset (a strided one sends the matmul to a loop)
        offsets = w.permute(3, 4, 0, 1, 2).contiguous().view(kh * kw, K, w.shape[1], C)
        out = b.unsqueeze(2).expand(K, b.shape[1], span).contiguous()  # (K, C_out, Ho * W * B)
        for i, window in enumerate(windows):
            out.baddbmm_(offsets[i], window)
        out.relu_()
        self._windows, self._conv_dims = windows, (Ho, W, Wo, B)
        return out.view(K, -1, Ho, W, B)[:, :, :, :Wo].reshape(K, -1, B)

    def _conv_backward(self, g: Tensor) -> None:
        """The convolution's gradients from ``g = d loss / d (its ReLU's output)`` ``(K, C_out * H' * W', B)``
        (the observations need none)."""
        j, kw = self.conv.param, self.conv.module.kernel_size[1]  # type: ignore[union-attr]
        Ho, W, Wo, B = self._conv_dims
        K, Co = g.shape[0], self.params[j].shape[1]
        torch.sum(g.view(K, Co, -1), dim=2, out=self.grads[j + 1])
        if self._full is None or self._full.shape != (K, Co, Ho, W, B):
            self._full = g.new_zeros(K, Co, Ho, W, B)  # the dropped columns get no gradient: they stay 0
        self._full[:, :, :, :Wo] = g.view(K, Co, Ho, Wo, B)
        full = self._full.view(K, Co, -1)
        # (kh * kw, K, C_out, C) -> the (K, C_out, C, kh, kw) gradient
        offsets = torch.stack([torch.bmm(full, window.transpose(1, 2)) for window in self._windows])
        kh = len(self._windows) // kw
        self.grads[j].copy_(offsets.view(kh, kw, *offsets.shape[1:]).permute(2, 3, 4, 0, 1))
        self._windows = []

    def _forward_hand(self, x: Tensor) -> Tensor:
        saved = [x]  # the input of each linear layer: the observations, then each activation's output
        for op in self.dense:  # type: ignore[union-attr]
            if op.kind == "linear":
                w, b = self.params[op.param], self.params[op.param + 1]
                x = torch.baddbmm(b.unsqueeze(2), w, x)  # (K, out, in) @ (K, in, B) + (K, out, 1)
            elif op.kind == "act":
                x = _ACTIVATE[type(op.module)](x)  # in place: the matmul's fresh output
                saved.append(x)
        self._saved = saved
        return x

    def backward(self, grad_out: Tensor) -> None:
        """Fill ``grad`` from ``grad_out = d loss / d outputs`` ``(K, n_outputs, batch)``."""
        if not self.hand:
            self._out.backward(grad_out)
            torch.cat([leaf.grad.reshape(-1) for leaf in self._leaves], out=self.grad)  # type: ignore[union-attr]
            for leaf in self._leaves:
                leaf.grad = None
            self._out = None  # type: ignore[assignment]
            return
        linears = [op for op in self.dense if op.kind == "linear"]  # type: ignore[union-attr]
        # the activation before each linear layer (the convolution's ReLU before the first)
        acts = [nn.ReLU()] + [op.module for op in self.dense if op.kind == "act"]  # type: ignore[union-attr]
        g = grad_out
        for i in range(len(linears) - 1, -1, -1):
            j = linears[i].param
            x_in = self._saved[i]  # (K, in, B)
            torch.bmm(g, x_in.transpose(1, 2), out=self.grads[j])  # (K, out, in)
            torch.sum(g, dim=2, out=self.grads[j + 1])  # (K, out)
            if i > 0 or self.conv is not None:
                g = torch.bmm(self.params[j].transpose(1, 2), g)  # (K, in, B)
                # autograd's own backward kernels, from the activation's output
                g = _ACTIVATION_GRAD[type(acts[i])](g, x_in)
        if self.conv is not None:
            self._conv_backward(g)
        self._saved = []

    def _forward_autograd(self, x: Tensor) -> Tensor:
        K, B = x.shape[:2]
        p = self._leaves
        for op in self.ops:
            if op.kind == "channels_first":  # (K, B, H, W, C) -> (K, B, C, H, W)
                x = x.permute(0, 1, 4, 2, 3)
            elif op.kind == "pad":
                x = F.pad(x, (0, 0, 0, 0, 0, op.module.target - x.shape[2]))  # type: ignore[operator]
            elif op.kind == "conv":
                conv: nn.Conv2d = op.module  # type: ignore[assignment]
                w, b = p[op.param], p[op.param + 1]
                # the K students' channels side by side: (B, K * C, H, W), one convolution in K groups (K times
                # a depthwise convolution's own groups: student k's group g is group k * groups + g)
                y = F.conv2d(
                    x.transpose(0, 1).reshape(B, K * x.shape[2], *x.shape[3:]),
                    w.reshape(K * w.shape[1], *w.shape[2:]),
                    b.reshape(-1),
                    stride=conv.stride,
                    padding=conv.padding,
                    groups=K * conv.groups,
                )
                x = y.view(B, K, -1, *y.shape[2:]).transpose(0, 1)  # (K, B, C_out, H', W')
            elif op.kind == "flatten":
                x = x.reshape(K, B, -1)
            elif op.kind == "act":
                x = op.module(x)
            else:  # linear
                w, b = p[op.param], p[op.param + 1]
                x = torch.baddbmm(b.unsqueeze(1), x, w.transpose(1, 2))
        self._out = x.transpose(1, 2)  # (K, n_outputs, B)
        return self._out.detach()

    # -- one student's tensors ---------------------------------------------------------------------------------

    def student_params(self, k: int) -> dict[str, Tensor]:
        """Student ``k``'s parameters by name (copies), as in its ``state_dict``."""
        return {name: p[k].clone() for name, p in zip(self.names, self.params, strict=True)}

    def load_into(self, k: int, net: Student) -> None:
        """Copy student ``k``'s parameters into ``net`` (a student of the same spec)."""
        with torch.no_grad():
            for name, p in net.named_parameters():
                p.copy_(self.params[self.names.index(name)][k])

    def per_student(self, flat: Tensor) -> list[list[Tensor]]:
        """A flat tensor laid out like ``flat`` (e.g. an optimiser moment) as one list of tensors per student,
        in parameter order (copies)."""
        return [self.student_tensors(flat, k) for k in range(self.K)]

    def student_tensors(self, flat: Tensor, k: int) -> list[Tensor]:
        """Student ``k``'s part of a flat tensor laid out like ``flat``, one tensor per parameter (copies)."""
        return [
            flat[o : o + self.K * n].view(self.K, *s)[k].clone()
            for (o, n), s in zip(self.blocks, self.shapes, strict=True)
        ]

    def from_students(self, tensors: Sequence[Sequence[Tensor]]) -> Tensor:
        """The inverse of :meth:`per_student`: one list of per-parameter tensors per student -> a flat tensor."""
        return torch.cat([torch.stack([t[j] for t in tensors]).reshape(-1) for j in range(len(self.shapes))])


_ACTIVATE = {nn.ReLU: torch.relu_, nn.Tanh: torch.tanh_, nn.ELU: lambda x: F.elu_(x)}
_ACTIVATION_GRAD = {
    nn.ReLU: lambda g, y: torch.ops.aten.threshold_backward(g, y, 0),
    nn.Tanh: lambda g, y: torch.ops.aten.tanh_backward(g, y),
    nn.ELU: lambda g, y: torch.ops.aten.elu_backward(g, 1.0, 1, 1, True, y),
}


# -- losses --------------------------------------------------------------------------------------------------


def stacked_loss(student: Tensor, teacher: Tensor, configs: Sequence[LossConfig]) -> tuple[Tensor, Tensor]:
    """Each student's loss and its gradient with respect to that student's outputs.

    ``student`` and ``teacher`` are ``(K, n_actions, batch)`` (actions-major: what the stacked forward
    gives; ``policy_kd.losses`` takes each student's slice transposed, ``(batch, n_actions)``);
    ``configs`` has one :class:`LossConfig` per student (a discrete loss of ``policy_kd.losses``; names
    and settings may differ). Returns the losses ``(K,)``, each the batch mean that ``compute_loss``
    gives on that student's slice, and ``d loss_k / d student[k]`` ``(K, n_actions, batch)``.
    """
    if student.shape != teacher.shape or student.dim() != 3 or student.shape[2] == 0:
        raise ValueError(
            f"student and teacher outputs must both be (K, n_actions, batch) with batch > 0; got "
            f"{tuple(student.shape)} and {tuple(teacher.shape)}"
        )
    if len(configs) != student.shape[0]:
        raise ValueError(f"{len(configs)} loss configs for {student.shape[0]} students")
    unknown = {c.name for c in configs} - set(DISCRETE_LOSSES)
    if unknown:
        raise ValueError(f"no stacked loss {sorted(unknown)}; choose from {', '.join(DISCRETE_LOSSES)}")
    student, teacher = student.float(), teacher.float()
    by_name: dict[str, list[int]] = {}
    for k, c in enumerate(configs):
        by_name.setdefault(c.name, []).append(k)
    if len(by_name) == 1:
        return _loss_of(next(iter(by_name)), student, teacher, configs)
    loss, grad = student.new_empty(student.shape[0]), torch.empty_like(student)
    for name, ks in by_name.items():
        idx = torch.tensor(ks)
        part_loss, part_grad = _loss_of(name, student[idx], teacher[idx], [configs[k] for k in ks])
        loss[idx], grad[idx] = part_loss, part_grad
    return loss, grad


def _column(values: Sequence[float], like: Tensor) -> Tensor | float:
    """Per-student settings as a ``(K, 1, 1)`` tensor, or one float when they are all equal."""
    if all(v == values[0] for v in values):
        return values[0]
    return torch.tensor(values, dtype=like.dtype).view(-1, 1, 1)


def _flat(value: Tensor | float) -> Tensor | float:
    """A ``(K, 1, 1)`` setting as ``(K,)``, to scale per-student losses."""
    return value.view(-1) if isinstance(value, Tensor) else value


def _soft(log_p: Tensor, log_q: Tensor, batch: int) -> Tensor:
    """KL(p || q) per student, batch mean, from log-probabilities ``(K, n, batch)``."""
    return (log_p.exp() * (log_p - log_q)).sum(dim=(1, 2)) / batch


def _loss_of(name: str, s: Tensor, t: Tensor, configs: Sequence[LossConfig]) -> tuple[Tensor, Tensor]:
    n_actions, batch = s.shape[1], s.shape[2]
    if name == "mse":
        diff = s - t
        return diff.pow(2).mean(dim=(1, 2)), diff.mul_(2.0 / (batch * n_actions))
    log_q = F.log_softmax(s, dim=1)
    q = log_q.exp()
    if name in ("kl", "kl_entropy"):
        log_p = F.log_softmax(t / _column([c.tau for c in configs], s), dim=1)
        p = log_p.exp()
        loss = (p * (log_p - log_q)).sum(dim=(1, 2)) / batch
        grad = (q - p).div_(batch)
        if name == "kl_entropy":
            w = _column([c.entropy_weight for c in configs], s)
            ent = -(q * log_q).sum(dim=1, keepdim=True)  # (K, 1, B)
            # d(-w * mean H)/ds_j = w * q_j * (log q_j + H) / batch
            loss = loss - _flat(w) * ent.mean(dim=(1, 2))
            grad = grad + w * q * (log_q + ent) / batch
        return loss, grad
    onehot = torch.zeros_like(s).scatter_(1, t.argmax(dim=1, keepdim=True), 1.0)
    hard_loss = -(onehot * log_q).sum(dim=(1, 2)) / batch
    hard_grad = (q - onehot).div_(batch)
    if name == "nll":
        return hard_loss, hard_grad
    # hinton: lam * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - lam) * nll
    temp = _column([c.temperature for c in configs], s)
    lam = _column([c.lam for c in configs], s)
    log_pt, log_qt = F.log_softmax(t / temp, dim=1), F.log_softmax(s / temp, dim=1)
    soft = _soft(log_pt, log_qt, batch) * _flat(temp) ** 2
    loss = _flat(lam) * soft + (1.0 - _flat(lam)) * hard_loss
    grad = lam * temp * (log_qt.exp() - log_pt.exp()) / batch + (1.0 - lam) * hard_grad
    return loss, grad


def stacked_fidelity(student: Tensor, teacher: Tensor, taus: Sequence[float]) -> tuple[Tensor, Tensor]:
    """Each student's greedy agreement with the teacher and ``kl`` at its ``tau``, from ``(K, n_actions,
    batch)`` outputs: ``(K,)`` each."""
    agreement = (student.argmax(1) == teacher.argmax(1)).float().mean(dim=1)
    log_p = F.log_softmax(teacher.float() / _column(taus, student), dim=1)
    return agreement, _soft(log_p, F.log_softmax(student.float(), dim=1), student.shape[2])


# -- the optimiser -------------------------------------------------------------------------------------------


class StackedAdamW:
    """``torch.optim.AdamW`` (betas 0.9/0.999, eps 1e-8: its defaults, which distill uses) over a
    :class:`StackedStudents`' flat tensor, each student with its own learning rate, weight decay and
    gradient-norm clip (0: none). Every student takes its steps together, so they share one step count.

    The operations are those of AdamW's single-tensor update, in its order, on the whole flat tensor: with
    the same gradients every student's weights and moments come out bit for bit as its own AdamW's."""

    beta1, beta2, eps = 0.9, 0.999, 1e-8

    def __init__(
        self,
        stack: StackedStudents,
        *,
        lrs: Sequence[float],
        weight_decays: Sequence[float],
        max_grad_norms: Sequence[float],
    ):
        self.stack = stack
        self.exp_avg = torch.zeros_like(stack.flat)
        self.exp_avg_sq = torch.zeros_like(stack.flat)
        self.steps = 0
        self.weight_decays = list(weight_decays)
        self.max_grad_norms = list(max_grad_norms)
        self.clipping = any(m > 0 for m in max_grad_norms)
        # a student that does not clip gets an infinite limit: its clip coefficient clamps to 1
        self._limits = torch.tensor([m if m > 0 else math.inf for m in max_grad_norms], dtype=torch.float32)
        self._tmp = torch.empty_like(stack.flat)
        self._scaled = torch.empty_like(stack.flat)
        self.set_lrs(lrs)

    def set_lrs(self, lrs: Sequence[float]) -> None:
        """The learning rate of each student for the next steps (a schedule calls this after each step)."""
        self.lrs = list(lrs)
        # AdamW multiplies by 1 - lr * wd and by -lr / bias_correction1 as Python floats, which the kernels
        # round to float32: these (K, 1) columns are those float32 values, one per student
        decay = [1 - lr * wd for lr, wd in zip(self.lrs, self.weight_decays, strict=True)]
        self._decay = (
            torch.tensor(decay, dtype=torch.float32).view(-1, 1) if any(self.weight_decays) else None
        )
        self._lr64 = torch.tensor(self.lrs, dtype=torch.float64).view(-1, 1)
        self._same_lr = all(lr == self.lrs[0] for lr in self.lrs)

    def _blocks(self, flat: Tensor) -> list[Tensor]:
        """``flat``'s parameter blocks as ``(K, per-student size)`` views: a ``(K, 1)`` column scales each
        student's part of every block by broadcasting, without a per-element index."""
        K = self.stack.K
        return [flat[o : o + K * n].view(K, n) for o, n in self.stack.blocks]

    def clip(self) -> Tensor | None:
        """Scale each clipping student's gradient to its ``max_grad_norm`` (as ``clip_grad_norm_``); return
        the norms before clipping ``(K,)`` (None when no student clips)."""
        if not self.clipping:
            return None
        blocks = self._blocks(self.stack.grad)
        norms = torch.stack([torch.linalg.vector_norm(b, dim=1) for b in blocks], dim=1)
        total = torch.linalg.vector_norm(norms, dim=1)  # (K,)
        coef = torch.clamp(self._limits / (total + 1e-6), max=1.0).view(-1, 1)
        for b in blocks:
            b.mul_(coef)
        return total

    @torch.no_grad()
    def step(self) -> None:
        """One AdamW step of every student from ``stack.grad``."""
        param, grad = self.stack.flat, self.stack.grad
        self.steps += 1
        if self._decay is not None:
            for b in self._blocks(param):
                b.mul_(self._decay)
        self.exp_avg.lerp_(grad, 1 - self.beta1)
        self.exp_avg_sq.mul_(self.beta2).addcmul_(grad, grad, value=1 - self.beta2)
        bias_correction1 = 1 - self.beta1**self.steps
        bias_correction2_sqrt = math.sqrt(1 - self.beta2**self.steps)
        denom = torch.sqrt(self.exp_avg_sq, out=self._tmp).div_(bias_correction2_sqrt).add_(self.eps)
        if self._same_lr:
            param.addcdiv_(self.exp_avg, denom, value=-(self.lrs[0] / bias_correction1))
            return
        # addcdiv(m, d, value=v) computes v * m / d in float32: the same with v per student
        step_size = (-(self._lr64 / bias_correction1)).float()
        scaled = self._scaled
        for out, m in zip(self._blocks(scaled), self._blocks(self.exp_avg), strict=True):
            torch.mul(m, step_size, out=out)
        param.addcdiv_(scaled, denom)
