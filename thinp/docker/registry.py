"""A client of the OCI distribution API over plain HTTP, loopback only.

:class:`HTTPRegistry` speaks the API as distribution 2.8 (Debian's
``docker-registry``) serves it:

* ``GET /v2/<name>/manifests/<ref>`` with an ``Accept`` naming OCI and
  Docker manifests and indexes; an index is followed to the manifest of the
  wanted platform; the manifest's digest is checked against the reference's
  digest, else against ``Docker-Content-Digest``;
* ``GET /v2/<name>/blobs/<digest>``: streamed to a file while hashed; a
  mismatch is an :class:`~thinp.errors.ImageFormatError` naming both digests;
* ``HEAD /v2/<name>/blobs/<digest>`` before an upload, so a blob the
  repository has is not sent again; ``POST .../blobs/uploads/?mount=&from=``
  links a blob another repository of the registry has (no bytes sent);
* ``POST .../blobs/uploads/`` then one ``PUT ...?digest=`` with the whole
  blob (monolithic) or ``PATCH`` chunks with ``Content-Range`` and an empty
  closing ``PUT`` (chunked);
* ``PUT /v2/<name>/manifests/<tag>``;
* ``GET /v2/_catalog`` and ``GET /v2/<name>/tags/list``, both following the
  ``Link: <...>; rel="next"`` pagination.

No credentials, no TLS: this machine has no network, so only loopback
addresses are accepted (``localhost``, ``127.0.0.0/8``, ``::1``); the
requests are the real ones, so the client works against any registry that
speaks the API over HTTP.  :attr:`HTTPRegistry.bytes_received` and
:attr:`HTTPRegistry.bytes_sent` count the body bytes that crossed the wire.
"""
from __future__ import annotations

import hashlib
import http.client
import ipaddress
import json
import os
import re
import urllib.parse

from ..errors import ImageFormatError, ImageNotFoundError, ThinpError
from ..image.archive import (MT_DOCKER_LIST, MT_DOCKER_MANIFEST, MT_OCI_INDEX, MT_OCI_MANIFEST,
                             parse_platform)

__all__ = ["HTTPRegistry", "RegistryError", "ACCEPT_MANIFESTS", "is_loopback", "registry_url"]

ACCEPT_MANIFESTS = ", ".join((MT_OCI_INDEX, MT_OCI_MANIFEST, MT_DOCKER_LIST, MT_DOCKER_MANIFEST))
_INDEXES = (MT_OCI_INDEX, MT_DOCKER_LIST)
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")


class RegistryError(ThinpError):
    """The registry answered with an error (its status and error code)."""


def is_loopback(host: str) -> bool:
    h = host.strip("[]")
    if h == "localhost":
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False


def registry_url(text: str) -> str:
    """``127.0.0.1:5000`` or ``http://127.0.0.1:5000`` -> ``http://127.0.0.1:5000``;
    anything but a loopback HTTP address is refused."""
    url = text if "://" in text else "http://" + text
    u = urllib.parse.urlsplit(url)
    if u.scheme != "http":
        raise ValueError(f"registry {text!r}: only http:// registries on this machine are supported")
    if not u.hostname or not is_loopback(u.hostname):
        raise ValueError(f"registry {text!r} is not a loopback address (this machine has no network: "
                         f"run a registry on 127.0.0.1)")
    return f"http://{u.netloc}"


