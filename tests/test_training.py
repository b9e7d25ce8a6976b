"""The shared training core (policy_kd.training) and option blocks (policy_kd.options), without a job."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from policy_kd.distill import DistillConfig
from policy_kd.errors import PolicyKDError
from policy_kd.kickstart import KickstartConfig
from policy_kd.losses import LossConfig
from policy_kd.multitask import MultiTaskConfig
from policy_kd.online import DistillOnlineConfig
from policy_kd.options import check_ranges
from policy_kd.training import BestKeeper, LogWindow, make_optimizer, optimizer_step, save_final_weights

torch.set_num_threads(1)


def test_log_window_averages_losses_and_keeps_the_latest_other_terms():
    window = LogWindow()
    window.add({"loss/total": torch.tensor(1.0), "fidelity/agreement": torch.tensor(0.25)})
    window.add({"loss/total": torch.tensor(3.0), "fidelity/agreement": torch.tensor(0.75)})
    assert window.close() == {"loss/total": 2.0, "fidelity/agreement": 0.75}
    assert window.sums == {} and window.count == 0 and window.last["loss/total"] == 2.0


def test_optimizer_step_returns_the_norm_before_clipping_and_clips():
    layer = nn.Linear(3, 1, bias=False)
    with torch.no_grad():
        layer.weight.fill_(0.0)
    opt, sched = make_optimizer(layer.parameters(), lr=0.1)
    assert sched is None
    loss = (layer(torch.ones(1, 3)) - 100.0).pow(2).mean()  # gradient -200 per weight: norm 200 * sqrt(3)
    params = list(layer.parameters())
    norm = optimizer_step(loss, opt, params=params, max_grad_norm=1.0)
    assert norm is not None and float(norm) == pytest.approx(200 * math.sqrt(3), rel=1e-5)
    assert float(params[0].grad.norm()) == pytest.approx(1.0, rel=1e-4)  # what the optimiser stepped on


def test_cosine_schedule_reaches_zero_at_the_last_step():
    layer = nn.Linear(2, 1)
    opt, sched = make_optimizer(layer.parameters(), lr=0.5, lr_schedule="cosine", total_steps=4)
    for _ in range(4):
        optimizer_step(layer(torch.ones(1, 2)).sum(), opt, sched)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("ties_to_later, saves", [(False, 1), (True, 2)])
def test_best_keeper_saves_only_better_scores(tmp_path: Path, ties_to_later: bool, saves: int):
    keeper, net, saved = BestKeeper(tmp_path, ties_to_later=ties_to_later), nn.Linear(2, 2), []
    for score in (1.0, 1.0, 0.5):
        if keeper.offer(score, net, before_save=lambda: saved.append(1)):
            assert (tmp_path / "best.pt").is_file()
    assert len(saved) == saves and keeper.best == 1.0 and keeper.since_best == (2 if not ties_to_later else 1)


def test_final_weights_fall_back_to_last_without_a_best(tmp_path: Path):
    net = nn.Linear(2, 2)
    save_final_weights(tmp_path, net)
    assert (tmp_path / "best.pt").read_bytes() == (tmp_path / "last.pt").read_bytes()


@pytest.mark.parametrize(
    "value, message", [(0.0, "must be > 0"), (math.nan, "must be > 0"), (math.inf, "must be finite")]
)
def test_check_ranges_names_the_option(value: float, message: str):
    with pytest.raises(PolicyKDError, match=f"--tau {message}"):
        check_ranges(LossConfig(tau=value), positive=("tau",))


@pytest.mark.parametrize(
    "config",
    [
        DistillConfig(tau=math.inf, buffer="b"),
        MultiTaskConfig(tau=math.inf, buffer=("a", "b")),
        DistillOnlineConfig(tau=math.inf),
        KickstartConfig(tau=math.inf, teacher="t"),
    ],
    ids=["distill", "multitask", "online", "kickstart"],
)
def test_every_job_refuses_an_infinite_temperature(config: object):
    # an infinite tau turns every softmax target into NaN; each job refuses it through one helper
    with pytest.raises(PolicyKDError, match="--tau must be finite"):
        config.validate()  # type: ignore[attr-defined]


def test_loss_options_give_the_entropy_weight_to_the_loss():
    assert DistillOnlineConfig(entropy_coef=0.3).loss_config.entropy_weight == 0.3
    assert DistillConfig(entropy_coef=0.2, direction="reverse").loss_config == LossConfig(
        entropy_weight=0.2, direction="reverse"
    )
