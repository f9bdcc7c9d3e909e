"""Hypothesis state machine over the engine's verbs on the reference driver.

Whatever the order of import/commit/tag/create/write/rm/rmi/save+load, the
driver holds exactly the layers something needs: every image's ChainIDs,
every container's ``<id>-init`` and ``<id>`` and its image's chain (even
after a forced ``rmi``), and nothing else; and the store's users are the
containers."""
from __future__ import annotations

import io
import os
import tarfile
import tempfile

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from thinp.engine import ContainerConflictError, Engine
from thinp.errors import ImageConflictError, ImageNotFoundError

TAGS = ["a:1", "a:2", "b:latest", "c/d:x"]


def _tar(seed: int) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name in ("etc/", f"etc/f{seed}", "shared"):
            ti = tarfile.TarInfo(name.rstrip("/"))
            if name.endswith("/"):
                ti.type = tarfile.DIRTYPE
                tf.addfile(ti)
            else:
                data = (name + str(seed if name != "shared" else 0)).encode()
                ti.size = len(data)
                tf.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


class EngineMachine(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.tmp = tempfile.TemporaryDirectory(prefix="thinp-engine-sm-")
        self.e = Engine("reference", root=os.path.join(self.tmp.name, "e"), payload=True)
        self.n = 0

    def teardown(self):
        self.e.close()
        self.tmp.cleanup()

    def _image_ids(self):
        return list(self.e.store.images)

    @rule(seed=st.integers(0, 3), tag=st.sampled_from(TAGS))
    def import_image(self, seed, tag):
        self.n += 1
        self.e.import_(_tar(seed), tag, created=f"2024-01-01T00:00:{self.n % 60:02d}Z")

    @precondition(lambda self: self.e.store.images)
    @rule(data=st.data())
    def create(self, data):
        img = data.draw(st.sampled_from(self._image_ids()))
        self.e.create(img)

    @precondition(lambda self: self.e.containers)
    @rule(data=st.data(), payload=st.binary(min_size=0, max_size=20))
    def write(self, data, payload):
        c = data.draw(st.sampled_from(list(self.e.containers)))
        self.n += 1
        self.e.container(c).write(f"/w{self.n % 3}", 0, payload)

    @precondition(lambda self: self.e.containers)
    @rule(data=st.data(), tag=st.none() | st.sampled_from(TAGS))
    def commit(self, data, tag):
        c = data.draw(st.sampled_from(list(self.e.containers)))
        try:
            self.n += 1
            self.e.commit(c, tag, created=f"2024-01-02T00:00:{self.n % 60:02d}Z")
        except ImageNotFoundError:
            assert self.e.containers[c].image_id not in self.e.store.images

    @precondition(lambda self: self.e.store.images)
    @rule(data=st.data(), tag=st.sampled_from(TAGS))
    def tag(self, data, tag):
        self.e.tag(data.draw(st.sampled_from(self._image_ids())), tag)

    @precondition(lambda self: self.e.containers)
    @rule(data=st.data(), force=st.booleans(), start=st.booleans())
    def rm(self, data, force, start):
        c = self.e.container(data.draw(st.sampled_from(list(self.e.containers))))
        if start:
            self.e.start(c)
        try:
            self.e.rm(c, force=force)
        except ContainerConflictError:
            assert c.state == "running" and not force

    @precondition(lambda self: self.e.store.images)
    @rule(data=st.data(), by_tag=st.booleans(), force=st.booleans())
    def rmi(self, data, by_tag, force):
        refs = list(self.e.store.refs)
        if by_tag and refs:
            ref = data.draw(st.sampled_from(refs))
        else:
            ref = data.draw(st.sampled_from(self._image_ids()))
        try:
            self.e.rmi(ref, force=force)
        except ImageConflictError:
            assert not force, "forced rmi is never refused"

    @precondition(lambda self: self.e.store.refs)
    @rule(data=st.data())
    def save_and_load(self, data):
        ref = data.draw(st.sampled_from(list(self.e.store.refs)))
        out = os.path.join(self.tmp.name, "save.tar")
        self.e.save(ref, out)
        before = self.e.metrics()["layers_created"]
        self.e.load(out)
        assert self.e.metrics()["layers_created"] == before     # everything is shared
        os.unlink(out)

    @invariant()
    def driver_holds_exactly_the_needed_layers(self):
        want = {cid[7:] for img in self.e.store.images.values() for cid in img.chain_ids}
        for c in self.e.containers.values():
            want |= {c.id, c.init_id} | {cid[7:] for cid in c.chain_ids}
        assert set(self.e.driver.list_layers()) == want

    @invariant()
    def users_are_the_containers(self):
        users = {(i, c) for i, cs in self.e.store.users.items() for c in cs}
        want = {(c.image_id, c.id) for c in self.e.containers.values()
                if c.image_id in self.e.store.images}
        assert users == want


TestEngineMachine = EngineMachine.TestCase
TestEngineMachine.settings = settings(max_examples=40, stateful_step_count=25, deadline=None,
                                      derandomize=True,
                                      suppress_health_check=[HealthCheck.too_slow])
