"""Property: mutating the example programs (deleting, duplicating and swapping tokens) makes the
compiler report a located KCompileError or succeed; it never raises anything else and never hangs."""

from __future__ import annotations

import re
import shutil
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import kcompile as kc
from kcompile.errors import KCompileError
from kcompile.loading import check

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
PROGRAMS = ["mnist.k", "classifier.k", "replicas.k", "blocks.k"]
TOKEN = re.compile(r"\"[^\"\n]*\"|[0-9]*\.?[0-9]+|[A-Za-z_]\w*|[(){}\[\],=.+\-*/;]|\n")
HARD_LIMIT_S = 20  # a hang fails the test instead of blocking the suite


class Hang(Exception):
    pass


@contextmanager
def hard_limit(seconds: int) -> Iterator[None]:
    def on_alarm(signum: int, frame: object) -> None:
        raise Hang(f"no result after {seconds} s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def _kind(token: str) -> str:
    return "string" if token[0] == '"' else "number" if token[0].isdigit() else "name" if token[0].isalpha() else token


def mutate(text: str, edits: list[tuple[str, int, int]]) -> str:
    """Apply token edits: ('delete', i, _), ('duplicate', i, _), ('swap', i, j), and ('swap_alike', i, j),
    which swaps token i with a token of its kind (name, number, string), so that more mutants parse."""
    for op, i, j in edits:
        spans = [m.span() for m in TOKEN.finditer(text)]
        if not spans:
            break
        a, b = spans[i % len(spans)]
        if op == "delete":
            text = text[:a] + text[b:]
        elif op == "duplicate":
            text = text[:b] + " " + text[a:b] + text[b:]
        else:
            if op == "swap_alike":
                spans = [(c, d) for c, d in spans if _kind(text[c:d]) == _kind(text[a:b])]
            (a, b), (c, d) = sorted(((a, b), spans[j % len(spans)]))
            if (a, b) != (c, d):
                text = text[:a] + text[c:d] + text[b:c] + text[a:b] + text[d:]
    return text


EDITS = st.lists(
    st.tuples(
        st.sampled_from(["delete", "duplicate", "swap", "swap_alike"]), st.integers(0, 10_000), st.integers(0, 10_000)
    ),
    min_size=1,
    max_size=3,
)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("fuzz")
    shutil.copy(EXAMPLES / "classifier.k", folder / "classifier.k")  # what replicas.k imports
    return folder


@pytest.mark.parametrize("program", PROGRAMS)
@settings(
    max_examples=400,
    deadline=timedelta(seconds=5),
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(edits=EDITS)
def test_mutated_programs_fail_only_with_located_errors(
    workdir: Path, program: str, edits: list[tuple[str, int, int]]
) -> None:
    text = mutate((EXAMPLES / program).read_text(), edits)
    path = workdir / f"mutated_{program}"
    path.write_text(text)
    kc.clear_session()
    try:
        with hard_limit(HARD_LIMIT_S):
            check(str(path))
    except KCompileError as err:
        assert err.loc is not None, f"error without a location: {err}\n--- program:\n{text}"
        assert err.loc.file.endswith(".k") and err.loc.line >= 1 and err.loc.col >= 1, str(err)
        assert "internal error" not in err.message, f"{err}\n--- program:\n{text}"


def test_mutation_helper() -> None:
    assert mutate("a = f(b)", [("delete", 2, 0)]) == "a = (b)"
    assert mutate("a = f(b)", [("duplicate", 0, 0)]) == "a a = f(b)"
    assert mutate("a = f(b)", [("swap", 0, 4)]) == "b = f(a)"
    assert mutate("a = f(1, b)", [("swap_alike", 0, 2)]) == "b = f(1, a)"
