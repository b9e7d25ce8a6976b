#!/usr/bin/env bash
# Every single-task grid in turn; each skips what is finished, so re-running resumes. Then the tables.
set -uo pipefail
cd "$(dirname "$0")/.."
for cfg in cartpole_dqn lunarlander_ppo lunarlander_dqn; do
  .venv/bin/python experiments/grid.py experiments/configs/$cfg.yaml || echo "grid $cfg failed; re-run to resume"
  .venv/bin/python experiments/tables.py
done
# continuous control (issue 25): teachers trained by rl_zoo3.train with the zoo's presets
for cfg in pendulum_sac pendulum_ppo mountaincarcontinuous_sac lunarlandercontinuous_ppo lunarlandercontinuous_sac; do
  .venv/bin/python experiments/grid.py experiments/configs/$cfg.yaml || echo "grid $cfg failed; re-run to resume"
  .venv/bin/python experiments/tables.py
done
bash experiments/scripts/minatar.sh all || echo "MinAtar part failed; re-run to resume"
