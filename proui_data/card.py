"""The dataset card (`README.md`) of a published store: license from the source's terms, the recipe,
counts, the reject table, occlusion statistics and a preview.

A Hub repository can hold several configs (one per published store). Each config owns a section of
the card between `<!-- proui-config NAME -->` markers and one entry of the YAML `configs` list, so
publishing a second store updates its own section and keeps the others.
"""
from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any

import numpy as np
import yaml

from . import store
from .interop import COLUMN_DOCS, hub_split


class CardError(ValueError):
    """The requested license contradicts the source's terms, or an existing card cannot be merged."""


@dataclass(frozen=True)
class Terms:
    license: str  # Hub license identifier
    license_name: str | None
    license_link: str | None
    statement: str
    research_only: bool


SOURCE_TERMS = {
    "celeba": Terms(
        "other", "celeba-research-only", "https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html",
        "The faces are derived from CelebA (Liu, Luo, Wang, Tang, ICCV 2015). CelebA is available for "
        "**non-commercial research purposes only**; its agreement forbids commercial use and further distribution of "
        "the images (https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html). This derived dataset inherits those terms: "
        "research only, non-commercial. Keep the repository private or gated to people who accepted the CelebA "
        "agreement.", True),
    "helen": Terms(
        "other", "helen-300w-research-only", "https://ibug.doc.ic.ac.uk/resources/300-W/",
        "The faces are derived from Helen (Le, Brandt, Lin, Bourdev, Huang, ECCV 2012) with the 300-W 68-point "
        "annotations (Sagonas et al., 2013), which are provided for **non-commercial research purposes only** "
        "(https://ibug.doc.ic.ac.uk/resources/300-W/, http://www.ifp.illinois.edu/~vuongle2/helen/); the photos come "
        "from Flickr under their authors' terms. This derived dataset inherits those terms: research only, "
        "non-commercial.", True),
    "demo": Terms(
        "cc0-1.0", None, None,
        "The demo photos are public-domain works: NASA's portrait of astronaut Eileen Collins (shipped by "
        "scikit-image) and the US Navy portrait of Rear Admiral Grace Hopper (shipped by matplotlib). The derived "
        "arrays are dedicated to the public domain (CC0 1.0).", False),
}
# License identifiers compatible with non-commercial research terms.
NON_COMMERCIAL = re.compile(r"^(other|cc-by-nc(-sa|-nd)?-\d\.\d)$")


def resolve_license(source_name: str, requested: str | None,
                    force: bool = False) -> tuple[dict[str, str], str, list[str]]:
    """(YAML license fields, terms statement, warnings) for a source and an optional `--license`.

    A research-only source refuses a license that allows commercial use unless `force`; a source with
    no known terms needs `--license`.
    """
    terms = SOURCE_TERMS.get(source_name)
    warnings: list[str] = []
    if terms is None:
        if not requested:
            raise CardError(f"source {source_name!r} has no known license terms: pass --license (a Hub license "
                            "identifier such as cc-by-4.0, or 'other') that matches the terms of the original images")
        fields = {"license": requested}
        statement = (f"License chosen by the publisher: `{requested}`. The terms of the original images of source "
                     f"{source_name!r} apply and are not checked by proui.")
        return fields, statement, warnings
    if requested and requested != terms.license:
        if terms.research_only and not NON_COMMERCIAL.match(requested):
            msg = (f"--license {requested} contradicts the terms of {source_name}: its images are for non-commercial "
                   f"research only ({terms.license_link}); use 'other' (the default) or a non-commercial license")
            if not force:
                raise CardError(msg + ", or --force to publish anyway")
            warnings.append(msg + " (published anyway: --force)")
        fields = {"license": requested}
    else:
        fields = {"license": terms.license}
    if fields["license"] == "other" and terms.license_name:
        fields.update(license_name=terms.license_name, license_link=terms.license_link)
    return fields, terms.statement, warnings


def public(value: Any) -> Any:
    """The value with local absolute paths reduced to their last component (a card is public)."""
    if isinstance(value, dict):
        return {k: public(v) for k, v in value.items()}
    if isinstance(value, list):
        return [public(v) for v in value]
    if isinstance(value, str) and (value.startswith(("/", "~")) or re.match(r"^[A-Za-z]:[\\/]", value)):
        return f"<local>/{PurePath(value).name}"
    return value


