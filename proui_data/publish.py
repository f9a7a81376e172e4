"""`proui-data publish`: a store as a Hugging Face dataset repository (parquet or the zarr store itself).

parquet (default): one config per store, one split per store group, files
`data/<config>/<split>-00000-of-0000N.parquet` of about `max_file_bytes` each, written streaming with
pyarrow's ParquetWriter (memory: one store shard + one row group) under temporary names and renamed
once the count is known. zarr: the store's files under `data/<config>.zarr/`. Both come with a
generated card (`README.md`) and a preview image. Nothing outside the store is read: a local store holding a
link that leads out of it is refused.

The token comes from the standard places only (`HF_TOKEN`, the `huggingface_hub` login cache) and is
never printed, logged or written: every error of the upload is re-raised with the token scrubbed.
"""
from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import card, interop, store
from .preview import write_preview

log = logging.getLogger(__name__)
DEFAULT_MAX_FILE_BYTES = 500_000_000
DEFAULT_ROW_GROUP_ROWS = 100
# The parquet writer needs ~12 bytes per nested-list value (repetition/definition levels and pages):
# row groups are capped at this many Array2D/3D values (heatmaps: ~280k a row -> 14 rows, ~50 MB).
MAX_ROW_GROUP_VALUES = 4_000_000
REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")
CONFIG_NAME = re.compile(r"^[A-Za-z0-9][\w-]*$")


class PublishError(RuntimeError):
    """Publishing failed; the message is safe to show (no token in it)."""


@dataclass
class Export:
    """What a publish writes: repository path -> local file, plus what the card needs."""

    files: dict[str, Path] = field(default_factory=dict)
    rows: dict[str, int] = field(default_factory=dict)  # store split -> published rows
    data_files: dict[str, str] = field(default_factory=dict)  # store split -> glob in the repository
    features: object = None


def parse_size(text: str | int) -> int:
    """Bytes from `500MB`, `2GB`, `64kB`, `1MiB` or a plain integer (`dask.utils.parse_bytes`)."""
    from dask.utils import parse_bytes  # here: the trainer imports this module on machines without dask

    try:
        if isinstance(text, str) and not any(c.isdigit() for c in text):
            raise ValueError("no number")  # parse_bytes reads "" and "MB" as one unit
        value = parse_bytes(text)
    except (ValueError, TypeError):
        raise ValueError(f"cannot read size {text!r}: expected e.g. 500MB, 64kB or a number of bytes") from None
    if value < 1:
        raise ValueError(f"size {text!r} must be at least 1 byte")
    return value


def scrub(text: str, token: str | None) -> str:
    """The text with every occurrence of the token replaced."""
    return text.replace(token, "***") if token else text


# --- parquet ---------------------------------------------------------------------------------------------------------

def _leaf_paths(path: str, pa_type) -> list[str]:
    import pyarrow as pa

    if isinstance(pa_type, pa.ExtensionType):
        pa_type = pa_type.storage_type
    if pa.types.is_struct(pa_type):
        return [leaf for f in pa_type for leaf in _leaf_paths(f"{path}.{f.name}", f.type)]
    if pa.types.is_list(pa_type) or pa.types.is_fixed_size_list(pa_type) or pa.types.is_large_list(pa_type):
        return _leaf_paths(f"{path}.list.element", pa_type.value_type)
    return [path]


def _writer_options(schema) -> dict:
    """PNG bytes are compressed already: stored plain; everything else zstd."""
    compression, dictionary = {}, []
    for f in schema:
        for leaf in _leaf_paths(f.name, f.type):
            compression[leaf] = "none" if f.name in interop.IMAGE_COLUMNS else "zstd"
            if f.name in interop.STRING_COLUMNS:
                dictionary.append(leaf)
    return {"compression": compression, "use_dictionary": dictionary, "write_page_index": True}


