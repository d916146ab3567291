"""Grading a student's function: right, wrong (with a hint read from the error's pattern),
or not done.

    verdict = grade("layernorm_backward", my_layernorm_backward)
    print(verdict.report())        # one line, and for a wrong one the hints under it

A backward is run on the small case of the engine's own gradient check (float64, a random
upstream gradient, never all ones: that would hide LayerNorm's mean term), and every
gradient it returns is compared with finite differences of the engine's forward AND with
the engine's backward. Right means both agree to 1e-7 (relative), and the same function
keeps float32 inputs float32. Wrong names each gradient that is wrong and each that is
right, and looks for a pattern: a constant factor (named, e.g. 2.0 = sqrt(d)), a flipped
sign, a transposition, a term constant along the last axis (a path through a mean), the
gradients returned in the wrong order, a missing sum over rows, NaN, a shape or a dtype.

While an exercise is graded, the other exercises its function calls by name (a student's
attention_backward calling their linear_backward) are the engine's, so each exercise is
graded on its own: a wrong LayerNorm fails LayerNorm's exercise alone.
"""

import ast
import contextlib
import copy
import inspect
import math
import re
import textwrap
import traceback
from dataclasses import dataclass, field

import numpy as np

from ..engine import gradcheck, loss, optim
from ..engine.backend import kernel
from .exercises import BY_NAME, exercise, engine_function

FLOAT32_HINT = ("training runs in float32: make new arrays with the input's dtype (xp.zeros(shape, "
                "dtype=dy.dtype); np.zeros(shape) is float64), and write constants as Python numbers "
                "(math.sqrt(2 * math.pi)): a NumPy float64 such as np.sqrt(2 * np.pi) turns float32 "
                "arrays into float64")
TOL = 1e-7              # the relative error a right gradient stays under (float64)
SEED = 0

NOT_DONE, RIGHT, WRONG = "not done", "right", "wrong"


@dataclass
class Verdict:
    name: str
    status: str                                   # NOT_DONE, RIGHT or WRONG
    summary: str = ""                             # what is right and what is wrong
    hints: list = field(default_factory=list)     # what to look at, most specific first
    errors: dict = field(default_factory=dict)    # returned name -> relative error
    notes: list = field(default_factory=list)     # right, but: what would fail on a GPU

    @property
    def right(self):
        return self.status == RIGHT

    def report(self, number=None):
        """One line (number, name, status, summary), then the hints, indented."""
        ex = BY_NAME[self.name]
        head = f"{'' if number is None else f'{number:2d}  '}{self.name:<22s} {self.status.upper() if self.status == WRONG else self.status}"
        lines = [f"{head}  {self.summary}".rstrip()]
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


def body_of(fn):
    """The Python function behind fn (a @kernel's body)."""
    return fn.body if isinstance(fn, kernel) else fn


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


# --------------------------------------------------------------------- diagnosing

def rel_err(a, b):
    scale = max(np.linalg.norm(a), np.linalg.norm(b))
    return float(np.linalg.norm(a - b) / scale) if scale > 0 else 0.0


def _factor_name(c, factors):
    """'2.0 = sqrt(d)' when c is a named constant of the case (or its inverse)."""
    names = [n for n, v in factors.items() if abs(c - v) <= 1e-6 * abs(v)]
    names += [f"1/{n}" for n, v in factors.items() if abs(c * v - 1) <= 1e-6]
    return f"{c:.4g}" + (f" = {' or '.join(names)}" if names else "")


