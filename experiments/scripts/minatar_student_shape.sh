#!/usr/bin/env bash
# Student shape at a fixed budget (MinAtar Breakout, ~5% of the teacher): the same kl tau=0.1 recipe as the
# grid (10k steps, cosine lr), conv channels traded against hidden width, 2 seeds each, then one evaluation
# of all of them on the grid's 100 seeds. Needs the Breakout grid's buffer and teacher (scripts/minatar.sh).
# Result: experiments/results/extra/breakout_student_shape_eval.json (copied from the eval folder).
set -euo pipefail
cd "$(dirname "$0")/../.."
B=experiments/runs/MinAtar-Breakout-v1_dqn/buffer
T=experiments/runs/MinAtar/Breakout-v1/dqn_teacher
R=experiments/runs/shape
mkdir -p $R
args=()
for shape in 3:26 3:32 6:16 8:12 16:5; do  # channels:hidden; 3:26 is the grid's 4% student
  c=${shape%%:*}; h=${shape##*:}
  for s in 0 1; do
    o=$R/bo_c${c}_h${h}_s$s; args+=(--student "$o")
    [[ -f $o/student.json ]] || .venv/bin/policy-kd distill --buffer $B --out "$o" --force --student minatar_cnn \
      --channels "$c" --hidden "$h" --loss kl --tau 0.1 --steps 10000 --batch-size 256 --lr 0.001 \
      --lr-schedule cosine --eval-every 2500 --eval-episodes 10 --seed $s --no-progress
  done
done
.venv/bin/policy-kd evaluate --teacher $T "${args[@]}" --out $R/eval --episodes 100 --force --no-plots
mkdir -p experiments/results/extra
cp $R/eval/eval.json experiments/results/extra/breakout_student_shape_eval.json
