"""A student's functions: read from their file (or a notebook's namespace), graded, and
put in the engine's place for a training run.

    namespace = load("my_backward.py")          # the file's names, as a dict
    for number, verdict in check(namespace):    # the core exercises and any optional one written
        print(verdict.report(number))
    with for_training("my_backward.py"):        # graded first: a wrong one raises BadValue
        ...                                     # the engine now calls the student's functions

for_training refuses a file with a wrong function, so a wrong gradient never trains; an
exercise not done yet is the engine's for the run (also for the student's functions that
call it); afterwards the engine and the student's namespace are as they were.
"""

import contextlib
import importlib.util
import sys
from pathlib import Path

from ..engine.errors import BadValue
from .exercises import BY_NAME, EXERCISES, engine_function, exercise, number
from .grade import NOT_DONE, RIGHT, WRONG, as_called, grade

STUBS = Path(__file__).with_name("stubs.py")
NOTEBOOK = "your notebook"          # the source named for a namespace (train(student=...))
_loaded = 0                         # files loaded so far: each gets a module name of its own


def write_stubs(path):
    """Write the exercises' stub file (stubs.py, with its own path in its usage lines) to
    a new file; an existing file is never overwritten."""
    path = Path(path)
    if path.exists():
        raise BadValue(f"{path} exists already and is kept as it is: check it with "
                       f"`minivit exercises check {path}`, or give another file name")
    if not path.parent.is_dir():
        raise BadValue(f"{path}: the folder {path.parent} does not exist; create it or give another path")
    text = STUBS.read_text().replace("THIS_FILE", str(path))
    with open(path, "x") as f:
        f.write(text)


