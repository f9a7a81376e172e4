"""`proui-data publish`: parquet layout, dataset card and license rules, upload to a loopback Hub, token hygiene."""
from __future__ import annotations

import logging
import re
import secrets
import traceback
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import cv2
import pytest
import zarr
from click.testing import CliRunner

from hubserver import HubServer
from proui_data import card
from proui_data.cli import publish_command
from proui_data.publish import PublishError, parse_size, publish
from storefactory import write_store


def finish(url: str, source: str = "synthetic") -> str:
    """Mark every shard of a storefactory store finished, as a completed build leaves it."""
    root = zarr.open_group(url, mode="r+")
    root.attrs["source"] = {"name": source, "root": "/home/someone/private/data"}
    for s in root.group_keys():
        g = root[s]
        g.create_array("_shard_done", shape=(g.attrs["n_shards"],), dtype="uint8", chunks=(1,), fill_value=0)
        g["_shard_done"][:] = 1
    return url


@pytest.fixture(scope="module")
def synthetic_store(tmp_path_factory) -> str:
    """300 train + 40 val rows in shards of 32; every 7th row and all of shard 1 rejected (no_face)."""
    return finish(write_store(tmp_path_factory.mktemp("synthetic") / "s.zarr"))




def front_matter(path: Path) -> dict:
    meta, _ = card.split_front_matter(path.read_text())
    return meta


def test_parse_size():
    assert parse_size("500MB") == 500_000_000
    assert parse_size("64kB") == 64_000
    assert parse_size("1.5GB") == 1_500_000_000
    assert parse_size("12345") == 12345
    with pytest.raises(ValueError, match="cannot read size"):
        parse_size("lots")


