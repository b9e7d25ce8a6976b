#!/usr/bin/env bash
# Every single-task grid in turn; each skips what is finished, so re-running resumes. Then the tables.
set -uo pipefail
cd "$(dirname "$0")/.."
for cfg in cartpole_dqn lunarlander_ppo lunarlander_dqn; do
  .venv/bin/python experiments/grid.py experiments/configs/$cfg.yaml || echo "grid $cfg failed; re-run to resume"
  .venv/bin/python experiments/tables.py
done
# continuous control (issue 25): teachers trained with the zoo's presets (by rl_zoo3.train, or by train-teacher
# from their copies in agents/); the multi-hour BipedalWalker teachers are left to their own commands
for cfg in pendulum_sac pendulum_ppo pendulum_tqc pendulum_td3 pendulum_ddpg mountaincarcontinuous_sac \
  lunarlandercontinuous_ppo lunarlandercontinuous_sac lunarlandercontinuous_td3; do
  .venv/bin/python experiments/grid.py experiments/configs/$cfg.yaml || echo "grid $cfg failed; re-run to resume"
  .venv/bin/python experiments/tables.py
done
bash experiments/scripts/minatar.sh all || echo "MinAtar part failed; re-run to resume"
