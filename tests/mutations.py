"""Byte-level damage to recording files, for mutation fuzzing of every reader of recordings.

A :class:`Mutation` is a small, printable, replayable edit of a file's bytes: a bit flip, a
truncation, a zeroed span, a duplicated span, or (inside a zip archive) two members swapping
their contents. Positions are taken modulo the file's length, so one mutation applies to any
file and a failing case found by hypothesis can be pasted as a regression example.

Used by ``tests/test_recording_fuzz.py`` (the loaders) and meant for any other reader of
uploads (the service's upload path: a damaged upload must get a 4xx with the loader's message
and nothing stored)::

    from tests.mutations import damaged_copies, mutation_lists
    for name, blob, muts in damaged_copies(path.read_bytes(), n=20, seed=0, is_zip=True): ...

    @given(muts=mutation_lists(is_zip=True))
    def test_upload(muts): upload(apply_all(good_bytes, muts))
"""

from __future__ import annotations

import io
import random
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from hypothesis import strategies as st

from rulefinder.recording.archive import ZIP_ERRORS

KINDS = ("flip", "truncate", "zero", "duplicate")
ZIP_KINDS = (*KINDS, "swap")
MAX_SPAN = 4096  # longest zeroed or duplicated span, in bytes


@dataclass(frozen=True)
class Mutation:
    """One edit of a file's bytes; ``a``, ``b``, ``c`` are read modulo what they index.

    - ``flip``: flip bit ``b % 8`` of byte ``a % n``;
    - ``truncate``: keep the first ``a % n`` bytes;
    - ``zero``: set ``1 + b % MAX_SPAN`` bytes from ``a % n`` to zero;
    - ``duplicate``: insert a copy of the ``1 + b % MAX_SPAN`` bytes from ``a % n`` at ``c % n``
      (the file grows, as after a copy that wrote a block twice);
    - ``swap``: inside a zip archive, members ``a`` and ``b`` (mod the member count) exchange
      their contents, names kept (a valid archive with the wrong thing under each name).
    """

    kind: str
    a: int = 0
    b: int = 0
    c: int = 0

    def apply(self, data: bytes) -> bytes:
        n = len(data)
        if n == 0:
            return data
        if self.kind == "flip":
            i = self.a % n
            return data[:i] + bytes([data[i] ^ (1 << (self.b % 8))]) + data[i + 1 :]
        if self.kind == "truncate":
            return data[: self.a % n]
        if self.kind == "zero":
            i = self.a % n
            k = min(1 + self.b % MAX_SPAN, n - i)
            return data[:i] + bytes(k) + data[i + k :]
        if self.kind == "duplicate":
            i = self.a % n
            span = data[i : i + 1 + self.b % MAX_SPAN]
            at = self.c % n
            return data[:at] + span + data[at:]
        if self.kind == "swap":
            return swap_members(data, self.a, self.b)
        raise ValueError(f"unknown mutation kind {self.kind!r}: expected one of {ZIP_KINDS}")


def swap_members(data: bytes, i: int, j: int) -> bytes:
    """Rewrite a zip archive with members ``i`` and ``j`` (mod count) exchanging contents.

    Each member keeps its name and compression. A file that is not a readable zip is returned
    unchanged (the other mutations damage those).
    """
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zin:
            infos = [x for x in zin.infolist() if not x.is_dir()]
            if len(infos) < 2:
                return data
            i, j = i % len(infos), j % len(infos)
            contents = {x.filename: zin.read(x) for x in infos}
    except (*ZIP_ERRORS, KeyError):  # already damaged: the other mutations cover it
        return data
    a, b = infos[i].filename, infos[j].filename
    contents[a], contents[b] = contents[b], contents[a]
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zout:
        for x in infos:
            zout.writestr(x.filename, contents[x.filename], compress_type=x.compress_type)
    return out.getvalue()


def apply_all(data: bytes, mutations: Sequence[Mutation]) -> bytes:
    for m in mutations:
        data = m.apply(data)
    return data


_index = st.integers(min_value=0, max_value=(1 << 24) - 1)


@st.composite
def mutations(draw, *, is_zip: bool = False) -> Mutation:
    """One :class:`Mutation` (``swap`` only when ``is_zip``)."""
    kind = draw(st.sampled_from(ZIP_KINDS if is_zip else KINDS))
    if kind == "truncate":
        return Mutation(kind, draw(_index))
    if kind == "flip":
        return Mutation(kind, draw(_index), draw(st.integers(0, 7)))
    if kind == "swap":
        return Mutation(kind, draw(st.integers(0, 63)), draw(st.integers(0, 63)))
    return Mutation(kind, draw(_index), draw(st.integers(0, MAX_SPAN - 1)), draw(_index))


def mutation_lists(*, is_zip: bool = False, max_size: int = 3) -> st.SearchStrategy[list[Mutation]]:
    """One to ``max_size`` mutations, applied in order."""
    return st.lists(mutations(is_zip=is_zip), min_size=1, max_size=max_size)


def damaged_copies(
    data: bytes, *, n: int, seed: int = 0, is_zip: bool = False, kinds: Sequence[str] | None = None
) -> Iterator[tuple[str, bytes, Mutation]]:
    """``n`` damaged copies of ``data`` without hypothesis (benchmarks, service tests):
    yields ``(kind, damaged_bytes, mutation)``, one mutation each, kinds in turn."""
    rng = random.Random(seed)
    kinds = list(kinds or (ZIP_KINDS if is_zip else KINDS))
    for k in range(n):
        kind = kinds[k % len(kinds)]
        m = Mutation(kind, rng.randrange(1 << 24), rng.randrange(1 << 24), rng.randrange(1 << 24))
        yield kind, m.apply(data), m
