"""``ponderkit import``: a checkpoint of the TRM authors' or HRM's code as a ponderkit run.

The reference code (SamsungSAILMontreal/TinyRecursiveModels, sapientinc/HRM) saves the
``state_dict`` of ``ACTLossHead(model)``, often through ``torch.compile``: keys such as
``_orig_mod.model.inner.L_level.layers.0.mlp.gate_up_proj.weight``. Its run folder holds
``all_config.yaml``: ``arch`` (hidden_size, num_heads, expansion, H/L_cycles, H/L_layers,
puzzle_emb_ndim, puzzle_emb_len, pos_encodings, halt_max_steps, mlp_t, ...) and the training
recipe (lr, beta1, beta2, weight_decay, puzzle_emb_lr, ema, ...). :func:`map_state_dict`
renames the weights, :func:`experiment_data` reads the config into a ponderkit experiment, and
:func:`import_run` writes a run folder (``config.yaml``, ``meta.json``, ``checkpoints/final``)
that ``eval``, ``trace``, ``predict`` and ``run --resume`` take like any other.
"""

from __future__ import annotations

import argparse
import re
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..contract.errors import InputError
from ..contract.loading import Plugins

# prefixes the reference code's wrappers add: torch.compile, the loss head, the ACT wrapper
WRAPPER_PREFIXES = ("_orig_mod.", "model.", "inner.")
# buffers that are rebuilt, never trained: RoPE tables, the sparse embedding's batch scratch
SKIPPED = re.compile(r"^(rotary_emb\.|puzzle_emb\.local_)")

_BLOCK = {
    r"self_attn\.qkv_proj\.weight": "mixer.qkv.weight",
    r"self_attn\.o_proj\.weight": "mixer.out.weight",
    r"mlp_t\.gate_up_proj\.weight": "mixer.mlp.gate_up.weight",
    r"mlp_t\.down_proj\.weight": "mixer.mlp.down.weight",
    r"mlp\.gate_up_proj\.weight": "ffn.gate_up.weight",
    r"mlp\.down_proj\.weight": "ffn.down.weight",
}
_SHARED = {
    "embed_tokens.embedding_weight": "token_emb.weight",
    "embed_pos.embedding_weight": "pos_emb.weight",
    "puzzle_emb.weights": "puzzle_emb.weight",
    "lm_head.weight": "head.weight",
    "q_head.weight": "halting.q.weight",
    "q_head.bias": "halting.q.bias",
    # z_H is ponderkit's y (the answer state), z_L its z (the latent)
    "H_init": "recursion.init.y_init",
    "L_init": "recursion.init.z_init",
}
# the reference's reasoning modules -> ponderkit's networks: TRM has one (L_level), HRM two
NETS = {
    "trm": {"L_level": "recursion.net"},
    "hrm": {"H_level": "recursion.H_net", "L_level": "recursion.L_net"},
}


