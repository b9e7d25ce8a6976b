#!/usr/bin/env bash
# The MinAtar part of the grid, resumable: the three teachers (500k-850k steps), then each game's grid, then
# the multi-task student. Re-running skips what is finished.
#   bash experiments/scripts/minatar.sh [teachers|grids|multitask|all|2m]  (teachers: SpaceInvaders and Asterix in parallel)
# 2m (not part of all): the three 2M-step teachers and their 4% grids, in parallel (~1 h a teacher on a core).
set -uo pipefail
cd "$(dirname "$0")/../.."
PY=.venv/bin/python
# The committed MinAtar results were made on an AVX2 machine; with these, an AVX-512 one re-trains the same
# CNN teachers bit for bit (measured: experiments/README.md). Set them empty to use the machine's own kernels.
export ATEN_CPU_CAPABILITY=${ATEN_CPU_CAPABILITY-avx2}
export ONEDNN_MAX_CPU_ISA=${ONEDNN_MAX_CPU_ISA-AVX2}
export MKL_ENABLE_INSTRUCTIONS=${MKL_ENABLE_INSTRUCTIONS-AVX2}
what=${1:-all}
games="breakout spaceinvaders asterix"
if [[ $what == teachers || $what == all ]]; then
  # Breakout's teacher is the packaged 3M preset stopped at 850k steps (see configs/minatar_dqn_fast.yml)
  t=experiments/runs/MinAtar/Breakout-v1/dqn_teacher
  [[ -f $t/teacher.json ]] || .venv/bin/policy-kd train-teacher --resume --out $t --n-timesteps 850000 --no-progress &
  for g in spaceinvaders asterix; do $PY experiments/grid.py experiments/configs/minatar_$g.yaml --only teacher & done
  wait
fi
if [[ $what == grids || $what == all ]]; then
  for g in $games; do
    $PY experiments/grid.py experiments/configs/minatar_$g.yaml --only buffer,distill,eval,dagger,curve || exit 1
    $PY experiments/tables.py
  done
fi
if [[ $what == multitask || $what == all ]]; then
  $PY experiments/multitask.py || exit 1
  $PY experiments/multitask.py --config experiments/configs/minatar_multitask_t0.1.yaml || exit 1
  $PY experiments/multitask.py --config experiments/configs/minatar_multitask_full.yaml || exit 1
  $PY experiments/multitask.py --config experiments/configs/minatar_multitask_30k_min.yaml || exit 1
  $PY experiments/tables.py
fi
if [[ $what == 2m ]]; then
  for g in $games; do $PY experiments/grid.py experiments/configs/minatar_${g}_2m.yaml --only teacher,buffer,distill,eval,curve & done
  wait
  $PY experiments/tables.py
fi
