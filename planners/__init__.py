"""Planners: fingerprint + budget -> plan. Importing this package registers them by name."""
from autoseg.planners import default  # noqa: F401  (registers "default")
from autoseg.registry import PLANNERS


def plan_dataset(fingerprint, gpu_memory_gb: float = 8.0, configs=None, network: str = "unet", planner: str = "default"):
    return PLANNERS.get(planner)(fingerprint, gpu_memory_gb=gpu_memory_gb, configs=configs, network=network)