def strip_wrappers(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key, changed = key[len(prefix) :], True
    return key


def reference_key(key: str, layout: str) -> str | None:
    """ponderkit's name for the reference's ``key`` (wrappers stripped), None when skipped;
    raises :class:`InputError` for a key of neither model."""
    key = strip_wrappers(key)
    if SKIPPED.match(key):
        return None
    if key in _SHARED:
        return _SHARED[key]
    for level, net in NETS[layout].items():
        m = re.fullmatch(rf"{level}\.layers\.(\d+)\.(.+)", key)
        if not m:
            continue
        for pattern, ours in _BLOCK.items():
            if re.fullmatch(pattern, m.group(2)):
                return f"{net}.blocks.{m.group(1)}.{ours}"
    raise InputError(f"checkpoint key {key!r} is not part of the {layout.upper()} layout")


def map_state_dict(state: Mapping[str, Any], layout: str) -> dict[str, Any]:
    """The reference's state dict under ponderkit's parameter names."""
    out: dict[str, Any] = {}
    for key, value in state.items():
        ours = reference_key(key, layout)
        if ours is not None:
            out[ours] = value
    return out


def layout_of(arch: Mapping[str, Any], keys: Sequence[str]) -> str:
    """``hrm`` or ``trm``: from the config's ``arch.name`` where it says, else the keys."""
    name = str(arch.get("name", "")).lower()
    if "hierarchical" in name or "hrm" in name:
        return "hrm"
    if "tiny" in name or "trm" in name:
        return "trm"
    return "hrm" if any(".H_level." in f".{strip_wrappers(k)}" for k in keys) else "trm"


def _ceil_div(a: int, b: int) -> int:
    return -(a // -b)


def model_data(arch: Mapping[str, Any], layout: str, seq_len: int | None = None) -> dict:
    """ponderkit's ``model:`` section for the reference's ``arch``."""
    d = int(arch["hidden_size"])
    ndim = int(arch.get("puzzle_emb_ndim", 0))
    length = int(arch.get("puzzle_emb_len", 16 if layout == "trm" else 0) or 0) if ndim else 0
    if ndim and not length:
        length = _ceil_div(ndim, d)
    expansion = float(arch.get("expansion", 4.0))
    if arch.get("mlp_t"):
        mixer: dict[str, Any] = {"name": "mlp_t", "expansion": expansion}
    else:
        mixer = {"name": "attention", "heads": int(arch["num_heads"])}
    block = {"name": "post_norm", "mixer": mixer, "ffn": {"name": "swiglu", "expansion": expansion}}
    cycles = {"H_cycles": int(arch["H_cycles"]), "L_cycles": int(arch["L_cycles"])}
    if layout == "hrm":
        layers = {"H_layers": int(arch["H_layers"]), "L_layers": int(arch["L_layers"])}
    else:
        layers = {"layers": int(arch["L_layers"])}
    positions = str(arch.get("pos_encodings", "rope"))
    hrm_mode = layout == "hrm" or not arch.get("no_ACT_continue", True)
    loss = str((arch.get("loss") or {}).get("loss_type", "stablemax_cross_entropy"))
    return {
        "d_model": d,
        "positions": positions if positions in ("rope", "learned") else "none",
        "rope_theta": float(arch.get("rope_theta", 10000.0)),
        "puzzle_emb_len": length,
        # 0: the full prefix (length x d); TRM's usual D numbers per identifier, zero-padded
        "puzzle_emb_dim": 0 if ndim == length * d else ndim,
        "loss": "softmax" if loss.startswith("softmax") else "stablemax",
        "recursion": {"name": layout, **layers, **cycles, "block": block},
        "halting": {
            "name": "q_head",
            "max_steps": int(arch.get("halt_max_steps", 16)),
            "exploration": float(arch.get("halt_exploration_prob", 0.1)),
            "mode": "hrm" if hrm_mode else "trm",
        },
    }


def recipe_data(ref: Mapping[str, Any], has_puzzle_table: bool) -> dict:
    """The reference's optimizer, EMA and puzzle-table optimizer as ponderkit sections."""
    min_ratio = float(ref.get("lr_min_ratio", 1.0))
    out: dict[str, Any] = {
        "optimizer": {
            "name": "adam_atan2",
            "lr": float(ref.get("lr", 1e-4)),
            "betas": [float(ref.get("beta1", 0.9)), float(ref.get("beta2", 0.95))],
            "weight_decay": float(ref.get("weight_decay", 0.1)),
            "warmup_steps": int(ref.get("lr_warmup_steps", 2000)),
            "decay": "constant" if min_ratio >= 1.0 else "cosine",
            "min_lr_ratio": min(min_ratio, 1.0),
            "grad_clip": None,  # the reference clips nothing
            "no_decay": [],  # the reference decays every parameter
        }
    }
    callbacks = []
    if has_puzzle_table:
        callbacks.append(
            {
                "name": "puzzle_emb_signsgd",
                "lr": float(ref.get("puzzle_emb_lr", 1e-2)),
                "weight_decay": float(ref.get("puzzle_emb_weight_decay", 0.1)),
            }
        )
    if ref.get("ema"):
        callbacks.append({"name": "ema", "decay": float(ref.get("ema_rate", 0.999))})
    out["callbacks"] = callbacks
    if "global_batch_size" in ref:
        out["train"] = {"batch_size": int(ref["global_batch_size"])}
    if "seed" in ref:
        out["seed"] = int(ref["seed"])
    return out


def experiment_data(ref: Mapping[str, Any], layout: str, base: Mapping[str, Any] | None) -> dict:
    """A ponderkit experiment: ``base``'s (task, train ...) with the reference's model and
    recipe; without ``base``, the reference's data set through ``task/files``."""
    arch = ref.get("arch") or {}
    data: dict[str, Any] = dict(base or {})
    data.pop("extends", None)
    if "task" not in data:
        paths = ref.get("data_paths") or [ref.get("data_path")]
        if not paths or not paths[0]:
            raise InputError("the reference config names no data_path; give --base EXPERIMENT")
        data["task"] = {"name": "files", "path": str(paths[0])}
    data["model"] = model_data(arch, layout)
    recipe = recipe_data(ref, bool(int(arch.get("puzzle_emb_ndim", 0))))
    data["optimizer"] = recipe["optimizer"]
    data["callbacks"] = recipe["callbacks"]
    data["train"] = {**recipe.get("train", {}), **(data.get("train") or {})}
    if "seed" in recipe and "seed" not in data:
        data["seed"] = recipe["seed"]
    data.setdefault("name", f"{layout}_import")
    return data


def load_reference_state(path: Path) -> dict[str, Any]:
    """The reference's saved state dict (``torch.save`` or safetensors), on the CPU."""
    import torch

    if not path.is_file():
        raise InputError(f"{path}: no such checkpoint file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle or zip errors: not a checkpoint
        raise InputError(f"{path}: not a torch checkpoint ({type(exc).__name__}: {exc})") from None
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    if not isinstance(state, dict):
        raise InputError(f"{path}: holds a {type(state).__name__}, not a state dict")
    return state


def import_run(
    checkpoint: Path,
    config: Path,
    out: Path,
    registry: Any,
    base: Path | None = None,
    overrides: Sequence[str] = (),
) -> Path:
    """Write run folder ``out`` from the reference's ``checkpoint`` and ``config``
    (``all_config.yaml``); ``base``, a ponderkit experiment, gives the task and training
    settings. Returns ``out``."""
    import yaml

    from ..contract.experiment import experiment_from_document
    from ..contract.yamlio import dump, load_document
    from ..engine.train import Trainer

    if out.exists() and any(out.iterdir()):
        raise InputError(f"{out} exists and is not empty; a run directory is never overwritten")
    if not config.is_file():
        raise InputError(f"{config}: no such config file (the reference's all_config.yaml)")
    ref = yaml.safe_load(config.read_text()) or {}
    if not isinstance(ref, dict) or not isinstance(ref.get("arch"), dict):
        raise InputError(f"{config}: no `arch:` mapping (is it the reference's all_config.yaml?)")
    state = load_reference_state(checkpoint)
    layout = layout_of(ref["arch"], list(state))
    weights = map_state_dict(state, layout)
    base_data = load_document(base, []).data if base else None
    data = experiment_data(ref, layout, base_data)
    with tempfile.TemporaryDirectory() as tmp:  # validated before the run folder exists
        staged = Path(tmp) / "imported.yaml"
        staged.write_text(dump(data))
        exp = experiment_from_document(load_document(staged, list(overrides)), registry).config
    out.mkdir(parents=True, exist_ok=True)
    trainer = Trainer(exp, registry, out, quiet=True)
    load_weights(trainer.model, weights, checkpoint)
    trainer._start_run()
    trainer.checkpoint("final")
    (out / "imported.yaml").write_text(
        dump({"checkpoint": str(checkpoint), "config": str(config), "layout": layout})
    )
    return out


def load_weights(model: Any, weights: dict[str, Any], source: Path) -> None:
    """Copy ``weights`` into ``model``: every parameter and persistent buffer must be given,
    with its shape (cast to the model's dtype: the reference keeps some in bfloat16)."""
    import torch

    own = model.state_dict()
    missing = sorted(set(own) - set(weights))
    extra = sorted(set(weights) - set(own))
    if missing or extra:
        parts = [
            f"missing {', '.join(missing)}" if missing else "",
            f"not in this model {', '.join(extra)}" if extra else "",
        ]
        raise InputError(
            f"{source}: the weights do not fit the model: " + "; ".join(p for p in parts if p)
        )
    for key, value in weights.items():
        if tuple(value.shape) != tuple(own[key].shape):
            raise InputError(
                f"{source}: {key} has shape {tuple(value.shape)}, the model's is "
                f"{tuple(own[key].shape)} (check the task: vocabulary, length, puzzle ids)"
            )
    with torch.no_grad():
        model.load_state_dict({k: v.to(own[k].dtype) for k, v in weights.items()})


def add_import_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "import",
        parents=[common],
        help="a TRM-authors' or HRM checkpoint (and its all_config.yaml) as a ponderkit run",
    )
    p.add_argument("checkpoint", type=Path, help="the reference's saved state dict")
    p.add_argument("--config", type=Path, help="its all_config.yaml (default: beside it)")
    p.add_argument("--base", type=Path, help="a ponderkit experiment giving task and training")
    p.add_argument("--out", type=Path, required=True, help="the run directory to write")
    p.add_argument("overrides", nargs="*", metavar="key.path=value")


def cmd_import(args: argparse.Namespace, plugins: Plugins) -> int:
    config = args.config or args.checkpoint.parent / "all_config.yaml"
    out = import_run(args.checkpoint, config, args.out, plugins.registry, args.base, args.overrides)
    print(f"imported {args.checkpoint} into {out}")
    return 0
