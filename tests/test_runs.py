"""The run cache, profiles, results tables and the notebooks' study plans (fast, synthetic data)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import torch
from cifar_files import write_synthetic
from scripts import load_script

from cnnlib import _fileio as fileio
from cnnlib import cli
from cnnlib.models.registry import create_model, list_models
from cnnlib.study import budget, locations, plan, provenance, readme, records, report
from cnnlib.study import cache as runs
from cnnlib.study import definitions as studies
from cnnlib.study import table as results
from cnnlib.study.__main__ import main as study_main
from cnnlib.training import checkpoint
from cnnlib.training.config import RunConfig, recipe
from cnnlib.training.device import native_bf16_cpu
from cnnlib.training.evaluate import predict_logits
from cnnlib.training.loop import Trainer

REQUIRED_COLUMNS = ["dataset", "model", "options", "augmentations", "seed", "epochs", "val_acc",
                    "test_acc", "test_loss", "wall_seconds", "device", "profile", "commit"]


def _config(**changes) -> RunConfig:
    base = dict(dataset="cifar10", model="baseline", model_options={"width": 4, "depth": 2},
                epochs=2, batch_size=32, train_subset=96, val_size=64, test_subset=100,
                augment="crop+flip", device="cpu", lr=0.05)
    return RunConfig(**{**base, **changes})


@pytest.fixture
def cache(tmp_path):
    return tmp_path / "runs"


def _run(config, cache, data_root, **kwargs):
    return runs.run(config, "tiny", profile="smoke", root=cache, data_root=data_root,
                    progress=False, **kwargs)


def _row(run, study: str = "") -> dict:
    """A run's results row as a dict (`table.Row`)."""
    return results.Row.from_run(run, study).as_dict()


# -- the cache ------------------------------------------------------------------------------------


def test_cache_hit_returns_the_same_result_without_training(synthetic_root, cache, monkeypatch):
    first = _run(_config(), cache, synthetic_root)
    assert (first.path / "result.json").exists() and first.checkpoint.exists()
    assert (first.path / runs.TEST_METRICS).exists()

    def no_training(*args, **kwargs):
        raise AssertionError("a cached run was trained again")

    monkeypatch.setattr(runs, "train_or_launch", no_training)
    again = _run(_config(), cache, synthetic_root)
    assert again.path == first.path
    assert again.result == json.loads(json.dumps(first.result, default=float))
    assert _row(again, "s") == _row(first, "s")


def test_key_includes_config_and_data_fingerprint(synthetic_root, tmp_path):
    other = tmp_path / "other_data"
    write_synthetic("cifar10", other, n_train=1000, n_test=200, seed=1)
    config = _config()
    here = runs.run_dir(config, tmp_path, synthetic_root)
    assert runs.run_dir(config, tmp_path, synthetic_root) == here
    assert runs.run_dir(config, tmp_path, other) != here  # other data, other run
    assert runs.run_dir(config.replace(seed=1), tmp_path, synthetic_root) != here
    assert here.name.startswith("cifar10-baseline-")


def test_equal_configs_share_a_run_and_a_new_results_version_does_not(synthetic_root, tmp_path,
                                                                      monkeypatch):
    here = runs.run_dir(_config(epochs=2), tmp_path, synthetic_root)
    assert runs.run_dir(_config(epochs=2.0), tmp_path, synthetic_root) == here
    monkeypatch.setattr(runs, "RESULTS_VERSION", "raised")  # tests/test_results_version.py
    assert runs.run_dir(_config(epochs=2), tmp_path, synthetic_root) != here


def test_a_resumed_run_equals_an_uninterrupted_one(synthetic_root, tmp_path, run_then_kill):
    config = _config(augment="crop+flip+cutout")
    whole = _run(config, tmp_path / "a", synthetic_root)
    # "Killed" after the first epoch: only last.pt of epoch 1 exists.
    path = runs.run_dir(config, tmp_path / "b", synthetic_root)
    run_then_kill(Trainer(config, path, data_root=synthetic_root, progress=False), 1)
    assert (path / "last.pt").exists() and not (path / "result.json").exists()
    resumed = _run(config, tmp_path / "b", synthetic_root)
    a, b = _row(whole), _row(resumed)
    for timing in ("wall_seconds", "assess_seconds"):  # how long, not what: machine load
        a.pop(timing), b.pop(timing)
    assert a == b
    assert [r["train_loss"] for r in whole.history] == [r["train_loss"] for r in resumed.history]


