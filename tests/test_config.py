from dataclasses import dataclass, field
from typing import Literal

import pytest

from framecast.config import ConfigError, from_dict, parse_args, to_dict


@dataclass(frozen=True)
class Example:
    name: str = field(default="a", metadata={"help": "a name"})
    steps: int = 3
    rate: float = 0.5
    flag: bool = False
    mode: Literal["x", "y"] = "x"
    span: tuple[float, float] = (0.0, 1.0)


def test_cli_flags_map_to_fields_with_types():
    cfg = parse_args(Example, ["--steps", "7", "--rate", "2", "--flag", "--mode", "y",
                               "--span", "-1", "3.5"])
    assert cfg == Example(steps=7, rate=2.0, flag=True, mode="y", span=(-1.0, 3.5))


def test_a_false_flag_beats_the_default_and_is_not_lost():
    assert parse_args(Example, ["--flag", "false"]).flag is False
    assert parse_args(Example, ["--steps", "0"]).steps == 0


def test_unknown_flags_and_bad_values_exit_with_usage_error(capsys):
    for argv in (["--stepz", "3"], ["--steps", "three"], ["--mode", "z"], ["--span", "1"]):
        with pytest.raises(SystemExit, match="2") as exit_info:
            parse_args(Example, argv)
        assert exit_info.value.code == 2
    assert "error" in capsys.readouterr().err


def test_help_lists_every_field(capsys):
    with pytest.raises(SystemExit, match="0"):
        parse_args(Example, ["--help"])
    out = capsys.readouterr().out
    for flag in ("--name", "--steps", "--rate", "--flag", "--mode", "--span"):
        assert flag in out
    assert "a name (default: a)" in out


def test_from_dict_round_trips_and_is_strict():
    cfg = Example(steps=9, span=(2.0, 4.0))
    assert from_dict(Example, to_dict(cfg)) == cfg
    with pytest.raises(ConfigError, match="unknown config key"):
        from_dict(Example, {"stepz": 1})
    with pytest.raises(ConfigError, match="steps must be int"):
        from_dict(Example, {"steps": "1"})
    with pytest.raises(ConfigError, match="steps must be int"):
        from_dict(Example, {"steps": True})
    with pytest.raises(ConfigError, match="not one of"):
        from_dict(Example, {"mode": "z"})


@pytest.mark.parametrize(("job", "flag"), [("evaluate", "--experiment"), ("train", "--experiment"),
                                           ("serve", "--app-name")])
def test_an_empty_experiment_or_app_name_is_one_line_before_any_work(job, flag, capsys):
    """`jobs.evaluate --experiment ''` and `jobs.serve --app-name ''` ended in MLflow's and
    Serve's tracebacks after loading models and starting Ray."""
    import importlib

    main = importlib.import_module(f"jobs.{job}").main
    argv = {"evaluate": ["--model", "m", "--data", "d"], "train": ["--data", "d"],
            "serve": ["--model", "m"]}[job]
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, flag, " "])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and err[-1].endswith(f"{flag} must not be empty"), err
