"""What a wrong answer's error looks like: the patterns grade.py names in its hints.

    pattern(got, want, factors)   # "is off by a constant factor: 2 = sqrt(d) ...", or None
    shape_problem(got, want, "dw")  # "dw has shape (5, 4), expected (4, 5) ...: transposed?"

Each takes the student's array and the engine's (float64, one shape) and says in words
what the difference is, for a student to act on: a constant factor (named when it is a
constant of the case), a sign, a transposition, a term constant along the last axis, a
difference at one index, q/k/v blocks in the wrong order, gradients in the wrong order,
a missing sum over rows, NaN, a dtype; and what in a right function runs on NumPy only.
"""

import ast
import inspect
import textwrap

import numpy as np

from ..engine.backend import kernel


def body_of(fn):
    """The Python function behind fn (a @kernel's body)."""
    return fn.body if isinstance(fn, kernel) else fn


TOL = 1e-7              # the relative error a right gradient stays under (float64)

FLOAT32_HINT = ("training runs in float32: make new arrays with the input's dtype (xp.zeros(shape, "
                "dtype=dy.dtype); np.zeros(shape) is float64), and write constants as Python numbers "
                "(math.sqrt(2 * math.pi)): a NumPy float64 such as np.sqrt(2 * np.pi) turns float32 "
                "arrays into float64")


def rel_err(a, b):
    scale = max(np.linalg.norm(a), np.linalg.norm(b))
    return float(np.linalg.norm(a - b) / scale) if scale > 0 else 0.0


def _factor_name(c, factors):
    """'2.0 = sqrt(d)' when c is a named constant of the case (or its inverse)."""
    names = [n for n, v in factors.items() if abs(c - v) <= 1e-6 * abs(v)]
    names += [f"1/{n}" for n, v in factors.items() if abs(c * v - 1) <= 1e-6]
    return f"{c:.4g}" + (f" = {' or '.join(names)}" if names else "")


def pattern(got, want, factors, blocks=False):
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
    if blocks and got.ndim >= 1 and got.shape[0] % 3 == 0:      # attention's in-projection
        thirds = np.split(want, 3)
        for order in ((0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0)):
            if rel_err(got, np.concatenate([thirds[i] for i in order])) <= 1e-6:
                return ("holds the right three blocks of rows (q, k, v) in the wrong order: "
                        "q's rows 0:D, k's D:2D, v's 2D:3D")
    diff = got - want
    where = _only_at(diff, want)
    if where:
        return where
    if got.ndim >= 1 and got.shape[-1] > 1 and np.abs(diff).max() > 0:
        spread = np.abs(diff - diff.mean(axis=-1, keepdims=True)).max()
        if spread <= 1e-6 * np.abs(diff).max():
            return ("differs from the right one by the same amount in every entry along the "
                    "last axis: a term like mean(...) or sum(...) over that axis is missing "
                    "or extra (a path through a mean?)")
    return None


def _only_at(diff, want):
    """'is wrong only where axis a is i ...' when the difference sits at one or two
    indices of some axis, and the right gradient is not zero elsewhere (else the rest
    being right says nothing), else None."""
    bad = np.abs(diff) > 1e-9 * max(np.abs(diff).max(), 1e-300)
    if not bad.any():
        return None
    for axis, n in enumerate(diff.shape):
        if n < 3:
            continue
        rows = np.flatnonzero(np.moveaxis(bad, axis, 0).reshape(n, -1).any(axis=1))
        rest = np.delete(np.moveaxis(want, axis, 0), rows, axis=0)
        if len(rows) <= 2 and np.abs(rest).max(initial=0.0) > 0:
            at = " and ".join(str(i) for i in rows)
            return (f"is wrong only at index {at} of axis {axis} (of {n}) and right everywhere else: "
                    f"what is special there?")
    return None


def shape_problem(got, want, shown):
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


# names of NumPy that make no array, fine in code for any backend
_NUMPY_CONSTANTS = {"float32", "float64", "pi", "e", "newaxis", "inf", "nan", "finfo", "dtype"}


def numpy_only(fn):
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


def swapped_order(got, want, shown, ex):
    """'X holds what Y should: ...' when gradients come back in the wrong order, else None."""
    for k in got:
        for j in want:
            if (j != k and hasattr(got[k], "shape") and got[k].shape == want[j].shape
                    and (getattr(got[k], "shape", None) != want[k].shape or rel_err(got[k], want[k]) > TOL)
                    and rel_err(np.asarray(got[k], dtype=np.float64), want[j]) <= 1e-6):
                return (f"{shown[k]} holds what {shown[j]} should: return "
                        f"({', '.join(ex.returns)}) in that order")
    return None


def join_names(names):
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
