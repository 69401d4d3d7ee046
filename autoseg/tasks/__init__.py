"""Clinical task profiles (see profile.py). Importing this package registers every task."""
from autoseg.tasks.profile import (  # noqa: F401
    TASKS, PredictedCase, TaskProfile, apply_task, finish_folder, finish_prediction, finishes_predictions, raw_augmentations,
    resolve, run_case_steps, task_of, task_plan,
)
from autoseg.tasks import cervical_lowdose  # noqa: F401,E402  (registers "cervical-lowdose")
from autoseg.tasks import lumbar_ct  # noqa: F401,E402  (registers "lumbar-ct")
from autoseg.tasks import skeleton_ct  # noqa: F401,E402  (registers "skeleton-ct")
from autoseg.tasks import dti_cord  # noqa: F401,E402  (registers "dti-cord")
from autoseg.tasks import lumbar_xray_qc  # noqa: F401,E402  (registers "lumbar-xray-qc")
