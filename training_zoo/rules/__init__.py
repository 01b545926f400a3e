"""Learning rules. Importing this package registers every built-in rule."""

from training_zoo.rules.base import LearningRule, RuleStep, StochasticRule, Variant
from training_zoo.rules.registry import FAMILIES, all_rules, catalogue, get_rule, register

__all__ = ["FAMILIES", "LearningRule", "RuleStep", "StochasticRule", "Variant", "all_rules", "catalogue", "get_rule", "register"]
from training_zoo.rules import backprop  # noqa: E402,F401
from training_zoo.rules import node_perturbation  # noqa: E402,F401
from training_zoo.rules import brainprop  # noqa: E402,F401
from training_zoo.rules import hebbian  # noqa: E402,F401
from training_zoo.rules import krotov_hopfield  # noqa: E402,F401
from training_zoo.rules import feedback_alignment  # noqa: E402,F401
from training_zoo.rules import predictive_coding  # noqa: E402,F401
from training_zoo.rules import equilibrium_propagation  # noqa: E402,F401
from training_zoo.rules import target_propagation  # noqa: E402,F401
from training_zoo.rules import burstprop  # noqa: E402,F401
from training_zoo.rules import forward_forward  # noqa: E402,F401