def _nested_lists(values: np.ndarray):
    """(N, a, b, ...) numpy -> N nested list cells, built on the flat buffer (no Python objects per value)."""
    import pyarrow as pa

    arr = pa.array(np.ascontiguousarray(values).reshape(-1))
    for dim in reversed(values.shape[1:]):
        count = len(arr) // dim
        arr = pa.ListArray.from_arrays(pa.array(np.arange(count + 1, dtype=np.int32) * dim), arr)
    return arr


def _arrow_table(block: dict[str, np.ndarray], schema, png_level: int):
    import pyarrow as pa

    cells = interop.encode_block(block, png_level)
    arrays = []
    for f in schema:
        values = block[f.name]
        if isinstance(f.type, pa.ExtensionType):  # Array2D / Array3D: nested lists built from the numpy buffer
            arrays.append(pa.ExtensionArray.from_storage(f.type, _nested_lists(values)))
        elif pa.types.is_fixed_size_list(f.type):
            arrays.append(pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), values.shape[1]))
        else:
            arrays.append(pa.array(cells[f.name], type=f.type))
    return pa.Table.from_arrays(arrays, schema=schema)


def _row_groups(blocks, rows: int):
    """Re-cut per-shard blocks into blocks of `rows` rows (the last one shorter)."""
    buf, n = [], 0
    for block in blocks:
        m, i = len(block["key"]), 0
        while i < m:
            take = min(rows - n, m - i)
            buf.append({k: v[i:i + take] for k, v in block.items()})
            n, i = n + take, i + take
            if n == rows:
                yield {k: np.concatenate([b[k] for b in buf]) for k in buf[0]}
                buf, n = [], 0
    if n:
        yield {k: np.concatenate([b[k] for b in buf]) for k in buf[0]}


