"""vaekit: variational autoencoders in PyTorch.

Train with ``vaekit.train(config, out_dir)``, continue an interrupted run with ``vaekit.resume(out_dir)``, load
with ``vaekit.load(dir)``, then ``vae.sample(n)``, ``vae.reconstruct(x)``, or ``vaekit.evaluate(dir)``.
"""

from vaekit.checkpoint import load, load_config, load_run, save
from vaekit.config import Config, DataConfig, ModelConfig, TrainConfig, preset
from vaekit.data import load as load_data
from vaekit.errors import CheckpointError, ConfigError, DataError, TrainingError, VaekitError
from vaekit.evaluation import evaluate, evaluate_model
from vaekit.model import VAE, NotAvailable, Pass
from vaekit.objectives import elbo, iwae_bound
from vaekit.training import Callback, TrainResult, resume, train

__version__ = "0.1.0"

__all__ = [
    "VAE",
    "Callback",
    "CheckpointError",
    "Config",
    "ConfigError",
    "DataConfig",
    "DataError",
    "ModelConfig",
    "NotAvailable",
    "Pass",
    "TrainConfig",
    "TrainResult",
    "TrainingError",
    "VaekitError",
    "elbo",
    "evaluate",
    "evaluate_model",
    "iwae_bound",
    "load",
    "load_config",
    "load_data",
    "load_run",
    "preset",
    "resume",
    "save",
    "train",
]