def test_force_trains_again_and_test_metrics_are_rebuilt(synthetic_root, cache):
    first = _run(_config(epochs=1), cache, synthetic_root)
    (first.path / runs.TEST_METRICS).unlink()
    m = first.test_metrics(data_root=synthetic_root)  # recomputed from model.pt
    assert (first.path / runs.TEST_METRICS).exists()
    assert int(m["confusion"].sum()) == 100 and len(m["classes"]) == 10
    assert abs(float(m["confusion"].diag().sum()) / 100 - first.test_acc) < 1e-9
    again = _run(_config(epochs=1), cache, synthetic_root, force=True)
    assert again.result["finished"] > first.result["finished"]


def test_export_model_loads_with_load_model(synthetic_root, cache, tmp_path):
    import cnnlib

    run = _run(_config(epochs=1), cache, synthetic_root)
    path = runs.export_model(run, tmp_path / "models" / "cnn_cifar10.pth")
    model = cnnlib.load_model(path)
    assert model.meta["config"]["model"] == "baseline" and len(model.meta["classes"]) == 10


def test_a_record_resumes_a_study_elsewhere_without_training_or_its_model(synthetic_root, tmp_path,
                                                                         monkeypatch):
    first = _run(_config(epochs=1), tmp_path / "here", synthetic_root)
    record = records.save_record(first.path, tmp_path / "there")
    assert sorted(f.name for f in record.iterdir()) == ["result.json"]
    assert str(tmp_path) not in (record / "result.json").read_text()  # no path of this machine
    assert runs.is_finished(record)  # the executors leave it alone

    def no_training(*args, **kwargs):
        raise AssertionError("a recorded run was trained again")

    monkeypatch.setattr(runs, "train_or_launch", no_training)
    there = _run(_config(epochs=1), tmp_path / "there", synthetic_root)
    assert there.path == record and _row(there, "s") == _row(first, "s")
    assert _row(runs.cached(_config(epochs=1), "tiny", root=tmp_path / "there",
                            data_root=synthetic_root)) == _row(first)
    with pytest.raises(runs.RecordOnlyError, match="record of a run finished elsewhere"):
        there.load_model()
    with pytest.raises(runs.RecordOnlyError):
        there.test_metrics(data_root=synthetic_root)
    with pytest.raises(runs.RecordOnlyError):
        runs.export_model(there, tmp_path / "cnn.pth")
    # Not a record: a folder that lost model.pt but kept last.pt resumes (and evaluates) again.
    monkeypatch.undo()
    (first.path / "model.pt").unlink()
    assert runs.cached(_config(epochs=1), root=tmp_path / "here", data_root=synthetic_root) is None
    assert _run(_config(epochs=1), tmp_path / "here", synthetic_root).checkpoint.exists()


def test_a_record_with_its_compact_model_gives_the_same_predictions(synthetic_root, tmp_path):
    run = _run(_config(epochs=1, precision="bf16"), tmp_path / "here", synthetic_root)
    record = records.save_record(run.path, tmp_path / "there", with_model=True)
    assert sorted(f.name for f in record.iterdir()) == ["model.pt", "result.json"]
    assert checkpoint.load_safe(record / "model.pt")["stored_weights"] == "bf16"
    there = runs.cached(run.config, root=tmp_path / "there", data_root=synthetic_root)
    mine, carried = run.test_metrics(data_root=synthetic_root), there.test_metrics(data_root=synthetic_root)
    assert (there.path / runs.TEST_METRICS).exists()  # computed once from the carried model
    assert torch.equal(mine["preds"], carried["preds"]) and torch.equal(mine["probs"], carried["probs"])
    assert abs(float(carried["confusion"].diag().sum()) / 100 - there.test_acc) < 1e-9


