"""The build: source -> decode -> landmarks -> align -> degrade -> priors -> occlude -> write shard.

`process_item` is the per-sample flow and never raises for bad input: a sample that cannot be made is a
row with `valid=False` and a reject reason. `build_shard` owns one shard of one split (the Dask task).
With `detect.faces = "all"` the plan first runs a detection pass over the photos (`detect_photos`, recorded
in the store) and makes one sample per face (`expand_faces`). `build` plans the shards, skips finished ones
(resume), runs the rest on a Dask cluster and summarises.
Every random choice is seeded from (recipe seed, sample key), never from order or worker.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
from tqdm import tqdm

from . import align, store
from .decode import DecodeError, Decoded, decode_image
from .degrade import degrade
from .detect import Box, Located, NoFace, landmark_source, locate_face, locate_faces
from .occlusion import Occlusion, OcclusionConfig, occlude
from .priors import add_priors
from .recipe import Recipe
from .search import (detect_scale, landmark_backend, search_decode, search_options,  # noqa: F401 - re-exported
                     search_photo, search_reduction)
from .schema import ALL_SPLITS, HR_SIZE, Field, core_fields, occlusion_fields, prior_fields
from .sources import Item, Source
from .sources.base import name_key, skip_summary

log = logging.getLogger(__name__)


def fields_for(recipe: Recipe, source: Source) -> list[Field]:
    """The arrays a build with this recipe writes."""
    fields = core_fields(len(source.attribute_names))
    if recipe.priors.enabled:
        fields += prior_fields(recipe.priors.heatmap_size)
    if recipe.occlusion is not None:
        fields += occlusion_fields()
    return fields


def sample_rng(seed: int, key: str, stream: str) -> np.random.Generator:
    """A generator that depends only on (seed, sample key, purpose)."""
    digest = hashlib.blake2b(f"{key}\0{stream}".encode(), digest_size=8).digest()
    return np.random.default_rng([seed, int.from_bytes(digest, "little")])


def prior_box(source: Source, recipe: Recipe, scale: float) -> tuple | None:
    """The source's expected face box in decoded-image pixels, when the recipe allows it."""
    if not (recipe.detect.prior_box and source.prior_box):
        return None
    return tuple(np.asarray(source.prior_box) * scale)


def _reject(row: dict[str, Any], reason: str) -> dict[str, Any]:
    row["valid"] = False
    row["reject_reason"] = reason
    return row


def _scaled(x: np.ndarray | None, s: float) -> np.ndarray | None:
    return None if x is None else np.asarray(x, dtype=np.float64) * s


def all_faces(recipe: Recipe) -> bool:
    """Whether every detected face of a photo is a sample (`detect.faces = "all"`), not only the largest."""
    return recipe.detect.faces == "all"


def uses_detector(item: Item, recipe: Recipe) -> bool:
    """Whether the sample's landmarks come from the detector chain (not from its annotation)."""
    lm = item.landmarks
    annotated = lm is not None and np.asarray(lm).shape[0] in (5, 68) and np.isfinite(lm).all()
    return recipe.detect.landmarks in ("dlib", "face-alignment") or (recipe.detect.landmarks == "auto" and not annotated)


def find_landmarks(rgb: np.ndarray, s: float, item: Item, source: Source, recipe: Recipe,
                   located: Located | NoFace | None) -> tuple[np.ndarray, np.ndarray, str]:
    """(68 points, 5 alignment points, landmark_source) in decoded-image pixels: the annotation when the recipe
    takes it, else the detector chain; raises NoFace with the reject reason."""
    det = recipe.detect
    backend = landmark_backend(recipe)
    annotated = _scaled(item.landmarks, s)
    if annotated is not None and (annotated.shape[0] not in (5, 68) or not np.isfinite(annotated).all()):
        annotated = None
    use_annotation = det.landmarks in ("auto", "annotation") and annotated is not None
    if det.landmarks == "annotation" and annotated is None:
        raise NoFace("annotation_missing")
    if use_annotation and annotated.shape[0] == 68:
        return annotated, align.landmarks68_to_5(annotated), "annotation"
    if use_annotation:
        # 5 points align the face; the 68 come from the predictor in the template's face box.
        m = align.similarity_transform(annotated, align.TEMPLATE_5)  # the predictor's box is in this frame
        box_src = align.apply_transform(np.linalg.inv(np.vstack([m, [0, 0, 1]]))[:2],
                                        np.array(align.TEMPLATE_BOX).reshape(2, 2))
        found = locate_face(rgb, given_box=tuple(box_src.ravel()), backend=backend)
        return found.landmarks, annotated, "annotation5+" + ("fan" if backend == "face-alignment" else "dlib")
    if item.face_box is not None:  # one face of the detection pass: its 68 points at full resolution
        if located is None:
            located = locate_face(rgb, given_box=item.face_box, backend=backend)
        return located.landmarks, align.landmarks68_to_5(located.landmarks), landmark_source(backend, item.face_stage)
    if item.face_stage == NO_FACE:
        raise NoFace("no_face")  # the build's detection pass found none: not searched again
    if located is None:
        located = locate_face(rgb, prior_box=prior_box(source, recipe, s), backend=backend,
                              scale=detect_scale(recipe), **search_options(recipe))
    if isinstance(located, NoFace):
        raise located
    return located.landmarks, align.landmarks68_to_5(located.landmarks), located.source


