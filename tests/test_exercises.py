"""The classroom kit (minivit/exercises.py): student notebooks, conventions, the autograder.

Synthetic notebooks built in tmp_path cover the rules; the real chapters are checked for
leaks, nbformat validity and conventions (fast, no execution), against nbgrader's own
ClearSolutions (if nbgrader is installed), and executed in one quick kernel run each: the
solution passes its checks and the stripped cells, run after it, fail every check.
"""
import argparse
import ast
import copy
import re
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook  # noqa: E402

from minivit import exercises as E  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CHAPTERS = sorted((ROOT / "chapters").glob("[0-9][0-9]_*.ipynb"))
IDS = [p.stem for p in CHAPTERS]


# --------------------------------------------------------------------------- helpers

def sol_meta(gid):
    return {"nbgrader": {"grade": False, "grade_id": gid, "locked": False, "schema_version": 3, "solution": True}}


def check_meta(gid):
    return {"nbgrader": {"grade": True, "grade_id": gid, "locked": True, "points": 1, "schema_version": 3,
                         "solution": False}}


def write_nb(path, cells):
    nb = new_notebook(cells=cells, metadata={"kernelspec": {"name": "python3", "language": "python",
                                                             "display_name": "Python 3"}})
    path.write_text(nbformat.writes(nb))
    return path


def solution_lines(nb):
    """(lines inside solution regions, lines outside them), stripped; found by a scan independent of E."""
    inside, outside = set(), set()
    for cell in nb.cells:
        in_region = False
        for line in cell.source.split("\n"):
            s = line.strip()
            if s == E.BEGIN:
                in_region = True
            elif s == E.END:
                in_region = False
            else:
                (inside if in_region else outside).add(s)
    return inside, outside


def assert_no_leak(src_nb, out_nb):
    inside, outside = solution_lines(src_nb)
    secret = {s for s in inside - outside if s}           # lines that appear only in solutions
    text = "\n".join(c.source for c in out_nb.cells)
    shown = {line.strip() for line in text.split("\n")}
    assert not secret & shown, f"solution lines leaked: {sorted(secret & shown)[:5]}"
    assert E.BEGIN not in text and E.END not in text
    for c in out_nb.cells:
        if c.cell_type == "code":
            assert c.outputs == [] and c.execution_count is None


@pytest.fixture
def exercise_nb(tmp_path):
    """03_demo.ipynb: three exercises (one indented in a method, one at top level with two regions)."""
    return write_nb(tmp_path / "03_demo.ipynb", [
        new_markdown_cell("# Demo\nWrite the functions."),
        new_code_cell("import math\nSECRET_FREE = 1", outputs=[], execution_count=1),
        new_code_cell("def double(x):\n    ### BEGIN SOLUTION\n    y = x + x  # the answer\n    return y\n"
                      "    ### END SOLUTION", metadata=sol_meta("ex3_1_solution"), execution_count=2,
                      outputs=[nbformat.v4.new_output("stream", name="stdout", text="leaked 42\n")]),
        new_code_cell("assert double(3) == 6, 'double(3) should be 6'\nprint('✓ Exercise 3.1 passed')",
                      metadata=check_meta("ex3_1_check")),
        new_code_cell("class Box:\n    def area(self, w, h):\n        if w > 0:\n            ### BEGIN SOLUTION\n"
                      "            return w * h * math.sqrt(1)\n            ### END SOLUTION\n        return 0",
                      metadata=sol_meta("ex3_2_solution")),
        new_code_cell("assert Box().area(2, 5) == 10\nprint('✓ Exercise 3.2 passed')",
                      metadata=check_meta("ex3_2_check")),
        new_code_cell("### BEGIN SOLUTION\nTRIPLE = 3\n### END SOLUTION\n\nfor _ in range(1):\n"
                      "    ### BEGIN SOLUTION\n    QUAD = 4\n\n    ### END SOLUTION",
                      metadata=sol_meta("ex3_3_solution")),
        new_code_cell("assert TRIPLE * QUAD == 12\nprint('✓ Exercise 3.3 passed')",
                      metadata=check_meta("ex3_3_check")),
    ])


