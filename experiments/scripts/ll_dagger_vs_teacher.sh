#!/usr/bin/env bash
# LunarLander-v3, PPO teacher: teacher-driven vs student-driven (DAgger) distillation at equal teacher labels
# (100k) and equal gradient steps (15k), 3 student seeds, each student evaluated on seeds 0..99.
# Run from the repo root after train-teacher into experiments/runs/LunarLander-v3/ppo_teacher.
set -euo pipefail
PKD=${PKD:-.venv/bin/policy-kd}
R=experiments/runs/LunarLander-v3
T=$R/ppo_teacher
[ -d $R/buffer_100k ] || $PKD record --teacher $T --out $R/buffer_100k --steps 100000 --behaviour teacher --n-envs 8 --seed 10 --no-progress
[ -d $R/buffer_50k ] || $PKD record --teacher $T --out $R/buffer_50k --steps 50000 --behaviour teacher --n-envs 8 --seed 20 --no-progress
COMMON="--params-fraction 0.05 --loss kl --tau 1.0 --lr 3e-3 --lr-schedule cosine --eval-every 5000 --eval-episodes 20 --no-progress"
for seed in 0 1 2; do
  d=$R/cmp_teacher_s$seed
  [ -f $d/student.json ] || $PKD distill --buffer $R/buffer_100k --out $d --steps 15000 --seed $seed $COMMON --force
  [ -f ${d}_eval/eval.json ] || $PKD evaluate --teacher $T --student $d --episodes 100 --out ${d}_eval --force > /dev/null
  d=$R/cmp_dagger_s$seed
  [ -f $d/student.json ] || $PKD distill --buffer $R/buffer_50k --out $d --steps 5000 --rounds 3 --round-steps 25000 \
      --behaviour mixture --beta 1.0 --beta-schedule linear --round-n-envs 8 --seed $seed $COMMON --force
  [ -f ${d}_eval/eval.json ] || $PKD evaluate --teacher $T --student $d --episodes 100 --out ${d}_eval --force > /dev/null
done
