"""`proui-train`: run (train), eval (metrics on the FSRNet sets or a store split), infer (hallucinate images), demo
(a Gradio page)."""
from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import click
import torch

from proui_data.align import TEMPLATES

from .attributes import AttributesError
from .checkpoint import CheckpointError
from .config import ConfigError, load_config
from .data import StoreError
from .evaluate import evaluate
from .infer import InferError, infer_paths
from .release import PublishError, publish_weights
from .report import ReportError, picture_grid, plot_curves, run_config
from .restore import DEFAULT_MIN_EYE_DISTANCE
from .runtime import release_run
from .train import RunDirError, TrainingStopped, train

# Errors that say in one line what is wrong with an input: printed as `error: ...`, exit 2, no traceback.
USER_ERRORS = (AttributesError, CheckpointError, ConfigError, PublishError, ReportError, RunDirError, StoreError,
               TrainingStopped)


def _rank() -> int:
    """This process's rank under torchrun (0 when run alone)."""
    return int(os.environ.get("RANK", "0"))


def _fail(msg: str) -> None:
    click.echo(f"error: {msg}", err=True)
    sys.exit(2)


class Commands(click.Group):
    """Every command's expected failures end in one `error:` line and exit 2."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except USER_ERRORS as e:
            _fail(str(e))
        except FileNotFoundError as e:
            _fail(f"{e.filename or e}: {e.strerror or 'not found'}" if e.filename else str(e))


@click.group(cls=Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True)
def main(verbose: bool) -> None:
    """Train and evaluate Pro-UIGAN on proui stores."""
    level = logging.DEBUG if verbose else logging.INFO
    if _rank() > 0:
        level = logging.WARNING  # under torchrun rank 0 tells the story; the others only warn
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("distributed", "asyncio", "numcodecs"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


@main.command()
@click.option("--config", "config_path", type=click.Path(), help="TOML config (default pipelines/train/default.toml).")
@click.option("--data", help="Store to train on (data.store).")
@click.option("--steps", type=click.IntRange(min=1), help="Generator steps (steps).")
@click.option("--run-dir", help="Where checkpoints and logs go (run_dir).")
@click.option("--batch-size", type=click.IntRange(min=1), help="data.batch_size")
@click.option("--workers", type=click.IntRange(min=0), help="data.workers (DataLoader processes)")
@click.option("--device", help="auto | cpu | cuda | cuda:N")
@click.option("--resume", is_flag=True, help="Continue from run_dir/latest, loader position included (a damaged "
              "latest: the previous checkpoint). Without a checkpoint: a fresh start.")
@click.option("--overwrite", is_flag=True, help="Remove an earlier run in run_dir and start again (without it, or "
              "--resume, a run_dir that holds a run is refused).")
@click.option("--set", "sets", multiple=True, help="Any config key: --set optim.lr_g=2e-4 (repeatable).")
@click.option("--no-progress", is_flag=True)
def run(config_path, data, steps, run_dir, batch_size, workers, device, resume, overwrite, sets, no_progress):
    """Train Pro-UIGAN: one process, or DDP under `torchrun --nproc-per-node N -m proui_train.cli run`."""
    overrides = {k: v for k, v in {"data.store": data, "steps": steps, "run_dir": run_dir,
                                   "data.batch_size": batch_size, "data.workers": workers,
                                   "device": device}.items() if v is not None}
    cfg = load_config(config_path, overrides, list(sets))
    result = train(cfg, resume=resume, progress=not no_progress, overwrite=overwrite)
    if _rank() == 0:
        click.echo(json.dumps(result, indent=2))


@main.command("eval")
@click.option("--checkpoint", type=click.Path(exists=True),
              help="Run folder, checkpoint folder, release folder or its model.safetensors.")
@click.option("--baseline", type=click.Choice(["bicubic", "hr"]),
              help="Evaluate a baseline instead of a model (hr: a store split's ground truth, the ceiling).")
@click.option("--benchmark", type=click.Path(exists=True, file_okay=False),
              help="FSRNet benchmark folder (celeba_val_1000_HR/, ..._LR_8x/, helen_val_50_*).")
@click.option("--data", help="A proui store: evaluate its --split (masks and landmarks included).")
@click.option("--split", default="test", show_default=True)
@click.option("--input", "input_name", type=click.Choice(["lr_occluded", "lr"]),
              help="The store's input array (default: lr_occluded when the store has it, else lr).")
@click.option("--out", "out_path", default="metrics.json", show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--batch-size", default=16, show_default=True, type=click.IntRange(min=1),
              help="Faces per forward pass: memory grows with it; the figures do not change.")
@click.option("--limit", type=click.IntRange(min=1), help="Only the first N faces of each set or split.")
@click.option("--no-identity", is_flag=True,
              help="Skip the downstream tasks on the outputs (identity by dlib and FaceNet, dlib NME; slow on CPU).")
@click.option("--attributes", "attributes_dir", type=click.Path(exists=True, file_okay=False),
              help="Attribute classifiers from `proui-train attributes`: adds attribute accuracy (their split only).")
def eval_cmd(checkpoint, baseline, benchmark, data, split, input_name, out_path, device, batch_size, limit,
             no_identity, attributes_dir):
    """PSNR/SSIM (Y and RGB), inside/outside occlusions, sharpness (high-frequency ratio), landmark NME per stage,
    and the downstream tasks on the outputs: dlib NME, identity similarity, attribute accuracy."""
    if bool(checkpoint) == bool(baseline):
        _fail("give exactly one of --checkpoint or --baseline")
    if not benchmark and not data:
        _fail("give --benchmark DIR and/or --data STORE")
    if baseline == "hr" and (benchmark or not data):
        _fail("--baseline hr is a store split's own ground truth: give --data STORE and no --benchmark")
    if attributes_dir and not data:
        _fail("--attributes scores a store split: give --data STORE --split (the classifiers' split)")
    results = evaluate(checkpoint=checkpoint, baseline=baseline, benchmark=benchmark, store=data, split=split,
                       device=device, identity=not no_identity, store_input=input_name, batch_size=batch_size,
                       limit=limit, attributes=attributes_dir)
    with open(out_path, "w") as f:
        json.dump(results, f, indent=2)
    for name, m in results.items():
        if isinstance(m, dict):
            click.echo(f"{name}: " + ", ".join(f"{k} {v:.4f}" for k, v in m.items() if isinstance(v, float)))
    click.echo(f"wrote {out_path}")


@main.command()
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--out", "out_path", default="report.png", show_default=True, help="Learning-curve figure.")
@click.option("--label", "labels", multiple=True, help="One per run (default: the folder names).")
@click.option("--grid", "grid_path", type=click.Path(dir_okay=False), help="Also write a picture grid here.")
@click.option("--data", help="Store whose faces fill the grid (default: the first run's store).")
@click.option("--split", default="val", show_default=True)
@click.option("--n", "n_faces", default=6, show_default=True, type=click.IntRange(1, 256))
def report(run_dirs, out_path, labels, grid_path, data, split, n_faces):
    """Learning curves (validation PSNR-Y, EMA and raw, bicubic as a line) and a grid of
    input | bicubic | each run's EMA generator | ground truth."""
    if labels and len(labels) != len(run_dirs):
        _fail(f"{len(labels)} --label for {len(run_dirs)} runs")
    summary = plot_curves(list(run_dirs), out_path, list(labels) or None)
    if not any(k != "bicubic" for k in summary):
        click.echo("warning: no validation rows in the runs' metrics.jsonl: the figure has no curve (validation "
                   "runs every val_every steps; val_every = 0 or > steps turns it off)", err=True)
    for k, v in summary.items():
        click.echo(f"{k}: {v:.3f}")
    click.echo(f"wrote {out_path}")
    if grid_path:
        store = data or run_config(run_dirs[0]).data.store
        click.echo(f"wrote {picture_grid(list(run_dirs), store, split, grid_path, n_faces)}")