@pytest.mark.parametrize("name", list_models())
def test_compact_weights_predict_bit_for_bit_the_same_under_bf16(name, tmp_path):
    torch.manual_seed(0)
    model = create_model(name, 10).eval()
    config = {"dataset": "cifar10", "model": name, "model_options": {}}
    full = checkpoint.model_checkpoint(model, config, classes=[str(i) for i in range(10)],
                                       mean=[0.5] * 3, std=[0.25] * 3,
                                       evaluation={"precision": "bf16", "tta": 0})
    small = checkpoint.compact(full)
    assert {v.dtype for v in small["state_dict"].values() if v.dim() >= 2} == {torch.bfloat16}
    assert checkpoint.compact({**full, "evaluation": {"precision": "fp32"}})["state_dict"] \
        is full["state_dict"]
    # Two images use every weight; more only add time where bf16 is emulated (no native bf16:
    # 47 s for 8 images through WRN-28-10 on an AVX2 CPU)
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    logits = []
    for what, ckpt in (("full", full), ("small", small)):
        checkpoint.save_atomic(ckpt, tmp_path / f"{what}.pt")
        loaded = checkpoint.load_model(tmp_path / f"{what}.pt")
        assert all(p.dtype == torch.float32 for p in loaded.parameters())
        logits.append(predict_logits(loaded, images, [0.5] * 3, [0.25] * 3,
                                     autocast_dtype=torch.bfloat16))
    assert torch.equal(logits[0], logits[1])


def test_records_command_carries_finished_runs_and_the_models_notebooks_load(
        synthetic_root, tmp_path, monkeypatch, capsys, run_then_kill):
    cache, dest = tmp_path / "runs", tmp_path / "carried"
    plan = [("reference", _config(seed=0)), ("reference", _config(seed=1)),
            ("best", _config(seed=0, epochs=3)), ("best", _config(seed=1, epochs=3))]
    monkeypatch.setattr(studies, "baseline_runs", lambda profile: plan)
    done = [runs.run(c, label, root=cache, data_root=synthetic_root, progress=False)
            for label, c in plan]
    unfinished = runs.run_dir(_config(seed=5), cache, synthetic_root)
    run_then_kill(Trainer(_config(seed=5), unfinished, data_root=synthetic_root, progress=False), 1)
    (cache / "speeds.json").write_text("{}")
    argv = ["--data-root", str(synthetic_root), "records", str(dest), "--runs", str(cache),
            "--profile", "smoke"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "4 runs recorded" in out and "1 unfinished left out" in out
    best = report.best_run(done, "cifar10")
    carried = {f.name: sorted(x.name for x in f.iterdir()) for f in dest.iterdir() if f.is_dir()}
    assert carried == {r.path.name: ["model.pt", "result.json"] if r in (done[0], best)
                       else ["result.json"] for r in done}
    assert (dest / "speeds.json").read_text() == "{}"

    # An unfinished baseline study carries no models (the best one is not chosen yet).
    shutil.rmtree(dest)
    shutil.rmtree(done[3].path)
    assert cli.main(argv) == 0
    assert "without models: 3 of the 4 baseline runs" in capsys.readouterr().out
    assert not list(dest.glob("*/model.pt"))

    for bad, problem in ((["records", str(cache), "--runs", str(cache)], "the run cache itself"),
                         (["records", str(dest), "--runs", str(tmp_path / "none")], "--runs")):
        assert cli.main(["--data-root", str(synthetic_root), *bad]) == 2
        err = capsys.readouterr().err
        assert problem in err and len(err.strip().splitlines()) == 1


def test_rerun_best_places_a_new_seed_in_the_published_band(synthetic_root, tmp_path, monkeypatch,
                                                            capsys):
    bench = load_script("benchmarks/rerun_best.py")
    monkeypatch.setenv("CNNLIB_RUNS", str(tmp_path / "runs"))
    results = tmp_path / "results.csv"

    def publish(accs, *argv):
        pd.DataFrame({"study": "01_baseline", "label": "best", "dataset": "cifar10",
                      "profile": "smoke", "seed": range(len(accs)), "test_acc": accs}
                     ).to_csv(results, index=False)
        return bench.main(["--profile", "smoke", "--results", str(results), *argv],
                          data_root=synthetic_root)

    assert publish([0.0, 1.0]) == 0  # a band of [-91%, 191%] holds any accuracy
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1] == "inside_2sd=true" and out[-2].startswith("new seed 2: ")
    new = [f for f in (tmp_path / "runs").iterdir() if f.is_dir()]
    assert len(new) == 1 and json.loads((new[0] / "result.json").read_text())["config"]["seed"] == 2
    assert publish([0.0, 1e-6]) == 0  # the same run (cached), far above this band
    assert capsys.readouterr().out.strip().splitlines()[-1] == "inside_2sd=false"

    for accs, argv, problem in (([0.5], [], "a band needs at least 2 seeds"),
                                ([0.5, 0.6], ["--seed", "1"], "is one of the published seeds")):
        assert publish(accs, *argv) == 2
        err = capsys.readouterr().err
        assert problem in err and len(err.strip().splitlines()) == 1


