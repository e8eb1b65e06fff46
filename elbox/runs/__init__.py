"""The run layer: what ``elbox fit``, ``elbox evaluate``, ``elbox report`` and ``elbox demo`` do,
callable from Python without the command line.

A run is a config (the TOML schema and its checks, :mod:`elbox.runs.config`), a model type
from the registry (:mod:`elbox.runs.types`), its data (:mod:`elbox.runs.data`), a model, guide
and objective built from them (:mod:`elbox.runs.build`), trained into a run directory
(:mod:`elbox.runs.train`), loaded back (:mod:`elbox.runs.load`), evaluated and reported
(:mod:`elbox.runs.evaluate`) and drawn (:mod:`elbox.runs.figures`). The command line
(:mod:`elbox.cli`) parses arguments and prints; it holds no model knowledge.
"""

from elbox.runs.build import build_model, build_objective
from elbox.runs.config import ConfigError, load_config, parse_config
from elbox.runs.data import load_data
from elbox.runs.evaluate import evaluate_run, report_run
from elbox.runs.figures import make_figures
from elbox.runs.load import Run, load_run
from elbox.runs.train import train_run
from elbox.runs.types import MODEL_TYPES, DataInfo, ModelType, register_model_type

__all__ = [
    "MODEL_TYPES",
    "ConfigError",
    "DataInfo",
    "ModelType",
    "Run",
    "build_model",
    "build_objective",
    "evaluate_run",
    "load_config",
    "load_data",
    "load_run",
    "make_figures",
    "parse_config",
    "register_model_type",
    "report_run",
    "train_run",
]
