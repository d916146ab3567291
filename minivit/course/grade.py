"""Grading a student's function: right, wrong (with a hint read from the error's pattern),
or not done.

    verdict = grade("layernorm_backward", my_layernorm_backward)
    print(verdict.report())        # one line, and for a wrong one the hints under it

A backward is run on each small case of the engine's own gradient check that the model's
options need (float64, a random upstream gradient, never all ones: that would hide
LayerNorm's mean term), and every gradient it returns is compared with finite differences
of the engine's forward AND with the engine's backward. Right means both agree to 1e-7
(relative) on every case, float32 inputs give float32 gradients, neither the upstream
gradient nor the cache is changed, and need_dx=False gives None. The loss is graded the
same way on its own cases; the optimizer updates against the engine's, state for state.
Wrong names each gradient that is wrong and each that is right, and diagnose.py looks for
a pattern: a constant factor (named, e.g. 2 = sqrt(d)), a flipped sign, a transposition,
a term constant along the last axis (a path through a mean), a difference at one index,
the gradients returned in the wrong order, a missing sum over rows, NaN, a shape or a dtype.

While an exercise is graded, the other exercises its function calls by name (a student's
attention_backward calling their linear_backward) are the engine's, so each exercise is
graded on its own: a wrong LayerNorm fails LayerNorm's exercise alone.
"""

import contextlib
import copy
import inspect
import math
import re
import traceback
from dataclasses import dataclass, field

import numpy as np

from ..engine import gradcheck, loss
from ..engine.backend import kernel
from .diagnose import (FLOAT32_HINT, TOL, body_of, join_names, numpy_only, pattern, rel_err, shape_problem,
                       swapped_order)
from .exercises import BY_NAME, exercise, engine_function

SEED = 0

NOT_DONE, RIGHT, WRONG = "not done", "right", "wrong"


@dataclass
class Verdict:
    name: str
    status: str                                   # NOT_DONE, RIGHT or WRONG
    summary: str = ""                             # what is right and what is wrong
    hints: list = field(default_factory=list)     # what to look at, most specific first
    errors: dict = field(default_factory=dict)    # returned name -> relative error
    notes: list = field(default_factory=list)     # what in it runs on NumPy only (a GPU run fails)

    @property
    def right(self):
        return self.status == RIGHT

    def report(self, number=None):
        """One line (number, name, status, summary), then the hints, indented."""
        ex = BY_NAME[self.name]
        number = "" if number is None else f"{number:2d}  "
        status = self.status.upper() if self.status == WRONG else self.status
        lines = [f"{number}{self.name:<22s} {status}  {self.summary}".rstrip()]
        pad = " " * (4 if number is not None else 0) + " " * 23
        for hint in dict.fromkeys(self.hints):
            lines.append(f"{pad}hint: {hint}")
        for note in self.notes:
            lines.append(f"{pad}note: {note}")
        if self.status == WRONG:
            lines.append(f"{pad}see {ex.docs}")
        return "\n".join(lines)


# ----------------------------------------------------------------- running their code

@contextlib.contextmanager
def engine_for_others(fn, name):
    """While fn runs, every other exercise named in fn's module (its globals) is the
    engine's, so fn is graded on its own."""
    scope = getattr(body_of(fn), "__globals__", None)
    saved = {}
    quiet = np.errstate(all="ignore")          # their NaN is reported as a verdict, not a warning
    quiet.__enter__()
    if scope is not None:
        for other in BY_NAME:
            if other != name and other in scope:
                saved[other] = scope[other]
                scope[other] = engine_function(other)
    try:
        yield
    finally:
        quiet.__exit__(None, None, None)
        if scope is not None:
            scope.update(saved)


class _Outcome:
    """What calling a student's function gave: its result, or the Verdict it earned
    (not done, or wrong with what it raised)."""

    def __init__(self, result=None, verdict=None):
        self.result, self.verdict = result, verdict


def _call(name, fn, *args):
    """fn(*args) with the other exercises the engine's (engine_for_others): an _Outcome.
    NotImplementedError is "not done"; any other error (SystemExit too: a stray exit()
    must not end the grading) a wrong verdict naming it; Ctrl-C goes through."""
    try:
        with engine_for_others(fn, name):
            return _Outcome(fn(*args))
    except NotImplementedError:
        return _Outcome(verdict=Verdict(name, NOT_DONE))
    except (Exception, SystemExit) as e:                # their code, any error: a verdict
        return _Outcome(verdict=_raised(name, e, fn))


