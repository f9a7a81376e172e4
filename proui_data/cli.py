"""`proui-data`: build, info, verify, preview and publish sharded face stores."""
from __future__ import annotations

import dataclasses
import json
import logging
import sys
from pathlib import Path

import click

from . import __version__
from . import store as st
from .align import TEMPLATES
from .info import faces_line, faces_summary, occlusion_histogram, skipped_lines
from .interop import hub_split
from .pipeline import StoreMismatch, plan_build, summarize
from .preview import write_preview
from .publish import DEFAULT_ROW_GROUP_ROWS, PublishError, parse_size, publish
from .recipe import RecipeError, load_recipe, parse_recipe
from .runner import ClusterError, ShardsFailed, check_url_for_cluster, run_plan
from .schema import ALL_SPLITS, SPLITS
from .sources import SOURCES, SourceError, get_source
from .verify import verify_store


def _fail(msg: str) -> None:
    click.echo(f"error: {msg}", err=True)
    sys.exit(2)


def _storage_options(ctx, param, value: str | None) -> dict | None:
    """--storage-options: a JSON object, or @FILE holding one (keeps credentials off the command line)."""
    if value is None:
        return None
    try:
        text = Path(value[1:]).read_text() if value.startswith("@") else value
        options = json.loads(text)
    except (OSError, json.JSONDecodeError) as e:
        raise click.BadParameter(f"not a JSON object or @file holding one: {e}") from e
    if not isinstance(options, dict):
        raise click.BadParameter(f"must be a JSON object, got {type(options).__name__}")
    return options


storage_options_option = click.option(
    "--storage-options", callback=_storage_options, metavar="JSON|@FILE",
    help='fsspec options for a store URL, e.g. \'{"client_kwargs": {"endpoint_url": "http://host:9000"}}\'.')


def _check_storage_options(url: str, options: dict | None) -> None:
    if options is not None and "://" not in url:
        _fail(f"--storage-options applies to fsspec URLs (s3://, gcs://, ...), not the local path {url}")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="proui-data")