Photo = tuple[bytes, Decoded]  # a sample's file as read, and its full decode


def read_photo(source: Source, item: Item, recipe: Recipe) -> Photo:
    """The sample's bytes and their decode (decode.max_pixels, decode.max_side). Raises DecodeError, OSError."""
    data = source.read(item)
    return data, decode_image(data, recipe.decode.max_pixels, recipe.decode.max_side)


class LastPhoto:
    """`read_photo` that keeps the last photo: the faces of a photo are consecutive rows (`expand_faces`, which
    names the photo in `Item.photo_key`), which would each read and decode it again. A failed read is not kept (it
    raises again for the next row)."""

    def __init__(self, source: Source, recipe: Recipe):
        self.source, self.recipe = source, recipe
        self.ref: str | None = None
        self.photo: Photo | None = None

    def __call__(self, item: Item) -> Photo:
        ref = item.photo  # not path or index: a source may read several photos from one file
        if ref != self.ref:
            self.ref = None
            self.photo = read_photo(self.source, item, self.recipe)
            self.ref = ref
        return self.photo


def process_item(item: Item, source: Source, recipe: Recipe, fields: list[Field],
                 located: Located | NoFace | None = None,
                 read: Callable[[Item], Photo] | None = None) -> dict[str, Any]:
    """One sample through the whole flow; returns one value per field (see module docstring).

    `located`: the detector's result for this sample when the caller already ran it in a batch. `read`: how the
    sample's photo is read and decoded (default `read_photo`; a shard passes a `LastPhoto`).
    """
    row: dict[str, Any] = {f.name: f.empty(1)[0] for f in fields}
    row["key"] = item.key
    row["identity"] = item.identity
    if item.attributes is not None and "attributes" in row:
        row["attributes"] = item.attributes

    # decode
    try:
        data, decoded = read(item) if read is not None else read_photo(source, item, recipe)
        if located is None and searches_bytes(item, recipe):
            item = with_largest_face(item, data, source, recipe, decoded)
    except DecodeError as e:
        return _reject(row, f"decode:{e.reason}")
    except OSError as e:
        return _reject(row, f"read_error:{type(e).__name__}")
    rgb, s = decoded.rgb, decoded.scale

    # landmarks (in decoded-image pixels)
    det = recipe.detect
    try:
        landmarks68, points5, lm_source = find_landmarks(rgb, s, item, source, recipe, located)
    except NoFace as e:
        return _reject(row, str(e))

    # in decoded px: a photo reduced to decode.max_side gives its targets from those pixels, so the floor (a target
    # enlarged at most 1 / MIN_TARGET_SCALE) holds there, not in the larger source
    eye_distance = float(np.linalg.norm(points5[1] - points5[0]))
    if eye_distance < det.min_eye_distance:
        return _reject(row, "face_too_small")

    # align
    try:
        m = align.similarity_transform(points5, align.template_points(recipe.align.template))
    except ValueError:
        return _reject(row, "degenerate_landmarks")
    hr = align.warp_to_template(rgb, m, border=recipe.align.border)
    lm_hr = align.apply_transform(m, landmarks68).astype(np.float32)

    # degrade
    lr = degrade(hr, recipe.degrade, sample_rng(recipe.seed, item.key, "degrade"))

    row.update(
        hr=hr,
        lr=lr,
        landmarks=lm_hr,
        transform=align.compose(m, np.diag([s, s, 1.0])[:2]).astype(np.float32),
        landmark_source=lm_source,
        padded=np.float32(align.padded_fraction(m, rgb.shape[:2])),
        valid=True,
    )

    # priors
    if recipe.priors.enabled:
        add_priors(row, item, recipe.priors)

    # occlude: the clean hr/lr/landmarks/parsing stay the targets; the occluded face is degraded exactly
    # like the clean one (same degradation draws).
    if recipe.occlusion is not None:
        add_occlusion(row, item, recipe)
    return row


