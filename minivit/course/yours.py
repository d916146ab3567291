"""A student's functions: read from their file (or a notebook's namespace), graded, and
put in the engine's place for a training run.

    namespace = load("my_backward.py")          # the file's names, as a dict
    results = check(namespace)                  # [(number, Verdict)], the core exercises
    with in_the_engine(ready(namespace, "my_backward.py", log=print)):
        ...                                     # the engine now calls the student's functions

ready() refuses (BadValue, with every verdict) a namespace with a wrong function, so a
wrong gradient never trains; an exercise not done yet stays the engine's.
"""

import contextlib
import functools
import importlib.util
import sys
from pathlib import Path

from ..engine.errors import BadValue
from .exercises import BY_NAME, EXERCISES, engine_function
from .grade import NOT_DONE, RIGHT, WRONG, as_called, body_of, grade

_loaded = 0         # files loaded so far: each gets a module name of its own


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
    except Exception as e:                     # their file, any error: say where, stop
        raise BadValue(f"{path} fails when imported: {type(e).__name__}: {e}") from None
    return vars(module)


def check(namespace, names=None, extra=False):
    """[(number, Verdict)] of the exercises named (default: the core ones, and the extra
    ones too with extra=True), in learning order."""
    if names:
        unknown = [n for n in names if n not in BY_NAME]
        if unknown:
            raise BadValue(f"no exercise named {', '.join(map(repr, unknown))}: the exercises "
                           f"are {', '.join(BY_NAME)} (`minivit exercises` lists them)")
    chosen = [(i, e) for i, e in enumerate(EXERCISES, 1)
              if (e.name in names if names else extra or not e.extra)]
    return [(i, grade(e.name, _function(namespace, e.name))) for i, e in chosen]


def _function(namespace, name):
    fn = namespace.get(name)
    return fn if callable(fn) else None


def summary(results):
    """'3 right, 1 wrong, 10 not done'."""
    counts = {s: sum(v.status == s for _, v in results) for s in (RIGHT, WRONG, NOT_DONE)}
    return ", ".join(f"{n} {s}" for s, n in counts.items() if n)


def ready(namespace, source, log=print):
    """{name: function} of every exercise the namespace does right, for in_the_engine.
    Raises BadValue, with the verdicts, when one is wrong or none is done. The exercises
    not done yet become the engine's in the namespace itself (the student's functions
    that call them call the engine's)."""
    results = check(namespace, extra=True)
    wrong = [(i, v) for i, v in results if v.status == WRONG]
    if wrong:
        raise BadValue(f"{source} has {len(wrong)} wrong function{'s' if len(wrong) > 1 else ''}; "
                       f"training on it would learn from wrong gradients, so it stops here:\n"
                       + "\n".join(v.report(i) for i, v in wrong)
                       + f"\nfix {'them' if len(wrong) > 1 else 'it'}, then train again")
    right = {v.name: as_called(v.name, namespace[v.name]) for _, v in results if v.status == RIGHT}
    if not right:
        how = ("each exercise's check cell grades it" if source == "your notebook"
               else f"`minivit exercises check {source}` grades them")
        raise BadValue(f"{source} has no exercise done yet: nothing of yours to train on. Write "
                       f"one (`minivit exercises` lists them; {how})")
    not_done = [v.name for _, v in results if v.status == NOT_DONE]
    for name in not_done:
        namespace[name] = engine_function(name)
    own = [n for n, f in right.items() if f is not engine_function(n)]
    core = [n for n in not_done if not BY_NAME[n].extra]
    log(f"Your functions: {len(own)} of {source} in the engine's place "
        f"({', '.join(own) if own else 'none of your own: it imports the engine'})"
        + (f"; not done yet, so the engine's: {', '.join(core)}" if core else "")
        + (f"; {len(not_done) - len(core)} optional ones not done" if len(not_done) > len(core) else "")
        + ".")
    return {n: right[n] for n in own}


def counted(functions, calls):
    """Each function wrapped to add one to calls[its name] per call."""
    def wrap(name, fn):
        @functools.wraps(body_of(fn))
        def run(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)
        return run
    return {name: wrap(name, fn) for name, fn in functions.items()}


@contextlib.contextmanager
def in_the_engine(functions):
    """While inside, every reference minivit's modules hold to the engine's function of
    an exercise (a module's global, or an entry of a table such as layers.GELUS) is the
    student's function of that name instead. Restored on the way out."""
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
    `layers` (a path) or of a namespace (a notebook's globals()); neither: nothing. Each
    of the student's functions counts its calls, and the end of the run says which ran."""
    if not layers and namespace is None:
        yield
        return
    if layers:
        namespace, source = load(layers), str(layers)
    else:
        source = "your notebook"                    # its check cells grade each exercise
    functions = ready(namespace, source, log)
    calls = dict.fromkeys(functions, 0)
    mine = counted(functions, calls)
    saved = {n: namespace[n] for n in mine}
    namespace.update(mine)                          # their own calls to each other count too
    try:
        with in_the_engine(mine):
            yield
    finally:
        namespace.update(saved)
    ran = [n for n, c in calls.items() if c]
    idle = [n for n, c in calls.items() if not c]
    if not calls:
        log(f"That ViT trained on the engine's own functions ({source} imports them).")
        return
    log(f"That ViT learned from your gradients: {', '.join(ran) or 'none'} of {source} ran in the "
        f"engine's place ({sum(calls.values()):,} calls)"
        + (f"; not used by this model: {', '.join(idle)}" if idle else "") + ".")


STUBS = Path(__file__).with_name("stubs.py")


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


def verdict(fn):
    """Grade fn as the exercise of its own name and print the verdict (a notebook's check
    cell: `verdict(layernorm_backward)`)."""
    name = getattr(fn, "__name__", None)
    if name not in BY_NAME:
        raise BadValue(f"{name!r} is no exercise: name your function as its stub is named "
                       f"({', '.join(BY_NAME)})")
    print(grade(name, fn).report([e.name for e in EXERCISES].index(name) + 1))
