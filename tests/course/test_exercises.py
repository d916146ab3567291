"""The course's exercises: the stub file, the grading (right / wrong with a hint / not
done) and `minivit exercises`. A file importing the engine passes every exercise; the
stubs pass none; a planted bug fails its own exercise alone, with a hint read from the
bug's pattern."""

import inspect
import textwrap

import pytest

from minivit import cli
from minivit.course import exercises, grade, stubs, yours
from minivit.course.exercises import EXERCISES, engine_function
from minivit.engine import gradcheck
from minivit.engine.errors import BadValue

ENGINE_FILE = """\
from minivit.engine.layers import *
from minivit.engine.transformer import *
from minivit.engine.loss import *
from minivit.engine.optim import *
"""


def student(tmp_path, body, name="mine.py"):
    """A student's file: the engine's functions, then `body` (their own functions)."""
    path = tmp_path / name
    path.write_text(ENGINE_FILE + "import math\nimport numpy as np\nfrom minivit.engine.backend import kernel\n"
                    + textwrap.dedent(body))
    return path


def verdict_of(tmp_path, body, name):
    return dict((v.name, v) for _, v in yours.check(yours.load(student(tmp_path, body)), [name]))[name]


# ------------------------------------------------------------------ the exercises and their stubs

def test_each_stub_has_the_engines_name_signature_and_a_docstring_pointing_at_the_docs():
    for e in EXERCISES:
        mine = grade.body_of(getattr(stubs, e.name))
        engine = grade.body_of(engine_function(e.name))
        assert inspect.signature(mine) == inspect.signature(engine), e.name
        doc = inspect.getdoc(mine)
        assert f"docs/gradients.md section {e.section}" in " ".join(doc.split()), e.name


def test_each_exercise_is_graded_on_a_case_that_exists():
    for e in EXERCISES:
        assert e.case in gradcheck.LAYERS or e.case in ("cross_entropy", "adam", "adamw"), e.name
        assert set(e.hints) <= set(e.returns) | {"grads"}, e.name


def test_the_listing_is_in_learning_order_with_what_each_teaches():
    text = exercises.listing()
    places = [text.index(f" {e.name} ") for e in EXERCISES]
    assert places == sorted(places)
    assert "linear_backward" in text.splitlines()[3] and "matrix-product rule" in text
    assert text.index("More, for the model's other options") < text.index("rmsnorm_backward")


def test_the_engines_functions_pass_every_exercise():
    results = yours.check({e.name: engine_function(e.name) for e in EXERCISES}, every=True)
    assert [v.status for _, v in results] == ["right"] * len(EXERCISES), [v.report() for _, v in results]


def test_the_stubs_are_all_not_done():
    results = yours.check(vars(stubs), every=True)
    assert {v.status for _, v in results} == {"not done"}


# ------------------------------------------------------------------ the command

def test_new_then_check_lists_every_exercise_not_done(tmp_path, capsys):
    path = tmp_path / "my_backward.py"
    assert cli.main(["exercises", "new", str(path)]) == 0
    assert f"minivit exercises check {path}" in path.read_text()       # its usage names itself
    capsys.readouterr()
    assert cli.main(["exercises", "check", str(path)]) == 1
    out = capsys.readouterr().out
    core = [e for e in EXERCISES if not e.extra]
    for i, e in enumerate(core, 1):
        assert f"{i:2d}  {e.name:<22s} not done" in out
    assert f"{len(core)} not done." in out
    assert not any(e.name in out for e in EXERCISES if e.extra)      # optional, not written


def test_new_never_overwrites_a_file(tmp_path, capsys):
    path = tmp_path / "my_backward.py"
    path.write_text("# my work\n")
    assert cli.main(["exercises", "new", str(path)]) == 2
    assert "exists already and is kept" in capsys.readouterr().err
    assert path.read_text() == "# my work\n"


def test_a_file_importing_the_engine_passes_all_and_exits_0(tmp_path, capsys):
    path = tmp_path / "solutions.py"
    path.write_text(ENGINE_FILE)
    assert cli.main(["exercises", "check", str(path), "--all"]) == 0
    out = capsys.readouterr().out
    assert f"{len(EXERCISES)} right." in out and "minivit train --layers" in out