@main.command()
@click.argument("run_dir", type=click.Path(exists=True))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Release folder.")
@click.option("--card", type=click.Path(exists=True, dir_okay=False), help="Model card (README.md) to include.")
@click.option("--metrics", "metrics_path", type=click.Path(exists=True, dir_okay=False),
              help="An eval metrics.json to record in the weights' metadata.")
@click.option("--check", "check_path", type=click.Path(exists=True, dir_okay=False),
              help="Figures on fixed slices (JSON) that a test recomputes from the released file.")
def release(run_dir, out_dir, card, metrics_path, check_path):
    """Export a run's EMA generator as a release folder (config.json, model.safetensors, README.md); RUN_DIR
    may also be a release (folder or its model.safetensors) to release again with a new card or figures."""
    extra = {}
    if metrics_path:
        extra["metrics"] = json.loads(Path(metrics_path).read_text())
    if check_path:
        extra["check"] = json.loads(Path(check_path).read_text())
    text = Path(card).read_text(encoding="utf-8") if card else ""
    out, meta = release_run(run_dir, out_dir, text, extra)
    click.echo(f"wrote {out} (step {meta['step']}, {meta['weights']} weights)")


@main.command()
@click.argument("folder", type=click.Path(exists=True, file_okay=False))
@click.option("--repo", "repo_id", required=True, help="Hub model repo, e.g. user/proui-celeba.")
@click.option("--dry-run", "dry_run", type=click.Path(file_okay=False), metavar="DIR",
              help="Copy what would be uploaded into DIR instead.")
@click.option("--private", is_flag=True)
def publish(folder, repo_id, dry_run, private):
    """Publish a release folder as a Hugging Face model (token: HF_TOKEN or `hf auth login`; HF_ENDPOINT)."""
    try:
        where = publish_weights(folder, repo_id, dry_run=dry_run, private=private)
    except PublishError as e:
        _fail(str(e))
    click.echo(f"{'wrote' if dry_run else 'uploaded'} {folder} -> {where}")