def write_parquet_split(group, columns: list[str], features, folder: Path, split_name: str, *,
                        include_rejected: bool = False, max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
                        row_group_rows: int = DEFAULT_ROW_GROUP_ROWS, png_level: int = 6) -> tuple[list[Path], int]:
    """Write one split as `<split>-0000i-of-0000n.parquet` files of about `max_file_bytes`; (files, rows).

    A file is closed once it reaches `max_file_bytes` (it overshoots by at most one row group).
    """
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    schema = features.arrow_schema
    options = _writer_options(schema)
    values_per_row = sum(int(np.prod(group[c].shape[1:])) for c in columns
                         if c not in interop.IMAGE_COLUMNS and group[c].ndim >= 3)
    row_group_rows = max(1, min(row_group_rows, MAX_ROW_GROUP_VALUES // max(1, values_per_row)))
    parts: list[Path] = []
    sink = writer = None
    rows, finished = 0, False
    try:
        for block in _row_groups(interop.iter_blocks(group, columns, include_rejected), row_group_rows):
            if writer is None:
                parts.append(folder / f"{split_name}-{len(parts):05d}.parquet.partial")
                sink = open(parts[-1], "wb")
                try:
                    writer = pq.ParquetWriter(sink, schema, use_content_defined_chunking=True, **options)
                except TypeError:  # pyarrow < 21: no content-defined chunking
                    writer = pq.ParquetWriter(sink, schema, **options)
            table = _arrow_table(block, schema, png_level)
            writer.write_table(table, row_group_size=table.num_rows)
            rows += table.num_rows
            if sink.tell() >= max_file_bytes:
                writer.close()
                sink.close()
                writer = sink = None
        finished = True
    finally:
        if writer is not None:
            writer.close()
        if sink is not None:
            sink.close()
        if not finished:  # no half-written files left behind
            for p in parts:
                p.unlink(missing_ok=True)
    final = []
    for i, p in enumerate(parts):
        target = p.with_name(f"{split_name}-{i:05d}-of-{len(parts):05d}.parquet")
        p.rename(target)
        final.append(target)
    return final, rows


def export_parquet(url: str, root, staging: Path, config: str, *, with_heatmaps: bool = False,
                   include_rejected: bool = False, max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
                   row_group_rows: int = DEFAULT_ROW_GROUP_ROWS) -> Export:
    out = Export()
    for s in store.splits_of(root):
        group = root[s]
        columns = interop.export_columns(group, with_heatmaps, include_rejected)
        features = interop.features_for(group, columns)
        out.features = out.features or features
        name = interop.hub_split(s)
        files, rows = write_parquet_split(group, columns, features, staging / "data" / config, name,
                                          include_rejected=include_rejected, max_file_bytes=max_file_bytes,
                                          row_group_rows=row_group_rows)
        out.rows[s] = rows
        for f in files:
            out.files[f.relative_to(staging).as_posix()] = f
        if files:
            out.data_files[s] = f"data/{config}/{name}-*.parquet"
        log.info("%s: %d rows in %d parquet files", s, rows, len(files))
    return out


# --- zarr ------------------------------------------------------------------------------------------------------------

def local_folder(url: str) -> Path | None:
    """The local folder of a store URL (a path or `file://`), None for a remote store."""
    path = url[len("file://"):] if url.startswith("file://") else url
    return Path(path) if "://" not in path and Path(path).is_dir() else None


def store_files(folder: Path) -> dict[str, Path]:
    """A local store's files (store-relative POSIX path -> file). A link is followed only to a file inside the
    store: any other (out of it, to a folder, dangling) raises PublishError naming it."""
    inside = folder.resolve()
    files = {}
    for p in sorted(folder.rglob("*")):
        real = p.resolve() if p.is_symlink() else p
        if real is not p and not (real.is_relative_to(inside) and real.is_file()):
            raise PublishError(f"{p} is a link to {real}, which is not a file inside the store {folder}: publish "
                               "sends only the store's own files; replace the link by the file (cp -L) or remove it")
        if real.is_file():
            files[p.relative_to(folder).as_posix()] = real
    return files


def export_zarr(url: str, root, staging: Path, config: str, copy: bool,
                storage_options: dict | None = None) -> Export:
    """The store's files under `data/<config>.zarr/`; local files are referenced in place unless `copy`."""
    import fsspec

    out = Export()
    prefix = f"data/{config}.zarr"
    local = local_folder(url)
    if local is not None:
        for name, p in store_files(local).items():
            rel = f"{prefix}/{name}"
            if copy:
                dst = staging / rel
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(p, dst)
                p = dst
            out.files[rel] = p
    else:
        fs, path = fsspec.core.url_to_fs(url, **(storage_options or {}))
        path = path.rstrip("/")
        for src in sorted(fs.find(path)):
            rel = f"{prefix}/{src[len(path):].lstrip('/')}"
            dst = staging / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            fs.get_file(src, str(dst))
            out.files[rel] = dst
    for s in store.splits_of(root):
        out.rows[s] = int(root[s].attrs["n_samples"])
        out.data_files[s] = prefix
    out.data_files["*"] = prefix
    return out


# --- card, preview, checks --------------------------------------------------------------------------------------------

def check_store(url: str, storage_options: dict | None = None):
    """Open a finished proui store, or raise PublishError saying what is wrong."""
    try:
        root = store.open_root(url, mode="r", storage_options=storage_options)
    except Exception as e:  # noqa: BLE001
        raise PublishError(f"cannot open store {url}: {e}") from None
    if root.attrs.get("proui_format") is None:
        raise PublishError(f"{url}: not a proui store (no proui_format attribute)")
    if (local := local_folder(url)) is not None:
        store_files(local)  # a link out of the store is refused before any of it is read
    splits = store.splits_of(root)
    if not splits:
        raise PublishError(f"{url}: the store has no split")
    for s in splits:
        done = store.finished_shards(root[s])
        if not done.all():
            raise PublishError(f"{url}: split {s} has {int((~done).sum())} unfinished shard(s) of {done.size}; "
                               "rerun the build to finish it before publishing")
    return root


def write_card(staging: Path, existing: str | None, repo_id: str, config: str, root, export: Export, fmt: str,
               preview: str | None, include_rejected: bool, license_fields: dict, statement: str,
               force: bool) -> Path:
    stats = card.store_stats(root, export.rows)
    section = card.config_section(repo_id, config, root, stats, fmt, export.data_files, export.features, preview,
                                  include_rejected, statement, license_fields)
    entry = None
    if fmt == "parquet":
        entry = {"config_name": config,
                 "data_files": [{"split": interop.hub_split(s), "path": p} for s, p in export.data_files.items()]}
    text = card.render_card(existing, repo_id, config, section, license_fields, entry, sum(export.rows.values()),
                            force)
    path = staging / "README.md"
    path.write_text(text, encoding="utf-8")
    return path


def write_preview_image(url: str, staging: Path, config: str, storage_options: dict | None = None) -> str | None:
    rel = f"images/{config}-preview.png"
    (staging / "images").mkdir(parents=True, exist_ok=True)
    try:
        write_preview(url, str(staging / rel), n=16, storage_options=storage_options)
    except (ValueError, OSError, KeyError) as e:
        log.warning("no preview image: %s", e)
        return None
    return rel


def owned_by(config: str, path: str) -> bool:
    """Whether a repository file belongs to config `config` (replaced when it is published again)."""
    return path.startswith((f"data/{config}/", f"data/{config}.zarr/")) or path == f"images/{config}-preview.png"


# --- the whole thing --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Job:
    """One publish, checked: what goes where under which license."""

    url: str
    repo_id: str
    fmt: str
    config: str
    with_heatmaps: bool
    include_rejected: bool
    force: bool
    max_file_bytes: int
    row_group_rows: int
    license_fields: dict
    statement: str
    storage_options: dict | None = None


@dataclass
class Published:
    files: dict[str, int]  # repository path -> bytes
    rows: dict[str, int]  # store split -> published rows
    url: str | None = None  # the commit, after an upload
    warnings: list[str] = field(default_factory=list)


def publish(url: str, repo_id: str, *, fmt: str = "parquet", dry_run: str | os.PathLike | None = None,
            private: bool = False, config: str | None = None, with_heatmaps: bool = False,
            include_rejected: bool = False, license_id: str | None = None, force: bool = False,
            max_file_bytes: int = DEFAULT_MAX_FILE_BYTES, row_group_rows: int = DEFAULT_ROW_GROUP_ROWS,
            storage_options: dict | None = None) -> Published:
    """Publish a store to `repo_id` on the Hub (`HF_ENDPOINT`), or only write the files into `dry_run`."""
    if not REPO_ID.match(repo_id):
        raise PublishError(f"--repo {repo_id!r}: expected ORG/NAME (letters, digits, '-', '_', '.')")
    if fmt not in ("parquet", "zarr"):
        raise PublishError(f"--format {fmt!r}: choose parquet or zarr")
    if fmt == "zarr" and (with_heatmaps or include_rejected):
        raise PublishError("--with-heatmaps and --include-rejected apply to --format parquet; the zarr store is "
                           "published whole (heatmaps and rejected rows included)")
    if max_file_bytes < 1 or row_group_rows < 1:
        raise PublishError("--max-file-size and --row-group-size must be positive")
    root = check_store(url, storage_options)
    source_name = str(root.attrs.get("source", {}).get("name", "store"))
    config = config or source_name
    if not CONFIG_NAME.match(config):
        raise PublishError(f"config name {config!r}: use letters, digits, '-' and '_' (pass --config)")
    try:
        license_fields, statement, warnings = card.resolve_license(source_name, license_id, force)
    except card.CardError as e:
        raise PublishError(str(e)) from None
    terms = card.SOURCE_TERMS.get(source_name)
    if terms is not None and terms.research_only and not private and dry_run is None:
        warnings.append(f"{source_name}'s terms are non-commercial research only and restrict redistribution; "
                        "prefer --private or a gated repository")
    job = Job(url, repo_id, fmt, config, with_heatmaps, include_rejected, force, max_file_bytes, row_group_rows,
              license_fields, statement, storage_options)
    result = _publish_dry_run(job, root, Path(dry_run)) if dry_run is not None else _publish_hub(job, root, private)
    result.warnings[:0] = warnings
    return result


def _stage(job: Job, root, staging: Path, existing_card: str | None, copy_store: bool) -> Export:
    """Write data, preview and card into `staging`; return every file to publish."""
    if job.fmt == "parquet":
        export = export_parquet(job.url, root, staging, job.config, with_heatmaps=job.with_heatmaps,
                                include_rejected=job.include_rejected, max_file_bytes=job.max_file_bytes,
                                row_group_rows=job.row_group_rows)
    else:
        export = export_zarr(job.url, root, staging, job.config, copy_store, job.storage_options)
    preview = write_preview_image(job.url, staging, job.config, job.storage_options)
    if preview:
        export.files[preview] = staging / preview
    try:
        path = write_card(staging, existing_card, job.repo_id, job.config, root, export, job.fmt, preview,
                          job.include_rejected, job.license_fields, job.statement, job.force)
    except card.CardError as e:
        raise PublishError(str(e)) from None
    export.files["README.md"] = path
    return export


def _publish_dry_run(job: Job, root, out: Path) -> Published:
    # The folder stands for the repository: this config's old files go, other configs' files and card stay.
    out.mkdir(parents=True, exist_ok=True)
    readme = out / "README.md"
    existing = readme.read_text(encoding="utf-8") if readme.is_file() else None
    for p in sorted(out.rglob("*"), reverse=True):
        if p.is_file() and owned_by(job.config, p.relative_to(out).as_posix()):
            p.unlink()
        elif p.is_dir() and not any(p.iterdir()):
            p.rmdir()
    export = _stage(job, root, out, existing, copy_store=True)
    return Published({k: v.stat().st_size for k, v in sorted(export.files.items())}, export.rows)


def find_token() -> str | None:
    """The Hugging Face token from `HF_TOKEN` or the login cache (`hf auth login`)."""
    from huggingface_hub import get_token

    return get_token()


def _publish_hub(job: Job, root, private: bool) -> Published:
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi, constants

    token = find_token()
    if not token:
        raise PublishError("no Hugging Face token: set HF_TOKEN or run `hf auth login` (or use --dry-run DIR)")
    endpoint = (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")
    repo_id = job.repo_id
    try:
        api = HfApi(endpoint=endpoint, token=token)
        api.create_repo(repo_id, repo_type="dataset", private=True if private else None, exist_ok=True)
        remote = set(api.list_repo_files(repo_id, repo_type="dataset"))
        with tempfile.TemporaryDirectory(prefix="proui-publish-") as tmp:
            staging = Path(tmp) / "repo"
            staging.mkdir()
            existing = None
            if "README.md" in remote:  # other configs' entries and sections are kept
                path = api.hf_hub_download(repo_id, "README.md", repo_type="dataset", local_dir=Path(tmp) / "remote")
                existing = Path(path).read_text(encoding="utf-8")
            export = _stage(job, root, staging, existing, copy_store=False)
            ops = [CommitOperationAdd(path_in_repo=rel, path_or_fileobj=str(p))
                   for rel, p in sorted(export.files.items())]
            stale = sorted(p for p in remote if owned_by(job.config, p) and p not in export.files)
            ops += [CommitOperationDelete(path_in_repo=p) for p in stale]
            rows = ", ".join(f"{interop.hub_split(s)}={n}" for s, n in export.rows.items())
            info = api.create_commit(repo_id, ops, repo_type="dataset",
                                     commit_message=f"proui-data publish: config {job.config} ({job.fmt}; {rows})")
            sizes = {k: v.stat().st_size for k, v in sorted(export.files.items())}
        return Published(sizes, export.rows, info.commit_url)
    except PublishError as e:
        raise PublishError(scrub(str(e), token)) from None
    except Exception as e:  # noqa: BLE001  every library error is re-raised without the token
        msg = f"publishing to {repo_id} at {endpoint} failed: {type(e).__name__}: {e}"
        raise PublishError(scrub(msg, token)) from None