def add_occlusion(row: dict[str, Any], item: Item, recipe: Recipe) -> None:
    """Fill the occlusion fields of a valid row from its clean hr and landmarks."""
    occ = occlude_sample(row["hr"], row["landmarks"], recipe, item.key, item.variant)
    row.update(
        lr_occluded=degrade(occ.hr_occluded, recipe.degrade, sample_rng(recipe.seed, item.key, "degrade")),
        occlusion_mask=occ.mask,
        occlusion_kind=occ.kind,
        occlusion_anchor=occ.anchor,
        occlusion_ratio=np.float32(occ.ratio),
        occlusion_variant=item.variant,
    )


def occlude_sample(hr: np.ndarray, landmarks: np.ndarray, recipe: Recipe, key: str, variant: int = 0) -> Occlusion:
    """The sample's occlusion: a function of (hr, landmarks, recipe, occlusion seed, key, variant) only."""
    cfg = recipe.occlusion if recipe.occlusion is not None else OcclusionConfig()
    stream = "occlusion" if variant == 0 else f"occlusion#{variant}"  # variant 0 = the single-variant build
    return occlude(hr, landmarks, cfg, sample_rng(recipe.occlusion_seed, key, stream))


def build_shard(source: Source, items: list[Item], recipe: Recipe, url: str, split: str, k: int,
                storage_options: dict | None = None) -> dict[str, Any]:
    """The unit of work: make every sample of shard k and write the shard once."""
    t0 = time.perf_counter()
    fields = fields_for(recipe, source)
    located = batch_locate(source, items, recipe) if landmark_backend(recipe) == "face-alignment" else {}
    read = LastPhoto(source, recipe)
    rows: list[dict[str, Any]] = []
    for i, it in enumerate(items):
        prev = rows[-1] if rows else None
        if it.variant > 0 and prev is not None and prev["key"] == it.key:
            # Another occlusion of the face just made: reuse its clean arrays, draw a new occlusion.
            row = dict(prev)
            if row["valid"]:
                add_occlusion(row, it, recipe)
            rows.append(row)
        else:
            rows.append(process_item(it, source, recipe, fields, located.get(i), read))
    block = {}
    for f in fields:
        b = f.empty(len(rows))
        for i, r in enumerate(rows):
            b[i] = r[f.name]
        block[f.name] = b
    group = store.open_root(url, mode="r+", storage_options=storage_options)[split]
    store.write_shard(group, fields, k, block)
    reasons = Counter(r["reject_reason"] for r in rows if not r["valid"])
    return {"split": split, "shard": k, "n": len(rows), "valid": sum(bool(r["valid"]) for r in rows),
            "rejects": dict(reasons), "seconds": time.perf_counter() - t0}


def batch_locate(source: Source, items: list[Item], recipe: Recipe) -> dict[int, Located | NoFace]:
    """Detector results for a shard's samples in one batched landmark call (the FAN backend batches its
    forward passes). Images are decoded here and again in `process_item`: decoding is < 1 ms, the network is
    the cost."""
    want, images, boxes, given, scales = [], [], [], [], []
    for i, it in enumerate(items):
        if it.variant > 0 or not uses_detector(it, recipe) or it.face_stage == NO_FACE:
            continue
        try:
            d = decode_image(source.read(it), recipe.decode.max_pixels, recipe.decode.max_side)
        except (DecodeError, OSError):
            continue  # process_item records the reason
        want.append(i)
        images.append(d.rgb)
        boxes.append(prior_box(source, recipe, d.scale))
        given.append(it.face_box)
        scales.append(detect_scale(recipe))
    if not images:
        return {}
    try:
        found = locate_faces(images, prior_boxes=boxes, given_boxes=given, backend=landmark_backend(recipe),
                             scales=scales, **search_options(recipe))
    except NoFace as e:  # one faceless image raises rather than returning its NoFace
        found = [e]
    return dict(zip(want, found))


# A detection pass records what it found in the store this often, so a killed pass resumes where it was.
CHECKPOINT_SECONDS = 60.0
DETECTIONS = store.DETECTIONS
NO_FACE = "none"  # the stage recorded for a photo where the pass found no face
PhotoFaces = dict[str, Any] | None


