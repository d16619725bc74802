"""The device resource never hard-codes CUDA and fails clearly where it is missing."""

import pytest
import torch

from featureflow_dagster.resources import DeviceResource


def test_cpu_and_auto():
    assert DeviceResource(device="cpu").torch_device() == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert DeviceResource(device="auto").torch_device().type == expected


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_without_cuda_is_a_clear_error():
    with pytest.raises(RuntimeError, match="torch sees no CUDA device"):
        DeviceResource(device="cuda").torch_device()


@pytest.mark.parametrize("value, tf32", [(None, True), ("1", True), ("0", False), ("false", False), (" No ", False)])
def test_featureflow_tf32_reaches_the_device_resource(monkeypatch, tmp_path, value, tf32):
    from featureflow_dagster.definitions import build_definitions

    if value is None:
        monkeypatch.delenv("FEATUREFLOW_TF32", raising=False)
    else:
        monkeypatch.setenv("FEATUREFLOW_TF32", value)
    from featureflow_dagster.lineage import load_lineage

    assert build_definitions(load_lineage("micro"), home=str(tmp_path)).resources["device"].tf32 is tf32


def test_a_cpu_device_leaves_cudas_float32_precision_alone():
    before = torch.backends.cuda.matmul.fp32_precision
    DeviceResource(device="cpu", tf32=not (before == "tf32")).torch_device()
    assert torch.backends.cuda.matmul.fp32_precision == before


def test_unknown_device():
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        DeviceResource(device="tpu").torch_device()


# ---------------------------------------------------------------------------------------------
# The store on shared storage (fsspec): atomic publication, newest version wins, refused backends
# ---------------------------------------------------------------------------------------------

import uuid  # noqa: E402

from featureflow_dagster.remote import Mirror, RemoteStoreError, open_remote  # noqa: E402
from featureflow_dagster.resources import ArtifactStore  # noqa: E402
from featureflow_dagster.storage import atomic_dir, atomic_file, committing  # noqa: E402
from featureflow_dagster.assets.data import TOKENS  # noqa: E402
from featureflow_dagster.assets.models import MODEL  # noqa: E402
from featureflow_dagster.assets.sae import ACTIVATION_STORE  # noqa: E402


@pytest.mark.parametrize("scheme", ["memory", "file"])
def test_a_unit_is_published_whole_and_the_newest_version_wins(tmp_path, scheme):
    url = f"memory://ff-{uuid.uuid4().hex}/home" if scheme == "memory" else f"file://{tmp_path}/shared"
    a = ArtifactStore(root=str(tmp_path / "a"), lineage_name="x", url=url)
    b = ArtifactStore(root=str(tmp_path / "b"), lineage_name="x", url=url)
    with a.publishing():
        with a.write_dir(MODEL.at(a, "base")) as tmp:
            (tmp / "config.json").write_text("1")
            (tmp / "weights").mkdir()
            (tmp / "weights" / "w.bin").write_bytes(b"\x00\x01")
        with pytest.raises(KeyError):  # a failed write publishes nothing and keeps the old version
            with a.write_dir(MODEL.at(a, "base")) as tmp:
                (tmp / "config.json").write_text("half")
                raise KeyError("crash")
    assert (MODEL.at(b, "base") / "config.json").read_text() == "1"
    assert (MODEL.at(b, "base") / "weights" / "w.bin").read_bytes() == b"\x00\x01"
    with a.publishing():
        with a.write_dir(MODEL.at(a, "base")) as tmp:
            (tmp / "config.json").write_text("2")
        with a.write_file(TOKENS.at(a, "base")) as tmp:
            tmp.write_bytes(b"tok")
    assert (MODEL.at(b, "base") / "config.json").read_text() == "2"
    assert not (MODEL.at(b, "base") / "weights").exists()  # a folder is replaced whole, not merged
    assert TOKENS.at(b, "base").read_bytes() == b"tok"
    assert {u: len(v) for u, v in a.mirror.versions().items()} == {"lineage.json": 1, "model/base": 1, "tokens/base.safetensors": 1}