def as_called(name, fn):
    """fn as the engine calls it: an optimizer update written as a plain function
    body(xp, ...) becomes a kernel, as the stubs' @kernel makes it."""
    if BY_NAME[name].module == "optim" and not isinstance(fn, kernel):
        return kernel(fn)
    return fn


def _where(error, fn):
    """' (your file, line N: code)' for the deepest frame of the error in fn's file."""
    try:
        path = inspect.getsourcefile(body_of(fn))
    except TypeError:
        path = None
    frames = [f for f in traceback.extract_tb(error.__traceback__) if f.filename == path]
    if not frames:
        return ""
    f = frames[-1]
    return f" (line {f.lineno}: {f.line.strip()})" if f.line else f" (line {f.lineno})"


def _raised(name, error, fn):
    msg = f"{type(error).__name__}: {error}".strip()
    hints = []
    if "broadcast" in str(error):
        shapes = [tuple(int(n) for n in m.split(",") if n.strip())
                  for m in re.findall(r"\(([\d,\s]*)\)", str(error))]
        if any(a[:-1] == b and len(a) > 1 for a in shapes for b in shapes):
            hints.append("a sum or mean over the last axis dropped it: keepdims=True keeps it, "
                         "so the result lines up with the array it came from")
        else:
            hints.append("the arrays on that line do not line up: print their shapes")
    elif "matmul" in str(error) and "mismatch" in str(error):
        hints.append("a matrix product's inner sizes differ: is a transpose missing (w.T; for a "
                     "stack of matrices, .swapaxes(-2, -1))? print the two operands' shapes")
    elif isinstance(error, (AttributeError, KeyError)):
        hints.append("read the cache by the names the docstring gives")
    return Verdict(name, WRONG, f"raised {msg[:200]}{_where(error, fn)}", hints)


def _signature_problem(name, fn):
    """Why fn cannot stand in for the engine's function, or None."""
    def shape(f):
        ps = list(inspect.signature(body_of(f)).parameters.values())
        return [p.default is inspect.Parameter.empty for p in ps]
    try:
        mine, theirs = shape(engine_function(name)), shape(fn)
    except (TypeError, ValueError):
        return f"{name} is not a function"
    if mine != theirs:
        want = inspect.signature(body_of(engine_function(name)))
        return (f"takes {inspect.signature(body_of(fn))}; the engine calls it as {name}{want}: "
                f"keep the stub's signature")
    return None


# ------------------------------------------------------------------ backward passes

_FD = {}          # a case's finite differences, computed once per process


def _case(case):
    rng = np.random.default_rng(SEED)
    forward, backward, inputs = gradcheck.LAYERS[case](rng)
    out, cache = forward(**inputs)
    G = np.random.default_rng(SEED + 1).standard_normal(np.shape(out))
    return forward, backward, inputs, cache, G


def _numeric(case):
    """{input name: the finite-difference gradient of sum(out * G)} of a case."""
    if case not in _FD:
        forward, _, inputs, _, G = _case(case)
        eps = gradcheck.TOLERANCES["float64"][0]

        def objective():
            return float((forward(**inputs)[0] * G).sum())
        _FD[case] = {k: gradcheck.numeric_gradient(objective, a, eps, np.arange(a.size)).reshape(a.shape)
                     for k, a in inputs.items()}
    return _FD[case]


def _layout(ex, inputs):
    """{input name: (how the student calls its gradient, the key of its hint in ex.hints)}:
    ("dx", "dx") for the arrays returned in order; ("grads['norm1.weight']", "grads") for
    a parameter's gradient in the dict of a (dx, grads) exercise."""
    names = list(inputs)
    if ex.returns[-1] == "grads":
        return {names[0]: (ex.returns[0], ex.returns[0]),
                **{k: (f"grads[{k!r}]", "grads") for k in names[1:]}}
    return {k: (r, r) for k, r in zip(names, ex.returns)}


