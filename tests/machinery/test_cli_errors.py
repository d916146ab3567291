"""How the `minivit` command fails: minivit's own errors in one line with exit status 2
(--debug or MINIVIT_DEBUG=1: the traceback), a bug anywhere else with its traceback,
missing data and checkpoints; --version; a reader that leaves (a broken pipe)."""

import pytest

from minivit import __version__, cli
from minivit.errors import MinivitError


def test_a_bug_keeps_its_traceback_and_minivit_errors_are_one_line(tmp_path, capsys, monkeypatch):
    """A ValueError from code of one's own (here a broken linear layer) is not turned into
    a one-line message: it propagates with its traceback. minivit's own errors are one line
    and exit 2, unless --debug (or MINIVIT_DEBUG=1) asks for the traceback."""
    from minivit.engine import layers

    def broken_linear(x, w, b):
        return x.reshape(-1, 7), None           # a student's reshape gone wrong
    monkeypatch.setattr(layers, "linear_forward", broken_linear)
    with pytest.raises(ValueError, match="cannot reshape"):
        cli.main(["gradcheck", "--layer", "linear"])
    monkeypatch.undo()

    missing = ["eval", "--checkpoint", str(tmp_path / "none.npz")]
    assert cli.main(missing) == 2
    err = capsys.readouterr().err
    assert err.startswith("minivit eval: error: checkpoint") and "does not exist" in err
    assert len(err.splitlines()) == 1
    with pytest.raises(MinivitError, match="does not exist"):
        cli.main(missing + ["--debug"])
    monkeypatch.setenv("MINIVIT_DEBUG", "1")
    with pytest.raises(MinivitError, match="does not exist"):
        cli.main(missing)


def test_missing_data_is_one_line(tmp_path, capsys):
    assert cli.main(["train", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("minivit train: error: ") and "does not exist: pass --data" in err
    assert len(err.splitlines()) == 1 and not (tmp_path / "r").exists()


def test_version_and_a_broken_pipe(run_dir, capsys, monkeypatch):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--version"])
    assert exit_.value.code == 0 and f"minivit {__version__}" in capsys.readouterr().out

    def broken(*args, **kwargs):             # e.g. `minivit eval | head`: the reader left
        raise BrokenPipeError
    monkeypatch.setitem(cli.COMMANDS, "eval", broken)
    assert cli.main(["eval", "--checkpoint", str(run_dir / "best.npz")]) == 0
