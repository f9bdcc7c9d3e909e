"""A workload file is checked when it loads, by one container on the
reference driver: a step acting on a path nothing made is one error line
naming the file, the step and the path -- before any driver runs."""
from __future__ import annotations

import pytest

from thinp.cli import main
from thinp.workloads import WorkloadError, load

HEAD = 'name = "w"\ncontainers = 3\n[image]\nprofile = "debian-minbase"\n'


@pytest.mark.parametrize("steps, msg", [
    ('[[steps]]\nop = "mkdir"\npath = "/data"\n[[steps]]\nop = "read"\npath = "/data/never.db"\n',
     "steps[1] (read /data/never.db): No such file or directory; nothing made it before this step"),
    ('[[steps]]\nop = "delete"\npath = "/nope/x"\n',
     "steps[0] (delete /nope/x): No such file or directory"),
    ('[[steps]]\nop = "rename"\npath = "/etc/hostname"\nto = "/no/such/dir/h"\n',
     "steps[0] (rename /etc/hostname)"),
])
def test_a_step_on_a_missing_path_fails_at_load(tmp_path, steps, msg):
    p = tmp_path / "w.toml"
    p.write_text(HEAD + steps)
    with pytest.raises(WorkloadError) as e:
        load(p)
    assert str(e.value).startswith(f"{p}: ") and msg in str(e.value)
    load(p, check=False)            # the format itself is fine: only the dry run refuses


def test_compare_refuses_it_before_any_driver_runs(tmp_path, capsys):
    p = tmp_path / "w.toml"
    p.write_text(HEAD + '[[steps]]\nop = "overwrite"\npath = "/srv/missing.bin"\nsize = "4K"\n')
    assert main(["compare", str(p), "--drivers", "overlay2,devicemapper", "-q", "--out", str(tmp_path / "o")]) == 1
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1
    assert err.startswith(f"thinp: error: {p}: steps[0] (overwrite /srv/missing.bin)")
    assert not (tmp_path / "o").exists()


def test_a_good_workload_file_loads(tmp_path):
    p = tmp_path / "w.toml"
    p.write_text(HEAD + '[[steps]]\nop = "append"\npath = "/var/log/a-{c}.log"\nsize = "100"\ncount = 3\n'
                 '[[steps]]\nop = "read"\npath = "/var/log/a-{c}.log"\n')
    assert load(p).containers == 3