def test_parquet_layout_is_sized_streamed_and_valid_only(synthetic_store, tmp_path):
    out = tmp_path / "repo"
    with pytest.raises(PublishError, match="--license"):  # no known terms for a synthetic source
        publish(synthetic_store, "org/faces", dry_run=out)
    max_bytes, rg_rows = 60_000, 16
    result = publish(synthetic_store, "org/faces", dry_run=out, license_id="cc-by-4.0", max_file_bytes=max_bytes,
                     row_group_rows=rg_rows)
    root = zarr.open_group(synthetic_store, mode="r")
    for split, hub_name in (("train", "train"), ("val", "validation")):
        files = sorted((out / "data" / "synthetic").glob(f"{hub_name}-*"))
        n = len(files)
        assert n >= (2 if split == "train" else 1)
        assert [f.name for f in files] == [f"{hub_name}-{i:05d}-of-{n:05d}.parquet" for i in range(n)]
        valid = root[split]["valid"][:]
        keys = []
        for f in files:
            meta = pq.ParquetFile(f).metadata
            assert all(meta.row_group(i).num_rows <= rg_rows for i in range(meta.num_row_groups))
            largest_group = max(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
            assert f.stat().st_size <= max_bytes + 2 * largest_group  # closed at the first row group past the target
            table = pq.read_table(f, columns=["key", "valid", "hr", "landmarks"])
            keys += table.column("key").to_pylist()
            assert all(table.column("valid").to_pylist())
        assert keys == [str(k) for k in root[split]["key"][:][valid]]
        assert result.rows[split] == int(valid.sum())
    assert not list(out.rglob("*.partial"))
    # Rows: hr pixels and landmarks survive the trip through PNG and nested lists.
    table = pq.read_table(sorted((out / "data" / "synthetic").glob("train-*"))[0])
    row = table.slice(2, 1).to_pylist()[0]
    i = int(np.flatnonzero(root["train"]["valid"][:])[2])
    hr = cv2.cvtColor(cv2.imdecode(np.frombuffer(row["hr"]["bytes"], np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(hr, root["train"]["hr"][i])
    np.testing.assert_array_equal(np.array(row["landmarks"], np.float32), root["train"]["landmarks"][i])
    assert "heatmaps" not in table.column_names and "reject_reason" not in table.column_names
    # Card: YAML configs, counts, reject table, no local paths.
    meta = front_matter(out / "README.md")
    assert meta["license"] == "cc-by-4.0"
    assert meta["configs"] == [{"config_name": "synthetic", "data_files": [
        {"split": "train", "path": "data/synthetic/train-*.parquet"},
        {"split": "validation", "path": "data/synthetic/validation-*.parquet"}], "default": True}]
    text = (out / "README.md").read_text()
    n_rej = {s: int((~root[s]["valid"][:]).sum()) for s in ("train", "val")}
    assert f"| train | no_face | {n_rej['train']} |" in text
    assert f"| validation | no_face | {n_rej['val']} |" in text
    assert "Only valid samples are published" in text
    assert "/home/someone" not in text and "<local>/data" in text
    assert set(result.files) == {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}


def test_include_rejected_and_heatmaps(synthetic_store, tmp_path):
    out = tmp_path / "repo"
    result = publish(synthetic_store, "org/faces", dry_run=out, license_id="other", include_rejected=True,
                     with_heatmaps=True)
    root = zarr.open_group(synthetic_store, mode="r")
    assert result.rows == {"train": 300, "val": 40}
    table = pq.read_table(sorted((out / "data" / "synthetic").glob("validation-*"))[0])
    assert table.column("valid").to_pylist() == root["val"]["valid"][:].tolist()
    assert table.column("reject_reason").to_pylist() == [str(r) for r in root["val"]["reject_reason"][:]]
    hm = np.array(table.column("heatmaps").to_pylist()[5], np.uint8)
    np.testing.assert_array_equal(hm, root["val"]["heatmaps"][5])
    assert "All samples are published, rejected ones included" in (out / "README.md").read_text()


def test_zarr_format_uploads_the_store_files(demo_store, tmp_path):
    out = tmp_path / "repo"
    with pytest.raises(PublishError, match="apply to --format parquet"):
        publish(demo_store, "org/faces", dry_run=out, fmt="zarr", with_heatmaps=True)
    result = publish(demo_store, "org/faces", dry_run=out, fmt="zarr")
    store_files = {p.relative_to(demo_store).as_posix() for p in Path(demo_store).rglob("*") if p.is_file()}
    published = {p[len("data/demo.zarr/"):] for p in result.files if p.startswith("data/demo.zarr/")}
    assert published == store_files
    copy = zarr.open_group(str(out / "data" / "demo.zarr"), mode="r")
    np.testing.assert_array_equal(copy["train"]["hr"][:], zarr.open_group(demo_store, mode="r")["train"]["hr"][:])
    meta = front_matter(out / "README.md")
    assert meta["viewer"] is False and "configs" not in meta
    assert "hf://datasets/org/faces/data/demo.zarr" in (out / "README.md").read_text()


@pytest.mark.parametrize("source", ["celeba", "helen"])
def test_research_only_sources_refuse_permissive_licenses(source):
    fields, statement, warnings = card.resolve_license(source, None)
    assert fields["license"] == "other" and fields["license_name"].endswith("research-only")
    assert fields["license_link"].startswith("https://")
    assert "non-commercial research" in statement and not warnings
    for permissive in ("mit", "apache-2.0", "cc-by-4.0", "cc0-1.0"):
        with pytest.raises(card.CardError, match="contradicts"):
            card.resolve_license(source, permissive)
        fields, _, warnings = card.resolve_license(source, permissive, force=True)
        assert fields == {"license": permissive} and "--force" in warnings[0]
    assert card.resolve_license(source, "cc-by-nc-4.0")[0] == {"license": "cc-by-nc-4.0"}
    assert card.resolve_license("demo", None)[0] == {"license": "cc0-1.0"}


def test_cli_license_refusal_and_force(tmp_path):
    url = finish(write_store(tmp_path / "c.zarr", {"train": 20}, shard_size=8), source="celeba")
    runner = CliRunner()
    r = runner.invoke(publish_command, [url, "--repo", "org/faces", "--dry-run", str(tmp_path / "a"),
                                        "--license", "mit"])
    assert r.exit_code == 2 and "contradicts the terms of celeba" in r.output
    assert not (tmp_path / "a").exists()
    r = runner.invoke(publish_command, [url, "--repo", "org/faces", "--dry-run", str(tmp_path / "b"),
                                        "--license", "mit", "--force"])
    assert r.exit_code == 0, r.output
    assert "warning:" in r.output
    meta = front_matter(tmp_path / "b" / "README.md")
    assert meta["license"] == "mit"
    assert "non-commercial research purposes only" in (tmp_path / "b" / "README.md").read_text()
    r = runner.invoke(publish_command, [url, "--repo", "org/faces", "--dry-run", str(tmp_path / "c")])
    assert r.exit_code == 0, r.output
    meta = front_matter(tmp_path / "c" / "README.md")
    assert (meta["license"], meta["license_name"]) == ("other", "celeba-research-only")


def test_configs_merge_and_stale_files_go(synthetic_store, demo_store, tmp_path):
    out = tmp_path / "repo"
    publish(synthetic_store, "org/faces", dry_run=out, license_id="cc0-1.0", config="synth", max_file_bytes=30_000)
    many = sorted(p.name for p in (out / "data" / "synth").iterdir())
    publish(demo_store, "org/faces", dry_run=out)  # config "demo" joins "synth"
    meta = front_matter(out / "README.md")
    assert [c["config_name"] for c in meta["configs"]] == ["demo", "synth"]
    assert sum(bool(c.get("default")) for c in meta["configs"]) == 1
    text = (out / "README.md").read_text()
    assert text.count("<!-- proui-config synth -->") == 1 and text.count("<!-- proui-config demo -->") == 1
    publish(synthetic_store, "org/faces", dry_run=out, license_id="cc0-1.0", config="synth")  # one file per split now
    few = sorted(p.name for p in (out / "data" / "synth").iterdir())
    assert len(many) > len(few) == 2 and few == ["train-00000-of-00001.parquet", "validation-00000-of-00001.parquet"]
    assert (out / "images" / "demo-preview.png").is_file() and (out / "data" / "demo").is_dir()
    text = (out / "README.md").read_text()
    assert text.count("<!-- proui-config synth -->") == 1 and "<!-- proui-config demo -->" in text
    with pytest.raises(PublishError, match="declares license"):
        publish(synthetic_store, "org/faces", dry_run=out, license_id="mit", config="synth")


def test_demo_card_has_preview_counts_and_occlusions(demo_store, tmp_path):
    out = tmp_path / "repo"
    r = CliRunner().invoke(publish_command, [demo_store, "--repo", "org/faces", "--dry-run", str(out)])
    assert r.exit_code == 0, r.output
    assert "rows train=6, validation=2" in r.output
    text = (out / "README.md").read_text()
    assert "![preview of demo](images/demo-preview.png)" in text
    assert (out / "images" / "demo-preview.png").stat().st_size > 10_000
    assert "| train | 6 | 6 | 0 | 6 | `data/demo/train-*.parquet` |" in text
    root = zarr.open_group(demo_store, mode="r")
    kinds = np.asarray(root["train"]["occlusion_kind"][:], dtype=object)
    for kind in set(kinds):
        assert re.search(rf"\| train \| {kind} \| {int((kinds == kind).sum())} \|", text)
    assert front_matter(out / "README.md")["license"] == "cc0-1.0"
    assert "public-domain" in text


# --- upload to a loopback Hub ----------------------------------------------------------------------------------------

# huggingface_hub's own LFS PUT (data=fileobj) trips an httpx deprecation warning; not ours to fix.
hub_warning = pytest.mark.filterwarnings("ignore:Use 'content=<...>' to upload raw bytes:DeprecationWarning")

@pytest.fixture
def local_hub(monkeypatch, tmp_path):
    """A HubServer on 127.0.0.1 with HF_ENDPOINT and HF_TOKEN pointing at it; any other host fails the test."""
    import huggingface_hub
    from huggingface_hub import constants
    from huggingface_hub.utils import _http

    token = "hf_" + secrets.token_hex(17)
    elsewhere: list[str] = []

    def guarded_client():
        client = _http.default_client_factory()

        def only_loopback(request):
            if request.url.host != "127.0.0.1":
                elsewhere.append(str(request.url))
                raise RuntimeError(f"test tried to reach {request.url.host}")

        client.event_hooks["request"] = [only_loopback, *client.event_hooks["request"]]
        return client

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)  # the loopback Hub speaks LFS, not xet
    try:  # huggingface_hub 2.x fetches an agent registry from its import-time endpoint: serve it empty
        from huggingface_hub.utils import _detect_agent

        monkeypatch.setattr(_detect_agent, "_registry", _detect_agent._EMPTY_REGISTRY)
    except (ImportError, AttributeError):
        pass
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token-file"))
    huggingface_hub.set_client_factory(guarded_client)
    try:
        with HubServer(token) as hub:
            monkeypatch.setenv("HF_ENDPOINT", hub.url)
            monkeypatch.setenv("HF_TOKEN", token)
            yield hub
    finally:
        huggingface_hub.set_client_factory(_http.default_client_factory)
    assert not elsewhere, f"requests left the machine: {elsewhere}"


@hub_warning
def test_upload_to_local_hub_matches_dry_run(demo_store, synthetic_store, local_hub, tmp_path):
    dry = tmp_path / "dry"
    assert publish(demo_store, "org/faces", dry_run=dry, max_file_bytes=100_000, row_group_rows=2).rows
    r = CliRunner().invoke(publish_command, [demo_store, "--repo", "org/faces", "--private",
                                             "--max-file-size", "100kB", "--row-group-size", "2"])
    assert r.exit_code == 0, r.output
    repo = local_hub.repo("org/faces")
    assert repo.private and repo.repo_type == "dataset"
    expected = {p.relative_to(dry).as_posix(): p.read_bytes() for p in dry.rglob("*") if p.is_file()}
    assert len([p for p in expected if p.endswith(".parquet")]) >= 3
    assert repo.files.keys() == expected.keys()
    for path, content in expected.items():
        assert repo.files[path] == content, path
    # Parquet and PNG went through LFS (batch, PUT, verify); the small card was a regular file.
    assert {p for p in repo.lfs_paths} == {p for p in expected if p.endswith((".parquet", ".png"))}
    assert "README.md" not in repo.lfs_paths
    assert len(repo.commits) == 1 and "config demo" in repo.commits[0]["summary"]
    assert not local_hub.unexpected
    api_calls = [q for q in local_hub.requests if not q.path.startswith("/lfs-upload/")]
    assert all(q.headers.get("authorization") == f"Bearer {local_hub.token}" for q in api_calls), \
        [(q.method, q.path) for q in api_calls if "authorization" not in q.headers]
    assert "commit: " + local_hub.url in r.output

    # A second store lands in the same repository: the card is fetched, merged and committed again.
    r = CliRunner().invoke(publish_command, [synthetic_store, "--repo", "org/faces", "--license", "cc0-1.0",
                                             "--config", "synth"])
    assert r.exit_code == 0, r.output
    meta, _ = card.split_front_matter(repo.files["README.md"].decode())
    assert [c["config_name"] for c in meta["configs"]] == ["demo", "synth"]
    assert any(q.method == "GET" and q.path.endswith("/resolve/main/README.md") for q in local_hub.requests)
    assert all(p in repo.files for p in expected if p != "README.md")  # config demo is untouched
    assert len(repo.commits) == 2


@hub_warning
def test_token_never_leaks(demo_store, local_hub, tmp_path, caplog, capsys):
    caplog.set_level(logging.DEBUG)
    token = local_hub.token
    local_hub.leak_token_on_commit = True  # the server's error message quotes the Authorization header
    with pytest.raises(PublishError) as info:
        publish(demo_store, "org/leaky")
    err = info.value
    assert "rejected request with credentials" in str(err) and "***" in str(err)  # the server did quote it
    shown = [str(err), repr(err), "".join(traceback.format_exception(err))]
    r = CliRunner().invoke(publish_command, [demo_store, "--repo", "org/leaky"])
    assert r.exit_code == 2 and "error: publishing to org/leaky" in r.output
    local_hub.leak_token_on_commit = False
    r2 = CliRunner().invoke(publish_command, [demo_store, "--repo", "org/clean", "--dry-run", str(tmp_path / "dry")])
    r3 = CliRunner().invoke(publish_command, [demo_store, "--repo", "org/clean"])
    assert r2.exit_code == 0 and r3.exit_code == 0, r3.output
    captured = capsys.readouterr()
    for text in shown + [r.output, r2.output, r3.output, caplog.text, captured.out, captured.err]:
        assert token not in text
    written = [p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()]
    written += list(local_hub.repo("org/clean").files.values())
    assert written and not any(token.encode() in content for content in written)


@pytest.fixture
def linked_store(demo_store, tmp_path):
    """A copy of the demo store holding a link to a file outside it (and the bytes of that file)."""
    import shutil

    url = tmp_path / "linked.zarr"
    shutil.copytree(demo_store, url)
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"outside-the-store " + secrets.token_hex(8).encode())
    (url / "train" / "notes.txt").symlink_to(secret)
    return url, secret.read_bytes()


@pytest.mark.parametrize("fmt", ["zarr", "parquet"])
def test_a_link_out_of_the_store_is_refused_and_nothing_outside_is_read(linked_store, tmp_path, fmt):
    url, secret = linked_store
    out = tmp_path / "repo"
    with pytest.raises(PublishError, match=r"notes.txt is a link to .*secret.txt, which is not a file inside"):
        publish(str(url), "org/faces", dry_run=out, fmt=fmt)
    assert not any(secret in p.read_bytes() for p in tmp_path.rglob("*") if p.is_file() and p.name != "secret.txt"
                   and not p.is_symlink())
    r = CliRunner().invoke(publish_command, [str(url), "--repo", "org/faces", "--format", fmt, "--dry-run", str(out)])
    assert r.exit_code == 2 and "error: " in r.output and "notes.txt is a link to" in r.output


def test_links_inside_the_store_are_published_as_their_files(demo_store, tmp_path):
    """A store reached through a link, whose first hr shard is a link to a file of its own: published as the
    plain store, the shard as its bytes."""
    import shutil

    real = tmp_path / "disk" / "demo.zarr"
    shutil.copytree(demo_store, real)
    shard = real / "train" / "hr" / "c" / "0" / "0" / "0" / "0"
    shard.rename(shard.with_name("moved"))
    shard.symlink_to("moved")
    (tmp_path / "demo.zarr").symlink_to(real)
    publish(str(tmp_path / "demo.zarr"), "org/faces", dry_run=tmp_path / "repo", fmt="zarr")
    copied = tmp_path / "repo" / "data" / "demo.zarr"
    assert not (copied / shard.relative_to(real)).is_symlink()
    np.testing.assert_array_equal(zarr.open_group(str(copied), mode="r")["train"]["hr"][:],
                                  zarr.open_group(demo_store, mode="r")["train"]["hr"][:])


@hub_warning
def test_a_link_out_of_the_store_is_never_uploaded(linked_store, local_hub):
    url, secret = linked_store
    r = CliRunner().invoke(publish_command, [str(url), "--repo", "org/faces", "--format", "zarr"])
    assert r.exit_code == 2 and "is a link to" in r.output
    assert not any(secret in q.body for q in local_hub.requests)
    assert all(not repo.commits for repo in local_hub.repos.values())


def test_missing_token_says_where_to_put_one(demo_store, monkeypatch, tmp_path):
    from huggingface_hub import constants

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "absent"))
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing is contacted before the token check
    with pytest.raises(PublishError, match="HF_TOKEN"):
        publish(demo_store, "org/faces")
    with pytest.raises(PublishError, match="ORG/NAME"):
        publish(demo_store, "not a repo", dry_run=tmp_path / "x")


