"""Every expected failure of `proui-train` is one `error:` line naming the file or value, with a non-zero exit:
damaged checkpoints and releases, bad config values, folders that are not stores or runs, missing splits, a
second run into a run folder. Resume falls back past a damaged latest checkpoint; eval figures do not depend on
the batch size."""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import proui_data.demo
import torch
from click.testing import CliRunner

from proui_train import train as train_mod
from proui_train.checkpoint import CheckpointError, load_checkpoint, load_latest
from proui_train.cli import main as cli
from proui_train.config import load_config
from proui_train.data import StoreError, open_split
from proui_train.evaluate import _model_predict, evaluate_store
from proui_train.runtime import load_generator


def small_config(store: str, run_dir: Path, steps: int, **kw):
    sets = {"data.store": store, "run_dir": str(run_dir), "steps": steps, "data.batch_size": 2,
            "ckpt_every": 1, "log_every": 1, "val_every": 0, "image_every": 0}
    sets.update(kw)
    return load_config(None, sets)


@pytest.fixture(scope="module")
def trained(demo_store, tmp_path_factory) -> Path:
    """A 2-step run with a checkpoint after each step (step-00000001, step-00000002) and a release of it."""
    run_dir = tmp_path_factory.mktemp("trained") / "run"
    train_mod.train(small_config(demo_store, run_dir, 2), progress=False)
    r = CliRunner().invoke(cli, ["release", str(run_dir), "--out", str(run_dir.parent / "release")])
    assert r.exit_code == 0, r.output
    return run_dir


@pytest.fixture
def run_copy(trained, tmp_path) -> Path:
    """A copy of the trained run (and its release beside it) to damage."""
    shutil.copytree(trained.parent, tmp_path / "copy")
    return tmp_path / "copy" / "run"


def fails(args: list[str], *expected: str) -> str:
    """Run the CLI; assert exit 2 with exactly one `error:` line holding every `expected` text, no traceback."""
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 2, r.output
    assert not isinstance(r.exception, Exception) or isinstance(r.exception, SystemExit), r.exception
    errors = [line for line in r.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in r.output, r.output
    for text in expected:
        assert text in errors[0], errors[0]
    return errors[0]


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


# ----- config values -----


@pytest.mark.parametrize("setting, message", [
    ("optim.lr_g=-1e-3", "optim.lr_g = -0.001: must be > 0"),
    ("ckpt_every=-1", "ckpt_every = -1: must be >= 0"),
    ("log_every=0", "log_every = 0: must be >= 1"),
    ("keep_checkpoints=0", "keep_checkpoints = 0: must be >= 1"),
    ("data.workers=-2", "data.workers = -2: must be >= 0"),
    ("loss.tv=[0.1, -0.1, 0.01]", "loss.tv = -0.1: must be >= 0"),
    ("optim.betas=[0.9, 1.0]", "optim.betas = [0.9, 1.0]: each must lie in [0, 1)"),
    ("optim.ema_decay=1.5", "optim.ema_decay = 1.5: must lie in [0, 1]"),
    ('optim.schedule="step"', "optim.schedule = 'step' needs optim.step_every >= 1"),
])
def test_bad_config_values_fail_at_load(demo_store, tmp_path, setting, message):
    fails(["run", "--data", demo_store, "--run-dir", str(tmp_path / "run"), "--set", setting], message)
    assert not (tmp_path / "run").exists()  # nothing started


def test_shipped_configs_pass_the_checks():
    for name in ("default", "cpu", "fsrnet"):
        load_config(Path(__file__).resolve().parents[1] / "pipelines" / "train" / f"{name}.toml")
    assert load_config(None, sets=["ckpt_every=0"]).ckpt_every == 0  # 0: only the final checkpoint


# ----- stores and splits -----


def test_run_on_a_folder_that_is_not_a_store(tmp_path):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "a.jpg").write_bytes(b"x")
    fails(["run", "--data", str(tmp_path / "photos"), "--run-dir", str(tmp_path / "run")],
          f"{tmp_path / 'photos'}: not a proui store")
    fails(["run", "--data", str(tmp_path / "nothing.zarr"), "--run-dir", str(tmp_path / "run")],
          f"{tmp_path / 'nothing.zarr'}: no such store")
    (tmp_path / "bad.zarr").mkdir()
    (tmp_path / "bad.zarr" / "zarr.json").write_text('{"zarr_for')
    fails(["run", "--data", str(tmp_path / "bad.zarr"), "--run-dir", str(tmp_path / "run")],
          f"{tmp_path / 'bad.zarr'}: not a readable proui store")