def _named(ex, result, inputs):
    """What a backward returned -> {input name: gradient}, or a str saying what is off."""
    names = list(inputs)
    if ex.returns[-1] == "grads":                 # (dx, {parameter name: gradient})
        if not (isinstance(result, (tuple, list)) and len(result) == 2 and isinstance(result[1], dict)):
            return (f"returns {type(result).__name__}, expected ({ex.returns[0]}, a dict of the "
                    f"parameters' gradients)")
        missing = [k for k in names[1:] if k not in result[1]]
        if missing:
            return f"the dict of gradients has no {', '.join(map(repr, missing))}"
        extra = [k for k in result[1] if k not in names[1:]]
        if extra:
            return (f"the dict of gradients has {', '.join(map(repr, extra))}, which this model "
                    f"has no parameter of (the engine adds each entry to a parameter's gradient)")
        return {names[0]: result[0], **{k: result[1][k] for k in names[1:]}}
    if len(names) == 1:
        if isinstance(result, (tuple, list)):
            return (f"returns a {type(result).__name__}; {ex.returns[0]} is its only gradient: "
                    f"return the array itself")
        return {names[0]: result}
    if not isinstance(result, (tuple, list)) or len(result) != len(names):
        n = len(result) if isinstance(result, (tuple, list)) else 1
        return f"returns {n} value{'s' if n != 1 else ''}, expected {len(names)}: ({', '.join(ex.returns)})"
    return dict(zip(names, result))


def _arrays(obj):
    """Every NumPy array reachable from a cache (its fields, nested caches), by path."""
    if isinstance(obj, np.ndarray):
        return {"": obj}
    fields = vars(obj) if hasattr(obj, "__dict__") and not callable(obj) else (
        obj if isinstance(obj, dict) else {})
    found = {}
    for key, value in fields.items():
        for path, array in _arrays(value).items():
            found[f".{key}{path}"] = array
    return found


def _grade_backward(ex, fn):
    """Every case of the exercise in turn, in float64 then float32 (the first that fails
    is the verdict), then need_dx=False; notes on code that would fail on a GPU."""
    for case, label in ex.cases.items():
        verdict = _grade_case(ex, fn, case)
        if verdict.status == RIGHT:
            verdict = _dtype_check(ex, fn, case) or verdict
        if verdict.status != RIGHT:
            if label and verdict.summary:
                verdict.summary = f"{label}: {verdict.summary}"
            return verdict
    verdict = _need_dx_check(ex, fn) or Verdict(ex.name, RIGHT)
    verdict.notes = numpy_only(fn)
    return verdict


def _grade_case(ex, fn, case, need_dx=None):
    """The Verdict on fn for one gradcheck.LAYERS case (need_dx: passed when not None)."""
    forward, _, inputs, cache, G = _case(case)
    extra = () if need_dx is None else (need_dx,)
    want = _named(ex, engine_function(ex.name)(G, copy.deepcopy(cache), *extra), inputs)
    layout = _layout(ex, inputs)
    shown = {k: v[0] for k, v in layout.items()}
    dy, theirs = G.copy(), copy.deepcopy(cache)
    before = {path: a.copy() for path, a in _arrays(theirs).items()}
    outcome = _call(ex.name, fn, dy, theirs, *extra)
    if outcome.verdict:
        return outcome.verdict
    got = _named(ex, outcome.result, inputs)
    if isinstance(got, str):
        return Verdict(ex.name, WRONG, got, [_hint_of_returns(ex, inputs)])
    if need_dx is False:
        first = next(iter(inputs))
        if got[first] is not None:
            return Verdict(ex.name, WRONG, f"with need_dx=False {shown[first]} must be None",
                           ["the model passes need_dx=False for an input no one trains (the "
                            "images): skip that product and return None in its place"])
        inputs = {k: v for k, v in inputs.items() if k != first}
        got, want = ({k: d[k] for k in inputs} for d in (got, want))
    swapped = swapped_order(got, want, shown, ex)
    if swapped:
        return Verdict(ex.name, WRONG, swapped)
    problems = {k: shape_problem(got[k], want[k], shown[k]) for k in inputs}
    if any(problems.values()):
        return Verdict(ex.name, WRONG, "; ".join(p for p in problems.values() if p),
                       _unique_hints([_exercise_hint(ex, shown, layout, k) for k in inputs
                                      if problems[k] and layout[k][1] in ex.hints]))
    numeric = _numeric(case)
    errors = {k: max(rel_err(np.asarray(got[k], dtype=np.float64), want[k]),
                     rel_err(np.asarray(got[k], dtype=np.float64), numeric[k])) for k in inputs}
    wrong = [k for k in inputs if errors[k] > TOL]
    verdict = _verdict(ex, {shown[k]: errors[k] for k in inputs}, [shown[k] for k in wrong])
    if not wrong:
        changed = [path for path, a in _arrays(theirs).items()
                   if path in before and not np.array_equal(a, before[path])]
        if not np.array_equal(dy, G):
            return Verdict(ex.name, WRONG, "changed its upstream gradient (the first argument) "
                           "in place", ["the caller still needs the gradient it passed: compute "
                                         "into new arrays (a = a * w, not a *= w)"])
        if changed:
            return Verdict(ex.name, WRONG, f"changed the cache in place (cache{changed[0]})",
                           ["the cache holds the forward's arrays, some of them the model's own "
                            "parameters: read them, compute into new arrays"])
        return verdict
    for k in wrong:
        found = pattern(np.asarray(got[k], dtype=np.float64), want[k], ex.factors,
                        blocks=ex.name == "attention_backward")
        if found:
            verdict.hints.append(f"your {shown[k]} {found}")
        if layout[k][1] in ex.hints:
            verdict.hints.append(_exercise_hint(ex, shown, layout, k))
    verdict.hints = _unique_hints(verdict.hints)
    return verdict