@hub_warning
def test_model_release_publishes_to_local_hub_like_its_dry_run(local_hub, tmp_path):
    """`proui-train publish`: a release folder goes to a Hub *model* repo, byte for byte as the dry run
    copies it, and the token appears nowhere."""
    import torch

    from proui_train.cli import main as train_cli
    from proui_train.config import load_config
    from proui_train.models import ProUIGAN, ProUIGANConfig
    from proui_train.release import save_release

    torch.manual_seed(0)
    folder = save_release(tmp_path / "release", ProUIGAN(ProUIGANConfig(residual=True)).eval(),
                          load_config(None), "# card\n", {"step": 0})
    dry = tmp_path / "dry"
    r1 = CliRunner().invoke(train_cli, ["publish", str(folder), "--repo", "org/model", "--dry-run", str(dry)])
    r2 = CliRunner().invoke(train_cli, ["publish", str(folder), "--repo", "org/model", "--private"])
    assert r1.exit_code == 0 and r2.exit_code == 0, r1.output + r2.output
    repo = local_hub.repo("org/model", "model")
    assert repo.private and repo.repo_type == "model"
    expected = {p.name: p.read_bytes() for p in dry.iterdir()}
    assert set(expected) == {"README.md", "config.json", "model.safetensors"} and repo.files == expected
    assert local_hub.token not in r1.output + r2.output
    # and what was uploaded loads back as the same network
    back = ProUIGAN.from_pretrained(str(dry))
    assert back.config.residual is True
