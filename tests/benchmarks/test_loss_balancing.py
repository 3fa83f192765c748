"""benchmarks/loss_balancing.py: the table over seeds, the learned weights read back, and an
evaluated run reused instead of trained again (no training here)."""

import json

from benchmarks import loss_balancing as lb


def test_table_reports_mean_and_spread_over_seeds():
    text = lb.table({"paper": [{"PQ": 40.0, "PQ_th": 30.0, "PQ_st": 50.0},
                               {"PQ": 42.0, "PQ_th": 34.0, "PQ_st": 50.0}],
                     "sum": [{"PQ": 38.25, "PQ_th": 31.0, "PQ_st": 45.0}]})
    rows = text.splitlines()
    assert rows[0] == "| setting | seeds | PQ | PQ_th | PQ_st |"
    assert rows[2] == "| paper | 2 | 41.0 ± 1.4 | 32.0 ± 2.8 | 50.0 ± 0.0 |"
    assert rows[3] == "| sum | 1 | 38.2 | 31.0 | 45.0 |"


def test_evaluated_run_is_reused_and_its_weights_read(tmp_path):
    out = tmp_path / "uncertainty_seed2"
    metrics = out / "inference" / "synthetic_panoptic_val_separated" / "metrics.json"
    metrics.parent.mkdir(parents=True)
    metrics.write_text(json.dumps({"panoptic_seg": {"PQ": 12.5, "PQ_th": 10.0, "PQ_st": 15.0,
                                                    "SQ": 70.0}}))
    (out / "metrics.json").write_text("\n".join(json.dumps(r) for r in [
        {"iteration": 19, "loss_weight/loss_sem_seg": 0.5, "loss_weight/loss_cls": 1.0},
        {"iteration": 39, "loss_weight/loss_sem_seg": 0.8, "loss_weight/loss_cls": 0.9},
        {"iteration": 39, "PQ": 12.5}]) + "\n")
    got = lb.train_and_evaluate(str(tmp_path), "uncertainty", 2, [], env={})  # no training
    assert got == {"PQ": 12.5, "PQ_th": 10.0, "PQ_st": 15.0}
    assert lb.learned_weights(str(out)) == {"loss_sem_seg": 0.8, "loss_cls": 0.9}
