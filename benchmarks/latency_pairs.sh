#!/usr/bin/env bash
# The three teacher/student pairs bench_latency.py measures the C export on (issue 26), small enough for a
# 2-core machine (~15 min): CartPole DQN (the zoo preset's 256x256 net) with a 1% MLP student, MinAtar Breakout
# DQN (the MinAtar paper's CNN, 30k steps) with a 4% CNN student, LunarLander DQN (40k steps) with a 1% student.
# Short-trained teachers: the figures are latency, size, agreement and C-vs-eager return parity, not skill.
#
#     bash benchmarks/latency_pairs.sh runs/latency        # then:
#     python benchmarks/bench_latency.py --teacher runs/latency/cp_teacher --student runs/latency/cp_student \
#         --more runs/latency/ma_teacher runs/latency/ma_student --more runs/latency/ll_teacher runs/latency/ll_student
set -euo pipefail
root=${1:-runs/latency}
pk() { "${POLICY_KD:-policy-kd}" "$@" --no-progress; }
mkdir -p "$root"
pair() {  # name algo env steps preset student-args...
    local n=$1 env=$2 steps=$3 preset=$4; shift 4
    [ -f "$root/${n}_teacher/.done" ] || {
        pk train-teacher --algo dqn --env "$env" --out "$root/${n}_teacher" --n-timesteps "$steps" --seed 0 \
            ${preset:+--preset "$preset"} --force
        touch "$root/${n}_teacher/.done"
    }
    [ -f "$root/${n}_buffer/.done" ] || {
        pk record --teacher "$root/${n}_teacher" --out "$root/${n}_buffer" --steps 20000 --behaviour epsilon \
            --epsilon 0.05 --seed 0 --force
        touch "$root/${n}_buffer/.done"
    }
    [ -f "$root/${n}_student/.done" ] || {
        pk distill --buffer "$root/${n}_buffer" --out "$root/${n}_student" --steps 5000 --eval-every 2500 \
            --seed 0 --force "$@"
        touch "$root/${n}_student/.done"
    }
}
pair cp CartPole-v1 20000 "" --params-fraction 0.01
pair ma MinAtar/Breakout-v1 30000 experiments/configs/minatar_dqn_fast.yml --student minatar_cnn --params-fraction 0.04
pair ll LunarLander-v3 40000 "" --params-fraction 0.01
