#!/usr/bin/env bash
# LunarLander-v3 PPO teacher: students at <= 5% of the teacher's 4,996 actor parameters, a few recipes,
# each evaluated against the teacher on seeds 0..99. Skips finished runs (re-run to resume).
set -euo pipefail
PKD=${PKD:-.venv/bin/policy-kd}
R=experiments/runs/LunarLander-v3
T=$R/ppo_teacher
COMMON="--params-fraction 0.05 --lr 3e-3 --lr-schedule cosine --steps 30000 --eval-every 3000 --eval-episodes 50 --no-progress --force"
run() {  # name, distill args...
  local name=$1; shift
  local d=$R/sweep_$name
  [ -f $d/student.json ] || $PKD distill --out $d $COMMON "$@"
  [ -f ${d}_eval/eval.json ] || $PKD evaluate --teacher $T --student $d --episodes 100 --out ${d}_eval --force > /dev/null
  .venv/bin/python -c "import json; e=json.load(open('${d}_eval/eval.json')); print('$name', round(e['student']['mean_return'],1), round(e['return_ratio'],4), e['student'].get('params', ''))"
}
run l1_kl1 --buffer $R/buffer_200k --layers 1 --loss kl --tau 1.0
run l2_kl1 --buffer $R/buffer_200k --layers 2 --loss kl --tau 1.0
run l2_kl01 --buffer $R/buffer_200k --layers 2 --loss kl --tau 0.1
run l2_nll --buffer $R/buffer_200k --layers 2 --loss nll
run l1_dagger --buffer $R/buffer_200k --layers 1 --loss kl --tau 1.0 --rounds 4 --round-steps 25000 --round-n-envs 8 --steps 10000 --eval-every 5000