def test_precision_parity_pairs_bf16_and_fp32_runs_by_seed(synthetic_root, tmp_path, monkeypatch,
                                                          capsys):
    bench = load_script("benchmarks/precision_parity.py")
    monkeypatch.setenv("CNNLIB_RUNS", str(tmp_path / "runs"))
    quick = ["--recipe", "fastnet", "--epochs", "1", "--val-size", "64", "--batch-size", "250",
             "--out", str(tmp_path / "out")]
    for argv, problem in ((["--seeds", "1"], "--seeds must be >= 2"),
                          (["--val-size", "50000"], "--val-size 50000 is not allowed"),
                          (["--train-subset", "-1"], "train_subset: -1 is not allowed")):
        assert bench.main([*quick, *argv], data_root=synthetic_root) == 2
        err = capsys.readouterr().err
        assert problem in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()  # refused before anything trained

    code = bench.main(quick, data_root=synthetic_root)
    if not native_bf16_cpu():  # `auto` is fp32 here: there is no bf16 arm, and it says so
        assert code == 2 and "has no native bf16" in capsys.readouterr().err
        return
    assert code == 0
    out = capsys.readouterr().out.strip().splitlines()
    df = pd.read_csv(tmp_path / "out" / "precision_parity.csv")
    assert sorted(zip(df.seed, df.precision, strict=True)) == [(0, "bf16"), (0, "fp32"),
                                                               (1, "bf16"), (1, "fp32")]
    assert len(set(df.run_key)) == 4
    acc = df.pivot(index="seed", columns="precision", values="test_acc")
    delta = 100 * (acc["bf16"] - acc["fp32"])
    assert out[-1] == f"bf16_minus_fp32_1ep={delta.mean():+.2f}"
    assert "bf16 - fp32 at 1 epochs (fastnet, 2 seeds, paired): " in out[-2] and "95% CI" in out[-2]
    # The bf16 arm is the `auto` run: the very run time_to_accuracy.py and notebook 01 use.
    auto = runs.run_dir(recipe("fastnet", epochs=1, seed=0, val_size=64, batch_size=250),
                        data_root=synthetic_root)
    assert auto.name in set(df.run_key)
    assert bench.main(quick, data_root=synthetic_root) == 0  # all four served from the cache
    out = capsys.readouterr().out
    assert "[training]" not in out and "note:" not in out  # both arms trained here

    # An fp32 record from another machine, as a shared cache holds: served, and named.
    record = tmp_path / "runs" / df.run_key[df.precision == "fp32"].iloc[0] / "result.json"
    fileio.write_json({**fileio.read_json(record), "hardware": "Other CPU"}, record)
    assert bench.main(quick, data_root=synthetic_root) == 0
    note = [line for line in capsys.readouterr().out.splitlines() if line.startswith("note:")]
    assert len(note) == 1 and "minutes compare machines" in note[0]
    assert "Other CPU" in note[0].split("fp32 runs on ")[1] and "Other CPU" not in note[0].split(
        "fp32 runs on ")[0]  # the bf16 arm trained here alone


def test_the_commit_is_dirty_for_code_not_for_what_a_study_writes(tmp_path, monkeypatch):
    def git(*args):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path,
                       check=True, capture_output=True)

    for path in ("pyproject.toml", "cnnlib/x.py", "outputs/runs/a/result.json", "models/m.pth",
                 "README.md"):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text("0\n")
    git("init", "-q")
    git("add", "-A")
    git("commit", "-qm", "first")
    monkeypatch.chdir(tmp_path / "outputs")  # from a subfolder too
    clean = provenance.git_commit()
    assert len(clean) >= 7 and not clean.endswith("-dirty")
    for path in ("outputs/runs/a/result.json", "models/m.pth", "README.md"):
        (tmp_path / path).write_text("1\n")
    (tmp_path / "outputs" / "new.png").write_text("untracked")
    assert provenance.git_commit() == clean
    (tmp_path / "cnnlib" / "x.py").write_text("1\n")
    assert provenance.git_commit() == f"{clean}-dirty"


