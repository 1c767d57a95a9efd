"""Model sources: URI parsing, in-place local sources, and the download-to-cache path with its atomic rename.

The s3://, gs:// and hf:// fetchers can only be tested with mocks here: no cloud endpoint or hub is reachable from
the test environment (and nothing may be downloaded). The fakes below stand in for the boto3 S3 client, the
google-cloud-storage client and huggingface_hub.snapshot_download with the calls the fetchers make.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from llmos_runtime.sources import (
    GCSFetcher,
    HFFetcher,
    S3Fetcher,
    Source,
    SourceError,
    cache_key,
    parse_source,
    resolve_source,
)

pytestmark = pytest.mark.unit


# ---- parsing ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "uri,expected",
    [
        ("file:///models/llama", Source("file", "", "/models/llama")),
        ("pvc://models/team/llama-3", Source("pvc", "models", "team/llama-3")),
        ("s3://bucket/a/b/", Source("s3", "bucket", "a/b")),
        ("gs://bucket/prefix", Source("gs", "bucket", "prefix")),
        ("hf://org/name", Source("hf", "org", "name")),
        ("hf://gpt2", Source("hf", "gpt2", "")),
    ],
)
def test_parse_source(uri, expected):
    assert parse_source(uri) == expected


@pytest.mark.parametrize(
    "uri",
    ["/models/llama", "file://host/x", "file://relative", "ftp://x/y", "pvc://", "s3://bucket/../x",
     "pvc://claim/a/../../etc", "hf://a/b/c", "oci://registry/x"],
)
def test_parse_source_rejects(uri):
    with pytest.raises(SourceError):
        parse_source(uri)


def test_local_sources_resolve_in_place(tmp_path):
    model = tmp_path / "m"
    model.mkdir()
    assert resolve_source(f"file://{model}", cache_dir=tmp_path / "c", pvc_root=tmp_path) == model
    pvc_root = tmp_path / "pvc"
    (pvc_root / "claim" / "sub" / "model").mkdir(parents=True)
    got = resolve_source("pvc://claim/sub/model", cache_dir=tmp_path / "c", pvc_root=pvc_root)
    assert got == pvc_root / "claim" / "sub" / "model"
    assert not (tmp_path / "c").exists()  # nothing copied
    with pytest.raises(SourceError, match="not found"):
        resolve_source("pvc://claim/missing", cache_dir=tmp_path / "c", pvc_root=pvc_root)


# ---- fakes ------------------------------------------------------------------------------------------------------


class FakeS3:
    def __init__(self, objects: dict[str, bytes]):
        self.objects = objects
        self.downloads: list[str] = []

    def get_paginator(self, name):
        assert name == "list_objects_v2"
        objects = self.objects

        class P:
            def paginate(self, Bucket, Prefix):  # noqa: N803 - boto3's spelling
                keys = sorted(k for k in objects if k.startswith(Prefix))
                yield {"Contents": [{"Key": k} for k in keys[:2]]}  # two pages, like a real listing
                yield {"Contents": [{"Key": k} for k in keys[2:]]} if keys[2:] else {}

        return P()

    def download_file(self, bucket, key, filename):
        self.downloads.append(key)
        Path(filename).write_bytes(self.objects[key])


class FakeBlob:
    def __init__(self, name, data, fail=False):
        self.name, self.data, self.fail = name, data, fail

    def download_to_filename(self, filename):
        Path(filename).write_bytes(self.data[: len(self.data) // 2])
        if self.fail:
            raise ConnectionError("connection reset by peer")
        Path(filename).write_bytes(self.data)


class FakeGCS:
    def __init__(self, blobs):
        self.blobs = blobs

    def list_blobs(self, bucket, prefix):
        return [b for b in self.blobs if b.name.startswith(prefix)]


# ---- remote sources ---------------------------------------------------------------------------------------------


def test_s3_download_into_cache_and_reuse(tmp_path):
    s3 = FakeS3({
        "models/llama/config.json": b"{}",
        "models/llama/weights/model.safetensors": b"w" * 100,
        "models/llama/tokenizer.json": b"t",
        "models/llama/": b"",  # directory marker
        "models/other/x": b"not this one",
    })
    fetchers = {"s3": lambda: S3Fetcher(client=s3)}
    got = resolve_source("s3://bucket/models/llama", cache_dir=tmp_path, pvc_root=tmp_path, fetchers=fetchers)
    assert got.parent == tmp_path / "models"
    assert sorted(p.relative_to(got).as_posix() for p in got.rglob("*") if p.is_file()) == [
        "config.json", "tokenizer.json", "weights/model.safetensors"]
    assert (got / "weights" / "model.safetensors").read_bytes() == b"w" * 100
    assert not list((tmp_path / "models").glob(".tmp-*"))
    # a second start reuses the complete download
    s3.downloads.clear()
    again = resolve_source("s3://bucket/models/llama", cache_dir=tmp_path, pvc_root=tmp_path, fetchers=fetchers)
    assert again == got and s3.downloads == []


def test_s3_empty_prefix_is_an_error(tmp_path):
    fetchers = {"s3": lambda: S3Fetcher(client=FakeS3({}))}
    with pytest.raises(SourceError, match="no objects"):
        resolve_source("s3://bucket/nothing", cache_dir=tmp_path, pvc_root=tmp_path, fetchers=fetchers)


def test_s3_key_escaping_the_directory_is_refused(tmp_path):
    fetchers = {"s3": lambda: S3Fetcher(client=FakeS3({"m/../../evil": b"x"}))}
    with pytest.raises(SourceError):
        resolve_source("s3://bucket/m", cache_dir=tmp_path, pvc_root=tmp_path, fetchers=fetchers)
    assert not (tmp_path.parent / "evil").exists()


def test_half_download_is_never_served(tmp_path):
    blobs = [FakeBlob("m/config.json", b"{}"), FakeBlob("m/model.safetensors", b"x" * 1000, fail=True)]
    fetchers = {"gs": lambda: GCSFetcher(client=FakeGCS(blobs))}
    with pytest.raises(SourceError, match="download of gs://bucket/m failed: ConnectionError"):
        resolve_source("gs://bucket/m", cache_dir=tmp_path, pvc_root=tmp_path, fetchers=fetchers)
    models = tmp_path / "models"
    assert list(models.iterdir()) == []  # neither a final directory nor a temporary one is left
    blobs[1].fail = False
    got = resolve_source("gs://bucket/m", cache_dir=tmp_path, pvc_root=tmp_path, fetchers=fetchers)
    assert (got / "model.safetensors").read_bytes() == b"x" * 1000


def test_hf_refuses_to_run_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    fetchers = {"hf": lambda: HFFetcher(snapshot_download=lambda **kw: None)}
    with pytest.raises(SourceError, match="HF_HUB_OFFLINE is set"):
        resolve_source("hf://org/name", cache_dir=tmp_path, pvc_root=tmp_path, fetchers=fetchers)


def test_hf_snapshot_with_revision(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    calls = []

    def fake_snapshot_download(repo_id, revision, local_dir, **kw):
        calls.append((repo_id, revision))
        assert kw.get("allow_patterns") is None  # no bundle known: the whole repository
        d = Path(local_dir)
        (d / "config.json").write_text("{}")
        (d / ".cache" / "huggingface").mkdir(parents=True)  # huggingface_hub's metadata: not part of the model
        (d / ".cache" / "huggingface" / "x.lock").write_text("")

    fetchers = {"hf": lambda: HFFetcher(snapshot_download=fake_snapshot_download)}
    a = resolve_source("hf://org/name", revision="abc123", cache_dir=tmp_path, pvc_root=tmp_path, fetchers=fetchers)
    b = resolve_source("hf://org/name", revision="def456", cache_dir=tmp_path, pvc_root=tmp_path, fetchers=fetchers)
    assert calls == [("org/name", "abc123"), ("org/name", "def456")]
    assert a != b  # each revision has its own cache entry
    assert sorted(p.name for p in a.iterdir()) == ["config.json"]


def test_cache_key_is_stable_and_distinct():
    a = cache_key(parse_source("s3://b/models/llama"))
    assert a == cache_key(parse_source("s3://b/models/llama/"))
    assert a != cache_key(parse_source("s3://b/models/llama", "v2"))
    assert a != cache_key(parse_source("gs://b/models/llama"))
    assert a.startswith("s3-llama-")


# ---- fetch + verify in one pass ----------------------------------------------------------------------------------


class FakeS3Objects(FakeS3):
    def __init__(self, objects):
        super().__init__(objects)
        self.opened: list[str] = []

    def download_fileobj(self, Bucket, Key, Fileobj, Config=None):  # noqa: N803 - boto3's spelling
        if Key not in self.objects:
            raise KeyError(f"NoSuchKey: {Key}")
        self.opened.append(Key)
        data = self.objects[Key]
        assert not Fileobj.seekable()  # boto3 then writes ranged parts in order
        for i in range(0, len(data), 777):
            Fileobj.write(data[i:i + 777])


@pytest.fixture(scope="module")
def signer(tmp_path_factory):
    from tests.support.tiny_model import make_signing_key

    return make_signing_key(tmp_path_factory.mktemp("keys"))


def _signed_manifest(tmp_path, files, signer, **opts):
    from llmos_signing import sign_model, verify_bundle

    d = tmp_path / "src"
    d.mkdir()
    for name, data in files.items():
        (d / name).parent.mkdir(parents=True, exist_ok=True)
        (d / name).write_bytes(data)
    sign_model(d, signer[0].read_bytes(), **opts)
    return verify_bundle((d / "model.sig").read_bytes(), {"k": signer[1].read_bytes()})


@pytest.mark.parametrize("opts", [{}, {"method": "shards", "shard_size": 1000}, {"hash_type": "blake3"},
                                  {"hash_type": "blake2b", "method": "shards", "shard_size": 4096}])
def test_signed_fetch_downloads_only_the_signed_files_and_verifies_while_writing(tmp_path, signer, opts):
    from llmos_runtime.sources import resolve_source_verified

    files = {"config.json": b"{}", "model.safetensors": bytes(range(256)) * 40, "sub/tok.json": b"t" * 10,
             "empty.txt": b""}
    try:
        signed = _signed_manifest(tmp_path, files, signer, **opts)
    except TypeError:
        pytest.skip(f"sign_model has no option {opts}")
    objects = {f"m/{k}": v for k, v in files.items()}
    objects["m/original/consolidated.pth"] = b"not signed, not needed" * 100
    s3 = FakeS3Objects(objects)
    fetchers = {"s3": lambda: S3Fetcher(client=s3)}
    path, summary = resolve_source_verified("s3://bucket/m", cache_dir=tmp_path / "c", pvc_root=tmp_path,
                                            fetchers=fetchers, signed=signed)
    assert summary["verified_while_fetching"] and summary["file_count"] == signed.file_count
    assert "m/original/consolidated.pth" not in s3.opened and s3.downloads == []  # only the signed files
    assert sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file()) == sorted(
        k for k in files if not (k == "empty.txt" and signed.method == "shards"))
    # the directory also verifies in place (what a restart reusing the cache does)
    from llmos_signing import verify_model

    verify_model(path, (tmp_path / "src" / "model.sig").read_bytes(), {"k": signer[1].read_bytes()})


def test_signed_fetch_of_a_half_uploaded_object_fails_and_leaves_nothing(tmp_path, signer):
    from llmos_runtime.sources import resolve_source_verified
    from llmos_signing import VerificationError

    files = {"config.json": b"{}", "model.safetensors": b"w" * 5000}
    signed = _signed_manifest(tmp_path, files, signer)
    s3 = FakeS3Objects({"m/config.json": b"{}", "m/model.safetensors": b"w" * 2500})
    with pytest.raises(VerificationError, match="hash mismatch: model.safetensors"):
        resolve_source_verified("s3://bucket/m", cache_dir=tmp_path / "c", pvc_root=tmp_path,
                                fetchers={"s3": lambda: S3Fetcher(client=s3)}, signed=signed)
    assert list((tmp_path / "c" / "models").iterdir()) == []
    with pytest.raises(SourceError, match="NoSuchKey: m/model.safetensors"):  # not uploaded (yet)
        resolve_source_verified("s3://bucket/m", cache_dir=tmp_path / "c", pvc_root=tmp_path,
                                fetchers={"s3": lambda: S3Fetcher(client=FakeS3Objects({"m/config.json": b"{}"}))},
                                signed=signed)


def test_hf_downloads_only_the_signed_files(tmp_path, signer, monkeypatch):
    from llmos_runtime.sources import resolve_source_verified

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    signed = _signed_manifest(tmp_path, {"config.json": b"{}", "model.safetensors": b"w"}, signer)
    seen = {}

    def fake_snapshot_download(repo_id, revision, local_dir, **kw):
        seen.update(kw)
        (Path(local_dir) / "config.json").write_text("{}")

    path, summary = resolve_source_verified(
        "hf://org/name", cache_dir=tmp_path / "c", pvc_root=tmp_path, signed=signed,
        fetchers={"hf": lambda: HFFetcher(snapshot_download=fake_snapshot_download)})
    assert sorted(seen["allow_patterns"]) == ["config.json", "model.safetensors"] and summary is None
