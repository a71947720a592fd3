"""The local S3 servers the suite relies on start and speak S3."""

from tests.helpers.servers import S3Server


def test_moto_roundtrip(moto_server: S3Server, moto_bucket: str) -> None:
    client = moto_server.client()
    client.put_object(Bucket=moto_bucket, Key="a", Body=b"hello")
    assert client.get_object(Bucket=moto_bucket, Key="a")["Body"].read() == b"hello"


def test_localstack_roundtrip(localstack_server: S3Server, localstack_bucket: str) -> None:
    client = localstack_server.client()
    client.put_object(Bucket=localstack_bucket, Key="a", Body=b"hello")
    assert client.get_object(Bucket=localstack_bucket, Key="a")["Body"].read() == b"hello"