# -- results tables -------------------------------------------------------------------------------


def test_results_table_columns_and_collect(synthetic_root, cache, tmp_path):
    run_a = _run(_config(epochs=1), cache, synthetic_root)
    run_b = _run(_config(epochs=1, seed=1), cache, synthetic_root)
    out = tmp_path / "out"
    df = results.save_results([run_a, run_b], "01_baseline", out)
    assert list(df.columns) == results.COLUMNS
    assert set(REQUIRED_COLUMNS) <= set(df.columns)
    results.save_results([run_b], "02_other", out)  # the same run in a second study
    readme_md = tmp_path / "README.md"
    begin, end = readme.STUDY_COST
    readme_md.write_text(f"# x\n\n{readme.BEGIN}\nold\n{readme.END}\ntail\n{begin}\n138 runs\n{end}\n")
    merged = readme.collect_results(out, readme_md)
    assert len(merged) == 2  # one row per run
    # What the recorded runs cost, computed from them (never a typed figure).
    cost = readme_md.read_text().split(begin)[1].split(end)[0].strip()
    hours = merged["wall_seconds"].sum() / 3600
    precision = merged["precision"][0]  # what `auto` resolved to here: it keys the runs
    where = {"bf16": "CUDA, or a CPU with native bf16: AVX512-BF16 or AMX-BF16",
             "fp32": "a CPU without native bf16"}[precision]
    assert cost == (f"Profile `{merged['profile'][0]}`: the study's 2 recorded runs cost "
                    f"{hours:.1f} h of training on {merged['hardware'][0]} (the sum of their "
                    f"wall times); they trained in {precision}: a rebuild whose runs are all "
                    f"recorded trains nothing where `auto` resolves to {precision} ({where}) and "
                    "trains them again elsewhere, since the run cache keys a run by its "
                    "precision.")
    # No recorded run: one plain sentence, not "Profile none".
    assert readme.study_cost(merged.iloc[:0]) == (
        "No profile yet: the study has no recorded runs yet.")
    assert list(pd.read_csv(out / "results.csv").columns) == results.COLUMNS
    assert "| study |" in (out / "results.md").read_text()
    text = readme_md.read_text()
    assert "old" not in text and "| dataset |" in text and f"{readme.END}\ntail\n" in text
    assert "±" in text  # two seeds: mean ± std
    assert merged["hardware"].str.contains("torch ").all() and "threads, torch" in text
    assert run_a.result["hardware"].endswith(f"torch {torch.__version__.split('+')[0]}")



def test_update_readme_replaces_between_markers_only(tmp_path):
    path = tmp_path / "README.md"
    path.write_text(f"head\n{readme.BEGIN}\nold table\n{readme.END}\ntail\n")
    assert readme.update_readme(path, "| a |\n|---|\n| 1 |")
    assert readme.update_readme(path, "| a |\n|---|\n| 1 |")  # idempotent
    assert path.read_text() == f"head\n{readme.BEGIN}\n| a |\n|---|\n| 1 |\n{readme.END}\ntail\n"
    path.write_text("no markers here\n")
    assert not readme.update_readme(path, "x")
    assert path.read_text() == "no markers here\n"


def test_training_time_sums_each_runs_own_wall_time_per_machine():
    # A study resumed on a second machine: three runs here, one there.
    df = pd.DataFrame({"wall_seconds": [1800.0, 1800.0, 3600.0, 5400.0],
                       "hardware": ["cpu A", "cpu A", "cpu A", "gpu B"]})
    assert readme.training_time(df) == ("the study's 4 recorded runs cost 3.5 h of training "
                                        "(3 on cpu A; 1 on gpu B)")
    assert readme.training_time(df.iloc[:3]) == ("the study's 3 recorded runs cost 2.0 h of "
                                                 "training on cpu A")
    assert readme.training_time(df.iloc[:0]) == "the study has no recorded runs yet"


