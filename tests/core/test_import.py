"""``ponderkit import``: checkpoints in the TRM authors' and HRM's key layout (built here by
hand, key by key, as their code names them) become ponderkit runs that eval and load."""

from __future__ import annotations

import pytest
import torch
import yaml
from ponderkit.app.cli import main
from ponderkit.app.importer import reference_key
from ponderkit.engine.evaluate import load_model

D, V, SEQ, PREFIX = 32, 8, 6, 16  # width, sort's vocabulary (values), length, puzzle prefix
PRE = "_orig_mod.model.inner."  # torch.compile + ACTLossHead + the ACT wrapper


def swiglu_hidden(width: int, expansion: float) -> int:
    """The reference's SwiGLU width: round(expansion * width * 2/3) up to a multiple of 256."""
    return -(round(expansion * width * 2 / 3) // -256) * 256


def reference_state(layout: str, mlp_t: bool, puzzle_ndim: int, seed: int = 0) -> dict:
    """A state dict as the reference saves it: names and shapes from its modules."""
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *shape: torch.randn(*shape, generator=g)  # noqa: E731
    h = swiglu_hidden(D, 2.0)
    state = {
        PRE + "embed_tokens.embedding_weight": rnd(V, D),
        PRE + "lm_head.weight": rnd(V, D),
        PRE + "q_head.weight": rnd(2, D),
        PRE + "q_head.bias": torch.tensor([-5.0, 1.5]),
        PRE + "H_init": rnd(D).to(torch.bfloat16),  # the reference keeps these in forward_dtype
        PRE + "L_init": rnd(D).to(torch.bfloat16),
        PRE + "puzzle_emb.weights": rnd(1, puzzle_ndim),
        PRE + "puzzle_emb.local_weights": torch.zeros(4, puzzle_ndim),  # scratch: skipped
        PRE + "puzzle_emb.local_ids": torch.zeros(4, dtype=torch.int32),
    }
    levels = {"trm": [("L_level", 2)], "hrm": [("H_level", 1), ("L_level", 1)]}[layout]
    for level, layers in levels:
        for i in range(layers):
            at = f"{PRE}{level}.layers.{i}."
            if mlp_t:
                t = SEQ + PREFIX
                ht = swiglu_hidden(t, 2.0)
                state[at + "mlp_t.gate_up_proj.weight"] = rnd(2 * ht, t)
                state[at + "mlp_t.down_proj.weight"] = rnd(t, ht)
            else:
                state[at + "self_attn.qkv_proj.weight"] = rnd(3 * D, D)
                state[at + "self_attn.o_proj.weight"] = rnd(D, D)
            state[at + "mlp.gate_up_proj.weight"] = rnd(2 * h, D)
            state[at + "mlp.down_proj.weight"] = rnd(D, h)
    return state


def reference_config(layout: str, mlp_t: bool, puzzle_ndim: int) -> dict:
    """``all_config.yaml`` as the reference writes it (the fields ponderkit reads)."""
    name = {
        "trm": "recursive_reasoning.trm@TinyRecursiveReasoningModel_ACTV1",
        "hrm": "hrm.hrm_act_v1@HierarchicalReasoningModel_ACTV1",
    }[layout]
    return {
        "arch": {
            "name": name,
            "loss": {"name": "losses@ACTLossHead", "loss_type": "stablemax_cross_entropy"},
            "H_cycles": 2, "L_cycles": 3, "H_layers": 1, "L_layers": 2 if layout == "trm" else 1,
            "hidden_size": D, "num_heads": 4, "expansion": 2, "puzzle_emb_ndim": puzzle_ndim,
            "pos_encodings": "none" if mlp_t else "rope", "halt_max_steps": 4,
            "halt_exploration_prob": 0.1, "mlp_t": mlp_t, "puzzle_emb_len": PREFIX,
            "no_ACT_continue": True, "forward_dtype": "bfloat16",
        },
        "data_paths": ["data/sudoku-extreme-1k-aug-1000"],
        "global_batch_size": 768, "epochs": 50000, "lr": 1e-4, "lr_min_ratio": 1.0,
        "lr_warmup_steps": 2000, "weight_decay": 1.0, "beta1": 0.9, "beta2": 0.95,
        "puzzle_emb_lr": 1e-4, "puzzle_emb_weight_decay": 1.0, "ema": True, "ema_rate": 0.999,
        "seed": 0,
    }  # fmt: skip


@pytest.fixture
def reference(tmp_path, write):
    base = write(
        "base.yaml",
        """
        task: {name: sort, length: 6, values: 8, eval_size: 32}
        train: {steps: 2, batch_size: 8, eval_batch_size: 32, threads: 1, flops_every: 0}
        """,
    )

    def _make(layout: str = "trm", mlp_t: bool = True, puzzle_ndim: int = D):
        folder = tmp_path / f"ref_{layout}_{mlp_t}"
        folder.mkdir()
        state = reference_state(layout, mlp_t, puzzle_ndim)
        torch.save(state, folder / "step_1000")
        (folder / "all_config.yaml").write_text(
            yaml.safe_dump(reference_config(layout, mlp_t, puzzle_ndim))
        )
        return folder / "step_1000", base, state

    return _make


# hand-written: the reference's module names and ponderkit's, one line each
EXPECTED = [
    ("trm", "_orig_mod.model.inner.embed_tokens.embedding_weight", "token_emb.weight"),
    ("trm", "model.inner.L_level.layers.1.mlp.down_proj.weight", "recursion.net.blocks.1.ffn.down.weight"),
    ("trm", "inner.L_level.layers.0.mlp_t.gate_up_proj.weight", "recursion.net.blocks.0.mixer.mlp.gate_up.weight"),
    ("trm", "L_level.layers.3.self_attn.qkv_proj.weight", "recursion.net.blocks.3.mixer.qkv.weight"),
    ("trm", "model.inner.q_head.bias", "halting.q.bias"),
    ("trm", "model.inner.H_init", "recursion.init.y_init"),
    ("trm", "model.inner.puzzle_emb.weights", "puzzle_emb.weight"),
    ("trm", "model.inner.rotary_emb.cos_cached", None),
    ("hrm", "model.inner.H_level.layers.2.self_attn.o_proj.weight", "recursion.H_net.blocks.2.mixer.out.weight"),
    ("hrm", "model.inner.L_level.layers.0.mlp.gate_up_proj.weight", "recursion.L_net.blocks.0.ffn.gate_up.weight"),
    ("hrm", "model.inner.L_init", "recursion.init.z_init"),
]  # fmt: skip


@pytest.mark.parametrize("layout, theirs, ours", EXPECTED)
def test_each_reference_key_lands_on_its_ponderkit_parameter(layout, theirs, ours):
    assert reference_key(theirs, layout) == ours


@pytest.mark.parametrize("layout, mlp_t", [("trm", True), ("trm", False), ("hrm", False)])
def test_an_imported_checkpoint_is_a_run_that_eval_and_load_model_take(
    reference, registry, tmp_path, capsys, layout, mlp_t
):
    ckpt, base, state = reference(layout, mlp_t)
    out = tmp_path / "run"
    assert main(["import", str(ckpt), "--base", str(base), "--out", str(out)]) == 0
    loaded = load_model(out, registry)
    cfg, model = loaded.config, loaded.model
    assert cfg.optimizer.name == "adam_atan2" and cfg.optimizer.config.grad_clip is None
    assert cfg.optimizer.config.weight_decay == 1.0 and cfg.optimizer.config.no_decay == ()
    assert [c.name for c in cfg.callbacks] == ["puzzle_emb_signsgd", "ema"]
    assert cfg.model.puzzle_emb_len == PREFIX and cfg.model.puzzle_emb_dim == D  # D per id
    params = dict(model.state_dict())
    net = "recursion.net" if layout == "trm" else "recursion.L_net"
    assert torch.equal(
        params[f"{net}.blocks.0.ffn.down.weight"],
        state[PRE + "L_level.layers.0.mlp.down_proj.weight"],
    )
    assert torch.equal(params["head.weight"], state[PRE + "lm_head.weight"])
    assert torch.equal(params["halting.q.bias"], torch.tensor([-5.0, 1.5]))
    assert torch.equal(params["recursion.init.y_init"], state[PRE + "H_init"].float())
    assert torch.equal(params["puzzle_emb.weight"], state[PRE + "puzzle_emb.weights"])
    # the forward reads the copied weights: token embedding x sqrt(D) on the task positions,
    # and TRM's D numbers per identifier zero-padded to the 16-position prefix
    ids = torch.tensor([[1, 2, 3, 4, 5, 6]])
    emb = model.embed({"inputs": ids})
    table = state[PRE + "embed_tokens.embedding_weight"]
    torch.testing.assert_close(emb[0, PREFIX:], table[ids[0]] * D**0.5)
    torch.testing.assert_close(emb[0, 0], state[PRE + "puzzle_emb.weights"][0] * D**0.5)
    assert torch.count_nonzero(emb[0, 1:PREFIX]) == 0
    capsys.readouterr()
    assert main(["eval", str(out)]) == 0


def test_a_key_of_neither_model_is_refused_in_one_line(reference, tmp_path, capsys):
    ckpt, base, state = reference()
    state[PRE + "L_level.layers.0.mystery.weight"] = torch.zeros(2)
    torch.save(state, ckpt)
    out = tmp_path / "run"
    assert main(["import", str(ckpt), "--base", str(base), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "error: checkpoint key 'L_level.layers.0.mystery.weight' is not part of the TRM layout"
    ]
    assert not out.exists()


def test_a_table_for_another_task_is_refused_naming_the_shape(reference, tmp_path, capsys):
    ckpt, base, _ = reference()
    out = tmp_path / "run"
    assert main(["import", str(ckpt), "--base", str(base), "--out", str(out), "task.values=9"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "token_emb.weight has shape (8, 32), the model's is (9, 32)" in err[0]


def test_an_imported_run_trains_on_with_resume_extend(reference, tmp_path, capsys):
    """The imported run sits at step 0 with its weights in ``final`` (what ``eval``, ``trace``
    and ``predict`` load): ``run --resume RUN_DIR --extend train.steps=N`` fine-tunes from the
    reference weights."""
    import json

    ckpt, base, _ = reference()
    out = tmp_path / "run"
    assert main(["import", str(ckpt), "--base", str(base), "--out", str(out)]) == 0
    assert main(["run", "--resume", str(out), "--extend", "train.steps=3"]) == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["step"] == 3 and records[-1]["stopped"] == "steps"