def test_misspelled_val_split_is_an_error_not_silence(demo_store, tmp_path):
    fails(["run", "--data", demo_store, "--run-dir", str(tmp_path / "run"), "--steps", "2",
           "--set", "val_every=1", "--set", 'data.val_split="vall"'],
          "data.val_split: split 'vall' not in store", "splits: ['train', 'val']")
    cfg = small_config(demo_store, tmp_path / "run", 2, **{"data.val_split": "vall"})  # val_every = 0
    assert train_mod.check_splits(cfg) is False  # validation off: the val split is not needed


def test_steps_below_val_every_warn(demo_store, tmp_path, caplog):
    cfg = small_config(demo_store, tmp_path / "run", 2, val_every=5)
    with caplog.at_level(logging.WARNING, "proui_train.train"):
        assert train_mod.check_splits(cfg) is False
    assert "steps 2 < val_every 5: no validation will run" in caplog.text
    assert train_mod.check_splits(small_config(demo_store, tmp_path / "run", 5, val_every=5)) is True


def test_eval_on_a_missing_split_lists_the_splits(demo_store, trained, tmp_path):
    fails(["eval", "--checkpoint", str(trained), "--data", demo_store, "--out", str(tmp_path / "m.json")],
          "split 'test' not in store", "splits: ['train', 'val']")  # --split defaults to test
    assert not (tmp_path / "m.json").exists()


def test_open_split_is_the_one_reader(demo_store, tmp_path):
    assert open_split(demo_store, "val")["hr"].shape[1:] == (128, 128, 3)
    with pytest.raises(StoreError, match=r"split 'x' not in store .*splits: \['train', 'val'\]"):
        open_split(demo_store, "x")
    with pytest.raises(StoreError, match="no such store"):
        evaluate_store(str(tmp_path / "none.zarr"), "val", None, identity=False)
    assert str(StoreError("one line")) == "one line"  # no KeyError quotes


# ----- run folders -----


def test_second_run_into_a_run_folder_is_refused(demo_store, run_copy):
    before = {p.relative_to(run_copy): p.read_bytes() for p in run_copy.rglob("*") if p.is_file()}
    fails(["run", "--data", demo_store, "--run-dir", str(run_copy), "--steps", "1", "--batch-size", "2",
           "--no-progress"], f"{run_copy} already holds a run", "--resume", "--overwrite")
    after = {p.relative_to(run_copy): p.read_bytes() for p in run_copy.rglob("*") if p.is_file()}
    assert after == before  # nothing touched
    fails(["run", "--data", demo_store, "--run-dir", str(run_copy), "--resume", "--overwrite"],
          "--resume or --overwrite, not both")