def test_layernorm_without_its_mean_term_fails_layernorm_alone_naming_dx(tmp_path, capsys):
    path = student(tmp_path, """
        def layernorm_backward(dy, cache):
            xhat, rstd, w = cache.xhat, cache.rstd, cache.w
            D = w.shape[0]
            g = dy * w
            dx = rstd * (g - xhat * (g * xhat).mean(axis=-1, keepdims=True))
            return dx, (dy * xhat).reshape(-1, D).sum(axis=0), dy.reshape(-1, D).sum(axis=0)
    """)
    assert cli.main(["exercises", "check", str(path)]) == 1
    lines = capsys.readouterr().out.splitlines()
    wrong = [line for line in lines if "WRONG" in line]
    assert len(wrong) == 1 and "layernorm_backward" in wrong[0]
    assert "dx wrong" in wrong[0] and "dw and db right" in wrong[0]
    hints = "\n".join(lines)
    assert "the same amount in every entry along the last axis" in hints and "mean" in hints


def test_naming_exercises_checks_only_those(tmp_path, capsys):
    path = tmp_path / "solutions.py"
    path.write_text(ENGINE_FILE)
    assert cli.main(["exercises", "check", str(path), "softmax_backward", "rmsnorm_backward"]) == 0
    out = capsys.readouterr().out
    assert "softmax_backward" in out and "rmsnorm_backward" in out and "linear_backward" not in out
    assert cli.main(["exercises", "check", str(path), "softmax"]) == 2
    out, err = capsys.readouterr()
    assert "no exercise named 'softmax'" in err and out == ""        # the error, nothing before it


# ------------------------------------------------------------------ hints from the error's pattern

def test_a_missing_scale_is_named_as_its_factor(tmp_path):
    v = verdict_of(tmp_path, """
        def sdpa_backward(do, cache):
            q, k, v, a = cache.q, cache.k, cache.v, cache.a
            ds = softmax_backward(do @ v.transpose(0, 1, 3, 2), cache.softmax)
            return ds @ k, ds.transpose(0, 1, 3, 2) @ q, a.transpose(0, 1, 3, 2) @ do
    """, "sdpa_backward")
    assert v.status == "wrong" and "dq and dk wrong" in v.summary and "dv right" in v.summary
    assert "your dq is off by a constant factor: 2 = sqrt(d)" in "\n".join(v.hints)


def test_a_sign_error_and_a_transposed_gradient_are_named(tmp_path):
    v = verdict_of(tmp_path, """
        def token_embed_backward(dy, cache):
            return -dy[:, 1:], dy[:, :1].sum(axis=0, keepdims=True), dy.sum(axis=0, keepdims=True)
    """, "token_embed_backward")
    assert "the opposite sign" in "\n".join(v.hints)
    v = verdict_of(tmp_path, """
        def linear_backward(dy, cache, need_dx=True):
            dy2 = dy.reshape(-1, cache.w.shape[0])
            return (dy2 @ cache.w).reshape(cache.x_shape), cache.x2.T @ dy2, dy2.sum(axis=0)
    """, "linear_backward")
    assert "dw has shape (5, 4), expected (4, 5)" in v.summary and "transposed?" in v.summary


def test_gradients_in_the_wrong_order_and_unsummed_rows_are_named(tmp_path):
    v = verdict_of(tmp_path, """
        def mlp_backward(dy, cache):
            dg, dw2, db2 = linear_backward(dy, cache.linear2)
            dx, dw1, db1 = linear_backward(cache.gelu_backward(dg, cache.gelu), cache.linear1)
            return dx, dw2, db2, dw1, db1
    """, "mlp_backward")
    assert "dw1 holds what dw2 should: return (dx, dw1, db1, dw2, db2) in that order" in v.summary
    v = verdict_of(tmp_path, """
        def token_embed_backward(dy, cache):
            return dy[:, 1:], dy[:, :1], dy.sum(axis=0, keepdims=True)
    """, "token_embed_backward")
    assert "dcls_token has shape (2, 1, 6), expected (1, 1, 6)" in v.summary


def test_a_broadcasting_mistake_names_the_line_and_keepdims(tmp_path):
    v = verdict_of(tmp_path, """
        def softmax_backward(da, cache):
            a = cache.a
            return a * (da - (da * a).sum(axis=-1))
    """, "softmax_backward")
    assert v.status == "wrong" and "ValueError" in v.summary
    assert "return a * (da - (da * a).sum(axis=-1))" in v.summary and "keepdims=True" in v.hints[0]


