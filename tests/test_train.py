"""The trainer end to end on the embedded demo store: resume equals uninterrupted training, checkpoints
without pickle, NaN handling, eval and infer."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from proui_train import train as train_mod
from proui_train import trainer as trainer_mod
from proui_train.runtime import build_generator, load_generator
from proui_train.checkpoint import load_checkpoint, save_checkpoint
from proui_train.cli import main as cli
from proui_train.config import ConfigError, load_config

from fixtures import demo_photo, write_jpeg




def small_config(store: str, run_dir: Path, steps: int, **kw):
    sets = {"data.store": store, "run_dir": str(run_dir), "steps": steps, "data.batch_size": 2,
            "ckpt_every": 2, "log_every": 1, "val_every": 0, "image_every": 0}
    sets.update(kw)
    return load_config(None, sets)


def test_config_rejects_unknown_keys_and_parses_overrides(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[optim]\nlr_gg = 1e-3\n")
    with pytest.raises(ConfigError, match="lr_gg"):
        load_config(bad)
    cfg = load_config(None, sets=["optim.lr_g=2e-4", "data.flip=false", "loss.tv=[0.0, 0.0, 0.0]"])
    assert cfg.optim.lr_g == 2e-4 and cfg.data.flip is False and cfg.loss.tv == (0.0, 0.0, 0.0)
    with pytest.raises(ConfigError, match="fan_weights"):
        load_config(None, sets=['model.prior="fan"'])


def test_checkpoint_round_trip_without_pickle(tmp_path):
    state = {"w": {"a": torch.arange(6.0).view(2, 3)}, "opt": {"state": {0: {"step": torch.tensor(3.0)}},
             "param_groups": [{"lr": 1e-3, "betas": (0.5, 0.999), "params": [0]}]}, "step": 7, "name": "x"}
    ck = save_checkpoint(tmp_path, 7, state)
    assert sorted(p.name for p in ck.iterdir()) == ["state.json", "tensors.safetensors"]
    assert (tmp_path / "latest").read_text() == "step-00000007"
    back = load_checkpoint(tmp_path)
    assert back["step"] == 7 and back["name"] == "x" and back["opt"]["param_groups"][0]["betas"] == (0.5, 0.999)
    assert torch.equal(back["w"]["a"], state["w"]["a"]) and 0 in back["opt"]["state"]
    assert set(load_file(str(ck / "tensors.safetensors"))) == {"/w/a", "/opt/state/0/step"}


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run_dir)["generator"]


def test_resume_equals_uninterrupted_training(demo_store, tmp_path):
    # 6 train samples, batches of 2: 4 steps cross an epoch boundary; the resumed run restarts mid-epoch.
    full = train_mod.train(small_config(demo_store, tmp_path / "full", 4), progress=False)
    train_mod.train(small_config(demo_store, tmp_path / "part", 2), progress=False)
    resumed = train_mod.train(small_config(demo_store, tmp_path / "part", 4), resume=True, progress=False)
    assert full["step"] == resumed["step"] == 4 and full["epoch"] == resumed["epoch"]
    a, b = _weights(tmp_path / "full"), _weights(tmp_path / "part")
    assert a.keys() == b.keys()
    worst = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    assert worst <= 1e-6
    assert full["loss/g"] == pytest.approx(resumed["loss/g"], abs=1e-6)


def test_init_starts_the_generator_and_ema_from_another_run(demo_store, tmp_path):
    """`init`: a run starts from another run's (or a release's) inference weights and trains on from them; a
    missing source or another model is a clear error."""
    train_mod.train(small_config(demo_store, tmp_path / "a", 2), progress=False)
    source = load_generator(tmp_path / "a").state_dict()
    cfg = small_config(demo_store, tmp_path / "b", 1, init=str(tmp_path / "a"))
    fresh = trainer_mod.ProUIGANTrainer(cfg, torch.device("cpu"))
    assert not all(torch.equal(v, source[k]) for k, v in fresh.generator.state_dict().items())
    fresh.start_from(cfg.init)
    for model in (fresh.generator, fresh.ema):
        assert all(torch.equal(v, source[k]) for k, v in model.state_dict().items())
    assert train_mod.train(cfg, progress=False)["step"] == 1
    with pytest.raises(ConfigError, match="does not exist"):
        train_mod.train(small_config(demo_store, tmp_path / "c", 1, init=str(tmp_path / "none")), progress=False)
    plain = small_config(demo_store, tmp_path / "d", 1, init=str(tmp_path / "a"), **{"model.arch": "plain"})
    with pytest.raises(ValueError, match="not the model this config builds"):
        trainer_mod.ProUIGANTrainer(plain, torch.device("cpu")).start_from(plain.init)


def test_identity_term_trains_with_dlibs_descriptor(demo_store, tmp_path):
    """loss.identity > 0: the trainer loads dlib's ResNet (models.dlib_resnet) and logs the term; 1 - cosine of
    the two descriptors lies in [0, 2]; without the weight no network is loaded."""
    cfg = small_config(demo_store, tmp_path / "id", 1, **{"loss.identity": 1.0})
    trainer = trainer_mod.ProUIGANTrainer(cfg, torch.device("cpu"))
    assert trainer.identity is not None and trainer_mod.ProUIGANTrainer(
        small_config(demo_store, tmp_path / "no", 1), torch.device("cpu")).identity is None
    out = train_mod.train(cfg, progress=False)
    assert 0 < out["loss/identity"] < 2


def test_identity_term_with_facenet_is_evals_judge(demo_store, tmp_path):
    """loss.identity_net = "facenet": the term's descriptor is the embedding `eval`'s identity_facenet uses,
    the gradient reaches the output, and a run logs the term."""
    from proui_data.align import template_box
    from proui_train.data import open_split, store_template
    from proui_train.models.facenet import FaceNetUnavailable, facenet_embeddings

    cfg = small_config(demo_store, tmp_path / "fn", 1, **{"loss.identity": 0.15, "loss.identity_net": "facenet"})
    try:
        trainer = trainer_mod.ProUIGANTrainer(cfg, torch.device("cpu"))
    except FaceNetUnavailable as err:
        pytest.skip(str(err))
    hr = torch.from_numpy(open_split(demo_store, "train")["hr"][:4]).permute(0, 3, 1, 2).float()
    faces = (hr / 127.5 - 1.0).requires_grad_(True)
    embeddings = trainer.identity(faces)
    want = facenet_embeddings(hr, template_box(store_template(demo_store)))
    torch.testing.assert_close(embeddings.detach(), want, atol=1e-4, rtol=0)
    embeddings[:, 0].sum().backward()
    assert faces.grad.abs().sum() > 0
    out = train_mod.train(cfg, progress=False)
    assert 0 < out["loss/identity"] < 2


def test_nonfinite_losses_are_skipped_then_stop(demo_store, tmp_path, monkeypatch):
    real = trainer_mod.generator_loss

    def poisoned(*args, **kw):
        total, terms = real(*args, **kw)
        return total * float("nan"), terms

    monkeypatch.setattr(trainer_mod, "generator_loss", poisoned)
    cfg = small_config(demo_store, tmp_path / "nan", 5, max_nonfinite=2)
    with pytest.raises(train_mod.TrainingStopped, match="2 steps had a NaN/inf loss"):
        train_mod.train(cfg, progress=False)
    ck = load_checkpoint(tmp_path / "nan")
    assert ck["step"] == 0 and ck["nonfinite"] == 2


def test_cli_run_eval_infer(demo_store, tmp_path):
    run_dir = tmp_path / "run"
    r = CliRunner().invoke(cli, ["run", "--data", demo_store, "--steps", "2", "--run-dir", str(run_dir),
                                 "--batch-size", "2", "--no-progress", "--set", "val_every=2", "--set", "log_every=1"])
    assert r.exit_code == 0, r.output
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert lines[0]["step"] == 1 and np.isfinite(lines[0]["loss/g"])
    assert any("val/psnr_y" in x for x in lines)  # validation ran on the val split
    assert "perf/samples_per_s" in lines[-1] or "perf/samples_per_s" in lines[-2]
    # eval on the store's val split: metrics inside / outside the occlusion mask, NME, identity
    out = tmp_path / "metrics.json"
    r = CliRunner().invoke(cli, ["eval", "--checkpoint", str(run_dir), "--data", demo_store, "--split", "val",
                                 "--out", str(out)])
    assert r.exit_code == 0, r.output
    m = json.loads(out.read_text())["store/val"]
    for k in ("psnr_y", "ssim_y", "psnr_rgb", "psnr_y_in", "psnr_y_out", "nme", "identity_cosine"):
        assert np.isfinite(m[k]), k
    assert m["n"] == 2 and -1.0 <= m["identity_cosine"] <= 1.0
    # infer: a photo (its face detected, aligned, shrunk to 16x16 with --downscale) and a 16x16 thumbnail (as is)
    inputs = tmp_path / "inputs"
    write_jpeg(inputs / "hopper.jpg", demo_photo("grace_hopper.jpg"))
    import cv2

    cv2.imwrite(str(inputs / "thumb.png"), cv2.resize(demo_photo("astronaut.jpg"), (16, 16), interpolation=cv2.INTER_AREA))
    (inputs / "broken.jpg").write_bytes(b"not an image")
    r = CliRunner().invoke(cli, ["infer", "--checkpoint", str(run_dir), "--input", str(inputs), "--out", str(tmp_path / "sr"),
                                 "--downscale"])
    assert r.exit_code == 0, r.output
    assert "broken.jpg skipped (decode:corrupt)" in r.output
    hop = cv2.imread(str(tmp_path / "sr" / "faces" / "hopper_0.png"))
    thumb = cv2.imread(str(tmp_path / "sr" / "faces" / "thumb_0.png"))
    assert hop.shape == (128, 384, 3) and thumb.shape == (128, 256, 3)
    assert cv2.imread(str(tmp_path / "sr" / "restored" / "hopper.png")).shape == demo_photo("grace_hopper.jpg").shape


def test_eval_store_clean_or_occluded_input(demo_store):
    from proui_train.evaluate import evaluate_store

    occluded = evaluate_store(demo_store, "val", None, identity=False)
    clean = evaluate_store(demo_store, "val", None, identity=False, input_name="lr")
    assert occluded["input"] == "lr_occluded" and "psnr_y_in" in occluded and "by_kind" in occluded
    assert clean["input"] == "lr" and "psnr_y_in" not in clean and "by_kind" not in clean
    assert clean["psnr_y"] > occluded["psnr_y"] + 0.5  # the occluders cost bicubic PSNR
    with pytest.raises(KeyError, match="no 'lr_noisy'"):
        evaluate_store(demo_store, "val", None, identity=False, input_name="lr_noisy")


def test_eval_bicubic_baseline_on_fsrnet(shared_data, tmp_path):
    out = tmp_path / "bicubic.json"
    r = CliRunner().invoke(cli, ["eval", "--baseline", "bicubic", "--benchmark", str(shared_data / "benchmark" / "fsrnet"),
                                 "--out", str(out), "--no-identity"])
    assert r.exit_code == 0, r.output
    m = json.loads(out.read_text())
    assert m["celeba"]["n"] == 1000 and m["helen"]["n"] == 50
    assert abs(m["celeba"]["psnr_y"] - 23.58) < 0.1 and abs(m["celeba"]["ssim_y"] - 0.6285) < 0.01
    assert abs(m["helen"]["psnr_y"] - 23.88) < 0.25 and abs(m["helen"]["ssim_y"] - 0.6628) < 0.01


def test_fan_prior_loads_local_weights(tmp_path):
    """`model.prior = "fan"` loads a locally saved FAN-4 (random weights: the loading path, not accuracy)."""
    fa_models = pytest.importorskip("face_alignment.models")
    torch.manual_seed(0)
    path = tmp_path / "fan4.pth"
    torch.save(fa_models.FAN(4).state_dict(), path)
    cfg = load_config(None, sets=['model.prior="fan"', f'model.fan_weights="{path}"'])
    g = build_generator(cfg).eval()
    assert trainer_mod.loss_weights(cfg).prior == (0.0, 0.0, 0.0)
    with torch.no_grad():
        out = g(torch.zeros(1, 3, 16, 16))
    assert out["final"].shape == (1, 3, 128, 128)
    assert [s["prior"].shape[1:] for s in out["stages"]] == [(7, 16, 16), (42, 32, 32), (68, 64, 64)]
    # the FAN is frozen and not part of the trained parameters
    assert all(p.requires_grad for p in g.parameters())
    missing = load_config(None, sets=['model.prior="fan"', f'model.fan_weights="{tmp_path / "nope.pth"}"'])
    with pytest.raises(Exception, match="nope.pth|2DFAN"):
        build_generator(missing)