def pattern(got, want, factors):
    """What the difference between a wrong gradient and the right one looks like, or None."""
    r = want.reshape(-1)
    s = got.reshape(-1)
    if np.dot(r, r) > 0:
        c = float(np.dot(s, r) / np.dot(r, r))
        if rel_err(s, c * r) <= 1e-6 and not np.isclose(c, 1.0):
            if np.isclose(c, -1.0):
                return "has the right size but the opposite sign"
            if abs(c) < 1e-12:
                return "is all zeros"
            return f"is off by a constant factor: {_factor_name(c, factors)} times the right one"
    if got.ndim >= 2 and got.shape[-1] == got.shape[-2] and rel_err(got, np.swapaxes(want, -1, -2)) <= 1e-6:
        return "is the right one transposed (its last two axes swapped)"
    if got.ndim >= 1 and got.shape[0] % 3 == 0 and got.shape[0] >= 3:
        thirds = np.split(want, 3)
        for order in ((0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0)):
            if rel_err(got, np.concatenate([thirds[i] for i in order])) <= 1e-6:
                return ("holds the right three blocks of rows (q, k, v) in the wrong order: "
                        "q's rows 0:D, k's D:2D, v's 2D:3D")
    diff = got - want
    where = _only_at(diff)
    if where:
        return where
    if got.ndim >= 1 and got.shape[-1] > 1 and np.abs(diff).max() > 0:
        spread = np.abs(diff - diff.mean(axis=-1, keepdims=True)).max()
        if spread <= 1e-6 * np.abs(diff).max():
            return ("differs from the right one by the same amount in every entry along the "
                    "last axis: a term like mean(...) or sum(...) over that axis is missing "
                    "or extra (a path through a mean?)")
    return None


def _only_at(diff):
    """'is wrong only where axis a is i ...' when the difference sits at one or two
    indices of some axis (and nowhere else), else None."""
    bad = np.abs(diff) > 1e-9 * max(np.abs(diff).max(), 1e-300)
    if not bad.any():
        return None
    for axis, n in enumerate(diff.shape):
        if n < 3:
            continue
        rows = np.flatnonzero(np.moveaxis(bad, axis, 0).reshape(n, -1).any(axis=1))
        if len(rows) <= 2:
            at = " and ".join(str(i) for i in rows)
            return (f"is wrong only at index {at} of axis {axis} (of {n}) and right everywhere else: "
                    f"what is special there?")
    return None


def _shape_problem(got, want, shown):
    """Why got cannot be the gradient want (wrong shape, type, NaN), or None."""
    if got is None:
        return f"{shown} is None"
    if not hasattr(got, "shape"):
        return f"{shown} is a {type(got).__name__}, not an array"
    if got.shape != want.shape:
        why = f"{shown} has shape {tuple(got.shape)}, expected {tuple(want.shape)} (its input's)"
        if got.shape == want.shape[::-1]:
            return why + ": transposed?"
        if got.ndim > want.ndim and got.shape[got.ndim - want.ndim:] == want.shape:
            return why + ": a parameter used by every row gets the sum over those rows"
        if got.size == want.size:
            return why + ": the right size, reshape it"
        return why
    if not np.isfinite(got).all():
        return f"{shown} holds NaN or Inf"
    if got.dtype != want.dtype:
        return (f"{shown} is {got.dtype}, its input {want.dtype}: keep the input's dtype (new "
                f"arrays with dtype=dy.dtype; np.zeros(shape) is float64)")
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


def _named(ex, result, inputs):
    """What a backward returned -> {input name: gradient}, or a str saying what is off."""
    names = list(inputs)
    if ex.returns[-1] == "grads":                 # (dx, {parameter name: gradient})
        if not (isinstance(result, tuple) and len(result) == 2 and isinstance(result[1], dict)):
            return f"returns {type(result).__name__}, expected ({ex.returns[0]}, a dict of the parameters' gradients)"
        missing = [k for k in names[1:] if k not in result[1]]
        if missing:
            return f"the dict of gradients has no {', '.join(map(repr, missing))}"
        return {names[0]: result[0], **{k: result[1][k] for k in names[1:]}}
    if len(names) == 1 and not isinstance(result, (tuple, list)):
        result = (result,)
    if not isinstance(result, (tuple, list)) or len(result) != len(names):
        n = len(result) if isinstance(result, (tuple, list)) else 1
        return f"returns {n} value{'s' if n != 1 else ''}, expected {len(names)}: ({', '.join(ex.returns)})"
    return dict(zip(names, result))