def test_nan_dtype_and_an_overwritten_upstream_gradient_are_wrong(tmp_path):
    v = verdict_of(tmp_path, """
        def gelu_backward(dy, cache):
            return dy * (cache.cdf + cache.x * np.exp(-0.5 * cache.x ** 2) / 0.0)
    """, "gelu_backward")
    assert "holds NaN or Inf" in v.summary
    v = verdict_of(tmp_path, """
        def gelu_backward(dy, cache):
            x = cache.x
            return dy * (cache.cdf + x * np.exp(-0.5 * x * x) / np.sqrt(2 * np.pi))
    """, "gelu_backward")
    assert "from float32 inputs dx comes back float64" in v.summary and "math.sqrt" in v.hints[0]
    v = verdict_of(tmp_path, """
        def gelu_backward(dy, cache):
            x = cache.x
            dy *= cache.cdf + x * np.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)
            return dy
    """, "gelu_backward")
    assert "changed its upstream gradient" in v.summary


def test_a_changed_signature_is_refused(tmp_path):
    v = verdict_of(tmp_path, """
        def linear_backward(dy, cache):
            return None
    """, "linear_backward")
    assert "keep the stub's signature" in v.summary and "need_dx" in v.summary


def test_the_loss_off_by_the_batch_size_and_overflowing(tmp_path):
    v = verdict_of(tmp_path, """
        from minivit.engine.loss import cross_entropy as engine_loss
        def cross_entropy(logits, labels, label_smoothing=0.0):
            loss, d = engine_loss(logits, labels, label_smoothing)
            return loss, d * logits.shape[0]
    """, "cross_entropy")
    assert "dlogits wrong" in v.summary and "loss right" in v.summary
    assert "4 = B times the right one" in "\n".join(v.hints)
    v = verdict_of(tmp_path, """
        def cross_entropy(logits, labels, label_smoothing=0.0):
            labels, soft = check_labels(logits, labels, label_smoothing)
            B, K = logits.shape
            q = np.full((B, K), label_smoothing / K)
            q[np.arange(B), labels] += 1 - label_smoothing
            p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
            return -(q * np.log(p)).sum() / B, (p - q) / B
    """, "cross_entropy")
    assert v.summary.startswith("soft targets: raised IndexError")   # the integer cases pass
    assert "take onehot's place" in "\n".join(v.hints)
    v = verdict_of(tmp_path, """
        def cross_entropy(logits, labels, label_smoothing=0.0):
            labels, soft = check_labels(logits, labels, label_smoothing)
            B, K = logits.shape
            q = labels * (1 - label_smoothing) + label_smoothing / K if soft else np.full((B, K), label_smoothing / K)
            if not soft:
                q[np.arange(B), labels] += 1 - label_smoothing
            p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
            return -(q * np.log(p)).sum() / B, (p - q) / B
    """, "cross_entropy")
    assert v.summary.startswith("logits near 1000:") and "subtract each row's max" in v.hints[0]


def test_adam_must_update_in_place_and_respect_ok(tmp_path):
    v = verdict_of(tmp_path, """
        @kernel
        def adam_update(xp, w, g, m, v, decay, ok, step_size, one_minus_b1, one_minus_b2,
                        bias_correction2_sqrt, eps):
            g = g + decay * w
            m = m + xp.where(ok, one_minus_b1 * (g - m), 0.0)
            v += xp.where(ok, one_minus_b2 * (g * g - v), 0.0)
            w -= xp.where(ok, step_size * m / (xp.sqrt(v) / bias_correction2_sqrt + eps), 0.0)
            return w
    """, "adam_update")
    assert "m wrong" in v.summary and "update it in place" in v.hints[0]
    v = verdict_of(tmp_path, """
        def adamw_update(xp, w, g, m, v, decay, ok, step_size, one_minus_b1, one_minus_b2,
                         bias_correction2_sqrt, eps, lr):
            w -= lr * (decay * w)
            m += xp.where(ok, one_minus_b1 * (g - m), 0.0)
            v += xp.where(ok, one_minus_b2 * (g * g - v), 0.0)
            w -= xp.where(ok, step_size * m / (xp.sqrt(v) / bias_correction2_sqrt + eps), 0.0)
            return w
    """, "adamw_update")                     # a plain function: graded as the kernel it becomes
    assert v.summary.startswith("ok False: w wrong") and "xp.where(ok" in v.hints[0]


# ------------------------------------------------------------------ a student's file

