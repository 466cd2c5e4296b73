"""The bounded memo every per-request cache is built on: ceilings on entries and bytes."""

from __future__ import annotations

import pytest

from micafence.caches import BoundedCache


def test_holds_what_was_put_until_the_entry_ceiling() -> None:
    cache: BoundedCache[int, str] = BoundedCache(3)
    assert [cache.put(n, str(n)) for n in range(3)] == [True, True, True]
    assert [cache.get(n) for n in range(3)] == ["0", "1", "2"]
    assert cache.put(1, "one")  # a key already held never empties the table
    assert (len(cache), cache.get(1)) == (3, "one")
    assert cache.put(3, "3") is False  # a fourth key: the table starts over with it
    assert (len(cache), cache.get(0), cache.get(3)) == (1, None, "3")


def test_the_byte_ceiling_counts_what_each_entry_says_it_holds() -> None:
    cache: BoundedCache[str, int] = BoundedCache(1000, max_bytes=100)
    for n in range(4):
        assert cache.put(f"k{n}", n, size=25)
    assert (len(cache), cache.bytes) == (4, 100)
    assert cache.put("k4", 4, size=1) is False  # 101 bytes: start over
    assert (len(cache), cache.bytes, cache.get("k0"), cache.get("k4")) == (1, 1, None, 4)


def test_putting_a_key_again_counts_its_growth() -> None:
    cache: BoundedCache[str, list[int]] = BoundedCache(10, max_bytes=100)
    table = [1]
    cache.put("visitor", table, size=20)
    for _ in range(4):
        table.append(1)
        cache.put("visitor", table, size=20)
    assert cache.bytes == 100
    assert cache.put("visitor", table, size=20) is False
    assert cache.bytes == 20


def test_an_entry_over_a_quarter_of_the_bytes_is_not_kept() -> None:
    cache: BoundedCache[str, int] = BoundedCache(10, max_bytes=100)
    cache.put("small", 1, size=10)
    assert cache.put("huge", 2, size=26) is False
    assert (cache.get("huge"), cache.get("small"), cache.bytes) == (None, 1, 10)
    cache.put("small", 3, size=30)  # a held value grown too large is dropped too
    assert cache.get("small") is None


def test_get_stays_bound_after_clear() -> None:
    cache: BoundedCache[str, int] = BoundedCache(2)
    get = cache.get
    cache.put("a", 1)
    cache.clear()
    assert (len(cache), cache.bytes, get("a")) == (0, 0, None)
    cache.put("b", 2)
    assert get("b") == 2


def test_without_a_byte_ceiling_sizes_are_ignored() -> None:
    cache: BoundedCache[int, int] = BoundedCache(2)
    assert cache.put(1, 1, size=10**9)
    assert (cache.get(1), cache.bytes) == (1, 0)


@pytest.mark.parametrize(("entries", "max_bytes"), [(0, None), (-1, None), (1, 0)])
def test_ceilings_must_be_positive(entries: int, max_bytes: int | None) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        BoundedCache(entries, max_bytes)
