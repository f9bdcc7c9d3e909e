"""``thinp docker``: Docker's image and container commands over a persistent
engine root (:mod:`thinp.docker`): parse, call the daemon, print as docker does."""
from __future__ import annotations

import argparse
import sys

from . import _output as out
from ._common import int_range

_JSON_HELP = "table (docker's columns, default) or json"


def register(sub) -> None:
    d = sub.add_parser("docker",
                       help="docker's image commands over a persistent root (pull, run, commit, push, build...)")
    d.add_argument("--root", default=None, help="the engine root (default ~/.local/share/thinp/docker)")
    d.add_argument("-s", "--storage-driver", default=None,
                   help="storage driver of a new root (default overlay2; an existing root keeps its own)")
    d.add_argument("--storage-opt", action="append", default=[], metavar="K=V", help="a driver option, as dockerd's")
    d.add_argument("--stats", action="store_true", help="after the command, print what the driver did (stderr)")
    s = d.add_subparsers(dest="docker_cmd", metavar="COMMAND", parser_class=type(d))
    d.set_defaults(func=lambda a: (d.print_help(), 2)[1])

    def cmd(name, fn, help, fmt=False):
        p = s.add_parser(name, help=help)
        if fmt:
            p.add_argument("--format", choices=("table", "json"), default="table", help=_JSON_HELP)
        p.set_defaults(func=lambda a: _run(a, fn))
        return p

    p = cmd("images", _images, "list images", fmt=True)
    p.add_argument("-a", "--all", action="store_true", help="show intermediate images too")
    p.add_argument("-q", "--quiet", action="store_true", help="only image IDs")
    for name, fn, what in (("pull", _pull, "pull an image from a registry"),
                           ("push", _push, "push an image to a registry")):
        p = cmd(name, fn, what, fmt=True)
        p.add_argument("ref", help="NAME[:TAG|@DIGEST]; a loopback registry host names the registry")
        p.add_argument("--registry", default=None,
                       help="http://127.0.0.1:PORT or oci:DIR (default: the reference's registry host)")
        if name == "pull":
            p.add_argument("--platform", default="linux/amd64", help="os/arch[/variant] from an index")
        else:
            p.add_argument("--chunk-size", type=int_range(0), default=0, help="upload blobs in chunks of this many bytes")
    p = cmd("search", _search, "list a registry's repositories and tags", fmt=True)
    p.add_argument("term", nargs="?", default="", help="a substring of the repository name")
    p.add_argument("--registry", required=True, help="http://127.0.0.1:PORT or oci:DIR")
    p = cmd("tag", _tag, "add a tag to an image")
    p.add_argument("source", help='the image to tag')
    p.add_argument("target", help='the new NAME[:TAG]')
    p = cmd("rmi", _rmi, "remove images")
    p.add_argument("images", nargs="+", help='images to remove')
    p.add_argument("-f", "--force", action="store_true", help='remove even when containers use them')
    p.add_argument("--no-prune", action="store_true", help="keep untagged parents")
    p = cmd("history", _history, "an image's steps", fmt=True)
    p.add_argument("image", help='the image')
    p = cmd("inspect", _inspect, "images or containers as JSON")
    p.add_argument("names", nargs="+", help='images or containers')
    p = cmd("commit", _commit, "a container's changes as a new image")
    p.add_argument("container", help='the container')
    p.add_argument("repo_tag", nargs="?", default=None, help='NAME[:TAG] for the new image')
    p.add_argument("-m", "--message", default="", help='the commit message')
    p.add_argument("-a", "--author", default="", help='the author')
    p.add_argument("-c", "--change", action="append", default=[], help="a Dockerfile instruction (CMD, ENV...)")
    p = cmd("build", _build, "build an image from a Dockerfile", fmt=True)
    p.add_argument("context", help="the build context directory")
    p.add_argument("-f", "--file", default=None, help="the Dockerfile (default CONTEXT/Dockerfile)")
    p.add_argument("-t", "--tag", action="append", default=[], help="NAME[:TAG] for the result")
    p.add_argument("--build-arg", action="append", default=[], metavar="K=V", help='a build argument')
    p.add_argument("--no-cache", action="store_true", help='build every step, using no cache')
    p = cmd("save", _save, "images to a tar archive")
    p.add_argument("images", nargs="+", help='images to save')
    p.add_argument("-o", "--output", required=True, help="the archive to write")
    p = cmd("load", _load, "images from a tar archive")
    p.add_argument("-i", "--input", required=True, help='the archive to load')
    p = cmd("export", _export, "a container's filesystem as one flat tar")
    p.add_argument("container", help='the container')
    p.add_argument("-o", "--output", required=True, help='the tar to write')
    p = cmd("import", _import, "a flat rootfs tar as a one-layer image")
    p.add_argument("file", help='a rootfs tar')
    p.add_argument("repo_tag", nargs="?", default=None, help='NAME[:TAG] for the image')
    p.add_argument("-c", "--change", action="append", default=[], help='a Dockerfile instruction (CMD, ENV...)')
    p.add_argument("-m", "--message", default="", help='the commit message')
    for name, fn, what in (("create", _create, "create a container"),
                           ("run", _run_cmd, "run a command in a new container")):
        p = cmd(name, fn, what)
        p.add_argument("--name", default=None, help="the container's name")
        if name == "run":
            p.add_argument("--rm", action="store_true", help='remove the container when it ends')
            p.add_argument("--thinp-trace", default=None, metavar="FILE", help="an strace of what ran, replayed")
            p.add_argument("--thinp-steps", default=None, metavar="FILE",
                           help='a JSON list of view operations, e.g. [["write", "/f", 0, 4096]]')
        p.add_argument("image", help='the image')
        p.add_argument("command", nargs=argparse.REMAINDER, help='the command and its arguments')
    p = cmd("diff", _diff, "a container's changes (A/C/D)")
    p.add_argument("container", help='the container')
    p = cmd("ps", _ps, "list containers", fmt=True)
    p.add_argument("-a", "--all", action="store_true", help='list stopped containers too')
    p.add_argument("-q", "--quiet", action="store_true", help='only container IDs')
    p = cmd("rm", _rm, "remove containers")
    p.add_argument("containers", nargs="+", help='containers to remove')
    p.add_argument("-f", "--force", action="store_true", help='remove running containers too')
    cmd("info", _info, "the engine and its storage driver", fmt=True)
    p = cmd("system", _system, "docker system df", fmt=True)
    p.add_argument("what", choices=("df",), help='what to report')