def _exercise_hint(ex, shown, layout, k):
    """The exercise's own hint on returned value k, as 'dx: ...'."""
    return f"{shown[k]}: {ex.hints[layout[k][1]]}"


def _unique_hints(hints):
    """hints without repeats; a hint on one of grads' entries said once, without its key."""
    return list(dict.fromkeys(h.split(": ", 1)[1] if h.startswith("grads[") else h for h in hints))


def _hint_of_returns(ex, inputs):
    if ex.returns[-1] == "grads":
        return (f"return ({ex.returns[0]}, grads) with grads holding "
                f"{', '.join(repr(k) for k in list(inputs)[1:])}")
    if len(ex.returns) == 1:
        return f"return {ex.returns[0]}"
    return f"return ({', '.join(ex.returns)})"


def _need_dx_check(ex, fn):
    """A Verdict when fn, told need_dx=False, does not return None for dx (or gets the
    parameters' gradients wrong then), else None."""
    if "need_dx" not in inspect.signature(body_of(engine_function(ex.name))).parameters:
        return None
    verdict = _grade_case(ex, fn, ex.case, need_dx=False)
    return None if verdict.status == RIGHT else verdict


def _verdict(ex, errors, wrong):
    """A Verdict naming the wrong and the right gradients (a dict's by their layers:
    grads['attn.*'] for every attn. entry)."""
    if not wrong:
        return Verdict(ex.name, RIGHT, "", [], errors)
    groups = {}                               # shown name or group -> largest relative error
    for k, e in errors.items():
        g = k.split(".")[0] + ".*']" if k.startswith("grads[") else k
        groups.setdefault(g, [0.0, False])
        groups[g][0] = max(groups[g][0], e)
        groups[g][1] |= k in wrong
    bad = [g for g, (_, w) in groups.items() if w]
    good = [g for g, (_, w) in groups.items() if not w]
    errs = ", ".join(f"{groups[g][0]:.1e}" for g in bad)
    summary = f"{join_names(bad)} wrong (relative error{'s' if len(bad) > 1 else ''} {errs})"
    if good:
        summary += f"; {join_names(good)} right"
    return Verdict(ex.name, WRONG, summary, [], errors)


def _dtype_check(ex, fn, case):
    """A Verdict when float32 inputs give other than float32 gradients, else None."""
    forward, _, inputs = gradcheck.LAYERS[case](np.random.default_rng(SEED))
    inputs = {k: v.astype(np.float32) for k, v in inputs.items()}
    out, cache = forward(**inputs)
    G = np.random.default_rng(SEED + 1).standard_normal(np.shape(out)).astype(np.float32)
    outcome = _call(ex.name, fn, G, cache)
    if outcome.verdict:                             # right in float64, fails in float32
        return outcome.verdict
    got = _named(ex, outcome.result, inputs)
    if isinstance(got, str):
        return Verdict(ex.name, WRONG, f"with float32 inputs: {got}")
    bad = [k for k in inputs if getattr(got[k], "dtype", None) != np.float32]
    if not bad:
        return None
    shown = {k: v[0] for k, v in _layout(ex, inputs).items()}
    verb = "comes" if len(bad) == 1 else "come"
    return Verdict(ex.name, WRONG, f"right in float64, but from float32 inputs "
                   f"{join_names([shown[k] for k in bad])} {verb} back {got[bad[0]].dtype}",
                   [FLOAT32_HINT])


