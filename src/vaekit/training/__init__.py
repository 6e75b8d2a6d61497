"""Training: the loop (``loop``), a run's state and records (``run``, ``records``, ``runstate``), the choice of
step path (``paths``: CUDA graph, the fused CPU step, autograd) and the steps themselves (``steps``, ``graphs``,
``fused``), with data-parallel set-up (``distributed``)."""

from vaekit.training.loop import resume, train
from vaekit.training.run import Callback, TrainResult

__all__ = ["Callback", "TrainResult", "resume", "train"]