def test_a_file_that_cannot_be_imported_is_a_clear_error(tmp_path):
    path = tmp_path / "broken.py"
    path.write_text("def linear_backward(dy, cache, need_dx=True)\n    return 1\n")
    with pytest.raises(BadValue, match=r"broken.py, line 1: .*fix it and check again"):
        yours.load(path)
    with pytest.raises(BadValue, match="no such file.*minivit exercises new"):
        yours.load(tmp_path / "missing.py")


def test_each_exercise_names_a_section_of_the_derivations_that_names_it():
    """docs/gradients.md has the section each exercise points at, and that section (up to
    the next one) names the exercise's function."""
    import re
    from pathlib import Path
    page = (Path(__file__).resolve().parents[2] / "docs" / "gradients.md").read_text()
    heads = [(m.start(), m.group(1)) for m in re.finditer(r"^#{2,3} (\w+)\. ", page, re.M)]
    for e in EXERCISES:
        starts = [i for i, (at, number) in enumerate(heads) if number == e.section]
        assert starts, f"{e.name}: docs/gradients.md has no section {e.section}"
        i = starts[0]
        end = heads[i + 1][0] if i + 1 < len(heads) else len(page)
        assert f"`{e.name}`" in page[heads[i][0]:end], f"section {e.section} does not name {e.name}"


def test_an_mlp_calling_its_own_exact_gelu_fails_with_the_tanh_gelu(tmp_path):
    v = verdict_of(tmp_path, """
        def mlp_backward(dy, cache):
            dg, dw2, db2 = linear_backward(dy, cache.linear2)
            dx, dw1, db1 = linear_backward(gelu_backward(dg, cache.gelu), cache.linear1)
            return dx, dw1, db1, dw2, db2
    """, "mlp_backward")
    assert v.status == "wrong" and v.summary.startswith("with the tanh GELU:")


def test_a_head_without_the_pooling_weight_fails_with_pool_seq(tmp_path):
    v = verdict_of(tmp_path, """
        def head_backward(dlogits, cache):
            dz, dw, db = linear_backward(dlogits, cache.linear)
            dpooled, grads = norm_backward(dz, cache.norm)
            grads.update({"head.weight": dw, "head.bias": db})
            dh, _ = pool_backward(dpooled, cache.pool)
            return dh, grads
    """, "head_backward")
    assert v.summary == "with pool 'seq': the dict of gradients has no 'attention_pool.weight'"


def test_need_dx_false_must_return_none_for_dx(tmp_path):
    v = verdict_of(tmp_path, """
        def linear_backward(dy, cache, need_dx=True):
            dy2 = dy.reshape(-1, cache.w.shape[0])
            return (dy2 @ cache.w).reshape(cache.x_shape), dy2.T @ cache.x2, dy2.sum(axis=0)
    """, "linear_backward")
    assert v.summary == "with need_dx=False dx must be None"


ADAM = """
    @kernel
    def adam_update(xp, w, g, m, v, decay, ok, step_size, one_minus_b1, one_minus_b2,
                    bias_correction2_sqrt, eps):
        g = g + decay * w
        m += xp.where(ok, one_minus_b1 * (g - m), 0.0)
        v += xp.where(ok, one_minus_b2 * (g * g - v), 0.0)
        w -= xp.where(ok, step_size * m / STEP, 0.0)
        return w
"""


def test_adams_eps_outside_the_root_and_its_simplest_case_first(tmp_path):
    v = verdict_of(tmp_path, ADAM.replace("STEP", "((xp.sqrt(v) + eps) / bias_correction2_sqrt)"),
                   "adam_update")
    assert v.summary.startswith("gradients near 1e-9, where eps matters: w wrong")
    v = verdict_of(tmp_path, ADAM.replace("STEP", "(np.sqrt(v) + eps)"), "adam_update")
    assert v.summary.startswith("no weight decay: w wrong")


def test_a_difference_at_one_index_is_located(tmp_path):
    v = verdict_of(tmp_path, """
        def token_embed_backward(dy, cache):
            dpos = dy.sum(axis=0, keepdims=True)
            dpos[:, 0] = 0.0
            return dy[:, 1:], dy[:, :1].sum(axis=0, keepdims=True), dpos
    """, "token_embed_backward")
    assert "your dpos_embed is wrong only at index 0 of axis 1 (of 5)" in "\n".join(v.hints)