def searches_bytes(item: Item, recipe: Recipe) -> bool:
    """Whether a largest-face build finds this sample's face with `search_photo` (the BlazeFace search, which
    decodes the photo reduced) rather than on the decoded photo."""
    return (recipe.detect.search == "blazeface" and item.face_box is None and not item.face_stage
            and uses_detector(item, recipe))


def without_face(source: Source, recipe: Recipe, s: float) -> tuple[Box | None, str]:
    """(box, stage) for a photo where the detector chain finds no face: the source's prior box, when the recipe
    takes it, in a decode of scale `s`; else (None, NO_FACE)."""
    box = prior_box(source, recipe, s)
    return (box, "prior-box") if box is not None else (None, NO_FACE)


def with_largest_face(item: Item, data: bytes, source: Source, recipe: Recipe, full: Decoded | None = None) -> Item:
    """The item with its photo's largest face box (or `without_face`'s), found as the detection pass of a
    `detect.faces = "all"` build finds it: both builds predict a photo's largest face in the same box. `full`: the
    photo decoded in full, when the caller has it."""
    found, _, s = search_photo(data, recipe, full)
    box, stage = (found.boxes[0], found.stage) if found is not None else without_face(source, recipe, s)
    return dataclasses.replace(item, face_box=box, face_stage=stage)


def detect_photo(source: Source, item: Item, recipe: Recipe) -> PhotoFaces:
    """One photo's entry of the detection pass (see DETECTIONS): the faces kept, largest first; the source's
    prior box, when the recipe takes it, if none is found; no boxes (NO_FACE) for a photo without a face."""
    try:
        found, boxes, s = search_photo(source.read(item), recipe)
    except (DecodeError, OSError):
        return None  # process_item decodes it again and records the reason
    if found is not None:
        stage = found.stage
    else:
        box, stage = without_face(source, recipe, s)
        boxes = [box] if box is not None else []
    # floats round-trip exactly through JSON: a resumed build predicts in the very same boxes
    return {"stage": stage, "boxes": [[float(v) for v in b] for b in boxes]}


def detect_photos(source: Source, items: list[Item], recipe: Recipe, threads: int,
                  recorded: dict[str, PhotoFaces] | None = None, progress: bool = False,
                  checkpoint: Callable[[dict[str, PhotoFaces]], None] | None = None,
                  every: float | None = None) -> dict[str, PhotoFaces]:
    """The detection pass over the photos whose landmarks come from the detector: entries already `recorded`
    are reused, the others found now on `threads` threads (dlib's HOG releases the GIL), with a progress bar
    when `progress`; `checkpoint` is handed the entries found so far every `every` seconds (CHECKPOINT_SECONDS)."""
    every = CHECKPOINT_SECONDS if every is None else every
    recorded = recorded or {}
    photos = [it for it in items if uses_detector(it, recipe)]
    todo = [it for it in photos if it.key not in recorded]
    found: dict[str, PhotoFaces] = {}
    if todo:
        log.info("detecting faces in %d photos on %d threads", len(todo), threads)
        pool = ThreadPoolExecutor(max(1, threads))
        bar = tqdm(total=len(todo), unit="photo", desc="detecting faces", disable=not progress)

        def one(it: Item) -> PhotoFaces:
            entry = detect_photo(source, it, recipe)
            bar.update()
            return entry

        last, saved = time.monotonic(), 0
        try:
            for it, entry in zip(todo, pool.map(one, todo)):
                found[it.key] = entry
                if checkpoint is not None and time.monotonic() - last >= every:
                    checkpoint(found)
                    last, saved = time.monotonic(), len(found)
        except BaseException:  # Ctrl-C or a failing photo source: keep what was found, drop what was queued
            if checkpoint is not None and len(found) > saved:
                checkpoint(found)
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            bar.close()
    return {it.key: recorded[it.key] if it.key in recorded else found[it.key] for it in photos}


def expand_faces(items: list[Item], found: dict[str, PhotoFaces]) -> list[Item]:
    """One item per detected face, largest first: `<key>#<k>`, or `<key>` when the photo has exactly one face
    (so single-face keys, and their seeds, do not change); a photo without faces stays one item (its row is
    rejected `no_face`; one that did not decode keeps its item, and process_item says why)."""
    out: list[Item] = []
    for it in items:
        entry = found.get(it.key)
        boxes = entry["boxes"] if entry else []
        if entry is None:
            out.append(it)
        elif len(boxes) <= 1:
            out.append(dataclasses.replace(it, face_box=tuple(boxes[0]) if boxes else None, face_stage=entry["stage"]))
        else:
            out += [dataclasses.replace(it, key=f"{it.key}#{k}", face_box=tuple(b), face_stage=entry["stage"],
                                        photo_key=it.key) for k, b in enumerate(boxes)]
    return out


