"""The classroom kit: student notebooks and an autograder for the chapters' exercises.

``python -m minivit exercises make-student chapters/ OUT/`` writes the student
version of every chapter; ``python -m minivit exercises check OUT/02_vit.ipynb``
runs a (student) notebook and reports which exercises pass, with the number of
failing exercises as its exit status.

Conventions a notebook follows (the chapters do; :func:`lint` checks them)
--------------------------------------------------------------------------
* **Solution regions** (the nbgrader convention). In a *code* cell, the lines
  from ``### BEGIN SOLUTION`` to ``### END SOLUTION`` (both alone on their
  line, any indentation) are the solution. ``make_student`` replaces each
  region, markers included, by one line ``raise NotImplementedError("Exercise
  N.M")`` at the indentation of the BEGIN line. A cell may hold several
  regions (several functions of one exercise); regions may not nest. Any other
  line that mentions ``BEGIN SOLUTION`` or ``END SOLUTION`` is refused, because
  nbgrader would take it for a marker.
* **Solution cells.** A cell with solution regions, or a code cell whose
  nbgrader metadata says ``"solution": true`` (nbgrader blanks such a cell
  whole when it has no markers, and so does ``make_student``), is the solution
  cell of one exercise. For nbgrader, give it the metadata
  ``{"nbgrader": {"grade": false, "grade_id": "exN_M_solution", "locked": false,
  "schema_version": 3, "solution": true}}``.
* **Numbering.** N is the chapter number, the digits that start the file name
  (``02_vit.ipynb`` -> 2). M counts the solution cells in order, from 1; a
  solution cell whose grade_id reads ``exN_M_solution`` is exercise N.M
  whatever its position (:func:`lint` insists that the two agree).
* **Check cells** are nbgrader autograder-test cells: ``{"nbgrader": {"grade":
  true, "grade_id": "exN_M_check", "locked": true, "points": 1,
  "schema_version": 3, "solution": false}}``. The grade_id names the exercise
  the cell checks; a check cell whose grade_id does not have that form checks
  the exercise of the nearest solution cell above it. A check cell passes when
  it runs without an exception: it calls *the student's* function and raises
  (``AssertionError`` with a hint) when the answer is wrong or missing.
* **Quick runs** (``check(..., quick=True)``, ``exercises check --quick``)
  execute only the solution and check cells and, going backwards, the latest
  earlier cell that binds each name they read (an import, an assignment, a
  ``def``), and so on transitively; cells that ``from x import *`` always
  run. Reading and writing names is all the analysis sees: a cell that
  matters only through a side effect (a seed, ``sys.path``, a mutation such
  as ``model.eval()`` on its own line) must carry the cell tag
  ``exercise-setup`` to run too. A check cell that reads a name bound by a
  cell that trains (calls ``fit``), directly or through a chain of cells, pulls
  the training in: :func:`lint` reports that chain, and a chapter keeps its
  solution and check cells independent of trained models so that the quick
  run stays a few seconds.

``check`` runs the notebook with nbclient in its own folder, with
``MINIVIT_FAST=1``, ``MPLBACKEND=Agg`` and this checkout on ``PYTHONPATH`` (so
``import minivit`` works from a copy anywhere), and keeps going after a cell
fails (``allow_errors``), so each exercise is graded on its own. An exercise
passes when it has at least one check cell and none of its solution or check
cells raised.
"""
from __future__ import annotations

import ast
import json
import os
import re
import symtable
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

BEGIN = "### BEGIN SOLUTION"
END = "### END SOLUTION"
SETUP_TAG = "exercise-setup"
STUB = 'raise NotImplementedError("Exercise {label}")'
_GRADE_ID = re.compile(r"^ex(\d+)_(\d+)_(solution|check)")

__all__ = ["make_student", "student_notebook", "find_exercises", "lint", "needed_cells", "quick_run_training",
           "check", "CheckResult", "ExerciseResult", "add_parser", "cmd_exercises"]


# --------------------------------------------------------------------------- reading notebooks

