"""ponderkit: compose recursive, routed and adaptive-depth reasoning models from YAML.

Everything a plugin needs is exported here; names are imported lazily so that importing
``ponderkit`` (and running ``ponderkit list``) does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

from .contract.hookspec import callback_hook, hookimpl

__all__ = [
    "hookimpl",
    "callback_hook",
    # registry and configuration
    "Registry",
    "Component",
    "Origin",
    "KINDS",
    "Plugins",
    "Spec",
    "component",
    "components",
    "iter_specs",
    "structure",
    "unstructure",
    "ConfigError",
    "Issue",
    "PluginError",
    "PonderkitError",
    "UnknownComponentError",
    "InputError",
    "TextError",
    "ExperimentConfig",
    "ModelConfig",
    "load_experiment",
    "CheckEnv",
    # interfaces
    "Block",
    "Mixer",
    "Ffn",
    "Router",
    "Routing",
    "Recursion",
    "Halting",
    "Schedule",
    "Task",
    "Callback",
    "TrainerServices",
    "WeighsSteps",
    "NextStepTarget",
    "TransposedMixer",
    "ResettableRouter",
    "RoutedLayer",
    "GridView",
    "GridPuzzle",
    "ColouredGrid",
    "PaddedGrid",
    "Stateful",
    "FixedTrainingSet",
    "EvaluatesPuzzles",
    "Staged",
    "CountsActivations",
    "ReportsActiveParameters",
    "CALLBACK_HOOKS",
    "ForwardContext",
    "BuildContext",
    "Batch",
    "Carry",
    "IGNORE_LABEL",
    # layers and losses
    "Linear",
    "rms_norm",
    "apply_rope",
    "attend",
    "counting_flops",
    "trunc_normal_",
    "swiglu_width",
    "parameter_count",
    "sequence_loss",
    "step_metrics",
    "token_losses",
    "stablemax_log_probs",
    "accuracy",
    # GPU kernels (Triton where it runs, torch elsewhere)
    "swiglu",
    "use_triton",
    "kernels",
    # generation on serialized tasks
    "KVCache",
    "SequenceTask",
    "embed_tokens",
    "forward_logits",
    "generate",
    "free_running_metrics",
    # the model
    "ReasoningModel",
    "datacache",
]

_WHERE = {
    "Registry": "contract.registry",
    "Component": "contract.registry",
    "Origin": "contract.registry",
    "KINDS": "contract.registry",
    "Plugins": "contract.loading",
    "Spec": "contract.config",
    "component": "contract.config",
    "components": "contract.config",
    "iter_specs": "contract.config",
    "structure": "contract.config",
    "unstructure": "contract.config",
    "ConfigError": "contract.errors",
    "Issue": "contract.errors",
    "PluginError": "contract.errors",
    "PonderkitError": "contract.errors",
    "UnknownComponentError": "contract.errors",
    "InputError": "contract.errors",
    "TextError": "contract.errors",
    "ExperimentConfig": "contract.experiment",
    "ModelConfig": "contract.experiment",
    "load_experiment": "contract.experiment",
    "CheckEnv": "contract.experiment",
    "Block": "contract.interfaces",
    "Mixer": "contract.interfaces",
    "Ffn": "contract.interfaces",
    "Router": "contract.interfaces",
    "Routing": "contract.interfaces",
    "Recursion": "contract.interfaces",
    "Halting": "contract.interfaces",
    "Schedule": "contract.interfaces",
    "Task": "contract.interfaces",
    "Callback": "contract.interfaces",
    "TrainerServices": "contract.interfaces",
    "WeighsSteps": "contract.interfaces",
    "NextStepTarget": "contract.interfaces",
    "TransposedMixer": "contract.interfaces",
    "ResettableRouter": "contract.interfaces",
    "RoutedLayer": "contract.interfaces",
    "GridView": "contract.interfaces",
    "GridPuzzle": "contract.interfaces",
    "ColouredGrid": "contract.interfaces",
    "PaddedGrid": "contract.interfaces",
    "Stateful": "contract.interfaces",
    "FixedTrainingSet": "contract.interfaces",
    "EvaluatesPuzzles": "contract.interfaces",
    "Staged": "contract.interfaces",
    "CountsActivations": "contract.interfaces",
    "ReportsActiveParameters": "contract.interfaces",
    "CALLBACK_HOOKS": "contract.hookspec",
    "ForwardContext": "engine.context",
    "BuildContext": "engine.context",
    "Batch": "contract.interfaces",
    "Carry": "contract.interfaces",
    "IGNORE_LABEL": "contract.interfaces",
    "Linear": "engine.nn",
    "rms_norm": "engine.nn",
    "apply_rope": "engine.nn",
    "attend": "engine.nn",
    "counting_flops": "engine.nn",
    "trunc_normal_": "engine.nn",
    "swiglu_width": "engine.nn",
    "parameter_count": "engine.nn",
    "sequence_loss": "engine.losses",
    "step_metrics": "engine.losses",
    "token_losses": "engine.losses",
    "stablemax_log_probs": "engine.losses",
    "accuracy": "engine.losses",
    "swiglu": "engine.kernels",
    "use_triton": "engine.kernels",
    "KVCache": "engine.generate",
    "SequenceTask": "engine.generate",
    "embed_tokens": "engine.generate",
    "forward_logits": "engine.generate",
    "generate": "engine.generate",
    "free_running_metrics": "engine.generate",
    "ReasoningModel": "engine.model",
}


def __getattr__(name: str) -> Any:
    if name in ("datacache", "kernels"):
        return importlib.import_module(f".engine.{name}", __name__)
    if name in _WHERE:
        value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'ponderkit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
