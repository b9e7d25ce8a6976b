#!/usr/bin/env bash
# The LunarLander-v3 evaluation report committed under docs/lunarlander (issue 6's harder task): the PPO
# teacher against three <= 5% students and two exports of the best one, both action modes, fidelity on the
# teacher's recorded states; then the three teacher-driven seeds aggregated as rliable recommends.
set -euo pipefail
PKD=${PKD:-.venv/bin/policy-kd}
R=experiments/runs/LunarLander-v3
[ -d $R/export_nll_numpy ] || $PKD export $R/sweep_l2_nll --format numpy --out $R/export_nll_numpy
[ -d $R/export_nll_onnx ] || $PKD export $R/sweep_l2_nll --format onnx --out $R/export_nll_onnx
$PKD evaluate --teacher $R/ppo_teacher --student $R/sweep_l2_nll --student $R/sweep_l2_kl1 --student $R/sweep_l1_dagger \
  --student $R/export_nll_numpy --student $R/export_nll_onnx --buffer $R/buffer_200k --mode both --episodes 100 \
  --out docs/lunarlander --force
$PKD evaluate --teacher $R/ppo_teacher --student $R/cmp_teacher_s0 --student $R/cmp_teacher_s1 --student $R/cmp_teacher_s2 \
  --aggregate --episodes 100 --no-latency --out docs/lunarlander_seeds --force