def _shown(ex, inputs):
    """{input name: how the student calls its gradient}."""
    names = list(inputs)
    if ex.returns[-1] == "grads":
        return {names[0]: ex.returns[0], **{k: f"grads[{k!r}]" for k in names[1:]}}
    return dict(zip(names, ex.returns))


def _hint_key(ex, inputs):
    """{input name: the key of its gradient's hint in ex.hints}."""
    names = list(inputs)
    if ex.returns[-1] == "grads":
        return {names[0]: ex.returns[0], **{k: "grads" for k in names[1:]}}
    return dict(zip(names, ex.returns))


def _grade_backward(ex, fn):
    """Every case of the exercise in turn (the first failing one is the verdict), then
    need_dx=False and float32 inputs; notes on code that would fail on a GPU."""
    for case, label in ex.cases.items():
        verdict = _grade_case(ex, fn, case)
        if verdict.status != RIGHT:
            if label and verdict.summary:
                verdict.summary = f"{label}: {verdict.summary}"
            return verdict
    verdict = _need_dx_check(ex, fn) or _dtype_check(ex, fn) or Verdict(ex.name, RIGHT)
    verdict.notes = _numpy_only(fn)
    return verdict


def _grade_case(ex, fn, case, need_dx=None):
    """The Verdict on fn for one gradcheck.LAYERS case (need_dx: passed when not None)."""
    forward, _, inputs, cache, G = _case(case)
    extra = () if need_dx is None else (need_dx,)
    want = _named(ex, engine_function(ex.name)(G, copy.deepcopy(cache), *extra), inputs)
    shown = _shown(ex, inputs)
    dy = G.copy()
    try:
        with engine_for_others(fn, ex.name):
            got = _named(ex, fn(dy, copy.deepcopy(cache), *extra), inputs)
    except NotImplementedError:
        return Verdict(ex.name, NOT_DONE)
    except Exception as e:                              # their code, any error: a verdict
        return _raised(ex.name, e, fn)
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
    swapped = _swapped_order(got, want, shown, ex)
    if swapped:
        return Verdict(ex.name, WRONG, swapped)
    problems = {k: _shape_problem(got[k], want[k], shown[k]) for k in inputs}
    if any(problems.values()):
        return Verdict(ex.name, WRONG, "; ".join(p for p in problems.values() if p))
    numeric = _numeric(case)
    errors = {k: max(rel_err(np.asarray(got[k], dtype=np.float64), want[k]),
                     rel_err(np.asarray(got[k], dtype=np.float64), numeric[k])) for k in inputs}
    wrong = [k for k in inputs if errors[k] > TOL]
    verdict = _verdict(ex, {shown[k]: errors[k] for k in inputs}, [shown[k] for k in wrong])
    if not wrong:
        if not np.array_equal(dy, G):
            return Verdict(ex.name, WRONG, "changed its upstream gradient (the first argument) "
                           "in place", ["the caller still needs the gradient it passed: compute "
                                         "into new arrays (a = a * w, not a *= w)"])
        return verdict
    for k in wrong:
        found = pattern(np.asarray(got[k], dtype=np.float64), want[k], ex.factors)
        if found:
            verdict.hints.append(f"your {shown[k]} {found}")
        if _hint_key(ex, inputs)[k] in ex.hints:
            verdict.hints.append(f"{shown[k]}: {ex.hints[_hint_key(ex, inputs)[k]]}")
    verdict.hints = list(dict.fromkeys(h.split(": ", 1)[1] if h.startswith("grads[") else h
                                       for h in verdict.hints))
    return verdict


def _hint_of_returns(ex, inputs):
    if ex.returns[-1] == "grads":
        return (f"return ({ex.returns[0]}, grads) with grads holding "
                f"{', '.join(repr(k) for k in list(inputs)[1:])}")
    return f"return ({', '.join(ex.returns)})"


def _need_dx_check(ex, fn):
    """A Verdict when fn, told need_dx=False, does not return None for dx (or gets the
    parameters' gradients wrong then), else None."""
    if "need_dx" not in inspect.signature(body_of(engine_function(ex.name))).parameters:
        return None
    verdict = _grade_case(ex, fn, ex.case, need_dx=False)
    return None if verdict.status == RIGHT else verdict


