"""The README stays true: its model example runs as written and its commands parse."""

import pathlib
import re
import shlex

import pytest

from deeplab_tf.cli import build_parser

README = (pathlib.Path(__file__).parents[1] / "README.md").read_text()


def _blocks(lang):
    return re.findall(rf"```{lang}\n(.*?)```", README, flags=re.S)


def _commands():
    for block in _blocks("bash"):
        text = block.replace("\\\n", " ")
        for line in text.splitlines():
            line = line.split("#")[0].strip()
            for part in line.split("&&"):
                part = part.strip()
                if part.startswith("deeplab-tf "):
                    yield part


COMMANDS = list(_commands())


def test_readme_has_the_two_setup_commands():
    setup = _blocks("bash")[0]
    assert 'pip install -e ".[test]" && deeplab-tf quickstart' in setup
    command = 'python -m pytest -q -n 2 --dist loadgroup -m ""'  # -m "": the large tests too
    assert command in setup
    ci = (pathlib.Path(__file__).parents[1] / ".ci" / "run").read_text()
    assert f"python3 -m {command[len('python -m ') :]}" in ci


@pytest.mark.parametrize("command", COMMANDS)
def test_readme_commands_parse(command):
    args = build_parser().parse_args(shlex.split(command)[1:])
    assert callable(args.func)


@pytest.mark.large
def test_readme_model_example_runs_as_written():
    code = _blocks("python")[0]
    assert "DeepLabV2(backbone=" in code
    namespace = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert tuple(namespace["logits"].shape) == (2, 41, 41, 21)


def test_readme_registry_example_runs_as_written():
    code = _blocks("python")[1]
    namespace = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert namespace["model"].count_params() == 20_505_429
