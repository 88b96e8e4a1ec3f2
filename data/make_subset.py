"""Build the bundled Fashion-MNIST subset from the full data set.

    python data/make_subset.py            # rebuild data/fashion-mnist/ and data/SHA256SUMS
    python data/make_subset.py --check    # rebuild in a temporary directory and compare
    python data/make_subset.py --source DIR --out DIR   # other locations

The subset is stratified and seeded: for each split, one generator
``np.random.default_rng(0)`` picks, class by class (0 to 9), 1,000 train or
200 test images of that class without replacement; the chosen indices are then
sorted, so the images keep their original order. The files are written in IDX
.gz with the full set's names, by ``minivit.data.write_idx``: gzip level 6
(gzip's default; level 9 takes 9x longer for 1% less) with no file name and
mtime 0 in the header, so the same input gives the same bytes.
(The gzip bytes also depend on zlib; ``--check`` says when only the
compression differs.)
"""

import argparse
import gzip
import hashlib
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # the repository root, for `import minivit`

from minivit.data import FULL_DIR, read_idx, write_idx  # noqa: E402

OUT_DIR = HERE / "fashion-mnist"
SUMS = HERE / "SHA256SUMS"
PER_CLASS = {"train": 1000, "t10k": 200}  # file prefix -> images per class
NUM_CLASSES = 10
SEED = 0
FILES = [f"{prefix}-{kind}-ubyte.gz" for prefix in PER_CLASS for kind in ("images-idx3", "labels-idx1")]


def stratified_indices(labels, per_class, seed=SEED):
    """Sorted indices of ``per_class`` items of each class 0..9, drawn without
    replacement by one ``default_rng(seed)``, class after class."""
    rng = np.random.default_rng(seed)
    chosen = []
    for c in range(NUM_CLASSES):
        members = np.flatnonzero(labels == c)
        if len(members) < per_class:
            raise ValueError(f"class {c} has only {len(members)} items, need {per_class}")
        chosen.append(rng.choice(members, size=per_class, replace=False))
    return np.sort(np.concatenate(chosen))


def generate(source=FULL_DIR, out=OUT_DIR):
    """Write the subset of the full set in ``source`` into ``out`` (created if
    needed). Returns {file name: sha256 hex digest}."""
    source, out = Path(source), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for prefix, per_class in PER_CLASS.items():
        images = read_idx(source / f"{prefix}-images-idx3-ubyte.gz")
        labels = read_idx(source / f"{prefix}-labels-idx1-ubyte.gz")
        keep = stratified_indices(labels, per_class)
        write_idx(out / f"{prefix}-images-idx3-ubyte.gz", images[keep])
        write_idx(out / f"{prefix}-labels-idx1-ubyte.gz", labels[keep])
    return {name: sha256(out / name) for name in FILES}


def sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def read_sums(path=SUMS):
    """SHA256SUMS ("<hex>  fashion-mnist/<name>" per line) -> {name: hex}."""
    sums = {}
    for line in Path(path).read_text().splitlines():
        digest, name = line.split(maxsplit=1)
        sums[Path(name.lstrip("*")).name] = digest
    return sums


def write_sums(sums, path=SUMS):
    """Write ``sha256sum -c``-compatible lines, relative to data/ (atomic)."""
    text = "".join(f"{sums[name]}  {OUT_DIR.name}/{name}\n" for name in FILES)
    tmp = Path(path).with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def check(source=FULL_DIR):
    """Rebuild into a temporary directory; compare with SHA256SUMS and with the
    bundled files. Prints one line per file; returns True if all match."""
    expected = read_sums()
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        rebuilt = generate(source, tmp)
        for name in FILES:
            bundled = OUT_DIR / name
            status = "OK"
            if rebuilt[name] != expected.get(name):
                same_content = bundled.exists() and (
                    gzip.decompress((Path(tmp) / name).read_bytes()) == gzip.decompress(bundled.read_bytes()))
                status = ("MISMATCH (same content, different gzip bytes: another zlib?)"
                          if same_content else "MISMATCH")
            elif not bundled.exists() or sha256(bundled) != expected[name]:
                status = "MISMATCH (bundled file differs from SHA256SUMS)"
            ok &= status == "OK"
            print(f"{status:4}  {name}  {rebuilt[name]}")
    return ok


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", default=FULL_DIR, help=f"full Fashion-MNIST directory (default {FULL_DIR})")
    parser.add_argument("--out", default=str(OUT_DIR), help=f"output directory (default {OUT_DIR})")
    parser.add_argument("--check", action="store_true",
                        help="rebuild in a temporary directory and verify against SHA256SUMS, byte for byte")
    args = parser.parse_args(argv)
    if not Path(args.source).is_dir():
        parser.error(f"{args.source} does not exist: install it with `sudo apt-get install dataset-fashion-mnist`")
    if args.check:
        ok = check(args.source)
        print("all files reproduced byte for byte" if ok else "reproduction FAILED")
        return 0 if ok else 1
    sums = generate(args.source, args.out)
    if Path(args.out).resolve() == OUT_DIR:
        write_sums(sums)
    for name in FILES:
        print(f"{sums[name]}  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
