"""Any value of any flag ends in a result or one error line (exit 0 or 2), never a traceback."""
from __future__ import annotations

import argparse
import contextlib
import io
import tempfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from embslim.cli import build_parser, main

TINY = {
    "train": ["--synthetic-rows", "300", "--epochs", "1", "--dim", "2", "--quiet"],
    "search": ["--synthetic-rows", "300", "--epochs", "1", "--search-epochs", "1", "--dim", "2", "--budget", "0.9", "--quiet"],
    "bench": ["--methods", "full,uniform", "--budgets", "0.5", "--seeds", "1", "--workers", "1", "--synthetic-rows", "300",
              "--epochs", "1", "--quiet"],
}
# --out is the test's temporary folder; --ray-address would wait on a cluster that is not there.
NOT_FUZZED = {"--out", "--ray-address", "--help"}


def value_flags(command: str) -> list[str]:
    """Every option of `command` that takes a value, read from the parser itself so new flags are fuzzed too."""
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    return sorted(o for a in sub._actions if a.nargs is None and a.option_strings
                  for o in a.option_strings if o.startswith("--") and o not in NOT_FUZZED)


# Positive integers stay small so that every accepted run is tiny. Around them: zero, negatives, fractions,
# non-finite and huge floats, and arbitrary text, the values that used to end in tracebacks.
VALUES = st.one_of(
    st.integers(min_value=-2, max_value=4).map(str),
    st.integers(max_value=-3).map(str),
    st.floats(min_value=0, max_value=1).map(str),
    st.floats().map(str),
    st.sampled_from(["nan", "inf", "-inf", "-0.0", "1e6", "1e30", "3e38", "1e308", "1e400", "4,2", "0.1,1", "0.5,0.2", "a=1", "", " "]),
    st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=6),
)


@pytest.mark.parametrize("command", sorted(TINY))
@settings(max_examples=50, deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_no_flag_value_makes_any_command_print_a_traceback(command, data):
    flags = data.draw(st.dictionaries(st.sampled_from(value_flags(command)), VALUES, min_size=1, max_size=2), label="flags")
    stdout, stderr = io.StringIO(), io.StringIO()
    with tempfile.TemporaryDirectory() as out, contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        argv = [command, *TINY[command], *(f"{flag}={value}" for flag, value in flags.items()), "--out", out]
        try:
            code = main(argv)
        except SystemExit as exc:
            code = exc.code
    assert code in (0, 2), (argv, code, stderr.getvalue())
    assert "Traceback" not in stderr.getvalue(), argv
