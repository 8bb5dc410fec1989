"""The teacher's artifact store on real S3-compatible storage: moto's server on loopback, reached through boto3
as any S3 endpoint would be (AWS_ENDPOINT_URL); upload, download and verify, a damaged object, missing
credentials and a missing bucket, each one line."""

from __future__ import annotations

import pytest
from local_servers import free_port
from test_teacher_share import Machine, _spec

from kdsearch.errors import KdsearchError
from kdsearch.search.study import RECORD_ATTR

pytestmark = pytest.mark.slow  # starts a server
BUCKET = "kd-teachers"


@pytest.fixture
def s3(monkeypatch):
    """An S3 server (moto) on a free loopback port, with the bucket made; the environment points boto3 at it."""
    boto3 = pytest.importorskip("boto3")
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    for key, value in {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",  # no instance-metadata lookups for credentials
        "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
        "AWS_CONFIG_FILE": "/nonexistent",
    }.items():
        monkeypatch.setenv(key, value)
    client = boto3.client("s3")
    client.create_bucket(Bucket=BUCKET)
    try:
        yield client
    finally:
        server.stop()


def _on_s3(spec, prefix: str = "kdsearch/teachers"):
    return spec.model_copy(
        update={"runtime": spec.runtime.model_copy(update={"artifact_store": f"s3://{BUCKET}/{prefix}"})}
    )


def test_the_teacher_goes_through_s3_and_is_verified(idx_dataset, tmp_path, s3, monkeypatch):
    url = f"journal:///{tmp_path / 'run' / 'journal.log'}"
    first = Machine(_on_s3(_spec(idx_dataset, tmp_path, "cache-a")), url, monkeypatch)
    a = first.prepare()
    assert f"teacher: shared with the study's other workers in s3://{BUCKET}/kdsearch/teachers" in first.output
    artifact = first.study.user_attrs[RECORD_ATTR]["artifact_id"]
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET)["Contents"]]
    assert keys == [f"kdsearch/teachers/{artifact}"]  # under the prefix

    second = Machine(_on_s3(_spec(idx_dataset, tmp_path, "cache-b")), url, monkeypatch)
    b = second.prepare()
    assert second.trained == 0 and "downloaded the teacher of study 'tiny' from s3://" in second.output
    assert b.digest == a.digest

    # the object replaced by damaged bytes: a third machine refuses it, naming the fix
    body = s3.get_object(Bucket=BUCKET, Key=keys[0])["Body"].read()
    s3.put_object(Bucket=BUCKET, Key=keys[0], Body=body[:-10] + b"0123456789")
    third = Machine(_on_s3(_spec(idx_dataset, tmp_path, "cache-c")), url, monkeypatch)
    with pytest.raises(KdsearchError, match=r"does not match the sha256 recorded for it .* damaged or was replaced"):
        third.prepare()


def test_missing_credentials_are_one_line_naming_them(idx_dataset, tmp_path, s3, monkeypatch):
    import boto3

    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)  # a fresh process: no credentials resolved before
    machine = Machine(_on_s3(_spec(idx_dataset, tmp_path, "cache-a")), f"journal:///{tmp_path / 'j.log'}", monkeypatch)
    with pytest.raises(KdsearchError) as err:
        machine.prepare()
    message = str(err.value)
    assert message.startswith(f"cannot upload the study's teacher to s3://{BUCKET}/kdsearch/teachers: ")
    assert "give this machine S3 credentials (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY" in message
    assert "\n" not in message


def test_a_missing_bucket_is_one_line(idx_dataset, tmp_path, s3, monkeypatch):
    spec = _spec(idx_dataset, tmp_path, "cache-a")
    spec = spec.model_copy(
        update={"runtime": spec.runtime.model_copy(update={"artifact_store": "s3://no-such-bucket/kd"})}
    )
    machine = Machine(spec, f"journal:///{tmp_path / 'j.log'}", monkeypatch)
    with pytest.raises(KdsearchError, match=r"^cannot upload .*NoSuchBucket.*; create the bucket, or set"):
        machine.prepare()