def default_detect_threads() -> int:
    return min(4, os.cpu_count() or 1)


@dataclass
class Plan:
    url: str
    splits: dict[str, list[Item]]
    recipe: Recipe
    source: Source
    fields: list[Field]
    fingerprint: str
    todo: list[tuple[str, int]] = field(default_factory=list)
    skipped: int = 0
    damaged: list[str] = field(default_factory=list)  # finished shards found damaged, rewritten: "split/damage"
    shard_sizes: dict[str, int] = field(default_factory=dict)  # per split: the recipe's, or the "auto" choice


def fingerprint(recipe: Recipe, source: Source, splits: dict[str, list[Item]]) -> str:
    """What makes two builds the same store: recipe, source and the exact sample keys."""
    h = hashlib.sha256(json.dumps([recipe.to_dict(), source.describe()], sort_keys=True, default=str).encode())
    for s in sorted(splits):
        h.update(s.encode())
        for it in splits[s]:
            h.update(b"\0" + it.key.encode() + (b"#%d" % it.variant if it.variant else b""))
            if it.face_box is not None:  # a detected face: the box its landmarks are predicted in
                h.update(json.dumps([it.face_stage, list(it.face_box)]).encode())
    return h.hexdigest()[:16]


class StoreMismatch(RuntimeError):
    pass


def plan_build(source: Source, recipe: Recipe, url: str, split: str = ALL_SPLITS, limit: int | None = None,
               overwrite: bool = False, storage_options: dict | None = None,
               detect_threads: int | None = None, progress: bool = False, repair: bool = False) -> Plan:
    """Enumerate samples, create or reopen the store, and list the shards still to write: the unfinished ones
    and the finished ones whose objects are not as recorded (`store.shard_damage`: missing or of another size;
    with `repair` also changed bytes, reading every object).

    `limit` counts photos (before a detect.faces = "all" build makes one sample per face); `detect_threads`:
    threads of that build's detection pass (default `default_detect_threads()`), shown as a progress bar when
    `progress`.
    """
    names = source.splits() if split == ALL_SPLITS else [split]
    if split != ALL_SPLITS and split not in source.splits():
        raise ValueError(f"split {split!r} not in this source (it has {source.splits()})")
    splits = {s: source.items(s)[:limit] if limit else source.items(s) for s in names}
    # keys are stored text: a file name that is not UTF-8 (helen; folder escapes its own) gets its escaped key
    splits = {s: [it if (k := name_key(it.key)) == it.key else dataclasses.replace(it, key=k) for it in items]
              for s, items in splits.items()}
    splits = {s: v for s, v in splits.items() if v}
    root = None
    if not overwrite:
        try:
            root = store.open_root(url, mode="r+", storage_options=storage_options)
        except (FileNotFoundError, KeyError, ValueError):
            root = None
    detections = None
    if all_faces(recipe):
        root, recorded = detection_store(root, url, recipe, source, overwrite, storage_options)
        threads = default_detect_threads() if detect_threads is None else detect_threads
        detections = {}

        def record(s: str, found: dict[str, PhotoFaces]) -> None:
            root.attrs[DETECTIONS] = {**recorded, **detections, s: {**recorded.get(s, {}), **found}}

        for s, items in splits.items():
            detections[s] = detect_photos(source, items, recipe, threads, recorded.get(s), progress,
                                          checkpoint=lambda found, s=s: record(s, found))
        splits = {s: expand_faces(items, detections[s]) for s, items in splits.items()}
    k = recipe.occlusion.variants if recipe.occlusion is not None else 1
    if k > 1:  # K consecutive rows per face, one per occlusion variant
        splits = {s: [dataclasses.replace(it, variant=v) for it in items for v in range(k)]
                  for s, items in splits.items()}
    if not splits:
        raise ValueError("nothing to build: the chosen split(s) have no samples")
    for s_name, items in splits.items():
        counts = Counter((it.key, it.variant) for it in items)
        twice = sorted(k for (k, _), c in counts.items() if c > 1)
        if twice:  # e.g. a file literally named `x.jpg#1` beside a photo x.jpg with two faces
            raise ValueError(f"split {s_name!r}: {len(twice)} sample key(s) occur twice, e.g. {twice[0]!r}: a file is "
                             "named like another photo's face key '<file>#<k>'; rename it")
    fields = fields_for(recipe, source)
    fp = fingerprint(recipe, source, splits)
    plan = Plan(url, splits, recipe, source, fields, fp)
    attrs = store.root_attributes(recipe.to_dict(), source.describe(), recipe.seed, fp,
                                  {"size": HR_SIZE, "name": recipe.align.template,
                                   "points5": align.template_points(recipe.align.template).tolist(),
                                   "border": recipe.align.border})
    if detections is not None:
        attrs[DETECTIONS] = detections
    if root is not None and root.attrs.get("fingerprint") not in (None, fp):
        raise StoreMismatch(
            f"{url} holds a build of a different recipe, source or sample list "
            f"(fingerprint {root.attrs.get('fingerprint')} != {fp}); use --overwrite to start again "
            "or choose another --out")
    if root is None:
        root = store.open_root(url, mode="w" if overwrite else "a", storage_options=storage_options)
    skipped = source.skipped()
    if skipped is not None:  # not in the fingerprint: files that are not samples do not change the store
        attrs["skipped"] = skip_summary(skipped, sum(len(source.items(s)) for s in source.splits()))
    root.attrs.update(attrs)
    st = recipe.store
    for s, items in splits.items():
        size, chunk = (store.auto_layout(len(items), st.chunk_size) if st.shard_size == "auto"
                       else (st.shard_size, st.chunk_size))
        plan.shard_sizes[s] = size
        group = store.create_split(root, s, len(items), fields, size, chunk, st.zstd_level)
        done = store.finished_shards(group)
        damage = store.shard_damage(group, deep=repair) if done.any() else []
        plan.damaged += [f"{s}/{d}" for d in damage]
        damaged = {d.shard for d in damage}
        for k in range(len(done)):
            if done[k] and k not in damaged:
                plan.skipped += 1
            else:
                plan.todo.append((s, k))
    if attrs.get("source", {}).get("attribute_names") is None and source.attribute_names:
        root.attrs["attribute_names"] = list(source.attribute_names)
    return plan


