"""`benchmarks.bench_refine`: setting options and the results table (no TensorFlow work)."""

from benchmarks.bench_refine import SETTINGS, _options, refine_config, results_table

OBJECTIVE = {"int_steps": 7, "image_loss": "ncc", "ncc_window": 9, "reg_weight": 1.0}


def test_options_fill_the_defaults_and_keep_the_full_resolution_stage_settings():
    plain = _options("lr0.3_steps50_full10", OBJECTIVE)
    assert plain["full_steps"] == 10 and plain["full_fine_steps"] == 0
    assert plain["full_reg_weight"] is None and plain["reg_weight"] == 1.0
    finer = _options("lr0.3_steps50_fullfine10_fulllambda0.5", OBJECTIVE)
    assert (finer["full_steps"], finer["full_fine_steps"], finer["full_reg_weight"]) == (0, 10, 0.5)
    assert plain["full_learning_rate"] is None
    assert _options("lr0.3_steps50_full10_fulllr0.1", OBJECTIVE)["full_learning_rate"] == 0.1
    for name in SETTINGS:  # every setting is a complete option set
        assert set(_options(name, OBJECTIVE)) == set(plain)


def test_every_setting_is_a_refine_config_with_the_stages_it_names():
    configs = {name: refine_config(_options(name, OBJECTIVE)) for name in SETTINGS}
    short = configs["lr0.3_steps40_fullfine6_fulllambda0.5"]
    assert (short.steps, short.learning_rate, short.full_steps) == (40, 0.3, 0)
    full = short.full_kwargs()
    assert (full["steps"], full["fine_steps"], full["reg_weight"]) == (0, 6, 0.5)
    assert short.kwargs()["reg_weight"] == 1.0  # the model-grid stages keep the model's lambda
    assert configs["ncc5_steps100"].kwargs()["ncc_window"] == 5
    assert configs["steps0"].enabled is False


def test_results_table_means_each_setting_and_names_the_full_resolution_stage():
    def pair(index, dice, seconds):
        return {"index": index, "dice": dice, "seconds": seconds, "folding": 0.0}

    results = {"settings": {}}
    for name, dice, seconds in (
        ("lr0.3_steps50_full10", (0.70, 0.72), (10.0, 20.0)),
        ("steps0", (0.60, 0.64), (0.5, 0.5)),
    ):
        results["settings"][name] = {
            "options": _options(name, OBJECTIVE),
            "pairs": {"a": pair(0, dice[0], seconds[0]), "b": pair(1, dice[1], seconds[1])},
        }
    name = "lr0.3_steps50_fullfine10_fulllambda0.5"
    results["settings"][name] = {
        "options": _options(name, OBJECTIVE),
        "pairs": {"a": pair(0, 0.75, 30.0)},
    }
    name_lr = "lr0.3_steps50_full10_fulllr0.6"
    results["settings"][name_lr] = {
        "options": _options(name_lr, OBJECTIVE),
        "pairs": {"a": pair(0, 0.71, 14.0)},
    }
    table = results_table(results)
    assert f"| {name_lr} | 0 | 50 | 0 | 10 | 0.3 / 0.6 | 9 | 1 | 1 | 0.710 ± 0.000 |" in table
    assert (
        "| lr0.3_steps50_full10 | 0 | 50 | 0 | 10 | 0.3 | 9 | 1 | 2 | 0.710 ± 0.010 | 15.0 |"
        in (table)
    )
    assert "| 10 (2x finer) | 0.3 | 9 | 1 / 0.5 | 1 | 0.750 ± 0.000 | 30.0 |" in table
    rows = [line for line in table.splitlines()[2:] if line.startswith("| ")]
    # two-pair settings first, each group by increasing seconds
    order = ["steps0", "lr0.3_steps50_full10", name_lr, name]
    assert [r.split(" | ")[0][2:] for r in rows] == order