# --------------------------------------------------------------------------- make-student

def test_strip_replaces_each_region_with_a_numbered_stub(exercise_nb, tmp_path):
    written = E.make_student(exercise_nb, tmp_path / "out")
    assert written == [tmp_path / "out" / "03_demo.ipynb"]
    src, out = E.read_notebook(exercise_nb), nbformat.read(written[0], as_version=4)
    nbformat.validate(out)
    assert out.cells[2].source == 'def double(x):\n    raise NotImplementedError("Exercise 3.1")'
    assert out.cells[4].source == ('class Box:\n    def area(self, w, h):\n        if w > 0:\n'
                                   '            raise NotImplementedError("Exercise 3.2")\n        return 0')
    assert out.cells[6].source == ('raise NotImplementedError("Exercise 3.3")\n\nfor _ in range(1):\n'
                                   '    raise NotImplementedError("Exercise 3.3")')
    for i in (2, 4, 6):
        ast.parse(out.cells[i].source)                # the indentation is valid Python
    # everything but solutions, outputs and counts is unchanged
    for i in (0, 1, 3, 5, 7):
        assert out.cells[i].source == src.cells[i].source
        assert out.cells[i].metadata == src.cells[i].metadata
    assert out.cells[2].metadata == src.cells[2].metadata          # nbgrader metadata kept
    assert [c.get("id") for c in out.cells] == [c.get("id") for c in src.cells]
    assert_no_leak(src, out)
    assert "leaked 42" not in written[0].read_text()                # the solution's output is gone
    assert not [p for p in (tmp_path / "out").iterdir() if p.name != "03_demo.ipynb"], "temp files left"


def test_numbering_follows_the_file_and_cell_order(tmp_path):
    cells = [new_code_cell(f"def f{k}():\n    ### BEGIN SOLUTION\n    return {k}\n    ### END SOLUTION")
             for k in range(3)]
    for name, labels in [("11_x.ipynb", ["11.1", "11.2", "11.3"]), ("notes.ipynb", ["1", "2", "3"])]:
        out = E.student_notebook(E.read_notebook(write_nb(tmp_path / name, cells)), name)
        assert [re.search(r'"Exercise (.*)"', c.source).group(1) for c in out.cells] == labels


def test_nbgrader_solution_cell_without_markers_is_blanked(tmp_path):
    p = write_nb(tmp_path / "05_x.ipynb", [
        new_code_cell("x = 41 + 1", metadata=sol_meta("ex5_1_solution")),
        new_code_cell("assert x == 42", metadata=check_meta("ex5_1_check"))])
    out = E.student_notebook(E.read_notebook(p), p)
    assert out.cells[0].source == 'raise NotImplementedError("Exercise 5.1")'
    assert out.cells[1].source == "assert x == 42"


@pytest.mark.parametrize("source, message", [
    ("x = 1", "no exercises found"),
    ("### BEGIN SOLUTION\nx = 1", "has no `### END SOLUTION`"),
    ("x = 1\n### END SOLUTION", "without a `### BEGIN SOLUTION`"),
    ("### BEGIN SOLUTION\n### BEGIN SOLUTION\nx=1\n### END SOLUTION\n### END SOLUTION", "nested"),
    ("x = 1  ### BEGIN SOLUTION\ny = 2\n### END SOLUTION", "mentions a solution marker but is not one"),
])
def test_bad_markers_are_refused_with_file_and_cell(tmp_path, source, message):
    p = write_nb(tmp_path / "02_bad.ipynb", [new_markdown_cell("intro"), new_code_cell(source)])
    with pytest.raises(ValueError, match=re.escape(message)) as e:
        E.make_student(p, tmp_path / "out")
    assert str(p) in str(e.value)
    if message != "no exercises found":
        assert "cell 1" in str(e.value)
    assert not (tmp_path / "out").exists()