def split_stats(group, exported: int) -> dict[str, Any]:
    """Counts, rejects and occlusion statistics of a split group."""
    valid = group["valid"][:].astype(bool)
    reasons = Counter(str(r) for r in group["reject_reason"][:][~valid])
    out: dict[str, Any] = {"samples": int(valid.size), "valid": int(valid.sum()), "exported": exported,
                           "rejects": dict(sorted(reasons.items()))}
    names = set(group.array_keys())
    if {"occlusion_kind", "occlusion_ratio"} <= names:
        kinds = np.asarray(group["occlusion_kind"][:], dtype=object)[valid]
        ratios = group["occlusion_ratio"][:][valid]
        anchors = np.asarray(group["occlusion_anchor"][:], dtype=object)[valid] if "occlusion_anchor" in names else None
        occ = {}
        for kind in sorted(set(kinds)):
            of_kind = kinds == kind
            r = ratios[of_kind][np.isfinite(ratios[of_kind])]
            nan = float("nan")
            occ[str(kind) or "(none)"] = {
                "n": int(of_kind.sum()), "mean": float(r.mean()) if r.size else nan,
                "min": float(r.min()) if r.size else nan, "max": float(r.max()) if r.size else nan,
                "hist": np.histogram(np.clip(r, 0, 1), np.linspace(0, 1, 11))[0].tolist(),
                "anchors": {} if anchors is None else dict(sorted(Counter(str(a) for a in anchors[of_kind]).items())),
            }
        out["occlusion"] = occ
    if "landmark_source" in names:
        out["landmark_source"] = dict(sorted(Counter(str(s) for s in group["landmark_source"][:][valid]).items()))
    return out


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def config_section(repo_id: str, config: str, root, stats: dict[str, dict], fmt: str, data_files: dict[str, str],
                   features, preview: str | None, include_rejected: bool, terms_statement: str,
                   license_fields: dict) -> str:
    """The card section of one config (one store)."""
    attrs = dict(root.attrs)
    out = [f"<!-- proui-config {config} -->", f"## Config `{config}`", ""]
    if preview:
        out += [f"![preview of {config}]({preview})", "",
                "Per sample: HR with its 68 landmarks (green) and the template points (red), the LR input, the parsing "
                "map, the occluded HR, the occluded LR input and the occlusion mask.", ""]
    named = ""
    if "license_name" in license_fields:
        named = f" ({license_fields['license_name']}, {license_fields['license_link']})"
    out += ["### Terms", "", terms_statement, "", f"License field: `{license_fields['license']}`{named}", ""]
    src = public(attrs.get("source", {}))
    out += ["### Contents", "",
            f"Source `{src.get('name')}`, built with proui {attrs.get('versions', {}).get('proui', '?')}, seed "
            f"{attrs.get('seed')}, recipe fingerprint `{attrs.get('fingerprint')}`. Format: **{fmt}**.", ""]
    rows = []
    for s, c in stats.items():
        rows.append([hub_split(s), c["samples"], c["valid"], c["samples"] - c["valid"], c["exported"],
                     f"`{data_files[s]}`" if s in data_files else "(no rows: not exported)"])
    out += [_table(["split", "built", "valid", "rejected", "rows published", "files"], rows), ""]
    if fmt == "parquet":
        out += ["Only valid samples are published; rejected samples are counted below." if not include_rejected
                else "All samples are published, rejected ones included (`valid` = False, arrays zero-filled, "
                     "`reject_reason` says why).", ""]
    else:
        out += ["The zarr store is published as built: every sample, rejected ones included (`valid` = False, arrays "
                "zero-filled, `reject_reason` says why).", ""]
    rej = [[hub_split(s), reason, n] for s, c in stats.items() for reason, n in c["rejects"].items()]
    out += ["### Rejected samples", "", _table(["split", "reason", "count"], rej) if rej else "None.", ""]
    occ_rows = []
    for s, c in stats.items():
        for kind, o in c.get("occlusion", {}).items():
            anchors = ", ".join(f"{a}: {n}" for a, n in o["anchors"].items())
            occ_rows.append([hub_split(s), kind, o["n"], f"{o['mean']:.3f}", f"{o['min']:.3f}-{o['max']:.3f}",
                             " ".join(str(h) for h in o["hist"]), anchors])
    if occ_rows:
        out += ["### Occlusions", "", "Achieved occluded share of the face region per occluder kind (valid samples); "
                "histogram in bins of 10 % from 0-10 % to 90-100 %.", "",
                _table(["split", "kind", "n", "mean ratio", "range", "histogram", "anchors"], occ_rows), ""]
    lm_rows = [[hub_split(s), k, n] for s, c in stats.items() for k, n in c.get("landmark_source", {}).items()]
    if lm_rows:
        out += ["### Landmark sources", "", _table(["split", "landmark_source", "count"], lm_rows), ""]
    if features is not None:
        frows = [[f"`{name}`", f"`{_feature_repr(f)}`", COLUMN_DOCS.get(name, "")] for name, f in features.items()]
        out += ["### Columns", "", _table(["column", "feature", "meaning"], frows), ""]
        if attrs.get("attribute_names"):
            out += ["Attribute order: " + ", ".join(attrs["attribute_names"]) + ".", ""]
    out += ["### Recipe", "", "```json", _compact_json(public(attrs.get("recipe", {}))), "```",
            "", "Source description:", "", "```json", _compact_json(src), "```", "",
            "Versions: " + ", ".join(f"{k} {v}" for k, v in attrs.get("versions", {}).items()) + ".", ""]
    out += ["### Loading", ""]
    if fmt == "parquet":
        out += ["```python", "from datasets import load_dataset", "",
                f"ds = load_dataset(\"{repo_id}\", \"{config}\")", "```", ""]
    else:
        out += ["```python", "import zarr  # zarr-python 3, with huggingface_hub for the hf:// protocol", "",
                f"root = zarr.open_group(\"hf://datasets/{repo_id}/{data_files.get('*', '')}\", mode=\"r\")",
                "```", "", "Every array is sharded along the sample axis with the same shard size; arrays carry "
                "`dimension_names`, so `xarray.open_zarr(..., group=\"train\")` works too.", ""]
    out += [f"<!-- /proui-config {config} -->"]
    return "\n".join(out)