def read_notebook(path):
    """Read ``path`` as an nbformat-4 notebook, or raise a one-line error naming it."""
    import nbformat
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such notebook (expected an .ipynb file)")
    try:
        text = path.read_text(encoding="utf-8")
        raw = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a Jupyter notebook (the file is not JSON: {e})") from None
    if not isinstance(raw, dict) or "cells" not in raw or "nbformat" not in raw:
        raise ValueError(f"{path}: not a Jupyter notebook (JSON without 'cells' and 'nbformat')")
    try:
        nb = nbformat.reads(text, as_version=4)
        nbformat.validate(nb)
    except Exception as e:  # nbformat raises several types; all mean the same to the user
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"{path}: not a valid notebook ({first})") from None
    return nb


def _where(path, nb, i):
    cid = nb.cells[i].get("id")
    return f"{path}, cell {i}" + (f" (id {cid})" if cid else "")


def chapter_number(path, nb=None):
    """N for the labels: the digits that start the file name, else the grade_ids' N, else None."""
    m = re.match(r"(\d+)", Path(path).name)
    if m:
        return int(m.group(1))
    if nb is not None:
        ns = {int(g.group(1)) for c in nb.cells
              if (g := _GRADE_ID.match(str(_nbgrader(c).get("grade_id", ""))))}
        if len(ns) == 1:
            return ns.pop()
    return None


def _nbgrader(cell):
    return cell.get("metadata", {}).get("nbgrader", {}) or {}


# --------------------------------------------------------------------------- finding exercises

def _regions(source, where):
    """The solution regions of one cell's source: a list of (begin line, end line), 0-based, inclusive.

    Raises ValueError for unbalanced or nested markers, and for lines that mention a marker
    without being one (nbgrader would take any line containing 'BEGIN SOLUTION' for a marker).
    """
    regions, start = [], None
    for n, line in enumerate(source.split("\n")):
        s = line.strip()
        if s == BEGIN:
            if start is not None:
                raise ValueError(f"{where}: nested solution markers: `{BEGIN}` on line {n + 1} inside the "
                                 f"region opened on line {start + 1}")
            start = n
        elif s == END:
            if start is None:
                raise ValueError(f"{where}: unbalanced solution markers: `{END}` on line {n + 1} without a "
                                 f"`{BEGIN}` before it")
            regions.append((start, n))
            start = None
        elif "BEGIN SOLUTION" in line or "END SOLUTION" in line:
            raise ValueError(f"{where}: line {n + 1} mentions a solution marker but is not one (expected "
                             f"`{BEGIN}` or `{END}` alone on its line; nbgrader would take it for one): "
                             f"{s[:60]!r}")
    if start is not None:
        raise ValueError(f"{where}: unbalanced solution markers: `{BEGIN}` on line {start + 1} has no "
                         f"`{END}` after it")
    return regions


@dataclass
class Exercise:
    """One exercise of a notebook: its label ("2.1") and the indices of its cells."""
    label: str
    solution_cells: list = field(default_factory=list)
    check_cells: list = field(default_factory=list)


def find_exercises(nb, path="notebook"):
    """The exercises of ``nb`` in order, from its solution cells and nbgrader check cells.

    Also validates every cell's markers (see :func:`_regions`); markers outside code cells are
    refused, since make-student strips code only.
    """
    n = chapter_number(path, nb)
    exercises, by_label, current, m = [], {}, None, 0

    def get(label):
        if label not in by_label:
            by_label[label] = Exercise(label)
            exercises.append(by_label[label])
        return by_label[label]

    for i, cell in enumerate(nb.cells):
        meta = _nbgrader(cell)
        gid = _GRADE_ID.match(str(meta.get("grade_id", "")))
        has_markers = bool(_regions(cell.source, _where(path, nb, i)))
        if cell.cell_type != "code":
            if has_markers or meta.get("solution"):
                raise ValueError(f"{_where(path, nb, i)}: a {cell.cell_type} cell holds a solution; "
                                 f"make-student strips code cells only (use nbgrader for written answers)")
            continue
        if has_markers or meta.get("solution"):
            m += 1
            label = (f"{gid.group(1)}.{gid.group(2)}" if gid and gid.group(3) == "solution"
                     else (f"{n}.{m}" if n is not None else str(m)))
            current = get(label)
            current.solution_cells.append(i)
        elif meta.get("grade"):
            if gid and gid.group(3) == "check":
                get(f"{gid.group(1)}.{gid.group(2)}").check_cells.append(i)
            elif current is not None:
                current.check_cells.append(i)
            else:
                get(f"cell {i}").check_cells.append(i)
    return exercises


