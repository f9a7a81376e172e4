"""The priors step of the build: landmark heatmaps and a parsing map for an aligned sample."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from .heatmaps import render_heatmaps
from .parsing import parsing_from_helen_labels, parsing_from_landmarks
from .recipe import PriorsRecipe
from .sources import Item

log = logging.getLogger(__name__)


def add_priors(row: dict[str, Any], item: Item, cfg: PriorsRecipe) -> None:
    """Fill `heatmaps`, `parsing` and `parsing_source` of a valid row (landmarks and transform set)."""
    landmarks = row["landmarks"]
    row["heatmaps"] = render_heatmaps(landmarks, cfg.heatmap_size, cfg.heatmap_sigma)
    if not cfg.parsing:
        return
    if item.labels:
        try:
            row["parsing"] = parsing_from_helen_labels(Path(item.labels), Path(item.labels).name,
                                                       np.asarray(row["transform"], np.float64))
            row["parsing_source"] = "helen-labels"
            return
        except (FileNotFoundError, ValueError) as e:
            # Damaged label files should not cost the sample: fall back to landmark polygons, and say so.
            log.warning("%s: Helen labels unusable (%s); parsing from landmarks", item.key, e)
            row["parsing_source"] = "landmarks(labels-unusable)"
            row["parsing"] = parsing_from_landmarks(landmarks)
            return
    row["parsing"] = parsing_from_landmarks(landmarks)
    row["parsing_source"] = "landmarks"