def load(path):
    """The names a student's file defines, as a dict (the module's namespace)."""
    global _loaded
    path = Path(path)
    if not path.is_file():
        raise BadValue(f"{path}: no such file; write the exercises' stubs there with "
                       f"`minivit exercises new {path}`")
    _loaded += 1
    spec = importlib.util.spec_from_file_location(f"minivit_student_{_loaded}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except SyntaxError as e:
        raise BadValue(f"{path}, line {e.lineno}: {e.msg}; fix it and check again") from None
    except (Exception, SystemExit) as e:       # their file, any error: say where, stop
        raise BadValue(f"{path} fails when imported: {type(e).__name__}: {e}") from None
    return vars(module)


def check(namespace, names=None, every=False, on_start=None, on_result=None):
    """[(number, Verdict)] in learning order: of the exercises named; else of the core ones
    and every optional one written (or all with every=True). on_start(name) is called as
    each grading starts (to say which one a Ctrl-C stopped), on_result(number, verdict)
    as each verdict is in."""
    for name in names or ():
        exercise(name)                         # BadValue for a name that is no exercise
    results = []
    for e in EXERCISES:
        if names and e.name not in names:
            continue
        if on_start:
            on_start(e.name)
        verdict = grade(e.name, _function(namespace, e.name))
        if names or every or not e.extra or verdict.status != NOT_DONE:
            results.append((number(e.name), verdict))
            if on_result:
                on_result(*results[-1])
    return results


def _function(namespace, name):
    fn = namespace.get(name)
    return fn if callable(fn) else None


def summary(results):
    """'3 right, 1 wrong, 10 not done'."""
    counts = {s: sum(v.status == s for _, v in results) for s in (RIGHT, WRONG, NOT_DONE)}
    return ", ".join(f"{n} {s}" for s, n in counts.items() if n)


def verdict(fn):
    """Grade fn as the exercise of its own name and print the verdict (a notebook's check
    cell: `verdict(layernorm_backward)`)."""
    name = getattr(fn, "__name__", None)
    if name not in BY_NAME:
        raise BadValue(f"{name!r} is no exercise: name your function as its stub is named "
                       f"({', '.join(BY_NAME)})")
    print(grade(name, fn).report(number(name)))


# ------------------------------------------------------------------ training on them

def graded(namespace, source):
    """-> ({name: function} of the exercises the namespace does right and that are its own
    (not the engine's imported), [names of those not done]). Raises BadValue with the
    verdicts when one is wrong, or when none is done."""
    results = check(namespace, every=True)
    wrong = [(i, v) for i, v in results if v.status == WRONG]
    if wrong:
        raise BadValue(f"{source} has {len(wrong)} wrong function{'s' if len(wrong) > 1 else ''}; "
                       f"training on it would learn from wrong gradients, so it stops here:\n"
                       + "\n".join(v.report(i) for i, v in wrong)
                       + f"\nfix {'them' if len(wrong) > 1 else 'it'}, then train again")
    right = {v.name: as_called(v.name, namespace[v.name]) for _, v in results if v.status == RIGHT}
    if not right:
        how = ("each exercise's check cell grades it" if source == NOTEBOOK
               else f"`minivit exercises check {source}` grades them")
        raise BadValue(f"{source} has no exercise done yet: nothing of yours to train on. Write "
                       f"one (`minivit exercises` lists them; {how})")
    own = {n: f for n, f in right.items() if f is not engine_function(n)}
    return own, [v.name for _, v in results if v.status == NOT_DONE]


def counted(functions, calls):
    """Each function wrapped to add one to calls[its name] per call. A call made while
    the same function runs (the student's linear_backward calling the engine's through
    its module, which now holds the student's) goes to the engine's function, as it did
    when the exercise was graded."""
    def wrap(name, fn):
        def run(*args, **kwargs):
            if running[name]:
                return engine_function(name)(*args, **kwargs)
            calls[name] += 1
            running[name] = True
            try:
                return fn(*args, **kwargs)
            finally:
                running[name] = False
        run.__name__ = run.__qualname__ = name
        return run
    running = dict.fromkeys(functions, False)
    return {name: wrap(name, fn) for name, fn in functions.items()}


@contextlib.contextmanager
def in_the_engine(functions):
    """While inside, each reference minivit's loaded modules hold to the engine's function
    of an exercise is the student's function of that name instead: a module's global
    (`from .layers import linear_backward` included) or an entry of a module-level table
    of tuples (layers.GELUS, layers.NORMS). Restored on the way out. (A reference kept
    elsewhere, such as a default argument or a class attribute, is not swapped: the
    engine keeps none.)"""
    swap = {id(engine_function(n)): f for n, f in functions.items() if f is not engine_function(n)}
    undo = []
    modules = [m for k, m in list(sys.modules.items())
               if m is not None and (k == "minivit" or k.startswith("minivit."))]
    for module in modules:
        scope = vars(module)
        for key, value in list(scope.items()):
            if id(value) in swap:
                undo.append((scope, key, value))
                scope[key] = swap[id(value)]
            elif isinstance(value, dict):
                for k, entry in list(value.items()):
                    if isinstance(entry, tuple) and any(id(f) in swap for f in entry):
                        undo.append((value, k, entry))
                        value[k] = tuple(swap.get(id(f), f) for f in entry)
    try:
        yield
    finally:
        for scope, key, value in reversed(undo):
            scope[key] = value


@contextlib.contextmanager
def for_training(layers=None, namespace=None, log=print):
    """The context a training run on a student's functions runs in: those of the file
    `layers` (a path) or of a namespace (a notebook's globals()); neither: nothing. The
    student's right functions replace the engine's, each counting its calls; the
    exercises not done are the engine's in the namespace too; at the end the log says
    which of the student's functions ran, and the namespace is as it was."""
    if not layers and namespace is None:
        yield
        return
    namespace, source = (load(layers), str(layers)) if layers else (namespace, NOTEBOOK)
    own, not_done = graded(namespace, source)
    core = [n for n in not_done if not BY_NAME[n].extra]
    log(f"Your functions: {len(own)} of {source} in the engine's place "
        f"({', '.join(own) if own else 'none of your own: it imports the engine'})"
        + (f"; not done yet, so the engine's: {', '.join(core)}" if core else "")
        + (f"; {len(not_done) - len(core)} optional ones not done" if len(not_done) > len(core) else "")
        + ".")
    calls = dict.fromkeys(own, 0)
    mine = counted(own, calls)
    saved = {n: namespace[n] for n in [*mine, *not_done] if n in namespace}
    namespace.update(mine)                          # their own calls to each other count too
    namespace.update({n: engine_function(n) for n in not_done})
    try:
        with in_the_engine(mine):
            yield
    finally:
        for n in [*mine, *not_done]:
            namespace.pop(n, None)
        namespace.update(saved)
    if not calls:
        log(f"That ViT trained on the engine's own functions ({source} imports them).")
        return
    ran = [n for n, c in calls.items() if c]
    idle = [n for n, c in calls.items() if not c]
    log(f"That ViT learned from your gradients: {', '.join(ran) or 'none'} of {source} ran in the "
        f"engine's place ({sum(calls.values()):,} calls)"
        + (f"; not used by this model: {', '.join(idle)}" if idle else "") + ".")