def attention_backward_source(order):
    """A student's attention_backward that joins the three gradients in `order`, e.g.
    "dq, dk, dv" (right) or "dk, dq, dv" (the blocks swapped)."""
    return f"""
        def attention_backward(dy, cache):
            do, dw_out, db_out = linear_backward(dy, cache.linear_out)
            dq, dk, dv = sdpa_backward(split_heads(do, cache.num_heads), cache.sdpa)
            dqkv = np.concatenate([merge_heads(g) for g in ({order})], axis=-1)
            dx, dw_in, db_in = linear_backward(dqkv, cache.linear_in)
            return dx, dw_in, db_in, dw_out, db_out
    """


def test_q_k_v_joined_in_the_wrong_order_is_named(tmp_path):
    v = verdict_of(tmp_path, attention_backward_source("dk, dq, dv"), "attention_backward")
    assert "holds the right three blocks of rows (q, k, v) in the wrong order" in "\n".join(v.hints)


def test_code_for_numpy_only_gets_a_note_not_a_fail(tmp_path):
    v = verdict_of(tmp_path, """
        def gelu_backward(dy, cache):
            x = cache.x
            return dy * (cache.cdf + x * np.exp(-0.5 * x * x) / math.sqrt(2 * math.pi))
    """, "gelu_backward")
    assert v.status == "right" and "np.exp run on NumPy only" in v.notes[0]
    assert "note: np.exp" in v.report()


def test_each_exercise_is_graded_on_its_own_the_others_the_engines(tmp_path):
    """The student's attention_backward calls the student's linear_backward, which is
    wrong: linear fails alone, attention is right (graded with the engine's linear)."""
    path = student(tmp_path, """
        def linear_backward(dy, cache, need_dx=True):
            dy2 = dy.reshape(-1, cache.w.shape[0])
            dx = (dy2 @ cache.w).reshape(cache.x_shape) if need_dx else None
            return dx, dy2.T @ cache.x2, dy2.mean(axis=0)
    """ + attention_backward_source("dq, dk, dv"))
    namespace = yours.load(path)
    verdicts = dict((v.name, v) for _, v in yours.check(namespace, ["linear_backward", "attention_backward"]))
    assert verdicts["linear_backward"].status == "wrong" and verdicts["attention_backward"].status == "right"
    assert namespace["linear_backward"].__module__ == namespace["__name__"]   # put back after


def test_returning_a_tuple_for_one_gradient_or_extra_dict_entries_is_wrong(tmp_path):
    v = verdict_of(tmp_path, """
        def softmax_backward(da, cache):
            a = cache.a
            return (a * (da - (da * a).sum(axis=-1, keepdims=True)),)
    """, "softmax_backward")
    assert v.summary.startswith("returns a tuple; ds is its only gradient: return the array itself")
    v = verdict_of(tmp_path, """
        def head_backward(dlogits, cache):
            dz, dw, db = linear_backward(dlogits, cache.linear)
            dpooled, grads = norm_backward(dz, cache.norm)
            grads.update({"head.weight": dw, "head.bias": db})
            dh, grads["attention_pool.weight"] = pool_backward(dpooled, cache.pool)
            return dh, grads
    """, "head_backward")
    assert "the dict of gradients has 'attention_pool.weight', which this model has no parameter of" in v.summary


def test_changing_the_cache_or_exiting_is_a_verdict(tmp_path):
    v = verdict_of(tmp_path, """
        def linear_backward(dy, cache, need_dx=True):
            dy2 = dy.reshape(-1, cache.w.shape[0])
            dx = (dy2 @ cache.w).reshape(cache.x_shape) if need_dx else None
            dw, db = dy2.T @ cache.x2, dy2.sum(axis=0)
            w = cache.w
            w *= 2
            return dx, dw, db
    """, "linear_backward")
    assert v.status == "wrong"          # dx is computed before w doubles: caught as a change
    assert v.summary == "changed the cache in place (cache.w)"
    v = verdict_of(tmp_path, """
        def gelu_backward(dy, cache):
            exit()
    """, "gelu_backward")
    assert v.status == "wrong" and v.summary.startswith("raised SystemExit")


def test_a_written_optional_exercise_is_checked_too(tmp_path, capsys):
    path = student(tmp_path, """
        def rmsnorm_backward(dy, cache):
            xhat, rstd, w = cache.xhat, cache.rstd, cache.w
            return rstd * dy * w, (dy * xhat).reshape(-1, w.size).sum(axis=0)
    """)
    assert cli.main(["exercises", "check", str(path)]) == 1
    out = capsys.readouterr().out
    assert "rmsnorm_backward       WRONG" in out