# ------------------------------------------------------------------ the loss

def _loss_cases():
    """(what the case is, logits, labels, label_smoothing, the hint when only it fails)."""
    rng = np.random.default_rng(SEED)
    logits = 2 * rng.standard_normal((4, 5))                      # B = 4, K = 5
    labels = rng.integers(0, 5, size=4)
    soft = rng.random((4, 5))
    soft /= soft.sum(axis=1, keepdims=True)
    return [("integer labels", logits, labels, 0.0,
             "without smoothing q is onehot(label): loss = -mean of log p at the label"),
            ("label smoothing 0.1", logits, labels, 0.1,
             "with smoothing the target is q = (1 - ls) onehot + ls / K, over all K classes"),
            ("soft targets", logits, soft, 0.1,
             "soft targets [B, K] take onehot's place: q = (1 - ls) labels + ls / K"),
            ("logits near 1000", logits + 1000.0, labels, 0.1,
             "exp(1000) overflows: subtract each row's max first, t = z - max z")]


def _grade_loss(ex, fn):
    """Each case of _loss_cases in turn (the first that fails is the verdict), then float32
    logits for the dtype."""
    eps = gradcheck.TOLERANCES["float64"][0]
    for n, (what, logits, labels, smoothing, hint) in enumerate(_loss_cases()):
        hints = [hint] if n else []             # a case's own hint: when the ones before passed
        want_loss, want = loss.cross_entropy(logits, labels, smoothing)
        outcome = _call(ex.name, fn, logits.copy(), labels.copy(), smoothing)
        if outcome.verdict:
            if outcome.verdict.status == WRONG:
                outcome.verdict.summary = f"{what}: {outcome.verdict.summary}"
                outcome.verdict.hints += hints
            return outcome.verdict
        got = outcome.result
        if not (isinstance(got, (tuple, list)) and len(got) == 2):
            return Verdict(ex.name, WRONG, "returns something other than (loss, dlogits)")
        got_loss, got_d = got
        try:
            got_loss = float(got_loss)
        except (TypeError, ValueError):
            kind = type(got_loss).__name__
            kind = f"{'an' if kind[0] in 'aeiou' or kind.startswith('nd') else 'a'} {kind}"  # an ndarray
            if np.ndim(got_d) == 0:
                return Verdict(ex.name, WRONG, f"the loss is {kind} and dlogits a number",
                               ["return (loss, dlogits) in that order"])
            return Verdict(ex.name, WRONG, f"the loss is {kind}, not a number (a 0-d array or a float)")
        problem = shape_problem(got_d, want, "dlogits")
        if problem or not math.isfinite(got_loss):
            return Verdict(ex.name, WRONG, f"{what}: {problem or 'the loss is ' + str(got_loss)}", hints)

        def objective():
            return float(loss.cross_entropy(nudged, labels, smoothing)[0])
        nudged = logits.copy()
        numeric = gradcheck.numeric_gradient(objective, nudged, eps, np.arange(logits.size)).reshape(want.shape)
        errors = {"loss": rel_err(np.array(got_loss), np.array(float(want_loss))),
                  "dlogits": max(rel_err(got_d, want), rel_err(got_d, numeric))}
        wrong = [k for k in errors if errors[k] > TOL]
        if wrong:
            verdict = _verdict(ex, errors, wrong)
            verdict.summary = f"{what}: {verdict.summary}"
            for k, got_k, want_k in (("loss", got_loss, want_loss), ("dlogits", got_d, want)):
                found = k in wrong and pattern(np.asarray(got_k, dtype=np.float64),
                                               np.asarray(want_k, dtype=np.float64), ex.factors)
                if found and (k == "dlogits" or "=" in found or "opposite sign" in found):
                    verdict.hints.append(f"your {k} {found}")   # one number: a named factor only
            verdict.hints += hints + [f"{k}: {ex.hints[k]}" for k in wrong]
            return verdict
    logits, labels = _loss_cases()[1][1:3]
    outcome = _call(ex.name, fn, logits.astype(np.float32), labels, 0.1)
    if outcome.verdict:
        outcome.verdict.summary = f"float32 logits: {outcome.verdict.summary}"
        return outcome.verdict
    dtype = getattr(outcome.result[1], "dtype", None) if isinstance(outcome.result, (tuple, list)) else None
    if dtype != np.float32:
        return Verdict(ex.name, WRONG, f"right in float64, but float32 logits give {dtype} dlogits",
                       [FLOAT32_HINT])
    return Verdict(ex.name, RIGHT, notes=numpy_only(fn))


