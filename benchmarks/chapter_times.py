"""How long each chapter takes: from the committed notebooks, and optionally measured now.

    python benchmarks/chapter_times.py              # read the timings stored in the executed notebooks
    python benchmarks/chapter_times.py --run-fast   # also execute each chapter in fast mode and time it
    python benchmarks/chapter_times.py --execute 01 02   # re-execute chapters in normal mode, in place
    python benchmarks/chapter_times.py --update-readme   # put the recorded times into README.md

nbclient (``jupyter nbconvert --execute``) records when each cell started and
finished in the cell's metadata; the committed chapters were executed in
normal mode that way, so the span from the first cell's start to the last
cell's end is the chapter's normal-mode runtime on the machine that executed
it (the 2-core development machine, often with other jobs running: an upper
bound for a quiet machine). ``--run-fast`` executes every chapter with
MINIVIT_FAST=1 (the budget of the test suite) and prints the wall time.
"""
import argparse
import os
import sys
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _ts(s):
    return datetime.fromisoformat(s.replace("Z", "+00:00"))


def recorded_seconds(nb):
    starts, ends = [], []
    for c in nb.cells:
        ex = c.get("metadata", {}).get("execution", {})
        s = ex.get("iopub.execute_input") or ex.get("shell.execute_reply.started")
        e = ex.get("shell.execute_reply")
        if s and e:
            starts.append(_ts(s))
            ends.append(_ts(e))
    if not starts:
        return None
    return (max(ends) - min(starts)).total_seconds()


def run_fast(path):
    import nbclient
    import nbformat
    nb = nbformat.read(path, as_version=4)
    os.environ.update(MINIVIT_FAST="1", MPLBACKEND="Agg",
                      PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    t0 = time.perf_counter()
    nbclient.NotebookClient(nb, timeout=900, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}}).execute()
    return time.perf_counter() - t0


def execute_in_place(path):
    """Run a chapter in normal mode and write it back (atomically) with its outputs and timings."""
    import nbclient
    import nbformat
    nb = nbformat.read(path, as_version=4)
    for var in ("MINIVIT_FAST", "MPLBACKEND"):       # normal mode, and figures inline in the saved notebook
        os.environ.pop(var, None)
    t0 = time.perf_counter()
    nbclient.NotebookClient(nb, timeout=3600, kernel_name="python3", record_timing=True,
                            resources={"metadata": {"path": str(path.parent)}}).execute()
    seconds = time.perf_counter() - t0
    nb.metadata.pop("widgets", None)            # tqdm's widget state: large, and useless once the bars are cleared
    tmp = path.with_suffix(".ipynb.tmp")
    nbformat.write(nb, str(tmp))
    os.replace(tmp, path)
    return seconds


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run-fast", action="store_true")
    p.add_argument("--execute", nargs="+", metavar="NN",
                   help="re-execute these chapters (by number) in normal mode and save them in place")
    p.add_argument("--update-readme", action="store_true",
                   help="write the recorded normal-mode times between README.md's chapter-times markers")
    a = p.parse_args()
    import nbformat
    for num in a.execute or []:
        matches = sorted((ROOT / "chapters").glob(f"{num}_*.ipynb"))
        if len(matches) != 1:
            p.error(f"--execute: expected one chapter numbered {num!r}, found {len(matches)}")
        print(f"executing {matches[0].name} ...", flush=True)
        print(f"  {execute_in_place(matches[0]) / 60:.1f} min", flush=True)
    print("| chapter | normal mode (recorded) |" + (" fast mode (now) |" if a.run_fast else ""))
    print("|---|---|" + ("---|" if a.run_fast else ""))
    for path in sorted((ROOT / "chapters").glob("[0-9][0-9]_*.ipynb")):
        sec = recorded_seconds(nbformat.read(path, as_version=4))
        rec = f"{sec / 60:.1f} min" if sec is not None else "not recorded"
        row = f"| {path.stem} | {rec} |"
        if a.run_fast:
            row += f" {run_fast(path):.0f} s |"
        print(row, flush=True)
    if a.update_readme:
        update_readme()


BEGIN, END = "<!-- chapter-times:begin (benchmarks/chapter_times.py --update-readme) -->", "<!-- chapter-times:end -->"


def update_readme():
    import nbformat
    sys.path.insert(0, str(ROOT))
    from minivit.io import atomic_write_bytes
    lines = ["| chapter | normal mode |", "|---|---|"]
    for path in sorted((ROOT / "chapters").glob("[0-9][0-9]_*.ipynb")):
        sec = recorded_seconds(nbformat.read(path, as_version=4))
        lines.append(f"| `{path.stem}` | {f'{sec / 60:.1f} min' if sec is not None else 'not recorded'} |")
    readme = ROOT / "README.md"
    body = readme.read_text()
    i, j = body.index(BEGIN) + len(BEGIN), body.index(END)
    atomic_write_bytes(readme, (body[:i] + "\n" + "\n".join(lines) + "\n" + body[j:]).encode())
    print(f"updated {readme}")


if __name__ == "__main__":
    sys.exit(main())
