"""Image references, parsed by Docker's rules (distribution/reference).

``Reference.parse("registry[:port]/user/name:tag@sha256:...")``:

* the first ``/``-separated component is a registry when it contains ``.``
  or ``:``, or is ``localhost``; otherwise the registry is ``docker.io``;
* on ``docker.io`` a single-component name gets ``library/``;
  ``index.docker.io`` is an alias of ``docker.io``;
* the tag defaults to ``latest`` unless a digest is given;
* repository path components are lowercase ``[a-z0-9]+`` joined by ``.``,
  ``_``, ``__`` or runs of ``-``; tags are ``[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}``;
  digests are ``algorithm:hex`` (sha256 needs 64 lowercase hex digits);
* the whole name is at most 255 characters.

Anything else is a ``ValueError`` saying why.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["Reference", "DEFAULT_REGISTRY", "DEFAULT_TAG"]

DEFAULT_REGISTRY = "docker.io"
LEGACY_REGISTRY = "index.docker.io"
OFFICIAL_PREFIX = "library/"
DEFAULT_TAG = "latest"
NAME_TOTAL_MAX = 255

_PATH_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*\Z")
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = re.compile(
    rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[a-fA-F0-9:]+\])(?::[0-9]+)?\Z")
_TAG = re.compile(r"[\w][\w.-]{0,127}\Z", re.ASCII)
_DIGEST = re.compile(r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}\Z")
_HEX64 = re.compile(r"[a-f0-9]{64}\Z")


@dataclass(frozen=True, slots=True)
class Reference:
    domain: str
    path: str
    tag: str | None = None
    digest: str | None = None

    @classmethod
    def parse(cls, text: str, *, default_tag: bool = True) -> "Reference":
        if not isinstance(text, str) or not text:
            raise ValueError("invalid reference format: empty reference")
        rest = text
        digest = None
        if "@" in rest:
            rest, digest = rest.split("@", 1)
            if not _DIGEST.match(digest):
                raise ValueError(f"invalid reference format: bad digest {digest!r} in {text!r}")
            algo, hexpart = digest.split(":", 1)
            if algo == "sha256" and not _HEX64.match(hexpart):
                raise ValueError(
                    f"invalid reference format: sha256 digest needs 64 lowercase hex digits in {text!r}")
        tag = None
        slash = rest.rfind("/")
        colon = rest.rfind(":")
        if colon > slash:
            rest, tag = rest[:colon], rest[colon + 1:]
            if not tag:
                raise ValueError(f"invalid reference format: empty tag in {text!r}")
            if len(tag) > 128:
                raise ValueError(f"invalid reference format: tag {tag[:20]!r}... is longer than 128 characters")
            if not _TAG.match(tag):
                raise ValueError(f"invalid reference format: bad characters in tag {tag!r}")
        if not rest:
            raise ValueError(f"invalid reference format: empty repository name in {text!r}")
        if _HEX64.match(rest) and tag is None and digest is None:
            raise ValueError(
                f"invalid repository name ({rest}), cannot specify 64-byte hexadecimal strings")
        first, sep, remainder = rest.partition("/")
        if sep and ("." in first or ":" in first or first == "localhost"
                    or first.lower() != first):
            domain, path = first, remainder
            if not _DOMAIN.match(domain):
                raise ValueError(f"invalid reference format: bad registry {domain!r} in {text!r}")
        else:
            domain, path = DEFAULT_REGISTRY, rest
        if domain == LEGACY_REGISTRY:
            domain = DEFAULT_REGISTRY
        if not path:
            raise ValueError(f"invalid reference format: empty repository path in {text!r}")
        for comp in path.split("/"):
            if not comp:
                raise ValueError(f"invalid reference format: empty path component in {text!r}")
            if not _PATH_COMPONENT.match(comp):
                if _PATH_COMPONENT.match(comp.lower()):
                    raise ValueError(
                        f"invalid reference format: repository name {path!r} must be lowercase")
                raise ValueError(
                    f"invalid reference format: bad path component {comp!r} in {text!r}")
        if domain == DEFAULT_REGISTRY and "/" not in path:
            path = OFFICIAL_PREFIX + path
        name = f"{domain}/{path}"
        if len(name) > NAME_TOTAL_MAX:
            raise ValueError(
                f"invalid reference format: repository name is {len(name)} characters, "
                f"more than {NAME_TOTAL_MAX}")
        if tag is None and digest is None and default_tag:
            tag = DEFAULT_TAG
        return cls(domain, path, tag, digest)

    @property
    def name(self) -> str:
        """Canonical repository name, e.g. ``docker.io/library/busybox``."""
        return f"{self.domain}/{self.path}"

    @property
    def familiar_name(self) -> str:
        """The short form Docker prints: ``busybox``, ``user/app``, ``localhost:5000/x``."""
        if self.domain == DEFAULT_REGISTRY:
            if self.path.startswith(OFFICIAL_PREFIX) and self.path.count("/") == 1:
                return self.path[len(OFFICIAL_PREFIX):]
            return self.path
        return self.name

    def _suffix(self) -> str:
        s = f":{self.tag}" if self.tag is not None else ""
        return s + (f"@{self.digest}" if self.digest else "")

    def __str__(self) -> str:
        return self.name + self._suffix()

    @property
    def familiar(self) -> str:
        """``busybox:latest``, as ``docker images`` shows RepoTags."""
        return self.familiar_name + self._suffix()