def test_collect_writes_the_benchmarks_tables_into_the_readme(tmp_path):
    out = tmp_path / "out"
    (out / "results").mkdir(parents=True)
    machine = dict(hardware="test CPU", precision="bf16", commit="abc1234")
    # time_to_accuracy.csv: 90% is crossed between the 2- and 4-epoch budgets, 94% never.
    pd.DataFrame([dict(recipe="fastnet", epochs=e, seeds="0 1", n=2, minutes_mean=m,
                       minutes_std=0.1, test_acc_mean=a, test_acc_std=0.002, train_images=48000,
                       **machine) for e, m, a in ((2, 3.0, 0.86), (4, 6.0, 0.92))]
                 ).to_csv(out / "time_to_accuracy.csv", index=False)
    pd.DataFrame([dict(model="best", variant=v, size_mb=s, test_acc=a, acc_change_pp=d,
                       latency_ms_b1=2.0, throughput_b256=t, speedup_b256=t / 500, threads=2,
                       **machine)
                  for v, s, a, d, t in (("fp32", 7.9, 0.93, 0.0, 500.0),
                                        ("int8", 2.0, 0.9281, -0.19, 2300.0))]
                 ).to_csv(out / "compression.csv", index=False)
    readme_md = tmp_path / "README.md"
    markers = [readme.TIME_TO_ACCURACY, readme.COMPRESSION]
    readme_md.write_text("".join(f"{a}\nold numbers\n{b}\n" for a, b in markers))
    readme.collect_results(out, readme_md)
    text = readme_md.read_text()
    assert "old numbers" not in text
    assert "Machine: test CPU, bf16, commit abc1234." in text
    assert "| fastnet | 4 | 2 | 48000 | 6.00 ± 0.10 | 92.00 ± 0.20 |" in text
    assert "- fastnet, 90%: after 5.0 min (between budgets: interpolated)" in text  # 3 + 0.04/0.06 * 3
    assert "- fastnet, 94%: not reached; the best budget gives 92.00% in 6.0 min" in text
    assert "| best | int8 | 2.00 | 92.81 | -0.19 | 2.00 | 2,300 | 4.6x |" in text
    # Hardware as `device.hardware` writes it names its threads: the header says them once.
    compression = pd.read_csv(out / "compression.csv")
    compression.assign(hardware="test CPU (AVX2), 2 threads, torch 2.0").to_csv(
        out / "compression.csv", index=False)
    readme.collect_results(out, readme_md)
    assert ("Machine: test CPU (AVX2), 2 threads, torch 2.0, bf16, commit abc1234. Timings: "
            "one round each.\n" in readme_md.read_text())
    # Timings measured in rounds show their median with the lowest and highest round.
    compression.assign(hardware="test CPU", latency_ms_b1_min=compression["latency_ms_b1"] - 0.5,
                       latency_ms_b1_max=compression["latency_ms_b1"] + 0.5,
                       throughput_b256_min=compression["throughput_b256"] - 100,
                       throughput_b256_max=compression["throughput_b256"] + 100,
                       timing_rounds=5).to_csv(out / "compression.csv", index=False)
    readme.collect_results(out, readme_md)
    text = readme_md.read_text()
    assert "Timings: median of 5 rounds (range in brackets)." in text
    assert "| best | int8 | 2.00 | 92.81 | -0.19 | 2.00 (1.50–2.50) | 2,300 (2,200–2,400) | 4.6x |" in text
    # Without the benchmarks' files the README keeps what it has.
    (out / "compression.csv").unlink()
    readme_md.write_text(f"{readme.COMPRESSION[0]}\nkept\n{readme.COMPRESSION[1]}\n")
    readme.collect_results(out, readme_md)
    assert "kept" in readme_md.read_text()


def test_key_results_without_rows():
    assert "No results" in readme.key_results(pd.DataFrame(columns=results.COLUMNS))


# -- profiles and locations -----------------------------------------------------------------------


def test_resolve_profile(monkeypatch):
    monkeypatch.delenv(locations.PROFILE_ENV, raising=False)
    monkeypatch.setattr(locations.torch.cuda, "is_available", lambda: False)
    assert locations.resolve_profile("auto") == "cpu"
    assert locations.resolve_profile(None) == "cpu"
    monkeypatch.setattr(locations.torch.cuda, "is_available", lambda: True)
    assert locations.resolve_profile() == "full"
    assert locations.resolve_profile("smoke") == "smoke"
    monkeypatch.setenv(locations.PROFILE_ENV, "smoke")
    assert locations.resolve_profile("auto") == "smoke"
    assert locations.resolve_profile("cpu") == "cpu"  # explicit beats the environment
    with pytest.raises(ValueError, match="profile: 'gpu' is not allowed; allowed: auto, smoke"):
        locations.resolve_profile("gpu")
    monkeypatch.setenv(locations.PROFILE_ENV, "tiny")
    with pytest.raises(ValueError, match="CNNLIB_PROFILE: 'tiny' is not allowed"):
        locations.resolve_profile("auto")


