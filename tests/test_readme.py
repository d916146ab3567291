"""The README's code examples run as written."""

import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def readme_blocks():
    with open(os.path.join(ROOT, "README.md")) as f:
        return re.findall(r"```python\n(.*?)```", f.read(), re.S)


def test_training_step_by_hand_runs(capsys):
    block = next(b for b in readme_blocks() if "opt.step()" in b)
    exec(compile(block, "README.md", "exec"), {})
    assert re.search(r"loss \d+\.\d{4}", capsys.readouterr().out)


def test_readme_states_the_test_command_ci_runs():
    with open(os.path.join(ROOT, "README.md")) as f:
        readme = f.read()
    with open(os.path.join(ROOT, ".ci", "run")) as f:
        ci = f.read()
    command = "pip install -e .[test] && python -m pytest -q"
    assert command in readme and command in ci


def test_readme_states_the_main_job_command():
    with open(os.path.join(ROOT, "README.md")) as f:
        assert "pip install -e .[plot] && minivit train" in f.read()
