"""``kdnb`` on the command line: list the data sets and profiles, fetch a data set on a machine
with internet, and show, clear or prune the cache."""
import argparse
import sys


def main(argv=None):
    parser = argparse.ArgumentParser(prog="kdnb", description="Helpers of the kdnb knowledge-distillation book.")
    sub = parser.add_subparsers(dest="command", metavar="command")
    sub.add_parser("list", help="list data sets and profiles")
    dl = sub.add_parser("download", help="download a torchvision data set (needs internet)")
    dl.add_argument("name", help="mnist, fashion_mnist, cifar10 or svhn")
    dl.add_argument("--root", default=None, help="folder to put it in (default $KDNB_DATA)")
    c = sub.add_parser("cache", help="show, clear or prune the cache of trained models and teacher outputs")
    c.add_argument("action", nargs="?", default="show", choices=["show", "clear", "prune"],
                   help="show (default): where it is and what it holds; clear: delete every entry; "
                        "prune: delete the entries that no current code can hit")
    args = parser.parse_args(argv)

    if args.command == "list":
        from . import data, profiles
        print("data sets:", ", ".join(data.NAMES))
        for p in profiles.PROFILES.values():
            print(f"profile {p.name}: data={p.data} teacher={p.teacher} student={p.student}")
    elif args.command == "download":
        from . import data
        if args.name not in data.TORCHVISION:
            parser.error(f"name must be one of {', '.join(data.TORCHVISION)}, got {args.name!r}")
        root = data.data_root(args.root)
        root.mkdir(parents=True, exist_ok=True)
        print(data.load(args.name, root=root, download=True))
    elif args.command == "cache":
        cache(args.action)
    else:
        parser.print_help()
    return 0


def stale(config):
    """Whether no current code can hit an entry: the code it was keyed on has changed (or is gone)."""
    import importlib
    from . import store
    code = config.get("code") if isinstance(config, dict) else None
    if code is None:
        return not isinstance(config, dict)  # data: keyed on its generator, never stale; unreadable: stale
    if not isinstance(code, dict):
        return True  # a key from before per-module code hashes
    for name, digest in code.items():
        try:
            if store.source_hash(importlib.import_module(name)) != digest:
                return True
        except ImportError:
            return True
    return False


def cache(action):
    from . import store
    entries = store.entries()
    size = lambda items: f"{len(items)} entries, {sum(e[1] for e in items) / 1e6:.1f} MB"
    if action == "show":
        print(f"{store.cache_dir()}: {size(entries)}")
        for kind in sorted({p.parent.name for p, _, _ in entries}):
            print(f"  {kind}: {size([e for e in entries if e[0].parent.name == kind])}")
        return
    drop = entries if action == "clear" else [e for e in entries if stale(e[2])]
    freed = store.remove(p for p, _, _ in drop)
    print(f"{store.cache_dir()}: removed {len(drop)} entries ({freed / 1e6:.1f} MB); "
          f"kept {size([e for e in entries if e not in drop])}")


if __name__ == "__main__":
    sys.exit(main())