def test_versions_follow_the_store_not_the_clocks_and_a_finished_checkpoint_is_retracted(tmp_path, monkeypatch):
    """Two machines whose clocks disagree by an hour: the one behind publishes after the other, and its version is
    the newer one for both (with versions stamped by each machine's clock, the first machine's would win and the
    second's cleanup would delete its own upload). A checkpoint retired on one machine is gone for the other."""
    import time

    import featureflow_dagster.remote as remote

    url = f"memory://ff-{uuid.uuid4().hex}/home"
    ahead = ArtifactStore(root=str(tmp_path / "ahead"), lineage_name="x", url=url)
    behind = ArtifactStore(root=str(tmp_path / "behind"), lineage_name="x", url=url)
    real = time.time_ns
    monkeypatch.setattr(time, "time_ns", lambda: real() + 3600 * 10**9)  # the first machine's clock runs an hour ahead
    with ahead.publishing(), ahead.write_file(TOKENS.at(ahead, "base", fetch=False)) as tmp:
        tmp.write_bytes(b"first")
    monkeypatch.setattr(time, "time_ns", lambda: real() - 3600 * 10**9)  # the second's an hour behind, and it writes later
    with behind.publishing(), behind.write_file(TOKENS.at(behind, "base", fetch=False)) as tmp:
        tmp.write_bytes(b"second")
    assert TOKENS.at(ahead, "base").read_bytes() == b"second" and TOKENS.at(behind, "base").read_bytes() == b"second"
    versions = ahead.mirror.versions()["tokens/base.safetensors"]
    assert len(versions) == 1 and versions[0] == behind.mirror.local_version("tokens/base.safetensors")
    assert remote.new_version(["00000000000000000007-abcdef12", "1733300000000000000-deadbeef"]).startswith("01733300000000000001-")
    # a checkpoint published mid-training, then retired when the training finished on the other machine
    with ahead.publishing(), ahead.write_file(ahead.checkpoint_path("model", "base")) as tmp:
        tmp.write_bytes(b"state")
    assert behind.checkpoint_path("model", "base").read_bytes() == b"state"  # what a resuming machine would read
    behind.retire_checkpoint("model", "base")
    assert not behind.checkpoint_path("model", "base").exists() and not ahead.mirror.versions("checkpoints")
    fresh = ArtifactStore(root=str(tmp_path / "third"), lineage_name="x", url=url)
    assert not fresh.checkpoint_path("model", "base").exists()


def test_an_artefact_about_to_be_replaced_is_not_downloaded_first(tmp_path):
    url = f"memory://ff-{uuid.uuid4().hex}/home"
    a = ArtifactStore(root=str(tmp_path / "a"), lineage_name="x", url=url)
    b = ArtifactStore(root=str(tmp_path / "b"), lineage_name="x", url=url)
    with a.publishing(), a.write_dir(ACTIVATION_STORE.at(a, "base")) as tmp:
        (tmp / "manifest.json").write_text("old")
    out = ACTIVATION_STORE.at(b, "base", fetch=False)  # what the activation_store asset asks for before writing
    assert not out.exists()
    with b.publishing(), b.write_dir(out) as tmp:
        (tmp / "manifest.json").write_text("new")
    assert (ACTIVATION_STORE.at(a, "base") / "manifest.json").read_text() == "new"  # published, the old version gone
    assert {u: len(v) for u, v in a.mirror.versions().items()} == {"lineage.json": 1, "activation_store/base": 1}
    assert (ACTIVATION_STORE.at(b, "base") / "manifest.json").read_text() == "new"


def test_a_write_outside_publishing_stays_local_and_another_lineage_is_refused(tmp_path):
    url = f"memory://ff-{uuid.uuid4().hex}/home"
    a = ArtifactStore(root=str(tmp_path / "a"), lineage_name="x", url=url)
    with a.write_file(TOKENS.at(a, "base")) as tmp:
        tmp.write_bytes(b"local only")
    assert list(Mirror(url, tmp_path / "c").versions()) == ["lineage.json"]  # the claim on the store, not the file
    with a.publishing(), a.write_file(TOKENS.at(a, "base")) as tmp:
        tmp.write_bytes(b"shared")
    other = ArtifactStore(root=str(tmp_path / "b"), lineage_name="y", url=url)
    with pytest.raises(RuntimeError, match="holds artefacts of lineage 'x', not 'y'"):
        other.claim()


@pytest.mark.parametrize("url", ["ftp://host/featureflow", "https://example.org/featureflow", "zip://a.zip"])
def test_backends_that_cannot_publish_atomically_are_refused(url):
    with pytest.raises(RemoteStoreError, match="cannot publish an artefact atomically"):
        open_remote(url)


def test_atomic_writes_call_the_commit_hook_once_each_after_the_rename(tmp_path):
    seen = []
    with committing(lambda p: seen.append((p.name, p.exists()))):
        with atomic_file(tmp_path / "f.txt") as tmp:
            tmp.write_text("x")
        with atomic_dir(tmp_path / "d") as tmp:
            (tmp / "a").write_text("y")
    with atomic_file(tmp_path / "g.txt") as tmp:  # no hook outside the block
        tmp.write_text("z")
    assert seen == [("f.txt", True), ("d", True)]