# --------------------------------------------------------------------------- student notebooks

def _strip_source(source, regions, label):
    lines = source.split("\n")
    out, pos = [], 0
    for a, b in regions:
        out += lines[pos:a]
        indent = re.match(r"\s*", lines[a]).group(0)
        out.append(indent + STUB.format(label=label))
        pos = b + 1
    out += lines[pos:]
    return "\n".join(out)


def student_notebook(nb, path="notebook"):
    """A copy of ``nb`` with every solution replaced by ``raise NotImplementedError("Exercise N.M")``.

    Outputs and execution counts are cleared; everything else is kept. Raises ValueError
    (naming ``path`` and the cell) for a notebook without solutions or with bad markers.
    """
    import copy
    import nbformat
    exercises = [e for e in find_exercises(nb, path) if e.solution_cells]
    if not exercises:
        raise ValueError(f"{path}: no exercises found (no `{BEGIN}` / `{END}` markers and no nbgrader "
                         f"solution cells)")
    out = copy.deepcopy(nb)
    for ex in exercises:
        for i in ex.solution_cells:
            cell = out.cells[i]
            regions = _regions(cell.source, _where(path, nb, i))
            if regions:
                cell.source = _strip_source(cell.source, regions, ex.label)
            else:                                       # nbgrader solution cell without markers
                cell.source = STUB.format(label=ex.label)
    for cell in out.cells:
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
    nbformat.validate(out)
    return out


def _atomic_write_text(path, text):
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def make_student(src, out_dir, force=False):
    """Write the student version of one notebook, or of every ``*.ipynb`` in a folder, into ``out_dir``.

    Every source is read and stripped before anything is written, so a bad notebook leaves
    ``out_dir`` untouched. An existing output file is an error unless ``force=True``; the
    sources themselves are never overwritten. Returns the written paths.
    """
    import nbformat
    src, out_dir = Path(src), Path(out_dir)
    if src.is_dir():
        sources = sorted(p for p in src.glob("*.ipynb") if p.is_file())
        if not sources:
            raise FileNotFoundError(f"{src}: no notebooks (*.ipynb) in this folder")
    elif src.exists():
        sources = [src]
    else:
        raise FileNotFoundError(f"{src}: no such notebook or folder")
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"OUT {out_dir}: exists and is not a folder")
    plan = []
    for s in sources:
        target = out_dir / s.name
        if target.exists() and target.resolve() == s.resolve():
            raise ValueError(f"OUT {out_dir}: would overwrite the source {s} with its student version; "
                             f"choose another folder")
        if target.exists() and not force:
            raise ValueError(f"{target} exists; not overwriting it (pass --force to replace it)")
        plan.append((target, student_notebook(read_notebook(s), s)))
    out_dir.mkdir(parents=True, exist_ok=True)
    for target, nb in plan:
        _atomic_write_text(target, nbformat.writes(nb) + "\n")
    return [t for t, _ in plan]


# --------------------------------------------------------------------------- conventions

