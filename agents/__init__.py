"""Teacher hyperparameter presets (YAML, one file per algorithm), installed as ``policy_kd.agents``."""
