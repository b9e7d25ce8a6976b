"""The random policy's returns that the experiments' tables normalize by, for the envs whose returns can be
negative (there a student/teacher return ratio reads backwards; CartPole and MinAtar returns cannot be).

    .venv/bin/python experiments/scripts/random_baseline.py LunarLander-v3   # needs the box2d extra

Plays exactly what ``policy-kd evaluate`` plays as its ``random`` entry (``policy_kd.evaluate.play_random``:
uniform actions from one generator seeded by --seed, one episode at a time) on the grids' episode seeds
(``reset(seed=i)``, i = 0..episodes-1), and writes ``experiments/results/random/<env>.json``. LunarLander's
random episodes are short: 100 of them take seconds, so no grid is re-run for this.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from policy_kd.envs import make_env
from policy_kd.evaluate import play_random
from policy_kd.run import versions
from policy_kd.stats import summarize

OUT = Path(__file__).resolve().parents[1] / "results" / "random"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("env", nargs="+", help="Gymnasium ids, e.g. LunarLander-v3")
    ap.add_argument("--episodes", type=int, default=100, help="episode seeds 0..N-1, as the grids use")
    ap.add_argument("--seed", type=int, default=0, help="seed of the random actions (evaluate's --seed)")
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    for env_id in args.env:
        probe = make_env(env_id)
        seeds = list(range(args.episodes))
        ep = play_random(env_id, probe.action_space, seeds, args.seed, lambda: make_env(env_id))  # noqa: B023
        probe.close()
        st = summarize(ep.returns, seed=args.seed)
        out = {
            "env_id": env_id,
            "seeds": seeds,
            "action_seed": args.seed,
            "policy": "uniform over the action space (policy_kd.evaluate.play_random)",
            "mean_return": st["mean"],
            "std_return": st["std"],
            "ci95": st["mean_ci"],
            "returns": [round(float(r), 4) for r in ep.returns],
            "lengths": [int(n) for n in ep.lengths],
            "versions": versions(),
        }
        # one key a line, each list on its line: reviewable diffs without 200 one-number lines
        text = "{\n" + ",\n".join(f" {json.dumps(k)}: {json.dumps(v)}" for k, v in out.items()) + "\n}\n"
        (OUT / f"{env_id}.json").write_text(text)
        print(
            f"{env_id}: random {st['mean']:.1f} ± {st['std']:.1f} over {len(seeds)} episodes -> {OUT / env_id}.json"
        )


if __name__ == "__main__":
    main()
