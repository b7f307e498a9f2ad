"""A bounded run of the structured fuzzer (``tests/fuzz.py``) against every file reader,
and Hypothesis-driven bit flips and truncations. The long run (10^5 mutations per
reader) is ``python tests/fuzz.py --count 100000 --jobs 2 --memory rss`` and not part of CI."""

import os
import tempfile
import tracemalloc

import fuzz
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

COUNT = int(os.environ.get("NPQUANT_FUZZ_COUNT", "150"))


@pytest.fixture(scope="module")
def cases():
    return {c.name: c for c in fuzz.build_cases()}


def test_every_reader_has_a_case(cases):
    assert set(cases) >= {
        "load_state_dict(.npz)",
        "load_state_dict(.safetensors)",
        "load_reference",
        "load_quantized",
        "read_compressed",
        "read_compressed(layouts)",
        "read_compressed(v2)",
        "load_weights(.npqz)",
        "load_weights(checkpoint)",
        "huffman.decode",
        "load_model",
        "from_pytorch_ptq",
        "load_graph",
    }
    # the compressed-file seeds: version 3 (every layout between the two) and version 2
    from npquant.compression.pipeline import read_compressed

    v3 = ("read_compressed", "read_compressed(layouts)")
    assert [cases[n].data[4] for n in (*v3, "read_compressed(v2)")] == [3, 3, 2]
    kinds = {r["kind"] for n in v3 for r in fuzz.v3_split(cases[n].data)[0]}
    assert {k & 3 for k in kinds} == {0, 1, 2} and {k & 0b1111100 for k in kinds if k & 3 == 2} >= {
        0b10000,
        0b11100,
        0b1110100,
        0,
    }  # dense, transposed, skipped rows and columns, no reserved zero
    assert cases["read_compressed(v2)"].expected.keys() == read_compressed(cases["read_compressed"].data).keys()


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # models run on edited (huge) weights
@pytest.mark.parametrize(
    "name",
    [
        "load_state_dict(.npz)",
        "load_state_dict(.safetensors)",
        "load_reference",
        "load_quantized",
        "read_compressed",
        "read_compressed(layouts)",
        "read_compressed(v2)",
        "load_weights(.npqz)",
        "load_weights(checkpoint)",
        "huffman.decode",
        "load_model",
        "from_pytorch_ptq",
        "load_graph",
    ],
)
def test_structured_mutations(cases, name):
    tally = fuzz.run_case(cases[name], 0, COUNT, timeout=30.0)
    assert not tally.failures, tally.failures[:5]
    assert sum(tally.counts.values()) == COUNT
    # The mutations reach past the first check: most are refused, some read back equal.
    assert tally.counts.get("rejected", 0) > COUNT // 2


def test_the_oracle_catches_a_silently_wrong_reader(cases):
    """The fuzzer itself: a reader that ignores a shrunk shape is reported, and one that
    allocates what a header declares is caught by the memory limit."""
    case = cases["load_state_dict(.npz)"]
    fake = fuzz.Case(
        case.name,
        case.suffix,
        case.data,
        lambda p: dict(list(case.expected.items())[:-1]),
        case.kind,
        case.expected,
        case.peak,
        case.mutators,
    )
    with tempfile.TemporaryDirectory() as d:
        tracemalloc.start()
        try:
            outcome, _ = fuzz.classify(fake, case.data, os.path.join(d, "x.npz"), 10.0)
            assert outcome == "silently_wrong"
            hog = fuzz.Case(
                case.name,
                case.suffix,
                case.data,
                lambda p: {"x": np.ones(1 << 24)},
                case.kind,
                case.expected,
                case.peak,
                case.mutators,
            )
            outcome, _ = fuzz.classify(hog, case.data, os.path.join(d, "x.npz"), 10.0)
            assert outcome == "memory"
        finally:
            tracemalloc.stop()


def _flip_or_cut(data: bytes, pos: int, bit: int, cut: bool) -> bytes:
    pos %= len(data)
    if cut:
        return data[:pos]
    b = bytearray(data)
    b[pos] ^= 1 << bit
    return bytes(b)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    which=st.sampled_from(
        ["load_state_dict(.npz)", "load_quantized", "read_compressed", "read_compressed(v2)", "load_reference"]
    ),
    pos=st.integers(0, 1 << 20),
    bit=st.integers(0, 7),
    cut=st.booleans(),
)
def test_any_flip_or_truncation_is_refused_or_harmless(cases, which, pos, bit, cut):
    """A checksummed format never returns something else after one flipped bit or a cut."""
    case = cases[which]
    with tempfile.TemporaryDirectory() as d:
        tracemalloc.start()
        try:
            outcome, detail = fuzz.classify(
                case, _flip_or_cut(case.data, pos, bit, cut), os.path.join(d, "x" + case.suffix), 30.0
            )
        finally:
            tracemalloc.stop()
    assert outcome in ("rejected", "equal"), detail


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="the rss meter reads Linux's /proc")
def test_the_rss_meter_of_the_long_run_catches_big_and_huge_allocations(cases):
    case = cases["load_state_dict(.npz)"]

    def reader(make):
        return fuzz.Case(case.name, case.suffix, case.data, make, case.kind, case.expected, case.peak, case.mutators)

    with tempfile.TemporaryDirectory() as d, fuzz.RssMeter() as meter:
        path = os.path.join(d, "x.npz")
        assert (
            fuzz.classify(reader(lambda p: {"x": np.ones(1 << 24)}), case.data, path, 10.0, meter=meter)[0] == "memory"
        )
        assert (
            fuzz.classify(reader(lambda p: {"x": np.empty(3 << 30, np.uint8)}), case.data, path, 10.0, meter=meter)[0]
            == "other_exception"
        )  # beyond the 2 GiB address-space cap
        assert fuzz.classify(case, case.data, path, 10.0, meter=meter)[0] == "equal"
