from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram

from relay.metrics import observe_many

BUCKETS = (0.01, 0.5, 1, 2.5, 60)
amounts = st.lists(
    st.one_of(
        st.sampled_from([*BUCKETS, 0.0, -1.0, 1e9]),
        st.floats(min_value=-10, max_value=1e6, allow_nan=False),
    ),
    max_size=50,
)


def _samples(histogram: Histogram) -> dict[tuple[str, str], float]:
    return {
        (s.name, s.labels.get("le", "")): s.value
        for metric in histogram.collect()
        for s in metric.samples
        if not s.name.endswith("_created")
    }


def _histogram() -> Histogram:
    return Histogram("h", "h", buckets=BUCKETS, registry=CollectorRegistry())


@given(amounts)
def test_observe_many_counts_exactly_as_observing_one_by_one(values: list[float]) -> None:
    one_by_one, at_once = _histogram(), _histogram()
    for value in values:
        one_by_one.observe(value)
    observe_many(at_once, values)
    expected, got = _samples(one_by_one), _samples(at_once)
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert abs(got[key] - value) <= 1e-6 * max(1.0, abs(value)), key


def test_observe_many_of_a_labelled_child_and_of_nothing() -> None:
    histogram = Histogram("h", "h", ["region"], buckets=BUCKETS, registry=CollectorRegistry())
    observe_many(histogram.labels("eu"), [0.2, 0.7, 0.7, 100])
    observe_many(histogram.labels("eu"), [])
    samples = {
        (s.name, s.labels["le"]): s.value
        for m in histogram.collect()
        for s in m.samples
        if s.name == "h_bucket"
    }
    assert samples[("h_bucket", "0.01")] == 0
    assert samples[("h_bucket", "0.5")] == 1
    assert samples[("h_bucket", "1.0")] == 3
    assert samples[("h_bucket", "60.0")] == 3
    assert samples[("h_bucket", "+Inf")] == 4