def test_profile_command(monkeypatch, capsys):
    monkeypatch.delenv(locations.PROFILE_ENV, raising=False)
    assert study_main(["profile", "--profile", "smoke"]) == 0
    assert capsys.readouterr().out.strip() == "smoke"
    assert study_main(["profile", "--profile", "bogus"]) == 2
    assert "not allowed" in capsys.readouterr().err


def test_locations_follow_the_environment(monkeypatch, tmp_path):
    for name in (locations.OUTPUTS_ENV, locations.RUNS_ENV, locations.MODELS_ENV):
        monkeypatch.delenv(name, raising=False)
    assert locations.outputs_root() == runs.Path("outputs")
    assert locations.runs_root() == runs.Path("outputs/runs")
    assert locations.models_root() == runs.Path("models")
    monkeypatch.setenv(locations.OUTPUTS_ENV, str(tmp_path / "o"))
    assert locations.runs_root() == tmp_path / "o" / "runs"
    monkeypatch.setenv(locations.RUNS_ENV, str(tmp_path / "r"))
    assert locations.runs_root() == tmp_path / "r"


def test_locations_from_a_subfolder_name_the_root_without_changing_directory(monkeypatch):
    root = locations.project_root()
    assert (root / "pyproject.toml").is_file()
    monkeypatch.chdir(root)
    assert locations.in_project("outputs") == Path("outputs")  # relative: no machine's path
    monkeypatch.chdir(root / "notebooks")  # where JupyterLab starts a kernel
    for name in (locations.OUTPUTS_ENV, locations.RUNS_ENV, locations.MODELS_ENV,
                 locations.DATA_ROOT_ENV):
        monkeypatch.delenv(name, raising=False)
    assert locations.project_root() == root
    assert locations.outputs_root() == root / "outputs"
    assert locations.models_root() == root / "models"
    locations.anchor_data_root()
    assert os.environ[locations.DATA_ROOT_ENV] == str(root / "data")
    assert os.getcwd() == str(root / "notebooks")


# -- studies --------------------------------------------------------------------------------------


@pytest.mark.parametrize("profile", locations.PROFILES)
def test_every_profile_builds_valid_configs(profile, tmp_path, monkeypatch):
    # Speeds stand in for measured ones (tests/test_budget.py measures): one per model, so
    # the budgeted epochs differ between networks as they do on a machine.
    speeds = {"baseline": 400.0, "fastnet": 130.0}
    monkeypatch.setattr(budget, "_measure", lambda config, *_: speeds.get(config.model, 60.0))
    planned = plan.plan(profile, tmp_path / "speeds.json")
    assert set(planned) == set(studies.STUDIES)
    assert planned["04_interpretability"][1] == []  # notebook 04 reuses notebook 01's runs
    assert studies.lr_find_steps(profile) > 0
    archs = studies.architecture_runs(profile, tmp_path / "speeds.json")
    s = studies.settings(profile)
    for label, config in archs:  # a budget: epochs x images = seconds x speed
        model, factor = studies.architecture_budget(label)
        assert model == config.model
        images = config.epochs * budget.train_images(config)
        seconds = factor * s["architecture_seconds"]
        assert images == pytest.approx(max(seconds * speeds.get(model, 60.0),
                                           factor * config.batch_size),
                                       rel=0.05, abs=budget.train_images(config) * 0.011)
    # A floor of factor batches: however slow the machine, every budget is a run of its own.
    assert len({c.key() for _, c in archs}) == len(archs)
    # Each budget runs the first seeds its dataset gives it; every network every budget.
    for dataset, budgets in studies.architecture_budgets(profile).items():
        for factor, n in budgets.items():
            seeds = {c.seed for label, c in archs if c.dataset == dataset
                     and label == studies.architecture_label(c.model, factor)}
            assert seeds == set(s["seeds"][:n]), (dataset, factor)
    monkeypatch.setenv("CNNLIB_RUNS", str(tmp_path / "runs"))
    lines = plan.plan_lines(profile)
    assert [line.split(":")[0] for line in lines] == [*studies.STUDIES, "total"]
    runs = sum(len(new) for _, new in planned.values())
    assert f"total: {runs} runs" in lines[-1]
    # Nothing recorded: the study from scratch is what the notebooks train and wait for.
    work = plan.plan_work(profile)
    for w in work:
        assert w.scratch_seconds == pytest.approx(w.train_seconds + w.waiting_seconds), w.name
    assert budget.scratch_line(work).startswith(
        f"from scratch (no run recorded): about {budget.duration(sum(w.scratch_seconds for w in work))} "
        f"of training for the {runs} runs (01 ")


