"""A local docker-registry on 127.0.0.1 with an access log."""

import re
import socket
import subprocess
import time

from .util import CLEANUP, Failed, run, tail


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Registry:
    def __init__(self, workdir):
        self.dir = workdir / "registry"
        self.dir.mkdir(parents=True)
        (self.dir / "storage").mkdir()
        self.port = free_port()
        self.addr = f"127.0.0.1:{self.port}"
        self.config = self.dir / "config.yml"
        # Loopback only; the access log (one line per request, with the bytes
        # sent) goes to stdout, the rest to stderr.
        self.config.write_text(
            "version: 0.1\n"
            "log:\n  level: warn\n"
            "storage:\n"
            f"  filesystem:\n    rootdirectory: {self.dir / 'storage'}\n"
            "  delete:\n    enabled: true\n"
            f"http:\n  addr: {self.addr}\n"
        )
        self.registries_conf = self.dir / "registries.conf"
        self.registries_conf.write_text(f'[[registry]]\nlocation = "{self.addr}"\ninsecure = true\n')
        self.access_log = self.dir / "access.log"
        self.error_log = self.dir / "registry.log"
        self.proc = subprocess.Popen(
            ["docker-registry", "serve", str(self.config)],
            stdin=subprocess.DEVNULL,
            stdout=open(self.access_log, "wb"),
            stderr=open(self.error_log, "wb"),
        )
        CLEANUP.push("stopping the registry", self.stop)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise Failed(f"docker-registry exited:\n{tail(self.error_log.read_text())}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    s.sendall(f"GET /v2/ HTTP/1.0\r\nHost: {self.addr}\r\n\r\n".encode())
                    if s.recv(32).startswith((b"HTTP/1.1 200", b"HTTP/1.0 200")):
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise Failed(f"docker-registry did not answer on {self.addr}")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def push(self, oci_dir, tag, name):
        ref = f"{self.addr}/{name}"
        run(["skopeo", "copy", "--quiet", "--dest-tls-verify=false", f"oci:{oci_dir}:{tag}", f"docker://{ref}"])
        return f"docker://{ref}"

    def mark(self):
        time.sleep(0.2)
        return self.access_log.stat().st_size

    # 127.0.0.1 - - [23/Nov/2026:13:35:47 +0000] "GET /v2/x/blobs/sha256:.. HTTP/1.1" 200 526 "" "ua"
    LINE = re.compile(r'"(GET|HEAD) (\S+) HTTP/[0-9.]+" (\d+) (\d+|-)')

    def served_since(self, mark):
        """Bytes the registry sent (GET responses) since `mark`, split into
        blobs and manifests, and the number of blob GETs."""
        time.sleep(0.3)
        with open(self.access_log, "rb") as f:
            f.seek(mark)
            text = f.read().decode(errors="replace")
        res = {"bytes": 0, "blob_bytes": 0, "blob_gets": 0, "manifest_bytes": 0}
        for m in self.LINE.finditer(text):
            method, uri, _status, size = m.groups()
            if method != "GET" or size == "-":
                continue
            n = int(size)
            res["bytes"] += n
            if "/blobs/" in uri:
                res["blob_bytes"] += n
                res["blob_gets"] += 1
            elif "/manifests/" in uri:
                res["manifest_bytes"] += n
        return res