def _run(args, fn) -> int:
    from ..docker import output
    from ..docker.daemon import Daemon

    with Daemon(args.root, args.storage_driver, args.storage_opt) as d:
        rc = fn(d, args) or 0
        if args.stats:
            sys.stderr.write(output.stats({**d.stats(), **getattr(d, "transfer", {})}) + "\n")
    return rc


def _lines(lines) -> None:
    for ln in lines:
        out.line(ln)


def _fmt():
    from ..docker import output

    return output


def _images(d, a):
    rows = d.images(all=a.all)
    if a.format == "json":
        return out.write_json(rows)
    if a.quiet:
        return _lines(dict.fromkeys(r["id"] for r in rows))
    _lines(_fmt().images(rows))


def _pull(d, a):
    res = d.pull(a.ref, registry=a.registry, platform=a.platform)
    out.write_json(res) if a.format == "json" else _lines(res["lines"])


def _push(d, a):
    res = d.push(a.ref, registry=a.registry, chunk_size=a.chunk_size)
    out.write_json(res) if a.format == "json" else _lines(res["lines"])


def _search(d, a):
    rows = d.search(a.term, registry=a.registry)
    if a.format == "json":
        return out.write_json(rows)
    _lines(_fmt().tabwrite([["NAME", "TAGS"]] + [[r["name"], ",".join(r["tags"])] for r in rows]))


def _tag(d, a):
    d.tag(a.source, a.target)


def _rmi(d, a):
    _lines(f"{k}: {v}" for k, v in d.rmi(a.images, force=a.force, prune=not a.no_prune))


def _history(d, a):
    rows = d.history(a.image)
    out.write_json(rows) if a.format == "json" else _lines(_fmt().history(rows))


def _inspect(d, a):
    out.write_json(d.inspect(a.names))


def _commit(d, a):
    out.line(d.commit(a.container, a.repo_tag, message=a.message, author=a.author, changes=a.change))


def _build(d, a):
    res = d.build(a.context, dockerfile=a.file, tags=a.tag, build_args=a.build_arg, no_cache=a.no_cache)
    out.write_json(res) if a.format == "json" else _lines(res["lines"])


def _save(d, a):
    d.save(a.images, a.output)


def _load(d, a):
    _lines(f"{k}: {v}" for k, v in d.load(a.input))


def _export(d, a):
    d.export(a.container, a.output)


def _import(d, a):
    out.line(d.import_(a.file, a.repo_tag, changes=a.change, message=a.message))


def _create(d, a):
    out.line(d.create(a.image, name=a.name, cmd=a.command).id)


def _run_cmd(d, a):
    res = d.run(a.image, a.command, name=a.name, trace=a.thinp_trace, steps=a.thinp_steps, rm=a.rm)
    sys.stdout.write(res["output"])
    if res["how"] != "executed":
        out.note(f"container {res['id'][:12]}: replayed {res['how']} ({res['replay'].get('applied', 0)} operations)")
    return res["exit_code"]


def _diff(d, a):
    _lines(_fmt().diff(d.diff(a.container)))


def _ps(d, a):
    rows = d.ps(all=a.all)
    if a.format == "json":
        return out.write_json(rows)
    if a.quiet:
        return _lines(r["id"] for r in rows)
    _lines(_fmt().ps(rows))


def _rm(d, a):
    _lines(d.rm(a.containers, force=a.force))


def _info(d, a):
    info = d.info()
    out.write_json(info) if a.format == "json" else _lines(_fmt().info(info))


def _system(d, a):
    rows = d.system_df()
    out.write_json(rows) if a.format == "json" else _lines(_fmt().system_df(rows))