def test_the_reference_regime_is_the_full_training_set():
    """Every sweep of the cpu profile but the overfitting sub-study trains on the full
    training set minus its validation split, with the reference network."""
    for label, config in (studies.augmentation_runs("cpu") + studies.lr_grid_runs("cpu")
                          + studies.optimizer_runs("cpu")):
        assert config.train_subset == 0 and config.val_size > 0, label
        assert config.model_options == studies.SETTINGS["cpu"]["reference"]["model_options"]
    for label, config in studies.overfitting_runs("cpu"):
        assert config.train_subset > 0 and config.augment == "none", label
    seeds = studies.SETTINGS["cpu"]["seeds"]
    assert len(seeds) >= 3 and len(studies.SETTINGS["cpu"]["best_seeds"]) >= 3


def test_identical_networks_share_one_config():
    """The overfitting sub-study's standard network is one config under four labels and the
    early-stopping part's run without it (options equal to the model's defaults left out)."""
    labels = {label: c for label, c in studies.overfitting_runs("cpu") if c.seed == 0}
    standard = labels["depth 6"]
    for label in ("width 32", "dropout 0.0", "weight decay 0.0005"):
        assert labels[label] == standard and labels[label].key() == standard.key(), label
    assert standard.model_options == {} and standard.key() == standard.replace().key()
    assert len({c.key() for c in labels.values()}) == len(labels) - 3
    stopping = {label: c for label, c in studies.early_stopping_runs("cpu") if c.seed == 0}
    assert stopping["no early stopping"].key() == standard.key()
    assert stopping["early stopping"].replace(early_stop_patience=0, early_stop_metric="val_acc",
                                              early_stop_after=0) == standard


def test_smoke_keeps_both_datasets_but_reduces_sweeps():
    runs_ = studies.augmentation_runs("smoke")
    c10 = [label for label, c in runs_ if c.dataset == "cifar10"]
    c100 = [label for label, c in runs_ if c.dataset == "cifar100"]
    longer = [x + studies.LONG for x in studies.LONG_AUGMENTATIONS]
    assert c10 == studies.AUGMENTATIONS + longer
    assert c100 == [studies.AUGMENTATIONS[0], studies.AUGMENTATIONS[-1], longer[0], longer[-1]]
    full = studies.augmentation_runs("full")
    assert len(full) == 2 * (len(studies.AUGMENTATIONS) + len(longer)) * len(
        studies.SETTINGS["full"]["seeds"])
    with pytest.raises(ValueError, match="profile"):
        studies.settings("huge")


# -- report functions -----------------------------------------------------------------------------


def _frame():
    rows = []
    for ds in ("cifar10", "cifar100"):
        for seed in (0, 1):
            for label, acc in (("none", 0.5), ("crop", 0.6)):
                rows.append({"dataset": ds, "label": label, "seed": seed,
                             "test_acc": acc + 0.01 * seed, "train_acc": acc + 0.1,
                             "val_acc": acc, "test_loss": 1.0})
    return pd.DataFrame(rows)


def test_delta_and_summary_tables():
    delta = report.delta_table(_frame(), reference="none", order=["none", "crop"])
    assert list(delta.index) == ["none", "crop"]
    assert delta.loc["crop", "cifar10 Δ pp"] == "+10.0 ± 0.0"
    assert delta.loc["crop", "cifar10 verdict"] == "improves"  # +10 pp on both seeds
    assert delta.loc["none", "cifar100 verdict"] == "reference"
    summary = report.summary_table(_frame())
    assert summary.loc[("cifar10", "crop"), "seeds"] == 2
    assert summary.loc[("cifar10", "crop"), "test acc %"] == "60.5 ± 0.7"
    assert report.with_gap(_frame())["gap"].round(6).eq(10.0).all()