def lint(path):
    """Where a notebook departs from the conventions above: a list of one-line problems (empty = fine)."""
    nb = read_notebook(path)
    n = chapter_number(path, nb)
    problems, seen = [], {}
    try:
        exercises = find_exercises(nb, path)
    except ValueError as e:
        return [str(e)]
    if not any(e.solution_cells for e in exercises):
        problems.append(f"{path}: no exercises")
    for m, ex in enumerate(exercises, 1):
        want = f"{n}.{m}"
        if ex.label != want:
            problems.append(f"{path}: exercise {ex.label} is the {m}th exercise; expected it to be {want}")
        if not ex.solution_cells:
            problems.append(f"{path}: exercise {ex.label} has check cells {ex.check_cells} but no solution cell")
        if not ex.check_cells:
            problems.append(f"{path}: exercise {ex.label} has no check cell (nbgrader grade_id "
                            f"ex{ex.label.replace('.', '_')}_check)")
        elif ex.solution_cells and min(ex.check_cells) < max(ex.solution_cells):
            problems.append(f"{path}: exercise {ex.label}: a check cell comes before its solution cell")
        tag = ex.label.replace(".", "_")
        for i in ex.solution_cells:
            want_meta = {"solution": True, "grade": False, "locked": False, "schema_version": 3,
                         "grade_id": f"ex{tag}_solution"}
            problems += _meta_problems(path, nb, i, want_meta)
        for i in ex.check_cells:
            want_meta = {"solution": False, "grade": True, "locked": True, "schema_version": 3}
            problems += _meta_problems(path, nb, i, want_meta)
            meta = _nbgrader(nb.cells[i])
            if not str(meta.get("grade_id", "")).startswith(f"ex{tag}_check"):
                problems.append(f"{_where(path, nb, i)}: grade_id {meta.get('grade_id')!r}, expected "
                                f"'ex{tag}_check'")
            if not isinstance(meta.get("points"), (int, float)):
                problems.append(f"{_where(path, nb, i)}: nbgrader check cell without 'points'")
    problems += quick_run_training(nb, path)
    for i, cell in enumerate(nb.cells):
        gid = _nbgrader(cell).get("grade_id")
        if gid is not None:
            if gid in seen:
                problems.append(f"{_where(path, nb, i)}: grade_id {gid!r} repeats cell {seen[gid]}'s")
            seen[gid] = i
    return problems


def _meta_problems(path, nb, i, want):
    meta = _nbgrader(nb.cells[i])
    if not meta:
        return [f"{_where(path, nb, i)}: no nbgrader metadata"]
    return [f"{_where(path, nb, i)}: nbgrader {k} is {meta.get(k)!r}, expected {v!r}"
            for k, v in want.items() if meta.get(k) != v]


# --------------------------------------------------------------------------- quick runs: which cells

def _python(source):
    """A cell's source as plain Python: IPython's %magics and !shell lines become function calls."""
    try:
        from IPython.core.inputtransformer2 import TransformerManager
        return TransformerManager().transform_cell(source)
    except ImportError:
        return "\n".join("" if l.lstrip().startswith(("%", "!")) else l for l in source.split("\n"))


def _names(source):
    """(names a cell binds at top level, names it reads from outside, whether it star-imports)."""
    source = _python(source)
    try:
        top = symtable.symtable(source, "<cell>", "exec")
    except SyntaxError:
        return set(), set(), False
    bound = {s.get_name() for s in top.get_symbols()
             if s.is_assigned() or s.is_imported() or s.is_namespace()}
    read = set()

    def walk(table, is_top):
        for s in table.get_symbols():
            if s.is_referenced() and (is_top or s.is_global()):
                read.add(s.get_name())
        for child in table.get_children():
            walk(child, False)
    walk(top, True)
    return bound, read - bound, "import *" in source


def _closure(nb, exercises):
    """(the cells a quick run executes, sorted; why[k] = (j, name): cell j reads ``name`` from cell k)."""
    info = {i: _names(c.source) for i, c in enumerate(nb.cells) if c.cell_type == "code"}
    start = {i for e in exercises for i in e.solution_cells + e.check_cells}
    start |= {i for i in info if SETUP_TAG in nb.cells[i].get("metadata", {}).get("tags", [])}
    start |= {i for i, (_, _, star) in info.items() if star}
    need, todo, why = set(start), sorted(start), {}
    while todo:
        j = todo.pop()
        for name in sorted(info.get(j, (set(), set(), False))[1]):
            for k in range(j - 1, -1, -1):                     # the latest earlier cell that binds it
                if k in info and name in info[k][0]:
                    if k not in need:
                        need.add(k)
                        why[k] = (j, name)
                        todo.append(k)
                    break
    return sorted(need), why