class HTTPRegistry:
    def __init__(self, url: str, *, timeout: float = 60.0):
        self.url = registry_url(url)
        u = urllib.parse.urlsplit(self.url)
        self.host, self.port = u.hostname, u.port or 80
        self.timeout = timeout
        self.bytes_received = 0
        self.bytes_sent = 0
        self._conn = None

    # ------------------------------------------------------------ plumbing
    def _connection(self):
        if self._conn is None:
            self._conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _request(self, method: str, path: str, body=None, headers=None, *, stream_to=None, hasher=None):
        """One request; returns ``(status, headers, body bytes)`` (the body is
        written to ``stream_to`` instead when given and the status is 200)."""
        url = urllib.parse.urljoin(self.url + "/", path)
        u = urllib.parse.urlsplit(url)
        if not is_loopback(u.hostname or ""):
            raise RegistryError(f"the registry sent us to {url}, which is not a loopback address")
        target = u.path + (f"?{u.query}" if u.query else "")
        hdrs = {"Host": u.netloc, "User-Agent": "thinp"}
        hdrs.update(headers or {})
        if body is not None and not isinstance(body, (bytes, bytearray)):
            hdrs.setdefault("Content-Length", str(os.fstat(body.fileno()).st_size - body.tell()))
        elif body is not None:
            hdrs["Content-Length"] = str(len(body))
        for attempt in (0, 1):
            conn = self._connection()
            try:
                conn.request(method, target, body=body, headers=hdrs)
                resp = conn.getresponse()
                break
            except (ConnectionError, http.client.HTTPException, OSError) as e:
                self.close()
                if attempt or (body is not None and not isinstance(body, (bytes, bytearray))):
                    raise RegistryError(f"{self.url}: {method} {target}: {e}") from None
        if body is not None:
            self.bytes_sent += int(hdrs.get("Content-Length", 0))
        status = resp.status
        rh = {k.lower(): v for k, v in resp.getheaders()}
        if status in (301, 302, 303, 307, 308) and "location" in rh:
            resp.read()
            return self._request(method, rh["location"], body, headers, stream_to=stream_to, hasher=hasher)
        if stream_to is not None and status == 200:
            n = 0
            while True:
                chunk = resp.read(1 << 20)
                if not chunk:
                    break
                stream_to.write(chunk)
                if hasher is not None:
                    hasher.update(chunk)
                n += len(chunk)
            self.bytes_received += n
            return status, rh, b""
        data = resp.read() if method != "HEAD" else b""
        self.bytes_received += len(data)
        return status, rh, data

    def _fail(self, what: str, status: int, data: bytes):
        try:
            errs = json.loads(data).get("errors") or []
            detail = "; ".join(f"{e.get('code')}: {e.get('message')}" for e in errs)
        except (ValueError, AttributeError):
            detail = data[:200].decode("utf-8", "replace").strip()
        if status == 404:
            raise ImageNotFoundError(f"{what}: not found ({detail or 'HTTP 404'})")
        raise RegistryError(f"{what}: HTTP {status} ({detail})")

    # ------------------------------------------------------------ check
    def ping(self) -> None:
        """``GET /v2/``: is this a distribution API?"""
        st, h, data = self._request("GET", "/v2/")
        if st != 200:
            self._fail(f"{self.url}/v2/", st, data)

    # ------------------------------------------------------------ pull
    def manifest(self, repo: str, ref: str, *, platform: str = "linux/amd64") -> tuple[bytes, str, str]:
        """``(manifest bytes, media type, digest)`` for a tag or digest; an
        index is followed to the manifest of ``platform``."""
        body, mt, digest = self._get_manifest(repo, ref)
        if mt in _INDEXES or (not mt and b'"manifests"' in body):
            idx = _json(body, f"{repo}:{ref} index")
            want = parse_platform(platform)
            offered, chosen = [], None
            for d in idx.get("manifests") or []:
                p = d.get("platform") or {}
                offered.append("/".join(x for x in (p.get("os"), p.get("architecture"), p.get("variant")) if x))
                if p.get("os") == want[0] and p.get("architecture") == want[1] and \
                        (want[2] is None or p.get("variant") in (want[2], None)):
                    chosen = d
                    break
            if chosen is None:
                raise ImageNotFoundError(f"no matching manifest for {platform} in the manifest list entries "
                                         f"of {repo}:{ref} (offered: {', '.join(offered) or 'none'})")
            body, mt, digest = self._get_manifest(repo, chosen["digest"])
        return body, mt, digest

    def _get_manifest(self, repo, ref):
        st, h, data = self._request("GET", f"/v2/{repo}/manifests/{ref}", headers={"Accept": ACCEPT_MANIFESTS})
        if st != 200:
            if st == 404:
                raise ImageNotFoundError(f"manifest for {repo}:{ref} not found: manifest unknown")
            self._fail(f"manifest {repo}:{ref}", st, data)
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        want = ref if ref.startswith("sha256:") else h.get("docker-content-digest")
        if want and want != digest:
            raise ImageFormatError(f"manifest {repo}@{want}: the registry sent content with digest {digest}")
        mt = h.get("content-type", "").split(";")[0].strip()
        try:
            mt = json.loads(data).get("mediaType") or mt
        except (ValueError, AttributeError):
            pass
        return data, mt, digest

    def blob(self, repo: str, digest: str, out_path: str) -> int:
        """Fetch a blob to ``out_path``, checking its digest; returns its size."""
        if not _DIGEST.match(digest):
            raise ImageFormatError(f"blob digest {digest!r} is not sha256:<64 hex>")
        hasher = hashlib.sha256()
        part = out_path + ".partial"
        try:
            with open(part, "wb") as f:
                st, h, data = self._request("GET", f"/v2/{repo}/blobs/{digest}", stream_to=f, hasher=hasher)
            if st != 200:
                self._fail(f"blob {repo}@{digest}", st, data)
            got = "sha256:" + hasher.hexdigest()
            if got != digest:
                raise ImageFormatError(f"blob {repo}@{digest}: digest mismatch: the registry sent content "
                                       f"with digest {got}")
            os.replace(part, out_path)
        finally:
            if os.path.exists(part):
                os.unlink(part)
        return os.path.getsize(out_path)

    def blob_bytes(self, repo: str, digest: str) -> bytes:
        st, h, data = self._request("GET", f"/v2/{repo}/blobs/{digest}")
        if st != 200:
            self._fail(f"blob {repo}@{digest}", st, data)
        got = "sha256:" + hashlib.sha256(data).hexdigest()
        if got != digest:
            raise ImageFormatError(f"blob {repo}@{digest}: digest mismatch: the registry sent content "
                                   f"with digest {got}")
        return data

    # ------------------------------------------------------------ push
    def has_blob(self, repo: str, digest: str) -> bool:
        st, _h, _d = self._request("HEAD", f"/v2/{repo}/blobs/{digest}")
        return st == 200

    def mount_blob(self, repo: str, digest: str, from_repo: str) -> bool:
        """Link a blob of ``from_repo`` into ``repo`` without sending it."""
        q = urllib.parse.urlencode({"mount": digest, "from": from_repo})
        st, h, data = self._request("POST", f"/v2/{repo}/blobs/uploads/?{q}", b"")
        if st == 201:
            return True
        if st == 202 and "location" in h:       # not mountable: cancel the upload it opened
            self._request("DELETE", h["location"])
        return False

    def upload_blob(self, repo: str, digest: str, path: str | None = None, data: bytes | None = None,
                    chunk_size: int = 0) -> None:
        """Upload a blob (from a file or bytes): monolithic, or PATCH chunks of ``chunk_size``."""
        st, h, body = self._request("POST", f"/v2/{repo}/blobs/uploads/", b"")
        if st != 202 or "location" not in h:
            self._fail(f"upload to {repo}", st, body)
        loc = h["location"]
        size = len(data) if data is not None else os.path.getsize(path)
        sep = lambda u: "&" if "?" in u else "?"   # noqa: E731
        if chunk_size <= 0 or size <= chunk_size:
            if data is not None:
                st, h, body = self._request("PUT", f"{loc}{sep(loc)}digest={digest}", data,
                                            {"Content-Type": "application/octet-stream"})
            else:
                with open(path, "rb") as f:
                    st, h, body = self._request("PUT", f"{loc}{sep(loc)}digest={digest}", f,
                                                {"Content-Type": "application/octet-stream"})
        else:
            src = open(path, "rb") if data is None else None
            try:
                off = 0
                while off < size:
                    chunk = data[off:off + chunk_size] if data is not None else src.read(chunk_size)
                    st, h, body = self._request("PATCH", loc, chunk, {
                        "Content-Type": "application/octet-stream",
                        "Content-Range": f"{off}-{off + len(chunk) - 1}"})
                    if st != 202:
                        self._fail(f"chunk {off} of {digest} to {repo}", st, body)
                    loc = h.get("location", loc)
                    off += len(chunk)
            finally:
                if src is not None:
                    src.close()
            st, h, body = self._request("PUT", f"{loc}{sep(loc)}digest={digest}", b"")
        if st != 201:
            self._fail(f"upload of {digest} to {repo}", st, body)

    def put_manifest(self, repo: str, tag: str, body: bytes, media_type: str) -> str:
        st, h, data = self._request("PUT", f"/v2/{repo}/manifests/{tag}", body, {"Content-Type": media_type})
        if st != 201:
            self._fail(f"manifest {repo}:{tag}", st, data)
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        if h.get("docker-content-digest", digest) != digest:
            raise ImageFormatError(f"manifest {repo}:{tag}: the registry recorded digest "
                                   f"{h['docker-content-digest']}, not {digest}")
        return digest

    # ------------------------------------------------------------ search
    def _paged(self, path: str, key: str) -> list[str]:
        out: list[str] = []
        while path:
            st, h, data = self._request("GET", path)
            if st != 200:
                self._fail(path, st, data)
            out += _json(data, path).get(key) or []
            m = re.search(r"<([^>]+)>;\s*rel=\"?next\"?", h.get("link", ""))
            path = m.group(1) if m else None
        return out

    def catalog(self) -> list[str]:
        return self._paged("/v2/_catalog?n=100", "repositories")

    def tags(self, repo: str) -> list[str]:
        return self._paged(f"/v2/{repo}/tags/list?n=100", "tags")


def _json(data: bytes, what: str) -> dict:
    try:
        obj = json.loads(data)
    except ValueError as e:
        raise ImageFormatError(f"{what}: not JSON ({e})") from None
    if not isinstance(obj, dict):
        raise ImageFormatError(f"{what}: not a JSON object")
    return obj


