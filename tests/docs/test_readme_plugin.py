"""The README's "A plugin in 20 lines", followed verbatim: the module keeps the ffn contract,
fits in 20 lines of code, and `ponderkit --plugin ... validate` builds it into an experiment with the
parameters its formula says."""

from __future__ import annotations

import re
from pathlib import Path

from ponderkit.app.cli import main
from ponderkit.devkit.conformance import check_ffn

REPO = Path(__file__).resolve().parents[2]


def test_the_readme_plugin_keeps_the_contract_and_builds(tmp_path, monkeypatch, capsys, doc_files):
    files = doc_files("README.md", "A plugin in 20 lines")
    assert set(files) == {"relu2_ffn.py"}
    source = files["relu2_ffn.py"]
    code = [
        line for line in source.splitlines() if line.strip() and not line.strip().startswith('"""')
    ]
    assert len(code) <= 20
    (tmp_path / "relu2_ffn.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    from relu2_ffn import Relu2, Relu2Config

    check_ffn(lambda d_model: Relu2(d_model, Relu2Config()), max_examples=5)

    monkeypatch.chdir(REPO)
    monkeypatch.setenv("PONDERKIT_DISABLE_PLUGIN_AUTOLOAD", "1")

    def parameters(*overrides: str) -> int:
        code = main(["--plugin", "relu2_ffn", "validate", "experiments/sort_demo.yaml", *overrides])
        out, err = capsys.readouterr()
        assert code == 0, out + err
        return int(re.fullmatch(r"ok: (\d+) parameters\n", out)[1])

    # sort_demo: d_model 64, 2 layers; relu2 adds up (D x 4D) and down (4D x D) to each layer
    with_relu2 = parameters("model.recursion.block.ffn=relu2")
    without_ffn = parameters("model.recursion.block.ffn=none")
    assert with_relu2 - without_ffn == 2 * (64 * 256 + 256 * 64)
