"""A moto S3 server in its own process on 127.0.0.1 (never another address), for tests and benchmarks.

    with S3Server() as s3:
        s3.make_bucket("faces")
        url, options = "s3://faces/x.zarr", s3.storage_options

`storage_options` carries endpoint and credentials explicitly, so processes that get them (Dask workers
through the task) need no AWS environment variables; `env` is the same as variables, for tools that read those.
"""
from __future__ import annotations

import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class S3Server:
    """`python -m moto.server` on a free loopback port; a context manager that stops it on exit."""

    key, secret, region = "proui-test", "proui-test-secret", "us-east-1"

    def __init__(self, start_timeout: float = 30.0):
        self.start_timeout = start_timeout
        self.proc: subprocess.Popen | None = None
        self.endpoint = ""

    @property
    def storage_options(self) -> dict:
        """fsspec/s3fs options reaching this server with its test credentials."""
        # no region: s3fs would turn it into a LocationConstraint, which us-east-1 rejects on bucket creation
        return {"key": self.key, "secret": self.secret, "client_kwargs": {"endpoint_url": self.endpoint}}

    @property
    def env(self) -> dict[str, str]:
        return {"AWS_ACCESS_KEY_ID": self.key, "AWS_SECRET_ACCESS_KEY": self.secret,
                "AWS_DEFAULT_REGION": self.region, "AWS_ENDPOINT_URL": self.endpoint}

    def start(self) -> "S3Server":
        port = free_port()
        self.endpoint = f"http://127.0.0.1:{port}"
        self._log = tempfile.TemporaryFile()
        # cwd: a neutral folder, so nothing in the caller's directory shadows a module moto imports
        self.proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                     stdout=self._log, stderr=subprocess.STDOUT, cwd=tempfile.gettempdir())
        deadline = time.time() + self.start_timeout
        while True:
            if self.proc.poll() is not None:
                self._log.seek(0)
                raise RuntimeError(f"moto server exited with {self.proc.returncode}:\n"
                                   + self._log.read().decode(errors="replace")[-2000:])
            try:
                urllib.request.urlopen(f"{self.endpoint}/moto-api/", timeout=1).close()
                return self
            except (urllib.error.URLError, OSError):
                if time.time() > deadline:
                    self.stop()
                    raise TimeoutError(f"moto server on {self.endpoint} did not answer in {self.start_timeout} s")
                time.sleep(0.1)

    def make_bucket(self, name: str) -> str:
        """Create a bucket; returns its URL (s3://name)."""
        import s3fs

        s3fs.S3FileSystem(**self.storage_options, skip_instance_cache=True).mkdir(name)
        return f"s3://{name}"

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
        self.proc = None

    def __enter__(self) -> "S3Server":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
