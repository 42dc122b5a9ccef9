"""switchgen eval: methods over tasks, scored, with confidence intervals."""

from switchgen.evaluation.methods import METHODS, EvalSetup, Method, register_method
from switchgen.evaluation.run import method_file, prepare, run_eval

__all__ = ["METHODS", "EvalSetup", "Method", "method_file", "prepare", "register_method", "run_eval"]
