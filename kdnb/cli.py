"""``kdnb`` on the command line: list the data sets and profiles, fetch a data set on a machine
with internet, and show the cache."""
import argparse
import sys


def main(argv=None):
    parser = argparse.ArgumentParser(prog="kdnb", description="Helpers of the kdnb knowledge-distillation book.")
    sub = parser.add_subparsers(dest="command", metavar="command")
    sub.add_parser("list", help="list data sets and profiles")
    dl = sub.add_parser("download", help="download a torchvision data set (needs internet)")
    dl.add_argument("name", help="mnist, fashion_mnist, cifar10 or svhn")
    dl.add_argument("--root", default=None, help="folder to put it in (default $KDNB_DATA)")
    sub.add_parser("cache", help="show where the cache is and what it holds")
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
        from .cache import cache_dir
        d = cache_dir()
        files = list(d.rglob("*.pt")) if d.exists() else []
        print(f"{d}: {len(files)} entries, {sum(f.stat().st_size for f in files) / 1e6:.1f} MB")
    else:
        parser.print_help()
    return 0


if __name__ == "__main__":
    sys.exit(main())