def same_build_kind(root: Any, recipe: Recipe, source: Source) -> bool:
    """Whether the store was made (or its detection pass started) with this recipe from this source."""
    return (json.dumps([root.attrs.get("recipe"), root.attrs.get("source")], sort_keys=True, default=str)
            == json.dumps([recipe.to_dict(), source.describe()], sort_keys=True, default=str))


def detection_store(root: Any, url: str, recipe: Recipe, source: Source, overwrite: bool,
                    storage_options: dict | None) -> tuple[Any, dict[str, dict[str, PhotoFaces]]]:
    """(the store a detection pass records into as it goes, what it already records): the existing one (`root`,
    None when there is none or `overwrite`) with its recorded pass, so that a resumed build expands to exactly
    the rows it started with without detecting again; or a new one, stamped with the recipe and source, with
    none. A store built with another recipe or source is refused now, not after the pass."""
    if root is None:
        root = store.open_root(url, mode="w" if overwrite else "a", storage_options=storage_options)
    if not same_build_kind(root, recipe, source):
        if root.attrs.get("fingerprint") is not None:
            raise StoreMismatch(f"{url} holds a build of a different recipe or source (fingerprint "
                                f"{root.attrs['fingerprint']}); use --overwrite to start again or choose another --out")
        # new, or a detection pass of another recipe that never built: nothing of it applies
        root.attrs.update({"recipe": recipe.to_dict(), "source": source.describe(), DETECTIONS: {}})
    return root, dict(root.attrs.get(DETECTIONS) or {})


def shard_items(plan: Plan, s: str, k: int) -> list[Item]:
    size = plan.shard_sizes.get(s) or plan.recipe.store.shard_size
    return plan.splits[s][k * size:(k + 1) * size]


def summarize(url: str, storage_options: dict | None = None) -> dict[str, Any]:
    """Counts per split and reject reasons, read back from the store."""
    root = store.open_root(url, mode="r", storage_options=storage_options)
    out = {}
    for s in store.splits_of(root):
        g = root[s]
        valid = g["valid"][:]
        reasons = Counter(str(r) for r in g["reject_reason"][:][~valid])
        done = store.finished_shards(g)
        out[s] = {"samples": int(valid.size), "valid": int(valid.sum()), "rejects": dict(sorted(reasons.items())),
                  "shards": int(done.size), "shards_done": int(done.sum())}
    return out