def needed_cells(nb, exercises=None):
    """Indices of the cells a quick run executes (see the module docstring), in order."""
    return _closure(nb, find_exercises(nb) if exercises is None else exercises)[0]


def _trains(source):
    """Whether a cell calls ``fit(...)`` (minivit.train.fit, or any ``.fit`` method)."""
    try:
        tree = ast.parse(_python(source))
    except SyntaxError:
        return False
    return any(isinstance(n, ast.Call) and (getattr(n.func, "id", None) == "fit"
                                            or getattr(n.func, "attr", None) == "fit")
               for n in ast.walk(tree))


def quick_run_training(nb, path="notebook"):
    """One line per training cell (a cell that calls ``fit``) that a quick run would execute,
    with the chain of names that pulls it in; empty when the quick run does not train."""
    exercises = find_exercises(nb, path)
    need, why = _closure(nb, exercises)
    owner = {i: e.label for e in exercises for i in e.solution_cells + e.check_cells}
    lines = []
    for k in need:
        if not _trains(nb.cells[k].source):
            continue
        chain, c = [], k
        while c in why:
            j, name = why[c]
            chain.append(f"cell {j}" + (f" (exercise {owner[j]})" if j in owner else "") +
                         f" reads `{name}` from cell {c}")
            c = j
        lines.append(f"{_where(path, nb, k)} trains (calls fit) and would run in a quick check: "
                     + ("; ".join(chain) if chain else "it is an exercise, setup or star-import cell"))
    return lines


# --------------------------------------------------------------------------- checking

@dataclass
class ExerciseResult:
    label: str            # "2.1"
    passed: bool
    message: str          # why it failed: the first line of the exception, or a missing check cell
    cells: list           # indices of its solution and check cells


@dataclass
class CheckResult:
    notebook: Path
    exercises: list       # of ExerciseResult, in the notebook's order
    errors: dict          # cell index -> "Ename: first line of the message", for every cell that raised
    executed: list        # indices of the cells that ran
    seconds: float

    @property
    def failed(self):
        return [e for e in self.exercises if not e.passed]

    @property
    def other_errors(self):
        """"cell 12: NameError: ..." for the failing cells that belong to no exercise."""
        owned = {i for e in self.exercises for i in e.cells}
        return [f"cell {i}: {m}" for i, m in sorted(self.errors.items()) if i not in owned]

    def report(self):
        lines = [f"{self.notebook}: {len(self.exercises) - len(self.failed)} of {len(self.exercises)} "
                 f"exercises pass ({self.seconds:.0f} s, {len(self.executed)} cells run)"]
        for e in self.exercises:
            lines.append(f"  ✓ Exercise {e.label} passed" if e.passed
                         else f"  ✗ Exercise {e.label} failed: {e.message}")
        lines += [f"  note: {m} (not an exercise cell)" for m in self.other_errors]
        return "\n".join(lines)


def _repo_root():
    return Path(__file__).resolve().parent.parent


