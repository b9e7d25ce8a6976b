#!/usr/bin/env bash
# Capacity at a fixed budget (issue 25, MinAtar SpaceInvaders, 5% of the teacher): is the best <= 5% student's
# 0.91 on the strongest SpaceInvaders teacher (configs/minatar_spaceinvaders_2m_b.yaml, 38.1) a matter of how
# the budget is spent? The same 5% budget, solved by --params-fraction for each shape (docs/students.md):
#   grid            conv 3x3 -> hidden -> head, the config's 5% student (3 channels x 32)
#   no_hidden       --hidden 0: the conv features straight to the head (21 channels)
#   separable       --conv separable (depthwise 3x3 + pointwise 1x1), hidden layer kept (3 x 33)
#   separable_nh    --conv separable --hidden 0 (24 channels)
#   stride2         --conv-stride 2 (5x5 maps instead of 8x8; 5 x 48)
#   stride2_nh      --conv-stride 2 --hidden 0 (42 channels)
# each with the recipe of that config's best <= 5% cell (kl_t0.1_90k_dagger_sel30: kl tau 0.1, 22,500 steps
# per round, 4 rounds of 50,000 mixture states, 30-episode selection, cosine lr 1e-3, batch 256), 2 seeds,
# then one evaluation of all of them on 100 episodes (the grid's seeds 0..99).
# Needs the teacher and buffer of that config (policy-kd sweep experiments/configs/minatar_spaceinvaders_2m_b.yaml).
# Result: experiments/results/extra/spaceinvaders_capacity_eval.json (copied from the eval folder).
# Every setting below can be overridden from the environment (a smoke test runs it with tiny steps).
set -euo pipefail
cd "$(dirname "$0")/../.."
T=${T:-experiments/runs/MinAtar-SpaceInvaders-v1_dqn_2m_b/teacher}
B=${B:-experiments/runs/MinAtar-SpaceInvaders-v1_dqn_2m_b/buffer}
R=${R:-experiments/runs/capacity_spaceinvaders}
RESULT=${RESULT:-experiments/results/extra/spaceinvaders_capacity_eval.json}
SHAPES=${SHAPES:-"grid no_hidden separable separable_nh stride2 stride2_nh"}
SEEDS=${SEEDS:-"0 1"}
FRACTION=${FRACTION:-0.05}
STEPS=${STEPS:-22500}
EVAL_EVERY=${EVAL_EVERY:-11250}
EVAL_EPISODES=${EVAL_EPISODES:-30}
ROUNDS=${ROUNDS:-4}
ROUND_STEPS=${ROUND_STEPS:-50000}
ROUND_N_ENVS=${ROUND_N_ENVS:-8}
EPISODES=${EPISODES:-100}
PKD=${PKD:-.venv/bin/policy-kd}

shape_flags() {
  case $1 in
    grid) ;;
    no_hidden) echo --hidden 0 ;;
    separable) echo --conv separable ;;
    separable_nh) echo --conv separable --hidden 0 ;;
    stride2) echo --conv-stride 2 ;;
    stride2_nh) echo --conv-stride 2 --hidden 0 ;;
    *) echo "unknown shape $1" >&2; exit 2 ;;
  esac
}

mkdir -p "$R"
args=()
for shape in $SHAPES; do
  flags=$(shape_flags "$shape")
  for s in $SEEDS; do
    o=$R/si_${shape}_s$s; args+=(--student "$o")
    [[ -f $o/student.json ]] && continue
    if [[ -f $o/checkpoint.pt ]]; then  # an interrupted run goes on from its checkpoint, with its own options
      OMP_NUM_THREADS=1 nice -n 10 "$PKD" distill --resume --out "$o" --no-progress
      continue
    fi
    # shellcheck disable=SC2086  # $flags is a list of options
    OMP_NUM_THREADS=1 nice -n 10 "$PKD" distill --buffer "$B" --teacher "$T" --out "$o" \
      --force --student minatar_cnn --params-fraction "$FRACTION" $flags --loss kl --tau 0.1 --steps "$STEPS" \
      --batch-size 256 --lr 0.001 --lr-schedule cosine --eval-every "$EVAL_EVERY" --eval-episodes "$EVAL_EPISODES" \
      --rounds "$ROUNDS" --round-steps "$ROUND_STEPS" --round-n-envs "$ROUND_N_ENVS" --behaviour mixture \
      --beta 1.0 --beta-schedule linear --seed "$s" --no-progress
  done
done
OMP_NUM_THREADS=1 nice -n 10 "$PKD" evaluate --teacher "$T" "${args[@]}" --out "$R/eval" --episodes "$EPISODES" \
  --force --no-plots
mkdir -p "$(dirname "$RESULT")"
cp "$R/eval/eval.json" "$RESULT"