@main.command()
@click.option("--checkpoint", required=True, type=click.Path(exists=True),
              help="Release folder or its model.safetensors, or a run / checkpoint folder.")
@click.option("--input", "input_path", required=True, type=click.Path(exists=True), help="An image or a folder.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False))
@click.option("--device", default="auto", show_default=True)
@click.option("--template", type=click.Choice(list(TEMPLATES)),
              help="Override the frame the model was trained in (default: the one its weights record).")
@click.option("--downscale", is_flag=True,
              help="Also restore faces larger than tiny (eyes > 27.5 px), shrunk to 16x16 first (benchmark mode).")
@click.option("--upscale", default=1, show_default=True, type=click.IntRange(1, 8),
              help="The restored photo is N times the input (bicubic background).")
@click.option("--min-eye-distance", default=DEFAULT_MIN_EYE_DISTANCE, show_default=True, type=click.FloatRange(1),
              help="Smallest face searched: eyes this many px apart.")
def infer(checkpoint, input_path, out_dir, device, template, downscale, upscale, min_eye_distance):
    """Restore every face of every photo: search, align to 16x16, hallucinate, paste back. Writes
    OUT/restored/ (whole photos), OUT/faces/ (input | output | aligned original) and OUT/results.jsonl."""
    try:
        rows = infer_paths(checkpoint, input_path, out_dir, device, template, downscale, upscale, min_eye_distance)
    except InferError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(1)
    for r in rows:
        face = f"#{r['face']} " if "face" in r else ""
        eye = f"eyes {r['eye_distance']:.1f} px, {r['mode']}: " if r.get("eye_distance") is not None else ""
        why = f" ({r['reason']})" if r.get("reason") else ""
        click.echo(f"{r['input']} {face}{eye}{r['status']}{why}" + (f" -> {r['restored']}" if r.get("restored") else ""))
    restored = sum(r["status"] == "restored" for r in rows)
    click.echo(f"{restored} face(s) restored; wrote {Path(out_dir) / 'results.jsonl'}")


@main.command()
@click.option("--checkpoint", "checkpoints", multiple=True, type=click.Path(exists=True),
              help="A release folder or run to offer (repeatable; default: the two released models in weights/).")
@click.option("--host", default="127.0.0.1", show_default=True, help="0.0.0.0 serves the page to the network.")
@click.option("--port", type=click.IntRange(1, 65535), help="Default: the first free port from 7860.")
@click.option("--device", default="auto", show_default=True)
def demo(checkpoints, host, port, device):
    """Serve a Gradio page: a photo in, its faces restored (paint or draw an occluder first). Needs the demo extra:
    pip install 'proui[demo]'."""
    from .demo import RELEASED, DemoError, launch, require_gradio

    try:
        require_gradio()
        launch(list(checkpoints) or [p for p in RELEASED if p.exists()], host, port, device)
    except DemoError as e:
        _fail(str(e))


@main.command()
@click.option("--data", required=True, help="A store with CelebA attribute labels (built with --holdout-labelled).")
@click.option("--split", default="attr", show_default=True, help="The labelled split the generator never trained on.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Folder for the networks.")
@click.option("--folds", default=4, show_default=True, type=click.IntRange(2, 20))
@click.option("--epochs", default=40, show_default=True, type=click.IntRange(1))
@click.option("--seed", default=0, show_default=True)
@click.option("--attribute", "names", multiple=True, metavar="NAME",
              help="A CelebA attribute to classify (repeatable; default: Smiling, Mouth_Slightly_Open, Male, "
                   "Eyeglasses).")
def attributes(data, split, out_dir, folds, epochs, seed, names):
    """Train the attribute classifiers `eval --attributes` scores outputs with: one small CNN per identity fold
    of the labelled split, on its clean HR faces (each face is later scored by the network that never saw it)."""
    from .attributes import ATTRIBUTES, attribute_scores, read_labelled, train_classifiers

    names = tuple(names) or ATTRIBUTES
    hr, labels, identities, keys = read_labelled(data, split, names)
    classifiers = train_classifiers(hr, labels, identities, keys, names, folds=folds, epochs=epochs, seed=seed)
    classifiers.save(out_dir)
    hr_faces = torch.from_numpy(hr).permute(0, 3, 1, 2)
    scores = attribute_scores(classifiers.predict(hr_faces, keys), torch.from_numpy(labels), classifiers.names)
    click.echo(f"{len(keys)} labelled faces, {folds} identity folds; held-out accuracy on clean HR: "
               + ", ".join(f"{n} {scores[f'attr/{n}']:.3f}" for n in classifiers.names)
               + f"; wrote {out_dir}")


if __name__ == "__main__":
    main()