def test_overwrite_starts_again(demo_store, run_copy):
    (run_copy / "notes.txt").write_text("mine")
    r = CliRunner().invoke(cli, ["run", "--data", demo_store, "--run-dir", str(run_copy), "--steps", "1",
                                 "--batch-size", "2", "--no-progress", "--overwrite", "--set", "log_every=1"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["run_dir"] == str(run_copy)
    steps = [json.loads(line)["step"] for line in (run_copy / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1]
    assert sorted(p.name for p in run_copy.glob("step-*")) == ["step-00000001"]
    assert (run_copy / "notes.txt").read_text() == "mine"  # only what a run writes is removed


def test_resume_falls_back_past_a_damaged_latest(demo_store, trained, run_copy, caplog):
    """step-2's tensors truncated: resume reads step 1 with a warning, trains step 2 again to the same weights,
    and metrics.jsonl keeps one row per step."""
    truncate(run_copy / "step-00000002" / "tensors.safetensors")
    with caplog.at_level(logging.WARNING, "proui_train.checkpoint"):
        result = train_mod.train(small_config(demo_store, run_copy, 2), resume=True, progress=False)
    assert result["step"] == 2
    assert "step-00000002/tensors.safetensors: damaged" in caplog.text
    assert "falling back to the previous checkpoint" in caplog.text and "step-00000001" in caplog.text
    steps = [json.loads(line)["step"] for line in (run_copy / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2]
    again, original = load_checkpoint(run_copy)["generator"], load_checkpoint(trained)["generator"]
    assert max((again[k].float() - original[k].float()).abs().max().item() for k in original) <= 1e-6


def test_resume_with_every_checkpoint_damaged_fails(demo_store, run_copy):
    for ck in run_copy.glob("step-*"):
        truncate(ck / "state.json")
    with pytest.raises(CheckpointError, match="no older checkpoint .* reads either"):
        load_latest(run_copy)
    fails(["run", "--data", demo_store, "--run-dir", str(run_copy), "--steps", "3", "--batch-size", "2",
           "--resume", "--no-progress"], "step-00000002/state.json: damaged")


# ----- damaged checkpoints and releases -----


@pytest.mark.parametrize("damaged", ["tensors.safetensors", "state.json"])
@pytest.mark.parametrize("command", ["eval", "release", "infer"])
def test_damaged_checkpoint_is_one_line(demo_store, run_copy, tmp_path, damaged, command):
    truncate(run_copy / "step-00000002" / damaged)
    photos = tmp_path / "photos"  # a photo to restore: the checkpoint is what must fail
    photos.mkdir()
    shutil.copy(Path(proui_data.demo.__file__).parent / "grace_hopper.jpg", photos)
    args = {"eval": ["eval", "--checkpoint", str(run_copy), "--data", demo_store, "--split", "val",
                     "--out", str(tmp_path / "m.json")],
            "release": ["release", str(run_copy), "--out", str(tmp_path / "rel")],
            "infer": ["infer", "--checkpoint", str(run_copy), "--input", str(photos), "--out",
                      str(tmp_path / "sr")]}[command]
    fails(args, f"{run_copy / 'step-00000002' / damaged}: damaged")


def test_missing_checkpoint_file_and_dangling_latest(run_copy):
    (run_copy / "step-00000002" / "state.json").unlink()
    with pytest.raises(CheckpointError, match="state.json: missing"):
        load_checkpoint(run_copy)
    (run_copy / "latest").write_text("step-00000009")
    with pytest.raises(CheckpointError, match="names 'step-00000009', which is not a checkpoint folder"):
        load_checkpoint(run_copy)
    state, folder = load_latest(run_copy)  # resume still finds step 1
    assert folder.name == "step-00000001" and state["step"] == 1


def test_damaged_release_is_one_line(demo_store, run_copy, tmp_path):
    weights = run_copy.parent / "release" / "model.safetensors"
    truncate(weights)
    fails(["eval", "--checkpoint", str(weights.parent), "--data", demo_store, "--split", "val",
           "--out", str(tmp_path / "m.json")], f"{weights}: damaged")


def test_report_on_a_release_folder_and_an_empty_curve(run_copy, tmp_path):
    fails(["report", str(run_copy.parent / "release"), "--out", str(tmp_path / "r.png")],
          "not a training run (no metrics.jsonl): a release folder has weights, not curves")
    r = CliRunner().invoke(cli, ["report", str(run_copy), "--out", str(tmp_path / "r.png")])  # val_every = 0
    assert r.exit_code == 0, r.output
    assert "warning: no validation rows" in r.stderr and (tmp_path / "r.png").is_file()
    with open(run_copy / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "loss/g"')  # a line cut short
    fails(["report", str(run_copy), "--out", str(tmp_path / "r.png")], "metrics.jsonl:3: not a JSON line")


# ----- eval batch size -----


def test_eval_figures_do_not_depend_on_the_batch_size(demo_store, trained):
    torch.manual_seed(0)
    predict = _model_predict(load_generator(trained), torch.device("cpu"))
    results = [evaluate_store(demo_store, "train", predict, identity=False, batch=b) for b in (1, 4, 64)]
    assert results[0]["n"] == 6 and "nme" in results[0] and "by_kind" in results[0]
    for other in results[1:]:
        # the images, and every figure computed from them, are identical; landmark NMEs come from float heatmaps,
        # whose last bits depend on the batch's shape (the sub-pixel peak fit amplifies them on flat maps)
        assert other["by_kind"] == results[0]["by_kind"]
        for k, v in results[0].items():
            if k.startswith("nme"):
                assert other[k] == pytest.approx(v, rel=1e-4), k
            else:
                assert other[k] == v, k
    limited = evaluate_store(demo_store, "train", predict, identity=False, batch=2, limit=3)
    assert limited["n"] == 3 and limited["psnr_y"] != results[0]["psnr_y"]
