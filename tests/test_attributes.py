"""The attribute task: CelebA's labelled images held out of training, identity folds, the fold classifiers."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from fixtures import CELEBA_ATTRS, make_celeba_root
from proui_data.sources import SourceError, get_source
from proui_train.attributes import (
    AttributeClassifiers,
    AttributesError,
    attribute_scores,
    identity_folds,
    train_classifiers,
)


def test_holdout_moves_every_labelled_image_out_of_its_split(tmp_path):
    root = tmp_path / "celeba"
    make_celeba_root(root, n=12, truncate_attrs=8)
    attrs = root / "Anno" / "list_attr_celeba.txt"
    attrs.rename(root / "Anno" / "list_attr_celeba_first8.txt")  # the public truncated copies' name
    plain = get_source("celeba", str(root))
    assert plain.attribute_names == tuple(CELEBA_ATTRS)  # the suffixed file is found
    held = get_source("celeba", str(root), holdout_labelled="attr")
    assert held.splits() == ["train", "val", "test", "attr"]
    labelled = [f"{i:06d}.jpg" for i in range(1, 9)]
    assert [it.key for it in held.items("attr")] == labelled
    every = [it.key for s in held.splits() for it in held.items(s)]
    assert sorted(every) == [f"{i:06d}.jpg" for i in range(1, 13)]  # nothing lost, nothing twice
    assert not set(labelled) & {it.key for s in ("train", "val", "test") for it in held.items(s)}
    assert held.describe()["holdout_labelled"] == "attr" and "holdout_labelled" not in plain.describe()
    with pytest.raises(SourceError, match="official"):
        get_source("celeba", str(root), holdout_labelled="val")
    with pytest.raises(SourceError, match="celeba"):
        get_source("helen", str(root), holdout_labelled="attr")


def test_identity_folds_never_split_an_identity():
    identities = np.repeat(np.arange(30), 3)
    fold = identity_folds(identities, 4, seed=1)
    for i in range(30):
        assert len(set(fold[identities == i])) == 1
    assert sorted(np.bincount(fold // 1)[:4] // 3) == [7, 7, 8, 8]  # 30 identities dealt round-robin


def test_scores_by_hand():
    labels = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, -1.0], [-1.0, -1.0]])
    predictions = torch.tensor([[1.0, -1.0], [1.0, -1.0], [1.0, -1.0], [-1.0, -1.0]])
    s = attribute_scores(predictions, labels, ("a", "b"))
    assert s["attr/a"] == 0.75 and s["attr/b"] == 0.75
    assert s["attr_balanced/a"] == pytest.approx((1.0 + 0.5) / 2)  # positives 2/2, negatives 1/2
    assert s["attr_balanced/b"] == pytest.approx((0.0 + 1.0) / 2)  # the one positive missed
    assert s["attr_accuracy"] == 0.75


def test_fold_classifiers_learn_a_visible_attribute_and_round_trip(tmp_path):
    """A 'smile' drawn as a bright bar where the mouth is: held-out faces are classified from it; a face the
    classifiers do not know is refused; saved and loaded networks predict the same."""
    rng = np.random.default_rng(0)
    n = 48
    hr = rng.integers(60, 120, (n, 128, 128, 3), dtype=np.uint8)
    smiling = rng.random(n) < 0.5
    hr[smiling, 90:100, 40:88] = 250
    labels = np.where(smiling, 1.0, -1.0).astype(np.float32)[:, None]
    identities = np.arange(n) // 2
    keys = [f"{i:06d}.jpg" for i in range(n)]
    clf = train_classifiers(hr, labels, identities, keys, names=("Smiling",), folds=2, epochs=15, batch=8, seed=0)
    faces = torch.from_numpy(hr).permute(0, 3, 1, 2)
    scores = attribute_scores(clf.predict(faces, keys), torch.from_numpy(labels), clf.names)
    assert scores["attr/Smiling"] > 0.9
    clf.save(tmp_path / "clf")
    again = AttributeClassifiers.load(tmp_path / "clf")
    assert torch.equal(again.predict(faces[:10], keys[:10]), clf.predict(faces[:10], keys[:10]))
    with pytest.raises(AttributesError, match="not in the classifiers"):
        clf.predict(faces[:1], ["unknown.jpg"])
    with pytest.raises(AttributesError, match="proui-train attributes"):
        AttributeClassifiers.load(tmp_path)


def test_attributes_and_downstream_columns_end_to_end(tmp_path):
    """A CelebA root with its labelled images held out -> `proui-train attributes` -> `eval --attributes` on
    that split: accuracy columns for the baselines, the HR ceiling scores what its own classifiers say, and
    the downstream columns (dlib NME, identity) are there, best for HR."""
    import json

    from click.testing import CliRunner

    from proui_data.cli import main as data_cli
    from proui_train.cli import main as train_cli

    root = tmp_path / "celeba"
    make_celeba_root(root, n=16, truncate_attrs=12)
    store = str(tmp_path / "c.zarr")
    result = CliRunner().invoke(data_cli, ["build", "--source", "celeba", "--root", str(root), "--out", store,
                                           "--workers", "0", "--holdout-labelled", "attr", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "attr=12" in result.output
    clf = str(tmp_path / "clf")
    result = CliRunner().invoke(train_cli, ["attributes", "--data", store, "--out", clf, "--folds", "2",
                                            "--epochs", "2", "--attribute", "Smiling"])
    assert result.exit_code == 0, result.output
    figures = {}
    for baseline in ("hr", "bicubic"):
        out = tmp_path / f"{baseline}.json"
        result = CliRunner().invoke(train_cli, ["eval", "--baseline", baseline, "--data", store, "--split", "attr",
                                                "--attributes", clf, "--out", str(out)])
        assert result.exit_code == 0, result.output
        figures[baseline] = json.loads(out.read_text())["store/attr"]
    hr, bicubic = figures["hr"], figures["bicubic"]
    assert {"attr/Smiling", "attr_balanced/Smiling", "attr_accuracy", "nme_dlib", "identity_cosine",
            "hf_ratio"} <= set(hr)
    assert hr["identity_cosine"] == pytest.approx(1.0) and hr["hf_ratio"] == pytest.approx(1.0)
    assert hr["identity_facenet"] == pytest.approx(1.0, abs=1e-5)  # the independent judge (test extra)
    assert hr["verified_dlib"] == 1.0 and hr["verified_facenet"] == 1.0
    assert bicubic["verified_facenet"] < 1.0
    assert hr["nme_dlib"] < bicubic["nme_dlib"] and bicubic["hf_ratio"] < 0.5
    assert bicubic["identity_facenet"] < 0.9 and bicubic["identity_cosine"] < 1.0
    result = CliRunner().invoke(train_cli, ["eval", "--baseline", "bicubic", "--data", store, "--split", "train",
                                            "--attributes", clf])
    assert result.exit_code == 2 and "error:" in result.output
