"""What `occlude` draws from: `OcclusionConfig`, the recipe's `[occlusion]` table as a frozen dataclass.

Tables are read by `proui_data.tables.build_dataclass`, like every other recipe section: unknown keys and
wrong types are errors that name the key. `__post_init__` checks only what a type cannot say (ranges, sums),
so every config in hand is valid and nothing is parsed again per sample.
"""
from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from ..schema import HR_SIZE
from ..tables import build_dataclass


class _Weights(Mapping[str, float]):
    """Name -> weight, one field per name; a name a table leaves out weighs 0.

    A mapping, so `cfg.kinds["walk"]` and `dict(cfg.kinds)` read like the table.
    """

    table: ClassVar[str]  # the config key of this table, for messages

    def __getitem__(self, name: str) -> float:
        if name not in self._names():
            raise KeyError(name)
        return getattr(self, name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())

    def __len__(self) -> int:
        return len(self._names())

    def __hash__(self) -> int:  # Mapping sets __hash__ = None; these are frozen
        return hash(tuple(self.items()))

    def _names(self) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(self))  # type: ignore[arg-type]

    def __post_init__(self) -> None:
        w = list(self.values())
        if not all(math.isfinite(v) and v >= 0 for v in w) or sum(w) <= 0:
            raise ValueError(f"{self.table}: weights must be finite and >= 0 with a positive sum, got {dict(self)}")


@dataclass(frozen=True, eq=False)  # eq=False: Mapping's __eq__ (equal to a dict with the same items)
class KindWeights(_Weights):
    table: ClassVar[str] = "kinds"
    block: float = 0.0
    stroke: float = 0.0
    walk: float = 0.0
    shape: float = 0.0
    object: float = 0.0


@dataclass(frozen=True, eq=False)
class AnchorWeights(_Weights):
    table: ClassVar[str] = "anchors"
    random: float = 0.0
    eyes: float = 0.0
    nose: float = 0.0
    mouth: float = 0.0


KINDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(KindWeights))
ANCHORS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(AnchorWeights))


@dataclass(frozen=True)
class RatioDist:
    """Distribution of the target occlusion ratio (fraction of the face region). low == high: a fixed target."""

    dist: str = "uniform"
    low: float = 0.1
    high: float = 0.5

    def __post_init__(self) -> None:
        if self.dist != "uniform":
            raise ValueError(
                f"ratio.dist: only 'uniform' is supported (low == high for a fixed target), got {self.dist!r}"
            )
        if not 0.0 < self.low <= self.high <= 1.0:
            raise ValueError(f"ratio: need 0 < low <= high <= 1, got low={self.low}, high={self.high}")

    def sample(self, rng: np.random.Generator) -> float:
        return float(rng.uniform(self.low, self.high)) if self.high > self.low else float(self.low)


@dataclass(frozen=True)
class OcclusionConfig:
    """What `occlude` draws from. Read a recipe table with `from_dict`; `to_dict` gives it back."""

    kinds: KindWeights = field(default_factory=lambda: KindWeights(1.0, 1.0, 1.0, 1.0, 1.0))  # equal weights
    ratio: RatioDist = field(default_factory=RatioDist)
    anchors: AnchorWeights = field(default_factory=lambda: AnchorWeights(random=2.0, eyes=1.0, nose=1.0, mouth=1.0))
    walk_hole: tuple[int, int] = (56, 64)  # side range of the walk's hole box (the authors' hole_size)
    walk_region: int = 64  # side of the random region that holds the hole box (the authors' hole area)
    walk_steps: int = 48 * 48  # walk length; 0 = walk until the target ratio is covered
    variants: int = 1  # occlusions per face; used by the pipeline, not here
    # Last field: `to_dict` lists it after the keys every config has.
    occluders_dir: str | None = None  # RGBA PNGs for `object`; None = procedural objects

    def __post_init__(self) -> None:
        lo, hi = self.walk_hole
        if not 1 <= lo <= hi <= self.walk_region <= HR_SIZE:
            raise ValueError(
                f"walk_hole: need 1 <= walk_hole[0] <= walk_hole[1] <= walk_region <= {HR_SIZE}, "
                f"got walk_hole={list(self.walk_hole)}, walk_region={self.walk_region}"
            )
        if self.walk_steps < 0:
            raise ValueError(f"walk_steps: expected >= 0 (0 = until the target ratio), got {self.walk_steps}")
        if self.variants < 1:
            raise ValueError(f"variants: expected >= 1, got {self.variants}")
        if self.occluders_dir is not None and not (isinstance(self.occluders_dir, str) and self.occluders_dir):
            raise ValueError(f"occluders_dir: expected a path string, got {self.occluders_dir!r}")

    @classmethod
    def from_dict(cls, data: Any, where: str = "", error: type[ValueError] = ValueError) -> OcclusionConfig:
        """Read a recipe table; raises `error` naming the bad key, dotted below `where`."""
        try:
            cfg = build_dataclass(cls, data, where, error)
        except error:
            raise
        except ValueError as e:  # from a __post_init__, whose message starts with the key below `where`
            raise error(f"{where}.{e}" if where else str(e)) from None
        # Kept as written, outside the fields (not compared, not a key): see `written`.
        object.__setattr__(cfg, "_written", copy.deepcopy(data))
        return cfg

    def to_dict(self) -> dict[str, Any]:
        """Every field as a JSON-able table that `from_dict` reads back to an equal config."""
        d = dataclasses.asdict(self)
        d["walk_hole"] = list(self.walk_hole)
        if self.occluders_dir is None:
            del d["occluders_dir"]
        return d

    def written(self) -> dict[str, Any]:
        """The table `from_dict` read, as written (keys left out stay out, integer weights stay integers);
        `to_dict()` for a config made in code.

        A store records and fingerprints its recipe with this table, so a rebuild or resume with the same
        recipe file finds the same record.
        """
        table = self.__dict__.get("_written")
        return copy.deepcopy(table) if table is not None else self.to_dict()

    # The mapping protocol of `written()`: `{**cfg, "variants": 3}` is the table of an edited config, which
    # `Recipe.replace(occlusion=...)` reads.
    def keys(self) -> Any:
        return self.written().keys()

    def __getitem__(self, key: str) -> Any:
        return self.written()[key]
