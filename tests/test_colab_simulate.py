"""The pure parts of `make test-colab` (tools/colab/simulate.py): backend-noise detection and the table."""

from __future__ import annotations

from tools.colab import simulate

TORCHAO_SO = ("Failed to load /usr/lib/python3/torchao/_C_mxfp8.cpython-310-x86_64-linux-gnu.so: "
              "Could not load this library")
PYTREE = ("W1206 21:08:02.592000 14119 /venv/torch/utils/_pytree.py:630] <enum 'KernelPreference'> is an Enum "
          "subclass ... Calling register_constant() on Enum subclasses is deprecated")
QUANTO = "/venv/optimum/quanto/library/extensions/cpp/__init__.py:12: UserWarning: Failed to build the extension"
TENSORS = "Unable to import `torchao` Tensor objects. This may affect loading checkpoints serialized with `torchao`"
IN_USE = ("/venv/site-packages/diffusers/quantizers/quanto/quanto_quantizer.py:54: FutureWarning: `QuantoQuantizer` "
          "is deprecated and will be removed in version 1.0.0.")  # diffusers', when the plan uses quanto


def test_backend_warnings_are_noise_and_plain_mentions_are_not():
    text = "\n".join(["Installing torchao==0.15.0 (int8 needs it)", TORCHAO_SO, "int8 ok: Linear, image (32, 32)",
                      PYTREE, QUANTO, TORCHAO_SO, "bitsandbytes is used for nf4 on CUDA only", IN_USE, TENSORS,
                      "UserWarning: the scheduler config has an unknown key"])

    assert simulate.noise_lines(text) == [TORCHAO_SO, PYTREE, QUANTO, TENSORS]  # each once, in order


def test_clean_output_has_no_noise():
    assert simulate.noise_lines("No restart needed.\nint4 ok: QLinear, image (32, 32)\n") == []


def outcome(case, problems, noise=(), restart=False):
    return simulate.Outcome(case, 12.34, restart, ["a requires b"], ["a requires b", "c requires d"], "9/11",
                            list(problems), notebook=f"{case}_x.ipynb", noise=list(noise))


def test_table_has_one_row_per_case_with_its_checks():
    rows = simulate.table([outcome("01", []), outcome("02", ["restarted", "a|b"], noise=[PYTREE], restart=True)])
    lines = rows.splitlines()

    assert len(lines) == 4 and lines[0].count("|") == lines[1].count("|") == lines[2].count("|")
    assert lines[2] == "| 01 | 01_x.ipynb | 12.3 | no | 1 / 2 lines | 9/11 | none | ok |"
    cells = [c.strip() for c in lines[3].strip("|").split(" | ")]
    assert cells[:7] == ["02", "02_x.ipynb", "12.3", "yes", "1 / 2 lines", "9/11", "1"]
    assert cells[7] == "restarted; a\\|b"  # a pipe inside a problem does not break the row