@click.option("-v", "--verbose", is_flag=True, help="Log debug messages.")
def main(verbose: bool) -> None:
    """Build, inspect and check face-hallucination stores (sharded zarr v3)."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


@main.command()
@click.option("--source", "source_name", required=True, type=click.Choice(list(SOURCES)))
@click.option("--root", type=click.Path(), help="Dataset folder (celeba, helen, folder).")
@click.option("--name", "hf_name", help="Hugging Face dataset: hub id or save_to_disk folder (--source hf).")
@click.option("--out", required=True, help="Output store: a path or an fsspec URL.")
@click.option("--recipe", "recipe_path", type=click.Path(), help="Recipe TOML (default: pipelines/<source>.toml).")
@click.option("--split", default=ALL_SPLITS, show_default=True, type=click.Choice([*SPLITS, ALL_SPLITS]))
@click.option("--limit", type=click.IntRange(min=1), help="Only the first N samples of each split.")
@click.option("--workers", type=click.IntRange(min=0), default=1, show_default=True,
              help="Dask LocalCluster worker processes (0: run in this process).")
@click.option("--scheduler", help="Address of a running Dask scheduler (tcp://HOST:PORT) instead of --workers.")
@click.option("--retries", type=click.IntRange(min=0), default=2, show_default=True,
              help="Reruns of a shard task that raised (a worker that dies is handled by the scheduler).")
@storage_options_option
@click.option("--seed", type=int, help="Override the recipe's seed.")
@click.option("--occlusion-seed", type=int, help="Override the recipe's occlusion seed (new masks, same faces).")
@click.option("--template", type=click.Choice(list(TEMPLATES)),
              help="Override the recipe's align.template (fsrnet: the FSRNet test sets' frame).")
@click.option("--occluders", type=click.Path(exists=True, file_okay=False),
              help="Folder of RGBA occluder PNGs (glasses, masks, caps; MaskTheFace masks.cfg understood).")
@click.option("--holdout-labelled", metavar="SPLIT",
              help="celeba: move every image with an attribute row into split SPLIT (e.g. attr), out of its own.")
@click.option("--overwrite", is_flag=True, help="Delete what --out holds and start again.")
@click.option("--repair", is_flag=True,
              help="Also read every finished shard and rewrite those whose bytes changed (a rerun alone rewrites "
                   "unfinished shards and those with missing or resized objects).")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def build(source_name, root, hf_name, out, recipe_path, split, limit, workers, scheduler, retries, storage_options,
          seed, occlusion_seed, template, occluders, holdout_labelled, overwrite, repair, no_progress):
    """Build a store from a source. Rerunning the same command resumes a killed build and rewrites damaged shards."""
    _check_storage_options(out, storage_options)
    # Workers may run elsewhere, in another working directory: give them absolute paths.
    root = str(Path(root).resolve()) if root else root
    out = out if "://" in out else str(Path(out).resolve())
    try:
        if scheduler or workers > 0:
            check_url_for_cluster(out)
        recipe = load_recipe(recipe_path, source_name)
        if seed is not None:
            recipe = recipe.replace(seed=seed)
        if occlusion_seed is not None:
            recipe = recipe.replace(occlusion_seed=occlusion_seed)
        if template is not None:
            recipe = recipe.replace(align=dataclasses.replace(recipe.align, template=template))
        if occluders is not None:
            recipe = recipe.replace(occlusion={**(recipe.occlusion or {}), "occluders_dir": str(Path(occluders).resolve())})
            recipe = parse_recipe(recipe.to_dict(), "recipe with --occluders")
        source = get_source(source_name, root, hf_name, holdout_labelled)
        plan = plan_build(source, recipe, out, split, limit, overwrite, storage_options, progress=not no_progress,
                          repair=repair)
    except (RecipeError, SourceError, StoreMismatch, ValueError) as e:
        _fail(str(e))
    n = sum(len(v) for v in plan.splits.values())
    attrs = _attrs(out, storage_options)  # as planning left them: the run adds no root attribute
    faces = faces_summary(attrs)
    photos = sum(c["photos"] for c in faces.values())
    per_face = f" from {photos} photos (a row per face)" if photos else ""
    click.echo(f"{source_name}: {n} samples{per_face} in {', '.join(f'{s}={len(v)}' for s, v in plan.splits.items())};"
               f" {len(plan.todo)} shards to write, {plan.skipped} already finished")
    for line in plan.damaged:
        click.echo(f"rewriting a damaged shard: {line}")
    unassigned = plan.source.describe().get("unassigned_images")
    if unassigned:
        click.echo(f"note: {unassigned} images have no row in the partition file and belong to no split")
    skipped = skipped_lines(attrs)
    for line in skipped:
        click.echo(line)
    try:
        run = run_plan(plan, workers=workers, scheduler=scheduler, progress=not no_progress,
                       storage_options=storage_options, retries=retries)
    except (ClusterError, ShardsFailed) as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(1)
    totals = summarize(out, storage_options)
    click.echo(f"wrote {run['samples']} samples ({run['valid']} valid) in {run['shards_written']} shards, "
               f"{run['seconds']:.1f} s, {run['samples_per_s']:.1f} samples/s; skipped {run['shards_skipped']} "
               "finished shards")
    for s, c in totals.items():
        rej = ", ".join(f"{k}: {v}" for k, v in c["rejects"].items()) or "none"
        click.echo(f"  {s}: {c['valid']}/{c['samples']} valid; rejected: {rej}")
        if s in faces:
            click.echo(f"  {s}: {faces_line(faces[s])}")
    if skipped:
        click.echo("  " + skipped[0])


def _attrs(url: str, storage_options: dict | None) -> dict:
    return dict(st.open_root(url, mode="r", storage_options=storage_options).attrs)


@main.command()
@click.argument("store_url")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@storage_options_option
def info(store_url, as_json, storage_options):
    """Schema, counts, reject reasons and recipe of a store."""
    try:
        root = st.open_root(store_url, mode="r", storage_options=storage_options)
    except Exception as e:  # noqa: BLE001
        _fail(f"cannot open {store_url}: {e}")
    counts = summarize(store_url, storage_options)
    schema = {}
    for s in st.splits_of(root):
        g = root[s]
        schema[s] = {a: {"shape": list(g[a].shape), "dtype": str(g[a].dtype),
                         "shard": list(g[a].shards or g[a].chunks), "chunk": list(g[a].chunks)}
                     for a in g.array_keys() if a not in st.BOOKKEEPING}
    attrs = dict(root.attrs)
    faces = faces_summary(attrs)
    if as_json:
        attrs.pop(st.DETECTIONS, None)  # every box of every photo: the summary says what it holds
        out = {"attrs": attrs, "counts": counts, "schema": schema} | ({"faces": faces} if faces else {})
        click.echo(json.dumps(out, indent=2, default=str))
        return
    click.echo(f"store {store_url}  format {attrs.get('proui_format')}  source {attrs.get('source', {}).get('name')}"
               f"  seed {attrs.get('seed')}  fingerprint {attrs.get('fingerprint')}")
    for line in skipped_lines(attrs):
        click.echo(line)
    for s, c in counts.items():
        click.echo(f"[{s}] {c['valid']}/{c['samples']} valid, shards {c['shards_done']}/{c['shards']} finished")
        if s in faces:
            click.echo(f"    {faces_line(faces[s])}")
        for reason, k in c["rejects"].items():
            click.echo(f"    rejected {reason}: {k}")
        for a, d in schema[s].items():
            click.echo(f"    {a:18s} {str(tuple(d['shape'])):22s} {d['dtype']:8s} shard {d['shard'][0]} chunk {d['chunk'][0]}")
        g = root[s]
        if "occlusion_kind" in g.array_keys():
            click.echo(occlusion_histogram(g))
    click.echo("recipe: " + json.dumps(attrs.get("recipe"), sort_keys=True))


@main.command()
@click.argument("store_url")
@storage_options_option
def verify(store_url, storage_options):
    """Read every shard and check shapes, value ranges and landmarks; exit 1 on damage."""
    _check_storage_options(store_url, storage_options)
    problems, counts = verify_store(store_url, storage_options)
    for s, c in counts.items():
        click.echo(f"{s}: {c['valid']}/{c['samples']} valid")
        if not c["content_hashes"]:
            click.echo(f"note: {s} has no content hashes (written before they were recorded): a changed shard is "
                       "found only where its values fail the checks; rebuild it with --overwrite to record them")
    if problems:
        for p in problems:
            click.echo(f"DAMAGE: {p}", err=True)
        click.echo(f"verify failed: {len(problems)} problem(s); the same build command rewrites missing, "
                   "truncated and unfinished shards, with --repair also changed ones", err=True)
        sys.exit(1)
    click.echo("verify ok")


@main.command()
@click.argument("store_url", required=False, default="demo.zarr")
@click.option("--out", default="preview.png", show_default=True, help="PNG file to write.")
@click.option("--n", default=64, show_default=True, help="Number of samples.")
@click.option("--split", help="Split to show (default: the first).")
@storage_options_option
def preview(store_url, out, n, split, storage_options):
    """Write a PNG grid of HR / LR / landmarks (and priors and occlusions when present)."""
    try:
        w, h = write_preview(store_url, out, n, split, storage_options)
    except (ValueError, OSError, KeyError) as e:
        _fail(str(e))
    click.echo(f"wrote {out} ({w}x{h})")


def _byte_size(ctx, param, value: str) -> int:
    """--max-file-size: bytes from e.g. 500MB."""
    try:
        return parse_size(value)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None


@main.command("publish")
@click.argument("store_url")
@click.option("--repo", "repo_id", required=True, metavar="ORG/NAME", help="Hub dataset repository.")
@click.option("--private", is_flag=True, help="Create the repository private (an existing one keeps its visibility).")
@click.option("--format", "fmt", type=click.Choice(["parquet", "zarr"]), default="parquet", show_default=True,
              help="parquet: a datasets-loadable repository; zarr: the store's own files.")
@click.option("--config", help="Config name (default: the store's source name).")
@click.option("--dry-run", "dry_run", type=click.Path(file_okay=False), metavar="DIR",
              help="Write exactly the files an upload would send into DIR; upload nothing.")
@click.option("--with-heatmaps", is_flag=True, help="Add the heatmaps column (Array3D; they render from landmarks).")
@click.option("--include-rejected", is_flag=True, help="Publish rejected samples too (valid=False, reject_reason).")
@click.option("--license", "license_id", help="Hub license identifier (default: from the source's terms).")
@click.option("--force", is_flag=True, help="Publish even with a license that contradicts the source's terms.")
@click.option("--max-file-size", default="500MB", show_default=True, callback=_byte_size,
              help="Target parquet file size (e.g. 500MB).")
@click.option("--row-group-size", type=click.IntRange(min=1), default=DEFAULT_ROW_GROUP_ROWS, show_default=True,
              help="Rows per parquet row group (fewer with --with-heatmaps, to bound memory).")
def publish_command(store_url, repo_id, private, fmt, config, dry_run, with_heatmaps, include_rejected, license_id,
                    force, max_file_size, row_group_size):
    """Publish a store as a Hugging Face dataset (token: HF_TOKEN or `hf auth login`; endpoint: HF_ENDPOINT)."""
    try:
        result = publish(store_url, repo_id, fmt=fmt, dry_run=dry_run, private=private, config=config,
                         with_heatmaps=with_heatmaps, include_rejected=include_rejected, license_id=license_id,
                         force=force, max_file_bytes=max_file_size, row_group_rows=row_group_size)
    except PublishError as e:
        _fail(str(e))
    for w in result.warnings:
        click.echo(f"warning: {w}", err=True)
    total = sum(result.files.values())
    rows = ", ".join(f"{hub_split(s)}={n}" for s, n in result.rows.items())
    where = f"to {dry_run}" if dry_run else f"to {repo_id}"
    verb = "wrote" if dry_run else "uploaded"
    click.echo(f"{verb} {len(result.files)} files ({total / 1e6:.1f} MB; rows {rows}) {where}")
    if not dry_run:
        click.echo(f"commit: {result.url}")

if __name__ == "__main__":
    main()
