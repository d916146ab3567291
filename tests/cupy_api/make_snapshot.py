"""Write cupy_api.json: the part of CuPy's API the strict stand-in checks code against.

    pip install cupy-cuda12x && python tests/cupy_api/make_snapshot.py

Records, from an installed CuPy (no GPU needed: nothing here touches a device), every
public name of `cupy` with its kind and the parameter names it takes, every attribute of
`cupy.ndarray` (methods with their parameters, from their docstrings), and the names of
`cupy.cuda.runtime` and `cupyx.scipy.special`. tests/test_cupy_strict.py compares this
file with the installed CuPy whenever one is importable.
"""

import inspect
import json
import os
import re
import sys


def params_from_doc(doc):
    """Parameter names from a docstring's first line, "name(self, a, b=None, *, c=1) -> T"."""
    first = (doc or "").strip().splitlines()[0] if (doc or "").strip() else ""
    m = re.match(r"[\w.]*\((.*)\)", first)
    if not m:
        return None
    names = []
    for part in m.group(1).split(","):
        part = part.strip().replace("\\", "")
        if not part or part in ("/", "*", "self"):
            continue
        if part.startswith("**"):
            names.append("**")
            continue
        token = part.split("=")[0].strip().split()[-1]      # "_ndarray_base out" -> "out"
        names.append(token.lstrip("*") if not token.startswith("*") else "*" + token.lstrip("*"))
    return names


def params_of(obj):
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return params_from_doc(getattr(obj, "__doc__", None))
    names = []
    for p in sig.parameters.values():
        if p.kind is p.VAR_KEYWORD:
            names.append("**")
        elif p.kind is p.VAR_POSITIONAL:
            names.append("*" + p.name)
        elif p.name != "self":
            names.append(p.name)
    return names


def describe(obj):
    kind = type(obj).__name__
    if kind == "ufunc":
        return {"kind": "ufunc", "nin": obj.nin, "nout": obj.nout,
                "params": params_from_doc(obj.__doc__)}
    if inspect.ismodule(obj):
        return {"kind": "module"}
    if inspect.isclass(obj):
        return {"kind": "type"}
    if callable(obj):
        return {"kind": "function", "params": params_of(obj)}
    return {"kind": "value"}


def snapshot():
    import cupy
    import cupyx.scipy.special
    api = {"cupy_version": cupy.__version__, "cupy": {}, "ndarray": {}}
    for name in sorted(dir(cupy)):
        if not name.startswith("_"):
            api["cupy"][name] = describe(getattr(cupy, name))
    for name in sorted(dir(cupy.ndarray)):
        if name.startswith("_") and not name.startswith("__"):
            continue
        attr = getattr(cupy.ndarray, name)
        if type(attr).__name__ == "getset_descriptor":
            api["ndarray"][name] = {"kind": "property"}
        else:
            api["ndarray"][name] = {"kind": "method", "params": params_from_doc(attr.__doc__)}
    api["cuda.runtime"] = sorted(n for n in dir(cupy.cuda.runtime) if not n.startswith("_"))
    api["cupyx.scipy.special"] = {n: describe(getattr(cupyx.scipy.special, n))
                                  for n in sorted(dir(cupyx.scipy.special)) if not n.startswith("_")}
    return api


if __name__ == "__main__":
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cupy_api.json")
    api = snapshot()
    with open(out, "w") as f:
        json.dump(api, f, indent=1, sort_keys=True)
        f.write("\n")
    print(f"wrote {out}: CuPy {api['cupy_version']}, {len(api['cupy'])} names, "
          f"{len(api['ndarray'])} ndarray attributes", file=sys.stderr)
