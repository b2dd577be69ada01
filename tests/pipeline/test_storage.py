"""Storage options and URL helpers: credentials never shown, per-protocol options, redaction."""
from __future__ import annotations

import pickle

import pytest

from pipeline import storage
from pipeline.storage import StorageOptions, StorageOptionsError

SECRET = "wJalrXUtnFEMI-K7MDENG-bPxRfiCY"


def test_flat_options_apply_to_every_remote_protocol_but_not_local_paths():
    opts = StorageOptions.from_json(f'{{"key": "AKIA1", "secret": "{SECRET}", "endpoint_url": "http://127.0.0.1:9000"}}')
    assert opts.for_url("s3://bucket/a.tif")["secret"] == SECRET
    assert opts.for_url("gs://bucket/a.tif")["key"] == "AKIA1"
    assert opts.for_url("/data/a.tif") == {} and opts.for_url("file:///data/a.tif") == {}


def test_options_keyed_by_protocol_and_aliases():
    opts = StorageOptions.from_mapping({"s3": {"anon": True}, "abfs": {"account_name": "acct"}})
    assert opts.for_url("s3a://b/k") == {"anon": True}
    assert opts.for_url("az://c/k") == {"account_name": "acct"} == opts.for_url("abfs://c/k")
    assert opts.for_url("gs://b/k") == {}


def test_values_are_never_shown_and_survive_pickling():
    opts = StorageOptions.from_mapping({"key": "AKIA1", "secret": SECRET})
    for text in (repr(opts), str(opts), f"{opts}", repr([opts])):
        assert SECRET not in text and "AKIA1" not in text and "secret" in text
    assert pickle.loads(pickle.dumps(opts)) == opts  # Ray actors receive them with their job
    assert storage.scrub(f"failed with {SECRET} in the message", opts) == "failed with *** in the message"


def test_bad_json_is_a_clear_error_that_does_not_echo_the_text():
    with pytest.raises(StorageOptionsError, match="not valid JSON") as err:
        StorageOptions.from_json(f'{{"secret": "{SECRET}"')
    assert SECRET not in str(err.value)
    with pytest.raises(StorageOptionsError, match="JSON object"):
        StorageOptions.from_json('["a"]')


def test_install_is_process_wide():
    try:
        storage.install({"s3": {"anon": True}})
        assert storage.options_for("s3://b/k") == {"anon": True}
    finally:
        storage.install(None)
    assert storage.options_for("s3://b/k") == {}


@pytest.mark.parametrize("url, shown", [
    ("https://user:pa55@example.com:8443/a.tif?X-Amz-Signature=abc", "https://***@example.com:8443/a.tif?***"),
    ("s3://bucket/key.tif", "s3://bucket/key.tif"),
    ("/local/path.tif", "/local/path.tif"),
])
def test_redact_url(url, shown):
    assert storage.redact_url(url) == shown


def test_url_helpers():
    assert storage.protocol("/a/b") == "file" and storage.protocol("S3://b/k") == "s3"
    assert storage.protocol("https://h/x") == "http" and storage.is_remote("memory://x")
    assert storage.join("s3://b/prefix/", "run", "input.zarr") == "s3://b/prefix/run/input.zarr"
    assert storage.parent("s3://b/m/manifest.csv") == "s3://b/m" and storage.basename("s3://b/m/x.tif") == "x.tif"
