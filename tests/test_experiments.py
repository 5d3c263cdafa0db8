"""The sweep runner (experiments/run.py): a 1x2 train sweep of a tiny variant runs side by side, records an injected
failing point and goes on, writes the table and a plot, and a rerun runs only the point whose result was deleted.
An eval sweep evaluates one loaded run under each point's sampler settings."""

import csv
import json
import os

import pytest

from experiments import run as sweep_runner
from experiments.sweep import Sweep, point_name, product

SWEEP_FILE = '''
from experiments.sweep import Plot, Sweep, product

def get_sweep():
    return Sweep(config="configs/toy2d.py:tiny", action="{action}",
                 points=product({{"optim.learning_rate": [3e-3]}}, {{"model.kwargs.width": [16, 32]}})
                 + [{{"train.batch_size": 0}}],  # Injected failure: the config check stops it.
                 overrides={{"eval.num_samples": 128, "sample.num_steps": 2}},
                 plots=[Plot(x="model.kwargs.width", y="energy_distance", group="optim.learning_rate")])
'''


def _statuses(workdir):
    with open(os.path.join(workdir, "results.csv")) as file:
        return {row["point"]: row for row in csv.DictReader(file)}


def test_train_sweep_runs_records_failures_writes_tables_and_resumes(tmp_path):
    path = tmp_path / "toy_sweep.py"
    path.write_text(SWEEP_FILE.format(action="train"))
    workdir = str(tmp_path / "out")
    assert sweep_runner.main([str(path), "--workdir", workdir, "--parallel", "2"]) == 1  # One point failed.
    rows = _statuses(workdir)
    assert len(rows) == 3 and rows["batch_size-0"]["status"] == "failed"
    assert "batch_size" in rows["batch_size-0"]["error"]
    ok = [name for name, row in rows.items() if row["status"] == "ok"]
    assert len(ok) == 2 and all(float(rows[name]["energy_distance"]) > 0 for name in ok)
    assert all(float(rows[name]["train_seconds"]) > 0 and float(rows[name]["loss/raw"]) > 0 for name in ok)
    assert os.path.exists(os.path.join(workdir, "energy_distance_vs_model.kwargs.width.png"))
    assert open(os.path.join(workdir, "results.md")).read().count("\n") == 5  # Header, rule, 3 points.

    results = {name: os.path.join(workdir, "points", name, "result.json") for name in rows}
    before = {name: os.path.getmtime(result) for name, result in results.items()}
    os.remove(results[ok[0]])
    sweep_runner.main([str(path), "--workdir", workdir])
    assert [name for name in rows if os.path.getmtime(results[name]) != before[name]] == [ok[0]]
    assert _statuses(workdir)[ok[0]]["status"] == "ok"


def test_eval_sweep_loads_one_run_and_emits_array_jobs(tmp_path):
    path = tmp_path / "toy_eval.py"
    path.write_text(SWEEP_FILE.format(action="eval").replace(
        '{"optim.learning_rate": [3e-3]}, {"model.kwargs.width": [16, 32]}',
        '{"sample.method": ["ddim", "heun"]}').replace('+ [{"train.batch_size": 0}]', "").replace(
        'x="model.kwargs.width", y="energy_distance", group="optim.learning_rate"',
        'x="sample.method", y="energy_distance"'))
    workdir = str(tmp_path / "out")
    assert sweep_runner.main([str(path), "--workdir", workdir]) == 0
    rows = _statuses(workdir)
    assert set(rows) == {"method-ddim", "method-heun"}
    evals = os.listdir(os.path.join(workdir, "base", "eval"))  # Named by the settings: none overwritten.
    assert sorted(evals) == ["0000004_ddim_2-uniform_g1_ema0.999_seed0_n128.json",
                             "0000004_heun_2-uniform_g1_ema0.999_seed0_n128.json"]
    record = json.load(open(os.path.join(workdir, "points", "method-heun", "result.json")))
    assert record["metrics"]["energy_distance"] == pytest.approx(float(rows["method-heun"]["energy_distance"]))
    slurm = open(sweep_runner.Runner(sweep_runner.load_sweep(str(path)), str(path), workdir).emit("slurm")).read()
    assert "#SBATCH --array=0-1" in slurm and "--point $SLURM_ARRAY_TASK_ID" in slurm


def test_sweep_definitions_are_checked():
    assert product({"a": [1, 2]}, {"b": [3, 4], "c": [5, 6]}) == [
        {"a": 1, "b": 3, "c": 5}, {"a": 1, "b": 4, "c": 6}, {"a": 2, "b": 3, "c": 5}, {"a": 2, "b": 4, "c": 6}]
    assert point_name({"sample.method": "ddim", "sample.num_steps": 10}) == "method-ddim_num_steps-10"
    with pytest.raises(ValueError, match="model.name"):
        Sweep(config="configs/toy2d.py", action="eval", points=[{"model.name": "mlp"}])
    with pytest.raises(ValueError, match="equal lengths"):
        product({"a": [1, 2], "b": [3]})
    with pytest.raises(ValueError, match="repeat"):
        Sweep(config="configs/toy2d.py", action="train", points=[{"seed": 1}, {"seed": 1}])


def test_side_by_side_points_get_disjoint_gpu_shares():
    shares = sweep_runner.gpu_shares
    assert shares(["0", "1", "2", "3"], 2) == ["0,1", "2,3"]
    assert shares(["4", "6"], 5) == ["4", "6", "4", "6", "4"]  # More processes than GPUs: round robin.
    assert shares(["0", "1"], 1) == [None]  # One process sees every GPU (data parallel).
    assert shares([], 3) == [None] * 3  # CPU host.
    assert [slot.gpus for slot in sweep_runner.slots(2)] == [None, None]  # This CPU machine has no GPU.


def test_text_values_of_a_plot_axis_keep_the_sweep_order():
    assert sweep_runner._categories(["vp_linear", "edm", "vp_linear", "rectified_flow"]) == {
        "vp_linear": 0, "edm": 1, "rectified_flow": 2}
    assert sweep_runner._categories([5, 10, 20]) == {}  # Numbers keep a numeric axis.
