"""The experiments refuse bad arguments before any work (data collection, training)."""

import pytest


def test_offline_tabletop_refuses_an_unknown_block(capsys):
  from experiments import offline_tabletop
  for block in ("bogus", "hard_xx", "eps55:mtopt"):
    with pytest.raises(SystemExit):
      offline_tabletop.main(["--blocks", block, "--work-dir", "/nonexistent/never/made"])
    assert f"unknown block {block!r}" in capsys.readouterr().err


def test_actionable_models_refuses_curve_steps_out_of_order(capsys):
  from experiments import actionable_models
  for steps in (["1000", "500"], ["0", "10"], ["500", "500"]):
    with pytest.raises(SystemExit):
      actionable_models.main(["--curve-steps", *steps, "--work-dir", "/nonexistent/never"])
    assert "--curve-steps must be increasing positive steps" in capsys.readouterr().err