# names of NumPy that make no array, fine in code for any backend
_NUMPY_CONSTANTS = {"float32", "float64", "pi", "e", "newaxis", "inf", "nan", "finfo", "dtype"}


def _numpy_only(fn):
    """Notes on what in fn's source runs on NumPy only (np.X calls; in a kernel, an
    assignment into an argument's slice), for a GPU run."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(body_of(fn))))
    except (OSError, TypeError, SyntaxError):
        return []
    used = sorted({n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)
                   and isinstance(n.value, ast.Name) and n.value.id in ("np", "numpy")
                   and n.attr not in _NUMPY_CONSTANTS})
    notes = []
    if used:
        notes.append(f"np.{', np.'.join(used)} run on NumPy only: on a GPU the arrays are CuPy's; "
                     f"write xp = array_module(dy) and xp.{used[0]}"
                     if not isinstance(fn, kernel) else
                     f"np.{', np.'.join(used)} in a kernel: use xp.{used[0]} (the kernel's xp is "
                     f"CuPy's on a GPU)")
    if isinstance(fn, kernel) and any(isinstance(n, (ast.Assign, ast.AugAssign))
                                      and any(isinstance(t, ast.Subscript) for t in
                                              getattr(n, "targets", [getattr(n, "target", None)]))
                                      for n in ast.walk(tree)):
        notes.append("an assignment into a slice (m[...] = ...) runs on NumPy, but a fused GPU "
                     "kernel updates its arguments only with +=, -=")
    return notes


def _swapped_order(got, want, shown, ex):
    """'X holds what Y should: ...' when gradients come back in the wrong order, else None."""
    for k in got:
        for j in want:
            if (j != k and hasattr(got[k], "shape") and got[k].shape == want[j].shape
                    and (getattr(got[k], "shape", None) != want[k].shape or rel_err(got[k], want[k]) > TOL)
                    and rel_err(np.asarray(got[k], dtype=np.float64), want[j]) <= 1e-6):
                return (f"{shown[k]} holds what {shown[j]} should: return "
                        f"({', '.join(ex.returns)}) in that order")
    return None


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
    summary = f"{_and(bad)} wrong (relative error{'s' if len(bad) > 1 else ''} {errs})"
    if good:
        summary += f"; {_and(good)} right"
    return Verdict(ex.name, WRONG, summary, [], errors)


def _and(names):
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def _dtype_check(ex, fn):
    """A Verdict when float32 inputs give other than float32 gradients, else None."""
    rng = np.random.default_rng(SEED)
    forward, _, inputs = gradcheck.LAYERS[ex.case](rng)
    inputs = {k: v.astype(np.float32) for k, v in inputs.items()}
    out, cache = forward(**inputs)
    G = np.random.default_rng(SEED + 1).standard_normal(np.shape(out)).astype(np.float32)
    shown = _shown(ex, inputs)
    try:
        with engine_for_others(fn, ex.name):
            got = _named(ex, fn(G, cache), inputs)
    except Exception as e:                              # right in float64, fails in float32
        return _raised(ex.name, e, fn)
    bad = [k for k in inputs if getattr(got[k], "dtype", None) != np.float32]
    if not bad:
        return None
    verb = "comes" if len(bad) == 1 else "come"
    return Verdict(ex.name, WRONG, f"right in float64, but from float32 inputs {_and([shown[k] for k in bad])} "
                   f"{verb} back {got[bad[0]].dtype}", [FLOAT32_HINT])


# ------------------------------------------------------------------ the loss

def _loss_cases():
    """(what the case is, logits, labels, label_smoothing, the hint when only it fails)."""
    rng = np.random.default_rng(SEED)
    logits = 2 * rng.standard_normal((4, 5))                      # B = 4, K = 5
    labels = rng.integers(0, 5, size=4)
    soft = rng.random((4, 5))
    soft /= soft.sum(axis=1, keepdims=True)
    return [("integer labels", logits, labels, 0.0,
             "without smoothing q is onehot(label): loss = -mean of log pi at the label"),
            ("label smoothing 0.1", logits, labels, 0.1,
             "with smoothing the target is q = (1 - eps) onehot + eps / K, over all K classes"),
            ("soft targets", logits, soft, 0.1,
             "soft targets [B, K] take onehot's place: q = (1 - eps) labels + eps / K"),
            ("logits near 1000", logits + 1000.0, labels, 0.1,
             "exp(1000) overflows: subtract each row's max first, t = z - max z")]


def _grade_loss(ex, fn):
    for n, (what, logits, labels, smoothing, hint) in enumerate(_loss_cases()):
        hint = hint if n else None              # a case's own hint: when the ones before passed
        want_loss, want = loss.cross_entropy(logits, labels, smoothing)
        try:
            with engine_for_others(fn, ex.name):
                got = fn(logits.copy(), labels.copy(), smoothing)
        except NotImplementedError:
            return Verdict(ex.name, NOT_DONE)
        except Exception as e:                          # their code, any error: a verdict
            verdict = _raised(ex.name, e, fn)
            verdict.summary = f"{what}: {verdict.summary}"
            verdict.hints += [hint] if hint else []
            return verdict
        if not (isinstance(got, (tuple, list)) and len(got) == 2):
            return Verdict(ex.name, WRONG, "returns something else than (loss, dlogits)")
        got_loss, got_d = got
        try:
            got_loss = float(got_loss)
        except (TypeError, ValueError):
            return Verdict(ex.name, WRONG, f"the loss is a {type(got_loss).__name__}, not a number "
                           f"(a 0-d array or a float)")
        problem = _shape_problem(got_d, want, "dlogits")
        if problem or not math.isfinite(got_loss):
            return Verdict(ex.name, WRONG, f"{what}: {problem or 'the loss is ' + str(got_loss)}",
                           [hint] if hint else [])

        def objective():
            return float(loss.cross_entropy(logits_fd, labels, smoothing)[0])
        logits_fd = logits.copy()
        numeric = gradcheck.numeric_gradient(objective, logits_fd, 3e-6, np.arange(logits.size)).reshape(want.shape)
        errors = {"loss": rel_err(np.array(got_loss), np.array(float(want_loss))),
                  "dlogits": max(rel_err(got_d, want), rel_err(got_d, numeric))}
        wrong = [k for k in errors if errors[k] > TOL]
        if wrong:
            verdict = _verdict(ex, errors, wrong)
            verdict.summary = f"{what}: {verdict.summary}"
            if "dlogits" in wrong:
                found = pattern(np.asarray(got_d, dtype=np.float64), want, ex.factors)
                if found:
                    verdict.hints.append(f"your dlogits {found}")
            verdict.hints += [h for h in [hint] if h] + [f"{k}: {ex.hints[k]}" for k in wrong]
            return verdict
        if got_d.dtype != logits.dtype:
            break
    got = fn(logits.astype(np.float32), labels, 0.1)
    if getattr(got[1], "dtype", None) != np.float32:
        return Verdict(ex.name, WRONG, f"right in float64, but float32 logits give {got[1].dtype} dlogits",
                       [FLOAT32_HINT])
    return Verdict(ex.name, RIGHT, notes=_numpy_only(fn))


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
        try:
            with engine_for_others(fn, ex.name):
                returned = fn(*got, decay, ok, *scalars)
        except NotImplementedError:
            return Verdict(ex.name, NOT_DONE)
        except Exception as e:                          # their code, any error: a verdict
            return _raised(ex.name, e, fn)
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
                                     + (" (you returned the new w)" if k == "w" and returned is not None
                                        and rel_err(np.asarray(returned), want[0]) <= TOL else ""))
            elif what == "ok False":
                verdict.hints.append("with ok False nothing may change: write each change as "
                                     "xp.where(ok, change, 0.0)")
            elif k in ex.hints:
                verdict.hints.append(f"{k}: {ex.hints[k]}")
        return verdict
    return Verdict(ex.name, RIGHT, notes=_numpy_only(fn))


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
