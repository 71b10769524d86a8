"""xgrad: weight prediction for gradient-based optimizers (XGrad), and an experiment suite built on it.

The method needs only torch::

    from xgrad import WeightPredictor
    from xgrad.optim import AdaBelief, AdaM3, create_optimizer

The experiment suite (``xgrad.run``, ``xgrad.report``, data, models) builds on it and is imported only on use.
"""

from .predict import PREDICTION_METHODS, WeightPredictor, register_rule, supported_optimizers

__all__ = ["PREDICTION_METHODS", "WeightPredictor", "__version__", "register_rule", "supported_optimizers"]
__version__ = "0.1.0"
