#!/usr/bin/env bash
# The MinAtar part of the grid, resumable: the three teachers (1M steps each), then each game's grid, then
# the multi-task student. Re-running skips what is finished.
#   bash experiments/scripts/minatar.sh [teachers|grids|multitask|all]
set -uo pipefail
cd "$(dirname "$0")/../.."
PY=.venv/bin/python
what=${1:-all}
games="breakout spaceinvaders asterix"
if [[ $what == teachers || $what == all ]]; then
  for g in $games; do $PY experiments/grid.py experiments/configs/minatar_$g.yaml --only teacher || exit 1; done
fi
if [[ $what == grids || $what == all ]]; then
  for g in $games; do
    $PY experiments/grid.py experiments/configs/minatar_$g.yaml --only buffer,distill,eval || exit 1
    $PY experiments/tables.py
  done
fi
if [[ $what == multitask || $what == all ]]; then
  $PY experiments/multitask.py || exit 1
  $PY experiments/tables.py
fi
