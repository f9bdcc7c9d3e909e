"""Reference parsing against Docker's rules (distribution/reference)."""
import pytest

from thinp.image import Reference


@pytest.mark.parametrize("text, domain, path, tag, digest", [
    ("busybox", "docker.io", "library/busybox", "latest", None),
    ("busybox:1.36", "docker.io", "library/busybox", "1.36", None),
    ("user/app", "docker.io", "user/app", "latest", None),
    ("user/app:v1.0-rc_2", "docker.io", "user/app", "v1.0-rc_2", None),
    ("docker.io/busybox", "docker.io", "library/busybox", "latest", None),
    ("index.docker.io/busybox", "docker.io", "library/busybox", "latest", None),
    ("docker.io/library/busybox:latest", "docker.io", "library/busybox", "latest", None),
    ("localhost/app", "localhost", "app", "latest", None),
    ("localhost:5000/whiteout:latest", "localhost:5000", "whiteout", "latest", None),
    ("registry.example.com/team/sub/app:1", "registry.example.com", "team/sub/app", "1", None),
    ("myhost:443/a/b", "myhost:443", "a/b", "latest", None),
    ("ghcr.io/o/i@sha256:" + "a" * 64, "ghcr.io", "o/i", None, "sha256:" + "a" * 64),
    ("busybox:1@sha256:" + "b" * 64, "docker.io", "library/busybox", "1", "sha256:" + "b" * 64),
    ("ab-c__d/e-f", "docker.io", "ab-c__d/e-f", "latest", None),
    ("foo/bar", "docker.io", "foo/bar", "latest", None),
    ("foo.com/bar", "foo.com", "bar", "latest", None),
])
def test_parse(text, domain, path, tag, digest):
    r = Reference.parse(text)
    assert (r.domain, r.path, r.tag, r.digest) == (domain, path, tag, digest)


def test_familiar_and_canonical():
    r = Reference.parse("busybox")
    assert str(r) == "docker.io/library/busybox:latest"
    assert r.familiar == "busybox:latest"
    assert Reference.parse("user/app:1").familiar == "user/app:1"
    assert Reference.parse("localhost:5000/x").familiar == "localhost:5000/x:latest"
    assert Reference.parse("docker.io/library/a/b").familiar == "library/a/b:latest"


@pytest.mark.parametrize("text, why", [
    ("", "empty"),
    ("Busybox", "lowercase"),
    ("user/App:1", "lowercase"),
    ("user//app", "empty path component"),
    ("/app", "empty"),
    ("app/", "empty path component"),
    ("app:", "empty tag"),
    ("app:bad/tag", "bad registry"),   # a ":" in the first component makes it a registry
    ("app:-dash", "bad characters in tag"),
    ("app:" + "t" * 129, "longer than 128"),
    ("app:ta$g", "bad characters in tag"),
    ("app@sha256:abc", "bad digest"),
    ("app@sha256:" + "A" * 64, "64 lowercase hex"),
    ("a" * 64, "64-byte hexadecimal"),
    ("app__-x", "bad path component"),
    ("-app", "bad path component"),
    ("reg-.com/app", "bad registry"),
    ("x/" + "a" * 260, "more than 255"),
])
def test_invalid(text, why):
    with pytest.raises(ValueError, match=why):
        Reference.parse(text)


def test_tag_of_exactly_128_is_fine():
    assert Reference.parse("app:" + "t" * 128).tag == "t" * 128


def test_uppercase_registry_is_a_domain():
    # Docker treats an uppercase first component as a registry, not a repo
    r = Reference.parse("MyReg/app")
    assert r.domain == "MyReg" and r.path == "app"