def _compact_json(d: dict) -> str:
    """One line per top-level key."""
    items = [f"  {json.dumps(k)}: {json.dumps(v, sort_keys=True)}" for k, v in sorted(d.items())]
    return "{\n" + ",\n".join(items) + "\n}"


def _feature_repr(f) -> str:
    name = type(f).__name__
    if hasattr(f, "shape"):
        return f"{name}({tuple(f.shape)}, {f.dtype})"
    if name == "Value":
        return f"Value({f.dtype})"
    if name == "List":
        return f"List({f.feature.dtype}, length={f.length})"
    return name


def split_front_matter(text: str) -> tuple[dict, str]:
    """(YAML metadata, body) of a card."""
    m = re.match(r"^---\s*\n(.*?)\n---\s*\n?(.*)$", text, re.S)
    if not m:
        return {}, text
    try:
        meta = yaml.safe_load(m.group(1)) or {}
    except yaml.YAMLError as e:
        raise CardError(f"the existing README.md has invalid YAML metadata: {e}") from None
    if not isinstance(meta, dict):
        raise CardError("the existing README.md metadata is not a mapping")
    return meta, m.group(2)


def render_card(existing: str | None, repo_id: str, config: str, section: str, license_fields: dict,
                config_entry: dict | None, n_rows: int, force: bool = False) -> str:
    """The full README.md: the existing card (if any) with this config's YAML entry and section replaced."""
    meta, body = split_front_matter(existing) if existing else ({}, "")
    old = (meta.get("license"), meta.get("license_name"))
    new = (license_fields["license"], license_fields.get("license_name"))
    if old[0] and old != new and not force:
        raise CardError(f"the repository's card declares license {'/'.join(filter(None, old))}, this store "
                        f"{'/'.join(filter(None, new))}; one repository has one license field: publish to another "
                        "repository, or --force to replace it")
    for k in ("license", "license_name", "license_link"):
        meta.pop(k, None)
    meta = {**license_fields, **meta}
    meta.setdefault("pretty_name", repo_id.split("/")[-1])
    meta.setdefault("task_categories", ["image-to-image"])
    meta.setdefault("tags", ["faces", "face-hallucination", "super-resolution", "occlusion", "proui"])
    configs = [c for c in meta.get("configs", []) if c.get("config_name") != config]
    if config_entry is not None:
        configs.append(config_entry)
    configs.sort(key=lambda c: c["config_name"])
    if configs:
        if not any(c.get("default") for c in configs):
            configs[0]["default"] = True
        meta["configs"] = configs
        meta.pop("viewer", None)
    else:
        meta.pop("configs", None)
        meta["viewer"] = False  # zarr stores only: nothing the viewer can read
    # The largest config decides (other configs' counts are not re-read).
    sizes = [c for c in meta.get("size_categories", []) if c in SIZE_CATEGORIES] + [_size_category(n_rows)]
    meta["size_categories"] = [max(sizes, key=SIZE_CATEGORIES.index)]

    name = re.escape(config)
    pattern = re.compile(rf"<!-- proui-config {name} -->.*?<!-- /proui-config {name} -->", re.S)
    if not body.strip():
        body = (f"# {repo_id.split('/')[-1]}\n\n"
                "Aligned 128x128 faces for occluded face hallucination (Pro-UIGAN, arXiv 2108.00602): 16x16 LR "
                "inputs, clean and occluded, 68-point landmarks, parsing maps and synthetic occlusion masks, built "
                "with `proui-data build` and published with `proui-data publish`. Each config is one store; the "
                "terms of each config's source images apply to it.\n\n")
    if pattern.search(body):
        body = pattern.sub(lambda _: section, body)
    else:
        body = body.rstrip("\n") + "\n\n" + section + "\n"
    head = yaml.safe_dump(meta, sort_keys=False, allow_unicode=True, width=120)
    return f"---\n{head}---\n\n{body.lstrip()}"


SIZE_CATEGORIES = ["n<1K", "1K<n<10K", "10K<n<100K", "100K<n<1M", "1M<n<10M"]


def _size_category(n: int) -> str:
    for i, limit in enumerate((1_000, 10_000, 100_000, 1_000_000)):
        if n < limit:
            return SIZE_CATEGORIES[i]
    return SIZE_CATEGORIES[-1]


def store_stats(root, exported: dict[str, int]) -> dict[str, dict]:
    return {s: split_stats(root[s], exported.get(s, 0)) for s in store.splits_of(root)}
