"""The Prometheus exposition the server writes: cumulative buckets, escaped labels."""

from panoptic_ext.serve.metrics import Histogram, Metrics


def test_histogram_buckets_are_cumulative():
    h = Histogram("x_seconds", "help text", (0.1, 1.0))
    for v in (0.05, 0.5, 0.5, 3.0):
        h.observe(v)
    assert h.render() == [
        "# HELP x_seconds help text", "# TYPE x_seconds histogram",
        'x_seconds_bucket{le="0.1"} 1', 'x_seconds_bucket{le="1.0"} 3',
        'x_seconds_bucket{le="+Inf"} 4', "x_seconds_sum 4.05", "x_seconds_count 4"]


def test_requests_batches_and_queue_depth():
    m = Metrics()
    m.observe_request("POST", "/v1/panoptic", 200, 0.2)
    m.observe_request("POST", "/v1/panoptic", 200, 0.3)
    m.observe_request("GET", 'a"b\\c', 404, None)
    m.observe_batch(2, 0.15)
    m.add_waiting(3)
    text = m.render()
    assert 'panoptic_requests_total{method="POST",path="/v1/panoptic",status="200"} 2' in text
    assert 'panoptic_requests_total{method="GET",path="a\\"b\\\\c",status="404"} 1' in text
    assert "panoptic_request_seconds_count 2" in text
    assert 'panoptic_batch_size_bucket{le="2.0"} 1' in text
    assert "panoptic_model_seconds_sum 0.15" in text
    assert "panoptic_queue_depth 3.0" in text
    assert text.endswith("\n")
