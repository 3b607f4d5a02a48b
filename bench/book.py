"""How long each chapter takes to execute in the quick profile, from an empty cache and a warm one.

Every chapter (a ``book/*.md`` with a jupytext header) is read with jupytext and run top to bottom by nbclient in a fresh kernel, in
``book/`` as its working directory (as ``make book`` runs it), with ``KDNB_PROFILE=quick`` and
``KDNB_PROGRESS=0``:

- ``cold``: ``KDNB_CACHE`` points at a new, empty folder of the chapter's own, so the chapter
  makes everything it needs (data, teachers, students) itself: what a reader who opens that
  chapter first waits for. The whole book built cold in one shared cache costs at most their sum;
- ``warm``: the same chapter again on the cache its cold run filled: what a rebuild costs.

Both include the kernel's start and imports; the ``kernel start`` row (an empty notebook) shows
how much that is. Goals: every chapter ≤ 90 s cold, the whole book ≤ 15 min.

    python bench/book.py [--quick] [--repeats 1] [--chapters 00_intro,02_hinton_kd]
"""
import os
import tempfile
import time
from pathlib import Path

import common

BOOK = common.ROOT / "book"
GOAL_CHAPTER, GOAL_BOOK = 90.0, 15 * 60.0


def run(nb, cache, timeout=900):
    """Execute notebook ``nb`` with ``KDNB_CACHE=cache``; returns (wall seconds, slowest cell)."""
    import nbclient
    env = {"KDNB_CACHE": str(cache), "KDNB_PROFILE": "quick", "KDNB_PROGRESS": "0"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the kernel inherits this process's environment
    try:
        t0 = time.perf_counter()
        nbclient.NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(BOOK)}},
                                extra_arguments=["--IPKernelApp.log_level=ERROR"]).execute()
        wall = time.perf_counter() - t0
    finally:
        for k, v in saved.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    return wall, slowest_cell(nb)


def slowest_cell(nb):
    from datetime import datetime
    best = (0.0, "")
    for i, cell in enumerate(nb.cells):
        stamps = cell.get("metadata", {}).get("execution", {})
        if "iopub.execute_input" in stamps and "shell.execute_reply" in stamps:
            seconds = (datetime.fromisoformat(stamps["shell.execute_reply"].replace("Z", "+00:00"))
                       - datetime.fromisoformat(stamps["iopub.execute_input"].replace("Z", "+00:00"))).total_seconds()
            lines = [line for line in cell.source.splitlines() if line.strip()]
            # Name the cell by its first line of work, not by its imports.
            first = next((line for line in lines if not line.startswith(("import ", "from ", "#", "%"))),
                         lines[0] if lines else "").strip()[:40]
            best = max(best, (seconds, f"cell {i}: `{first}`"))
    return best


def main():
    p = common.parser(__doc__.split("\n")[0], repeats=1, quick_repeats=1)
    p.add_argument("--chapters", default="", help="comma-separated chapter names (default: every book/*.md notebook)")
    args = common.parse(p)
    import jupytext
    import nbformat
    # A chapter is a notebook: a book/*.md with a jupytext header (as `make test` picks them).
    chapters = sorted(f for f in BOOK.glob("*.md") if any(line.startswith("jupytext:") for line in f.open()))
    if args.chapters:
        wanted = args.chapters.split(",")
        chapters = [c for c in chapters if c.stem in wanted]
        if len(chapters) != len(wanted):
            p.error(f"--chapters must name files in book/ (without .md), got {args.chapters!r}")
    print("## Book: execution time per chapter, quick profile\n")
    print(common.machine_info(args, protocol=f"each chapter run cold then warm, {args.repeats} time(s); "
                                            f"median shown; the chapters set their own threads "
                                            f"(kdnb.book.profiles quick: 1)"))
    rows, cold_total, warm_total = [], 0.0, 0.0
    with tempfile.TemporaryDirectory(prefix="kdnb-bench-book-") as tmp:
        empty = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("import kdnb")])
        kernel = common.median([run(empty, Path(tmp) / "empty")[0] for _ in range(args.repeats)])
        rows.append(["kernel start + `import kdnb`", common.seconds(kernel), common.seconds(kernel), "", "", ""])
        results = {}
        for chapter in chapters:
            cold, warm = [], []
            for r in range(args.repeats):
                cache = Path(tmp) / f"{chapter.stem}-{r}"
                cold.append(run(jupytext.read(chapter), cache))
                warm.append(run(jupytext.read(chapter), cache))
            c, w = common.median([t for t, _ in cold]), common.median([t for t, _ in warm])
            results[chapter.stem] = c
            cold_total, warm_total = cold_total + c, warm_total + w
            (cold_s, cold_cell), (warm_s, warm_cell) = max(cold)[1], max(warm)[1]
            rows.append([chapter.stem, common.seconds(c), common.seconds(w), "yes" if c <= GOAL_CHAPTER else "NO",
                         f"{cold_cell} ({cold_s:.1f} s)", f"{warm_cell} ({warm_s:.1f} s)"])
            print(f"  {chapter.stem}: cold {c:.1f} s, warm {w:.1f} s", flush=True)
    rows.append(["**whole book**", common.seconds(cold_total), common.seconds(warm_total),
                 "yes" if cold_total <= GOAL_BOOK else "NO", "", ""])
    print()
    print(common.table(["chapter", "cold (empty cache)", "warm (cache filled)", f"cold ≤ {GOAL_CHAPTER:.0f} s",
                        "slowest cell, cold", "slowest cell, warm"], rows))
    if results:
        slowest = max(results, key=results.get)
        print(f"\n- Slowest chapter: {slowest} ({results[slowest]:.1f} s cold). Whole book cold: "
              f"{cold_total / 60:.1f} min (goal ≤ {GOAL_BOOK / 60:.0f} min: "
              f"{'met' if cold_total <= GOAL_BOOK else 'NOT met'}), warm: {warm_total / 60:.1f} min.")
        print("- The whole-book cold figure sums chapters each started from an empty cache: an upper bound on "
              "`make book` from empty, where later chapters reuse the first chapters' teacher.")


if __name__ == "__main__":
    main()