# ------------------------------------------------------------------ the optimizer

def _adam_cases(decoupled):
    """(what the case is, its state, decay, ok, the scalars after them) of one update at
    step t = 3, the simplest case first."""
    n = 11
    lr, b1, b2, eps, t = 1e-2, 0.9, 0.999, 1e-8, 3
    scalars = [lr / (1 - b1 ** t), 1 - b1, 1 - b2, math.sqrt(1 - b2 ** t), eps] + ([lr] if decoupled else [])

    def state(scale=1.0):
        def make():
            r = np.random.default_rng(SEED + 1)
            return [r.standard_normal(n), scale * r.standard_normal(n),
                    0.1 * scale * r.standard_normal(n), scale ** 2 * r.random(n)]
        return make
    on, off = np.ones((), dtype=bool), np.zeros((), dtype=bool)
    per_element = 0.05 * np.random.default_rng(SEED).random(n)
    return [("no weight decay", state(), 0.0, on, scalars),
            ("weight decay 0.05", state(), 0.05, on, scalars),
            ("a decay per element", state(), per_element, on, scalars),
            ("gradients near 1e-9, where eps matters", state(1e-9), 0.0, on, scalars),
            ("ok False", state(), 0.05, off, scalars)]


def _grade_adam(ex, fn):
    fn = as_called(ex.name, fn)
    engine = engine_function(ex.name)
    for what, state, decay, ok, scalars in _adam_cases(ex.name == "adamw_update"):
        want = state()
        engine(*want, decay, ok, *scalars)
        got = state()
        before = [a.copy() for a in got]
        outcome = _call(ex.name, fn, *got, decay, ok, *scalars)
        if outcome.verdict:
            return outcome.verdict
        returned = outcome.result
        names = ("w", "g", "m", "v")
        errors = {k: rel_err(got[i], want[i]) for i, k in enumerate(names) if k != "g"}
        wrong = [k for k in errors if errors[k] > TOL]
        if not np.array_equal(got[1], before[1]):
            return Verdict(ex.name, WRONG, f"{what}: changed the gradient g",
                           ["g is read, never written: g = g + decay * w makes a new array, while "
                            "g += ... changes the model's gradient"])
        if not wrong:
            continue
        verdict = _verdict(ex, errors, wrong)
        verdict.summary = f"{what}: {verdict.summary}"
        for k in wrong:
            i = names.index(k)
            if np.array_equal(got[i], before[i]) and not np.array_equal(want[i], before[i]):
                verdict.hints.append(f"{k} was not changed: update it in place ({k} += ..., "
                                     f"{k} -= ...); the optimizer keeps the arrays it passed"
                                     + (" (you returned the new w)" if k == "w" and hasattr(returned, "shape")
                                        and rel_err(np.asarray(returned), want[0]) <= TOL else ""))
            elif what == "ok False":
                verdict.hints.append("with ok False nothing may change: write each change as "
                                     "xp.where(ok, change, 0.0)")
            elif k in ex.hints:
                verdict.hints.append(f"{k}: {ex.hints[k]}")
        return verdict
    return Verdict(ex.name, RIGHT, notes=numpy_only(fn))


# ------------------------------------------------------------------ the entry points

def grade(name, fn):
    """The Verdict on fn as the exercise `name` (None or a missing fn: not done)."""
    ex = exercise(name)
    if fn is None:
        return Verdict(name, NOT_DONE, "not in your file")
    problem = _signature_problem(name, as_called(name, fn))
    if problem:
        return Verdict(name, WRONG, problem)
    if ex.case == "cross_entropy":
        return _grade_loss(ex, fn)
    if ex.case in ("adam", "adamw"):
        return _grade_adam(ex, fn)
    return _grade_backward(ex, fn)
