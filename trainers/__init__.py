"""Trainers: the training loop, its loss, schedule and checkpoints. Importing this package
registers the trainers by name."""
from autoseg.trainers import trainer  # noqa: F401  (registers "default")
