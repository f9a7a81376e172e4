"""`proui-data verify`: check every shard object of every array against the build's record of it (present,
size, sha256), then read every shard and check shapes, value ranges and landmarks."""
from __future__ import annotations

import numpy as np

from . import align, store
from .schema import FORMAT_VERSION

# A valid sample's eye centres must sit near the template: alignment put them there (12 px for the default
# template's eye distance, scaled with the store's).
EYE_TOLERANCE_PX = 12.0
LANDMARK_BOUNDS = (-64.0, 192.0)


def _check_rows(name: str, block: np.ndarray, valid: np.ndarray, rows: slice, problems: list[str],
                eyes_at: np.ndarray = align.TEMPLATE_5[:2]) -> None:
    where = f"{name}[{rows.start}:{rows.stop}]"
    if name == "landmarks":
        lm = block[valid]
        if not np.isfinite(lm).all():
            problems.append(f"{where}: non-finite landmarks in valid rows")
            return
        if lm.size and (lm.min() < LANDMARK_BOUNDS[0] or lm.max() > LANDMARK_BOUNDS[1]):
            problems.append(f"{where}: landmarks outside {LANDMARK_BOUNDS}")
        eyes = np.stack([lm[:, 36:42].mean(1), lm[:, 42:48].mean(1)], 1)
        err = np.linalg.norm(eyes - eyes_at, axis=-1).max(1) if len(lm) else np.zeros(0)
        # the tolerance grows with the template's eye distance (the fsrnet frame's faces are larger)
        tol = EYE_TOLERANCE_PX * float(np.linalg.norm(eyes_at[1] - eyes_at[0]) / align.TEMPLATE_EYE_DISTANCE)
        bad = np.flatnonzero(err > tol)
        if bad.size:
            problems.append(f"{where}: {bad.size} valid rows with eyes > {tol:.1f}px off the template")
    elif name == "transform":
        if not np.isfinite(block[valid]).all():
            problems.append(f"{where}: non-finite transform in valid rows")
    elif name == "hr":
        flat = block[valid].reshape(int(valid.sum()), int(np.prod(block.shape[1:])))
        if len(flat) and (flat.max(1) == flat.min(1)).any():
            problems.append(f"{where}: constant HR image in a valid row")
    elif name == "parsing":
        if block.size and block.max() > 10:
            problems.append(f"{where}: parsing class > 10")
    elif name == "occlusion_ratio":
        r = block[valid]
        if r.size and (~np.isfinite(r) | (r < 0) | (r > 1)).any():
            problems.append(f"{where}: occlusion ratio outside [0, 1]")


def verify_store(url: str, storage_options: dict | None = None) -> tuple[list[str], dict]:
    """Return (problems, counts). No problems means every shard object is as the build recorded it (in a store
    with content records: `counts[split]["content_hashes"]`), read back and passed the checks."""
    problems: list[str] = []
    counts: dict = {}
    try:
        root = store.open_root(url, mode="r", storage_options=storage_options)
    except Exception as e:  # noqa: BLE001 - any failure to open is damage to report
        return [f"cannot open store: {type(e).__name__}: {e}"], counts
    if root.attrs.get("fingerprint") is None and store.DETECTIONS in root.attrs:
        done = sum(len(v) for v in (root.attrs[store.DETECTIONS] or {}).values())
        return [f"unfinished: the build stopped in its face detection pass ({done} photos searched, recorded); "
                "run the same build command again to resume it"], counts
    if root.attrs.get("proui_format") != FORMAT_VERSION:
        problems.append(f"root: proui_format is {root.attrs.get('proui_format')!r}, expected {FORMAT_VERSION}")
    template = root.attrs.get("template") or {}
    eyes_at = np.asarray(template.get("points5", align.TEMPLATE_5), dtype=np.float64)[:2]  # the store's frame
    splits = store.splits_of(root)
    if not splits:
        problems.append("root: no split groups")
    for s in splits:
        g = root[s]
        n, size = g.attrs.get("n_samples"), g.attrs.get("shard_size")
        if n is None or size is None:
            problems.append(f"{s}: missing n_samples/shard_size attributes")
            continue
        done = store.finished_shards(g)
        if not done.all():
            problems.append(f"{s}: {int((~done).sum())} of {done.size} shards not finished (rerun the build)")
        names = [a for a in g.array_keys() if a not in store.BOOKKEEPING]
        for a in names:
            arr = g[a]
            if arr.shape[0] != n:
                problems.append(f"{s}/{a}: {arr.shape[0]} rows, expected {n}")
            if arr.shards is not None and arr.shards[0] != size:
                problems.append(f"{s}/{a}: shard size {arr.shards[0]} != {size}")
        hashed = store.has_digests(g)
        # first what is lost or changed, every object of every finished shard, whatever else is wrong
        damage = store.shard_damage(g) if hashed else []
        problems += [f"{s}/{d}" for d in damage]
        untrusted = {(d.array, d.shard) for d in damage}
        if not {"valid", "reject_reason"} <= set(names):
            problems.append(f"{s}: no valid/reject_reason arrays: not a proui split")
            continue
        # per shard, leaving out the damaged ones: a lost `valid` object must not read as rejected rows
        valid_all, reasons, trusted = np.zeros(n, bool), np.full(n, "", object), np.ones(n, bool)
        for k in range(done.size):
            rows = slice(*store.shard_range(k, size, n))
            if {("valid", k), ("reject_reason", k)} & untrusted:
                trusted[rows] = False
                continue
            try:
                valid_all[rows], reasons[rows] = g["valid"][rows], g["reject_reason"][rows]
            except Exception as e:  # noqa: BLE001 - damage in a store without records
                problems.append(f"{s}/valid, reject_reason shard {k}: unreadable: {type(e).__name__}: {e}")
                trusted[rows] = False
        if not hashed:
            problems += _missing_unrecorded(s, g, names, valid_all)
        if any(not str(r) for r in reasons[~valid_all & trusted]):
            problems.append(f"{s}: rejected rows without a reason")
        if any(str(r) for r in reasons[valid_all & trusted]):
            problems.append(f"{s}: valid rows with a reject reason")
        for k in range(done.size):
            start, stop = store.shard_range(k, size, n)
            valid = valid_all[start:stop]
            for a in names:
                if (a, k) in untrusted:
                    continue  # reported above; its values would only repeat it
                try:
                    block = g[a][start:stop]
                except Exception as e:  # noqa: BLE001 - a damaged shard
                    problems.append(f"{s}/{a} shard {k}: unreadable: {type(e).__name__}: {e}")
                    continue
                _check_rows(a, block, valid, slice(start, stop), problems, eyes_at)
        counts[s] = {"samples": int(n), "valid": int(valid_all.sum()), "content_hashes": hashed}
    return problems, counts


def _missing_unrecorded(split: str, group, names: list[str], valid: np.ndarray) -> list[str]:
    """In a split without content records: the objects absent where a valid row says they must be there
    (`store.expected_objects`; zarr would read them as the fill value)."""
    n, size = valid.size, group.attrs["shard_size"]
    problems = []
    for a, expected in store.expected_objects(group, names, valid, size).items():
        shards = np.flatnonzero(expected.required).tolist()
        paths = [store.shard_object(group[a], k) for k in shards]
        for k, path, got in zip(shards, paths, store.object_sizes(paths)):
            if got is None:
                start, stop = store.shard_range(k, size, n)
                problems.append(f"{split}/{a} shard {k} (rows {start}:{stop}): object {path.path} missing")
    return problems