def check(notebook, timeout=600, quick=False, kernel_name="python3"):
    """Execute a (student) notebook and grade each exercise; returns a :class:`CheckResult`.

    ``timeout`` is in seconds per cell: a cell that runs longer is interrupted and counts as
    failed. ``quick=True`` runs only the cells the exercises need (module docstring).
    """
    import nbclient
    import nbformat
    path = Path(notebook)
    nb = read_notebook(path)
    if not timeout or timeout <= 0:
        raise ValueError(f"timeout: expected a positive number of seconds, got {timeout}")
    exercises = find_exercises(nb, path)
    if not exercises:
        raise ValueError(f"{path}: no exercises found (no solution cells and no nbgrader check cells)")
    run_idx = needed_cells(nb, exercises) if quick else [i for i, c in enumerate(nb.cells)
                                                         if c.cell_type == "code"]
    sub = nbformat.v4.new_notebook(metadata=nb.metadata)
    sub.cells = [nb.cells[i] for i in run_idx]
    errors = {}                                            # original index -> "Ename: first line"

    def on_executed(cell, cell_index, execute_reply):
        content = (execute_reply or {}).get("content", {})
        if content.get("status") == "error":
            value = str(content.get("evalue", "")).strip().splitlines()
            errors[run_idx[cell_index]] = content.get("ename", "Error") + (f": {value[0]}" if value else "")

    env = dict(os.environ, MINIVIT_FAST="1", MPLBACKEND="Agg")
    env["PYTHONPATH"] = os.pathsep.join([str(_repo_root())] + [p for p in [env.get("PYTHONPATH")] if p])
    client = nbclient.NotebookClient(
        sub, timeout=timeout, kernel_name=kernel_name, allow_errors=True, interrupt_on_timeout=True,
        error_on_timeout={"ename": "Timeout", "evalue": f"the cell ran longer than {timeout:g} s"},
        on_cell_executed=on_executed, resources={"metadata": {"path": str(path.resolve().parent)}})
    t0 = time.perf_counter()
    fatal = None
    try:
        client.execute(env=env)
    except nbclient.exceptions.DeadKernelError as e:
        fatal = f"the kernel died ({e})"
    seconds = time.perf_counter() - t0
    ran = {run_idx[i] for i, c in enumerate(sub.cells) if c.get("execution_count") is not None}

    results = []
    for ex in exercises:
        cells = ex.solution_cells + ex.check_cells
        msgs = [f"cell {i}: {errors[i]}" for i in cells if i in errors]
        if not ex.check_cells:
            msgs.append("no check cell")
        if fatal and any(i not in ran for i in cells):
            msgs.append(fatal)
        results.append(ExerciseResult(ex.label, not msgs, "; ".join(msgs), cells))
    return CheckResult(path, results, errors, sorted(ran), seconds)


# --------------------------------------------------------------------------- command line

def add_parser(subparsers):
    """Add ``exercises {make-student,check}`` to the CLI's subparsers."""
    p = subparsers.add_parser("exercises", help="student notebooks and the exercise autograder",
                              description="Make student notebooks and grade them.")
    sub = p.add_subparsers(dest="exercises_command", metavar="{make-student,check}", required=True)
    ms = sub.add_parser("make-student", help="write notebooks with the solutions replaced by "
                                             "raise NotImplementedError(...)")
    ms.add_argument("src", metavar="SRC", help="a notebook, or a folder of notebooks (e.g. chapters/)")
    ms.add_argument("out", metavar="OUT", help="the folder to write the student notebooks into")
    ms.add_argument("--force", action="store_true", help="replace student notebooks already in OUT")
    ck = sub.add_parser("check", help="run a notebook and report which exercises pass "
                                      "(exit status = number failing)")
    ck.add_argument("notebook", metavar="NOTEBOOK")
    ck.add_argument("--timeout", type=float, default=600, help="seconds per cell (default 600)")
    ck.add_argument("--quick", action="store_true",
                    help="run only the exercise and check cells and the cells they need")
    p.set_defaults(func=cmd_exercises)
    return p


def cmd_exercises(args) -> int:
    """Run ``exercises make-student`` or ``exercises check``; returns the exit status."""
    if args.exercises_command == "make-student":
        for path in make_student(args.src, args.out, force=args.force):
            print(f"wrote {path}")
        return 0
    if not args.timeout > 0:
        raise ValueError(f"--timeout: expected a positive number of seconds, got {args.timeout:g}")
    result = check(args.notebook, timeout=args.timeout, quick=args.quick)
    print(result.report())
    return len(result.failed)
