"""plots.py and `minivit plot`: the run's figures, what they show (the rate, chance, bar
values, minutes of a time budget with its resolution switches), and a missing matplotlib."""

import numpy as np
import pytest

from minivit import cli, plots


def test_plot_command_and_missing_matplotlib(run_dir, capsys, monkeypatch, tmp_path):
    pytest.importorskip("matplotlib")
    assert cli.main(["plot", str(run_dir)]) == 0
    assert "confusion.png" in capsys.readouterr().out
    assert cli.main(["plot", str(run_dir), "--out", str(tmp_path / "figs")]) == 0
    assert sorted(p.name for p in (tmp_path / "figs").iterdir()) == [
        "confusion.png", "curves.png", "per_class.png", "predictions.png"]
    monkeypatch.setattr(plots, "_pyplot", lambda: None)
    assert cli.main(["plot", str(run_dir)]) == 1                   # nothing drawn: not a success
    assert "matplotlib is not installed" in capsys.readouterr().out


def test_plot_of_a_folder_that_is_no_run(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    with pytest.raises(SystemExit):
        cli.main(["plot", str(tmp_path / "absent")])
    assert "is not a folder; give a run folder written by `minivit train`" in capsys.readouterr().err
    assert cli.main(["plot", str(tmp_path)]) == 2
    assert f"no metrics.jsonl in {tmp_path}" in capsys.readouterr().err


def test_plots_show_the_rate_chance_and_bar_values():
    plt = pytest.importorskip("matplotlib.pyplot")
    metrics = [dict(epoch=e, lr=1e-3 / e, train_loss=2.0 / e, train_acc=0.2 * e, val_loss=2.1 / e,
                    val_acc=0.2 * e) for e in (1, 2, 3)]
    fig = plots.draw_curves(plt, metrics)
    loss, acc, rate = fig.axes
    assert rate.get_ylabel() == "learning rate"
    assert list(rate.lines[0].get_ydata()) == [m["lr"] for m in metrics]
    assert "chance" in [l.get_label() for l in acc.lines]
    plt.close(fig)
    y_true = np.arange(10).repeat(4)
    y_pred = y_true.copy()
    y_pred[::4] = 0
    fig = plots.draw_per_class(plt, y_true, y_pred)
    labels = [t.get_text() for t in fig.axes[0].texts]
    assert labels == ["100%"] + ["75%"] * 9
    assert "chance" in [l.get_label() for l in fig.axes[0].lines]
    plt.close(fig)


def test_time_budget_curves_read_against_minutes_with_the_resolution_switch_marked():
    plt = pytest.importorskip("matplotlib.pyplot")
    metrics = [dict(epoch=e, step=100 * e, lr=1e-3 / e, train_loss=2.0 / e, train_acc=0.2 * e,
                    val_loss=2.1 / e, val_acc=0.2 * e, train_seconds=s)
               for e, s in ((1, 30.0), (2, 60.0), (3, 180.0), (4, 300.0))]   # short epochs at 16px
    budget = dict(low_res=0.2, low_res_size=16, img_size=32, time_budget=300.0, epochs=50)
    fig = plots.draw_curves(plt, metrics, budget)
    for ax in fig.axes:
        assert ax.get_xlabel() == "minutes of training"
        assert list(ax.lines[0].get_xdata()) == [0.5, 1.0, 3.0, 5.0]
        switch = [l for l in ax.lines if l.get_label() == "16px -> 32px images"]
        assert len(switch) == 1 and list(switch[0].get_xdata()) == [1.0, 1.0]   # 20% of 5 minutes
        top = ax.child_axes[0]                                # the epochs, above
        assert top.get_xlabel() == "epoch" and 0 < max(top.get_xticks()) <= 4   # none past the last
    plt.close(fig)
    by_epochs = dict(budget, time_budget=0.0, epochs=4, low_res=0.5)          # switch at step 200
    fig = plots.draw_curves(plt, metrics, by_epochs)
    switch = [l for l in fig.axes[2].lines if l.get_label() == "16px -> 32px images"]
    assert list(switch[0].get_xdata()) == [1.0, 1.0]                          # step 200 = 60 s
    plt.close(fig)
    three = dict(budget, mid_res=0.4, mid_res_size=24)                        # 16px, 24px, 32px
    fig = plots.draw_curves(plt, metrics, three)
    marks = [(l.get_label(), round(l.get_xdata()[0], 9)) for l in fig.axes[0].lines if "px" in l.get_label()]
    assert marks == [("16px -> 24px images", 1.0), ("24px -> 32px images", 3.0)]   # 20%, 60% of 5 min
    plt.close(fig)


def test_a_plot_that_cannot_be_written_says_where_else_to_write(run_dir, capsys, monkeypatch):
    pytest.importorskip("matplotlib")
    import errno
    import os
    from minivit import files

    def read_only(*a, **kw):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))
    monkeypatch.setattr(files.tempfile, "mkstemp", read_only)
    assert cli.main(["plot", str(run_dir)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"minivit plot: error: cannot write {run_dir}/")
    assert err.endswith("read-only file system (write elsewhere with --out DIR)\n")
