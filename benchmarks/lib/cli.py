"""Comma-separated benchmark options, parsed once: a bad value stops the run at argparse's
one-line error (exit 2), before anything is rendered or trained."""

from __future__ import annotations

import argparse

KINDS = ("2d", "3d")


def comma_items(text: str) -> list[str]:
    """'a, b,,a' -> ['a', 'b']: stripped, non-empty, in order, without repeats."""
    return list(dict.fromkeys(t.strip() for t in text.split(",") if t.strip()))


def parse_sizes(text: str, parser: argparse.ArgumentParser, flag: str) -> list[int]:
    """'1,8,32' as whole numbers >= 1, in order and without repeats."""
    try:
        sizes = [int(t) for t in comma_items(text)]
    except ValueError:
        parser.error(f"{flag} {text!r}: expected whole numbers separated by commas, e.g. 1,8")
    if not sizes or min(sizes) < 1:
        parser.error(f"{flag} {text!r}: every size must be at least 1")
    return sizes


def parse_kinds(text: str, parser: argparse.ArgumentParser) -> list[str]:
    """'2d,3d' as data kinds, in order and without repeats."""
    kinds = comma_items(text)
    if not kinds or set(kinds) - set(KINDS):
        parser.error(f"--kinds {text!r}: give 2d, 3d or 2d,3d")
    return kinds


def model_spec(spec: str) -> tuple[str, dict]:
    """'vblt:init=ordinal,byte_skip=true' -> ('vblt', typed config overrides), checked against
    the model's config (on its `small` preset); raises ConfigError (one line) on an unknown
    model, key or value."""
    from framecast.models import registry

    name, _, items = spec.partition(":")
    name = name.strip()
    overrides = registry.parse_overrides(name, items)
    registry.model_config(name, "small", **overrides)  # the config's own checks
    return name, overrides


class _Help(argparse.RawDescriptionHelpFormatter):
    """The docstring as written, and each option's default after its help, unless the help
    already states one or there is none to state."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (not action.option_strings or action.default in (None, False, "", argparse.SUPPRESS)
                or "default" in text):
            return text
        return f"{text} (default: %(default)s)".lstrip()


def new_parser(doc: str | None) -> argparse.ArgumentParser:
    """A benchmark's parser: its docstring as the description, defaults shown in --help."""
    return argparse.ArgumentParser(description=doc, formatter_class=_Help)