def test_markers_in_markdown_are_refused(tmp_path):
    p = write_nb(tmp_path / "02_md.ipynb", [new_markdown_cell("### BEGIN SOLUTION\nanswer\n### END SOLUTION")])
    with pytest.raises(ValueError, match=r"cell 0.*markdown cell holds a solution"):
        E.make_student(p, tmp_path / "out")


@pytest.mark.parametrize("content, message", [
    ("not json {", "not JSON"),
    ('{"a": 1}', "not a Jupyter notebook"),
    ('{"cells": [{"cell_type": "code"}], "nbformat": 4, "nbformat_minor": 5, "metadata": {}}',
     "not a valid notebook"),
    ("\xff\xfe", "not JSON"),
])
def test_not_a_notebook(tmp_path, content, message):
    p = tmp_path / "x.ipynb"
    p.write_bytes(content.encode("latin-1"))
    with pytest.raises(ValueError, match=message) as e:
        E.make_student(p, tmp_path / "out")
    assert str(p) in str(e.value)
    assert not (tmp_path / "out").exists()


def test_missing_source(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such notebook"):
        E.make_student(tmp_path / "missing.ipynb", tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no notebooks"):
        E.make_student(tmp_path / "empty", tmp_path / "out")


def test_never_overwrites_without_force(exercise_nb, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "03_demo.ipynb").write_text("the student's work")
    with pytest.raises(ValueError, match="exists; not overwriting.*--force"):
        E.make_student(exercise_nb, out)
    assert (out / "03_demo.ipynb").read_text() == "the student's work"
    E.make_student(exercise_nb, out, force=True)
    assert "Exercise 3.1" in (out / "03_demo.ipynb").read_text()
    # the source folder itself is never a target, even with force
    before = exercise_nb.read_text()
    with pytest.raises(ValueError, match="would overwrite the source"):
        E.make_student(exercise_nb.parent, exercise_nb.parent, force=True)
    assert exercise_nb.read_text() == before


def test_a_bad_notebook_in_a_folder_writes_nothing(exercise_nb, tmp_path):
    write_nb(tmp_path / "04_nomarkers.ipynb", [new_code_cell("x = 1")])
    with pytest.raises(ValueError, match="04_nomarkers.ipynb: no exercises"):
        E.make_student(tmp_path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_failed_write_leaves_no_file(exercise_nb, tmp_path, monkeypatch):
    def broken_replace(a, b):
        raise OSError("disk full")
    monkeypatch.setattr(E.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        E.make_student(exercise_nb, tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []


def test_lint_names_departures_from_the_conventions(tmp_path):
    p = write_nb(tmp_path / "06_lint.ipynb", [
        new_code_cell("def f():\n    ### BEGIN SOLUTION\n    return 1\n    ### END SOLUTION"),     # no metadata
        new_code_cell("def g():\n    ### BEGIN SOLUTION\n    return 2\n    ### END SOLUTION",
                      metadata=sol_meta("ex6_2_solution")),                                     # no check
    ])
    problems = "\n".join(E.lint(p))
    assert "cell 0" in problems and "no nbgrader metadata" in problems
    assert "exercise 6.1 has no check cell" in problems and "exercise 6.2 has no check cell" in problems


# --------------------------------------------------------------------------- check (runs kernels)

def run_cli(argv):
    parser = argparse.ArgumentParser(prog="minivit")
    E.add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_check_solution_passes_and_keeps_going_after_errors(exercise_nb):
    nb = nbformat.read(exercise_nb, as_version=4)
    nb.cells.insert(4, new_code_cell("raise RuntimeError('a broken plot cell')"))   # between exercises
    nbformat.write(nb, exercise_nb)
    r = E.check(exercise_nb, timeout=60)
    assert [(e.label, e.passed) for e in r.exercises] == [("3.1", True), ("3.2", True), ("3.3", True)], r.report()
    assert r.other_errors == ["cell 4: RuntimeError: a broken plot cell"]
    assert "3 of 3 exercises pass" in r.report()


def test_check_stripped_fails_every_exercise_via_cli(exercise_nb, tmp_path, capsys):
    assert run_cli(["exercises", "make-student", str(exercise_nb), str(tmp_path / "out")]) == 0
    status = run_cli(["exercises", "check", str(tmp_path / "out" / "03_demo.ipynb"), "--timeout", "60"])
    out = capsys.readouterr().out
    assert status == 3, out
    assert "0 of 3 exercises pass" in out
    assert 'Exercise 3.1 failed: cell 3: NotImplementedError: Exercise 3.1' in out
    assert "Exercise 3.3 failed: cell 6: NotImplementedError: Exercise 3.3" in out


def test_quick_check_runs_only_the_cells_the_exercises_need(tmp_path):
    p = write_nb(tmp_path / "07_quick.ipynb", [
        new_code_cell("import minivit  # from the checkout, wherever the notebook is\nBASE = 10"),
        new_code_cell("open('trained.flag', 'w').write('x')\nmodel = 'trained'"),          # the "training"
        new_code_cell("import builtins\nbuiltins.SEEDED = True", metadata={"tags": [E.SETUP_TAG]}),
        new_code_cell("def helper(x):\n    return x + BASE"),
        new_code_cell("def plus(x):\n    ### BEGIN SOLUTION\n    return helper(x)\n    ### END SOLUTION",
                      metadata=sol_meta("ex7_1_solution")),
        new_code_cell("assert SEEDED and plus(1) == 11", metadata=check_meta("ex7_1_check")),
        new_code_cell("print(model)"),
    ])
    assert E.needed_cells(E.read_notebook(p)) == [0, 2, 3, 4, 5]
    r = E.check(p, timeout=60, quick=True)
    assert r.executed == [0, 2, 3, 4, 5] and r.exercises[0].passed, r.report()
    assert not (tmp_path / "trained.flag").exists()


def test_lint_explains_why_a_quick_run_would_train(tmp_path):
    p = write_nb(tmp_path / "09_train.ipynb", [
        new_code_cell("run = fit(cfg)\nnet = run['model']"),
        new_code_cell("def f():\n    ### BEGIN SOLUTION\n    return 1\n    ### END SOLUTION",
                      metadata=sol_meta("ex9_1_solution")),
        new_code_cell("assert f() == net.size", metadata=check_meta("ex9_1_check")),
    ])
    assert E.lint(p) == [f"{p}, cell 0 (id {E.read_notebook(p).cells[0].id}) trains (calls fit) and would run in "
                         f"a quick check: cell 2 (exercise 9.1) reads `net` from cell 0"]


def test_check_interrupts_a_cell_that_runs_too_long(tmp_path):
    p = write_nb(tmp_path / "08_slow.ipynb", [
        new_code_cell("def f():\n    ### BEGIN SOLUTION\n    return 1\n    ### END SOLUTION",
                      metadata=sol_meta("ex8_1_solution")),
        new_code_cell("import time\ntime.sleep(60)", metadata=check_meta("ex8_1_check")),
        new_code_cell("def g():\n    ### BEGIN SOLUTION\n    return 2\n    ### END SOLUTION",
                      metadata=sol_meta("ex8_2_solution")),
        new_code_cell("assert g() == 2", metadata=check_meta("ex8_2_check")),
    ])
    r = E.check(p, timeout=3)
    assert [(e.label, e.passed) for e in r.exercises] == [("8.1", False), ("8.2", True)], r.report()
    assert "longer than 3 s" in r.exercises[0].message


def test_check_refuses_bad_input(tmp_path):
    with pytest.raises(FileNotFoundError):
        E.check(tmp_path / "nothing.ipynb")
    p = write_nb(tmp_path / "01_none.ipynb", [new_code_cell("x = 1")])
    with pytest.raises(ValueError, match="no exercises"):
        E.check(p)
    with pytest.raises(ValueError, match="--timeout"):
        run_cli(["exercises", "check", str(p), "--timeout", "0"])


# --------------------------------------------------------------------------- the real chapters

def test_there_are_chapters():
    assert CHAPTERS, "no chapters found in chapters/"


@pytest.mark.parametrize("path", CHAPTERS, ids=IDS)
def test_chapter_student_version_leaks_nothing(path, tmp_path):
    (written,) = E.make_student(path, tmp_path)
    src, out = E.read_notebook(path), nbformat.read(written, as_version=4)
    nbformat.validate(out)
    assert_no_leak(src, out)
    n = int(path.name[:2])
    labels = {m for c in out.cells for m in re.findall(r'NotImplementedError\("Exercise (\d+\.\d+)"\)', c.source)}
    assert labels and all(lab.startswith(f"{n}.") for lab in labels)


@pytest.mark.parametrize("path", CHAPTERS, ids=IDS)
def test_chapter_follows_the_exercise_conventions(path):
    exercises = E.find_exercises(E.read_notebook(path), path)
    assert 2 <= len(exercises) <= 4, f"{path.name}: {len(exercises)} exercises, the issue asks for 2-4"
    assert E.lint(path) == []


@pytest.mark.parametrize("path", CHAPTERS, ids=IDS)
def test_nbgrader_clear_solutions_agrees_with_make_student(path):
    pytest.importorskip("nbgrader", reason="nbgrader is optional (requirements-dev.txt)")
    from nbgrader.preprocessors import ClearOutput, ClearSolutions
    nb = E.read_notebook(path)
    theirs, _ = ClearSolutions().preprocess(copy.deepcopy(nb), {})      # what `nbgrader generate_assignment`
    theirs, _ = ClearOutput().preprocess(theirs, {})                     # runs, among other steps
    ours = E.student_notebook(nb, path)
    assert_no_leak(nb, theirs)
    label = {i: ex.label for ex in E.find_exercises(nb, path) for i in ex.solution_cells}
    for i, (a, b) in enumerate(zip(theirs.cells, ours.cells)):
        stub = (r'\1raise NotImplementedError("Exercise ' + label[i] + '")') if i in label else None
        a_src = re.sub(r"( *)# YOUR CODE HERE\n *raise NotImplementedError\(\)", stub, a.source) if stub else a.source
        assert a_src == b.source, f"{path.name}, cell {i}: nbgrader and make-student differ"


@pytest.mark.parametrize("path", CHAPTERS, ids=IDS)
def test_chapter_checks_pass_with_solutions_and_fail_without(path, tmp_path):
    """One quick kernel run per chapter: the cells the exercises need, with the solutions (every
    exercise passes), then the student version of every solution and check cell (every check
    fails, with NotImplementedError or the check's AssertionError: the checks run the student's
    code, not the library's)."""
    nb = E.read_notebook(path)
    training = E.quick_run_training(nb, path)
    if training:
        pytest.skip("the quick run would train (test_chapter_follows_the_exercise_conventions fails "
                    "until the chapter is fixed): " + training[0])
    exercises = E.find_exercises(nb, path)
    student = E.student_notebook(nb, path)
    combined = new_notebook(metadata=nb.metadata)
    combined.cells = [copy.deepcopy(nb.cells[i]) for i in E.needed_cells(nb, exercises)]
    stripped_checks = {}
    for ex in exercises:
        for i in ex.solution_cells + ex.check_cells:
            cell = copy.deepcopy(student.cells[i])
            cell.metadata.pop("nbgrader", None)                 # an ordinary cell now, graded below
            cell["id"] = f"student-{i}"
            if i in ex.check_cells:
                stripped_checks[len(combined.cells)] = ex.label
            combined.cells.append(cell)
    target = tmp_path / path.name
    nbformat.write(combined, target)
    r = E.check(target, timeout=300)
    assert not r.failed, r.report()
    for j, label in stripped_checks.items():
        assert j in r.errors, f"{path.name}: the check of exercise {label} passes on the student version"
        assert r.errors[j].split(":")[0] in ("NotImplementedError", "AssertionError"), (
            f"{path.name}: the check of exercise {label} fails on the student version for another reason: "
            f"{r.errors[j]}")
