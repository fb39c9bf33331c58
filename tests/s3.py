"""A real S3 server for the tests: moto's server mode as its own process on 127.0.0.1
at a free port, with authentication on, so that a wrong key is refused as a cloud
store refuses it. It is what s3fs and zarr test against."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

WAIT = 60  # seconds: every wait below is bounded by this

#: moto checks credentials from this many requests on: the first ones make the user
#: whose key the tests then use (create_user, put_user_policy, create_access_key).
_UNCHECKED = 3

_ALLOW_S3 = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
}


@dataclass(frozen=True)
class S3Server:
    """A running server: its endpoint, a key it accepts, and one empty bucket."""

    endpoint: str
    key: str
    secret: str
    bucket: str

    def env(self) -> dict[str, str]:
        """The variables through which s3fs (in this process or a worker) finds the
        server and the key, as a user sets them for a cloud store."""
        return {
            "AWS_ACCESS_KEY_ID": self.key,
            "AWS_SECRET_ACCESS_KEY": self.secret,
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def options(self) -> dict:
        """The same, as fsspec ``storage_options`` passed explicitly."""
        return {"key": self.key, "secret": self.secret, "endpoint_url": self.endpoint}

    def filesystem(self):
        import s3fs

        return s3fs.S3FileSystem(**self.options(), skip_instance_cache=True)

    def upload(self, folder: Path, prefix: str, batch: int = 256) -> str:
        """Copy ``folder`` (links followed) to ``s3://bucket/prefix``, ``batch`` files
        at a time concurrently; returns the URL."""
        fs = self.filesystem()
        files = [path for path in sorted(Path(folder).rglob("*")) if path.is_file()]
        base = f"{self.bucket}/{prefix}"
        for start in range(0, len(files), batch):
            chunk = files[start : start + batch]
            fs.pipe({f"{base}/{p.relative_to(folder).as_posix()}": p.read_bytes() for p in chunk})
        return f"s3://{self.bucket}/{prefix}"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_until_up(proc: subprocess.Popen, endpoint: str) -> None:
    deadline = time.monotonic() + WAIT
    while True:
        with contextlib.suppress(OSError):
            urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=2).close()
            return
        if proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"moto server did not start at {endpoint}")
        time.sleep(0.1)


def _make_key(endpoint: str) -> tuple[str, str]:
    import boto3

    iam = boto3.client(
        "iam",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="bootstrap",
        aws_secret_access_key="bootstrap",
    )
    iam.create_user(UserName="daskmri-tests")
    iam.put_user_policy(
        UserName="daskmri-tests", PolicyName="s3", PolicyDocument=json.dumps(_ALLOW_S3)
    )
    key = iam.create_access_key(UserName="daskmri-tests")["AccessKey"]
    return key["AccessKeyId"], key["SecretAccessKey"]


@contextlib.contextmanager
def s3_server(folder: Path, bucket: str = "daskmri-tests") -> Iterator[S3Server]:
    """Start the server, make a key and ``bucket``; stop the server on the way out,
    whatever happened."""
    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    env = os.environ | {"INITIAL_NO_AUTH_ACTION_COUNT": str(_UNCHECKED)}
    with open(folder / "moto.log", "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            cwd=str(folder), env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        _wait_until_up(proc, endpoint)
        key, secret = _make_key(endpoint)
        server = S3Server(endpoint, key, secret, bucket)
        server.filesystem().mkdir(bucket)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=WAIT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=WAIT)