def test_the_conv_stem_is_graded_at_stride_1_too(tmp_path):
    v = verdict_of(tmp_path, """
        from minivit.engine.layers import conv2d_backward as engine_conv
        def conv2d_backward(dy, cache, need_dx=True):
            cache.stride = 2
            return engine_conv(dy, cache, need_dx)
    """, "conv2d_backward")
    assert v.summary.startswith("with stride 1:")


def test_code_for_three_axes_only_fails_on_the_shapes_the_model_also_calls(tmp_path):
    """The head calls linear and LayerNorm on rows [B, D], attention the softmax on
    [B, H, N, N]: a backward right on [B, N, D] alone is wrong, on the case that shows it."""
    v = verdict_of(tmp_path, """
        from minivit.engine.layers import linear_backward as engine_linear
        def linear_backward(dy, cache, need_dx=True):
            B_, N_, _ = dy.shape
            return engine_linear(dy, cache, need_dx)
    """, "linear_backward")
    assert v.status == "wrong" and v.summary.startswith("on rows [B, D], as the head calls it: raised ValueError")
    v = verdict_of(tmp_path, """
        from minivit.engine.layers import layernorm_backward as engine_layernorm
        def layernorm_backward(dy, cache):
            dx, _, _ = engine_layernorm(dy, cache)
            return dx, (dy * cache.xhat).sum(axis=(0, 1)), dy.sum(axis=(0, 1))
    """, "layernorm_backward")
    assert v.status == "wrong" and v.summary.startswith("on rows [B, D], as the head calls it:")
    v = verdict_of(tmp_path, """
        def softmax_backward(da, cache):
            a = cache.a
            return a * (da - (da * a).sum(axis=2, keepdims=True))
    """, "softmax_backward")
    assert v.status == "wrong" and v.summary.startswith("on scores [B, H, N, N], as attention calls it:")


def test_a_missing_transpose_that_breaks_a_product_gets_a_hint(tmp_path):
    v = verdict_of(tmp_path, """
        def linear_backward(dy, cache, need_dx=True):
            dy2 = dy.reshape(-1, cache.w.shape[0])
            dx = (dy2 @ cache.w.T).reshape(cache.x_shape) if need_dx else None
            return dx, dy2.T @ cache.x2, dy2.sum(axis=0)
    """, "linear_backward")
    assert v.status == "wrong" and "matmul" in v.summary
    assert "is a transpose missing" in "\n".join(v.hints)


def test_the_loss_and_its_gradient_swapped_and_one_return_named_plainly(tmp_path):
    v = verdict_of(tmp_path, """
        from minivit.engine.loss import cross_entropy as engine_loss
        def cross_entropy(logits, labels, smoothing=0.0):
            loss, dlogits = engine_loss(logits, labels, smoothing)
            return dlogits, loss
    """, "cross_entropy")
    assert v.summary == "the loss is an ndarray and dlogits a number"
    assert v.hints == ["return (loss, dlogits) in that order"]
    assert grade._hint_of_returns(exercises.BY_NAME["softmax_backward"], {"s": None}) == "return ds"


def test_a_summed_loss_and_a_wrong_shape_get_their_hints(tmp_path):
    v = verdict_of(tmp_path, """
        from minivit.engine.loss import cross_entropy as engine_loss
        def cross_entropy(logits, labels, smoothing=0.0):
            loss, dlogits = engine_loss(logits, labels, smoothing)
            return loss * len(labels), dlogits
    """, "cross_entropy")
    assert "your loss is off by a constant factor: 4 = B times the right one" in v.hints
    v = verdict_of(tmp_path, """
        from minivit.engine.loss import cross_entropy as engine_loss
        def cross_entropy(logits, labels, smoothing=0.0):
            loss, dlogits = engine_loss(logits, labels, smoothing)
            return loss + 0.01, dlogits
    """, "cross_entropy")              # one number is a multiple of any other: no factor named
    assert v.status == "wrong" and not any("constant factor" in h for h in v.hints)
    v = verdict_of(tmp_path, """
        def token_embed_backward(dy, cache):
            return dy, dy[:, :1].sum(axis=0, keepdims=True), dy.sum(axis=0, keepdims=True)
    """, "token_embed_backward")
    assert "dx has shape (2, 5, 6), expected (2, 4, 6)" in v.summary
    assert "dx: the patch tokens are rows 1: of y" in v.hints
