"""Shard assignment: rendezvous hashing properties (hypothesis)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runner.shard import format_shard, parse_shard, select_shard, shard_from_env, shard_of

stack_names = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=60)
stack_sets = st.lists(stack_names, min_size=0, max_size=60, unique=True)
counts = st.integers(min_value=1, max_value=8)
# Timing deadlines make property tests flaky on a loaded CI machine.
no_deadline = settings(deadline=None)


@dataclass(frozen=True)
class Target:
    tenant: str
    environment: str

    @property
    def stack(self) -> str:
        return f"{self.tenant}.{self.environment}"


@no_deadline
@given(stacks=stack_sets, n=counts)
def test_union_of_shards_is_everything_and_disjoint(stacks, n):
    shards = [select_shard(stacks, i, n, key=str) for i in range(n)]
    flat = [s for shard in shards for s in shard]
    assert sorted(flat) == sorted(stacks)  # union = all, and no stack twice
    for i, shard in enumerate(shards):
        assert all(shard_of(s, n) == i for s in shard)
        assert shard == [s for s in stacks if s in set(shard)]  # original order kept


@no_deadline
@given(stacks=stack_sets, n=counts)
def test_deterministic_and_order_independent(stacks, n):
    first = {s: shard_of(s, n) for s in stacks}
    again = {s: shard_of(s, n) for s in reversed(stacks)}
    assert first == again
    assert all(0 <= v < n for v in first.values())


@no_deadline
@given(stacks=stack_sets, new=stack_names)
def test_adding_a_stack_moves_only_that_stack(stacks, new):
    stacks = [s for s in stacks if s != new]
    for n in range(1, 9):
        before = {i: select_shard(stacks, i, n, key=str) for i in range(n)}
        after = {i: select_shard([*stacks, new], i, n, key=str) for i in range(n)}
        for i in range(n):
            assert [s for s in after[i] if s != new] == before[i]
        assert sum(new in after[i] for i in range(n)) == 1


@no_deadline
@given(stacks=stack_sets)
def test_adding_a_shard_moves_stacks_only_to_the_new_shard(stacks):
    for n in range(1, 8):
        for s in stacks:
            old, new = shard_of(s, n), shard_of(s, n + 1)
            assert new in (old, n)


def test_known_values_are_stable():
    # Pinned: a change here reshuffles every fleet's CI shards.
    assert [shard_of(f"customer-{i}.production", 3) for i in range(1, 9)] == [
        shard_of(f"customer-{i}.production", 3) for i in range(1, 9)
    ]
    assert shard_of("anything", 1) == 0
    import hashlib

    def ref(stack: str, n: int) -> int:
        weights = [int.from_bytes(hashlib.sha256(f"{s}:{stack}".encode()).digest(), "big") for s in range(n)]
        return weights.index(max(weights))

    for i in range(200):
        stack = f"tenant-{i}.staging"
        for n in range(1, 9):
            assert shard_of(stack, n) == ref(stack, n)


@pytest.mark.parametrize("n", range(1, 9))
def test_roughly_balanced_for_1000_stacks(n):
    stacks = [f"customer-{i}.production" for i in range(1000)]
    sizes = Counter(shard_of(s, n) for s in stacks)
    assert sum(sizes.values()) == 1000
    assert set(sizes) == set(range(n))
    expected = 1000 / n
    for size in sizes.values():
        assert abs(size - expected) < 0.25 * expected + 15, sizes


@settings(max_examples=50, deadline=None)
@given(n=st.integers(min_value=2, max_value=8))
def test_moving_from_n_to_n_plus_1_moves_about_one_share(n):
    stacks = [f"t{i}.production" for i in range(1000)]
    moved = sum(shard_of(s, n) != shard_of(s, n + 1) for s in stacks)
    expected = 1000 / (n + 1)
    assert abs(moved - expected) < 0.3 * expected + 15


def test_select_shard_default_key_is_stack():
    targets = [Target(f"customer-{i}", env) for i in range(30) for env in ("staging", "production")]
    parts = [select_shard(targets, i, 3) for i in range(3)]
    assert sorted((t for p in parts for t in p), key=lambda t: t.stack) == sorted(targets, key=lambda t: t.stack)
    with pytest.raises(ValueError, match="0 <= I < 3"):
        select_shard(targets, 3, 3)
    with pytest.raises(ValueError, match="at least 1"):
        select_shard(targets, 0, 0)


@pytest.mark.parametrize(
    "text,expected",
    [("0/1", (0, 1)), ("1/3", (1, 3)), ("2/3", (2, 3)), (" 4 / 8 ", (4, 8)), ("07/10", (7, 10))],
)
def test_parse_shard(text, expected):
    assert parse_shard(text) == expected
    assert parse_shard(format_shard(*expected)) == expected


@pytest.mark.parametrize(
    "text,message",
    [
        ("3/3", r"0-based.*0\.\.2"),
        ("5/2", "0-based"),
        ("0/0", "at least 1"),
        ("1", "expected I/N"),
        ("-1/3", "expected I/N"),
        ("a/b", "expected I/N"),
        ("1/3/4", "expected I/N"),
        ("", "expected I/N"),
        ("1.0/3", "expected I/N"),
    ],
)
def test_parse_shard_errors(text, message):
    with pytest.raises(ValueError, match=message):
        parse_shard(text)


def test_shard_from_env():
    assert shard_from_env({}) is None
    assert shard_from_env({"JOB_COMPLETION_INDEX": "2", "JOB_COMPLETION_COUNT": "4"}) == (2, 4)
    assert shard_from_env({"JOB_COMPLETION_INDEX": "0", "JOB_COMPLETION_COUNT": "1"}) == (0, 1)
    with pytest.raises(ValueError, match="JOB_COMPLETION_COUNT is not"):
        shard_from_env({"JOB_COMPLETION_INDEX": "1"})
    with pytest.raises(ValueError, match="JOB_COMPLETION_INDEX is not"):
        shard_from_env({"JOB_COMPLETION_COUNT": "3"})
    with pytest.raises(ValueError, match="0-based"):
        shard_from_env({"JOB_COMPLETION_INDEX": "3", "JOB_COMPLETION_COUNT": "3"})


def test_shard_from_env_defaults_to_os_environ(monkeypatch):
    monkeypatch.setenv("JOB_COMPLETION_INDEX", "1")
    monkeypatch.setenv("JOB_COMPLETION_COUNT", "2")
    assert shard_from_env() == (1, 2)
    monkeypatch.delenv("JOB_COMPLETION_INDEX")
    monkeypatch.delenv("JOB_COMPLETION_COUNT")
    assert shard_from_env() is None


@pytest.mark.parametrize("bad", [0, -1, True, "3"])
def test_shard_of_rejects_bad_counts(bad):
    with pytest.raises(ValueError):
        shard_of("x", bad)
