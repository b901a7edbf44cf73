"""`driftloop status`: what the running workers report on their Prometheus /metrics endpoints.

Every endpoint is scraped once (in parallel, with a short timeout) and the workers are combined:
counters and histogram buckets are summed; lag and join backlogs are summed too, since each worker
owns its own partitions; model versions in use are listed as the distinct values the workers report
(several during a rollout); live metrics are averaged weighted by each worker's window size, which
is exact for accuracy and log loss and an approximation for the others. Quantiles are estimated from
the histogram buckets the way Prometheus' `histogram_quantile` does.
"""

from __future__ import annotations

import math
import urllib.error
import urllib.request
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from driftloop.errors import DriftloopError
from driftloop.process import client_address
from driftloop.settings import Settings
from driftloop.stack import running_stack
from driftloop.streams.worker.breaker import STATES as BREAKER_STATES
from driftloop.streams.worker.metrics import JOIN_SIDES, LIVE_METRICS, OUTCOME_RESULTS, STAGES
from driftloop.supervisor import RESTARTS_METRIC, UP_METRIC

TIMEOUT_SECONDS = 2.0

# One worker's scrape: sample name -> [(labels, value)].
Scrape = dict[str, list[tuple[dict[str, str], float]]]


def metrics_urls(settings: Settings) -> list[str]:
    """The local worker's default endpoint, then those `driftloop up` lists in stack.json."""
    urls = []
    if settings.metrics_port:  # port 0 means "a free port": only stack.json can say which
        urls.append(f"http://{client_address(settings.bind_host, settings.metrics_port)}/metrics")
    for url in running_stack(settings.data_dir).get("metrics_urls") or []:
        if url not in urls:
            urls.append(url)
    return urls


def scrape(url: str, timeout: float = TIMEOUT_SECONDS) -> Scrape:
    """Fetch and parse one endpoint; ValueError or OSError (URLError) when it is not a worker's."""
    with urllib.request.urlopen(url, timeout=timeout) as response:
        text = response.read().decode("utf-8")
    samples: Scrape = defaultdict(list)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[sample.name].append((sample.labels, sample.value))
    if not any(name.startswith("driftloop_") for name in samples):
        raise ValueError("it answers, but exposes no driftloop metrics")
    return samples


def collect(urls: list[str], timeout: float = TIMEOUT_SECONDS) -> dict[str, Any]:
    """Scrape every URL and summarize the workers that answered; DriftloopError when none did."""

    def attempt(url: str) -> Scrape | str:
        try:
            return scrape(url, timeout)
        except (OSError, ValueError) as exc:
            return _reason(exc)

    with ThreadPoolExecutor(max_workers=max(1, min(len(urls), 16))) as pool:
        results = dict(zip(urls, pool.map(attempt, urls)))
    scrapes = [result for result in results.values() if not isinstance(result, str)]
    if not scrapes:
        raise DriftloopError(
            f"no driftloop worker answered at {', '.join(urls) or '(no URL)'} (is `driftloop up` running?)"
        )
    workers = {
        "answered": [url for url, result in results.items() if not isinstance(result, str)],
        "unreachable": {url: result for url, result in results.items() if isinstance(result, str)},
        "info": [labels for samples in scrapes for labels, _ in samples.get("driftloop_worker_info", ())],
    }
    return {"workers": workers, **summarize(scrapes)}


def collect_children(settings: Settings, timeout: float = TIMEOUT_SECONDS) -> dict[str, Any] | None:
    """What the running `driftloop up` reports of its children: {"url", "children": {child: {"up", "restarts"}}},
    or {"url", "unreachable"}; None when no `driftloop up` runs here (workers run elsewhere, compose)."""
    url = running_stack(settings.data_dir).get("supervisor_metrics_url")
    if not url:
        return None
    try:
        samples = scrape(url, timeout)
    except (OSError, ValueError) as exc:
        return {"url": url, "unreachable": _reason(exc)}
    restarts = {labels["child"]: _count(value) for labels, value in samples.get(RESTARTS_METRIC, ())}
    return {
        "url": url,
        "children": {
            labels["child"]: {"up": value == 1, "restarts": restarts.get(labels["child"], 0)}
            for labels, value in samples.get(UP_METRIC, ())
        },
    }


def _reason(exc: Exception) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code}"
    if isinstance(exc, urllib.error.URLError):
        return str(exc.reason)
    return str(exc)


def _sum(scrapes: list[Scrape], name: str, *by: str) -> dict[tuple[str, ...], float]:
    """A sample summed over workers, grouped by the values of the labels `by`."""
    totals: dict[tuple[str, ...], float] = defaultdict(float)
    for samples in scrapes:
        for labels, value in samples.get(name, ()):
            totals[tuple(labels.get(label, "") for label in by)] += value
    return totals


def histogram_buckets(scrapes: list[Scrape], name: str) -> dict[float, float]:
    """A label-less histogram's cumulative {upper bound: count}, summed over the workers."""
    return {float(bound): count for (bound,), count in _sum(scrapes, f"{name}_bucket", "le").items()}


def _version_order(version: str) -> tuple[int, int | str]:
    """Registry versions are whole numbers: v9 before v10."""
    return (0, int(version)) if version.isdigit() else (1, version)


def _count(value: float) -> int:
    return int(round(value))


def histogram_quantile(q: float, buckets: dict[float, float]) -> float | None:
    """Prometheus' estimate of the q-quantile from cumulative {upper bound: count} buckets.

    Linear interpolation inside the bucket holding the rank (the first bucket starts at 0); a rank
    in the +Inf bucket returns the largest finite bound. None without observations.
    """
    bounds = sorted(buckets)
    total = buckets.get(math.inf, 0.0)
    if total <= 0:
        return None
    rank = q * total
    lower, below = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if math.isinf(bound):
                return lower
            if count == below:
                return bound
            return lower + (bound - lower) * (rank - below) / (count - below)
        lower, below = bound, count
    return lower


def _quantiles(scrapes: list[Scrape], name: str, by: str | None, qs: tuple[float, ...]) -> dict[str, dict]:
    """{label value: {"count": n, "p50": ..}} for a histogram; the one key is "" when it has no label."""
    grouped: dict[str, dict[float, float]] = defaultdict(dict)
    for key, count in _sum(scrapes, f"{name}_bucket", *((by,) if by else ()), "le").items():
        grouped[key[0] if by else ""][float(key[-1])] = count
    return {
        value: {
            "count": _count(buckets.get(math.inf, 0.0)),
            **{f"p{round(q * 100)}": histogram_quantile(q, buckets) for q in qs},
        }
        for value, buckets in sorted(grouped.items())
    }


def summarize(scrapes: list[Scrape]) -> dict[str, Any]:
    """The status of the workers behind these scrapes, as plain JSON-able data."""
    events = _sum(scrapes, "driftloop_events_total", "result")
    predicted, dead_lettered = events.get(("predicted",), 0.0), events.get(("dead_lettered",), 0.0)
    by_reason = {
        reason: _count(n) for (reason,), n in sorted(_sum(scrapes, "driftloop_dlq_total", "reason").items()) if n
    }

    predictions: dict[str, dict[str, int]] = defaultdict(dict)
    for (version, variant), n in sorted(
        _sum(scrapes, "driftloop_predictions_total", "model_version", "variant").items(),
        key=lambda item: (_version_order(item[0][0]), item[0][1]),
    ):
        predictions[version][variant] = _count(n)

    in_use: dict[str, dict[str, set[int]]] = defaultdict(lambda: defaultdict(set))
    for samples in scrapes:
        for labels, number in samples.get("driftloop_model_version", ()):
            in_use[labels["model"]][labels["variant"]].add(_count(number))

    batch_count = sum(_sum(scrapes, "driftloop_batch_size_count").values())
    batch_events = sum(_sum(scrapes, "driftloop_batch_size_sum").values())
    stages = _quantiles(scrapes, "driftloop_stage_seconds", "stage", (0.5, 0.99))
    in_pipeline_order = sorted(
        stages, key=lambda stage: (STAGES.index(stage) if stage in STAGES else len(STAGES), stage)
    )
    latency = _quantiles(scrapes, "driftloop_event_latency_seconds", None, (0.5, 0.95, 0.99)).get("")

    lag = _sum(scrapes, "driftloop_consumer_lag", "topic")
    outcomes = _sum(scrapes, "driftloop_outcomes_total", "result")
    pending = _sum(scrapes, "driftloop_join_pending", "side")

    return {
        "events": {
            "in": _count(predicted + dead_lettered),
            "predicted": _count(predicted),
            "dead_lettered": _count(dead_lettered),
            "dead_lettered_by_reason": by_reason,
        },
        "unseen_categories": _by_label(scrapes, "driftloop_unseen_categories_total", "field"),
        "missing_values": _by_label(scrapes, "driftloop_missing_values_total", "field"),
        "predictions": dict(predictions),
        "models": {
            model: {variant: sorted(versions) for variant, versions in sorted(variants.items())}
            for model, variants in sorted(in_use.items())
        },
        "batches": {"count": _count(batch_count), "mean_size": batch_events / batch_count if batch_count else None},
        "stage_seconds": {stage: stages[stage] for stage in in_pipeline_order},
        "event_latency_seconds": latency or {"count": 0, "p50": None, "p95": None, "p99": None},
        "consumer_lag": {
            "total": _count(sum(lag.values())),
            "by_topic": {topic: _count(n) for (topic,), n in sorted(lag.items())},
        },
        "outcomes": {
            **{result: _count(outcomes.get((result,), 0.0)) for result in OUTCOME_RESULTS},
            **{f"pending_{side}s": _count(pending.get((side,), 0.0)) for side in JOIN_SIDES},
        },
        "feast_rows": _count(sum(_sum(scrapes, "driftloop_feast_rows_total").values())),
        "live_metrics": _live_metrics(scrapes),
        "slo": _slo(scrapes),
    }


def _values(scrapes: list[Scrape], name: str) -> list[float]:
    """A label-less gauge, one value per worker that has it."""
    return [value for samples in scrapes for _labels, value in samples.get(name, ())]


def _slo(scrapes: list[Scrape]) -> dict[str, Any]:
    """The latency objective: its burn (the worst worker's), how each worker steers, and open breakers."""
    objective, burn, share = (
        _values(scrapes, name)
        for name in ("driftloop_slo_objective_seconds", "driftloop_slo_burn_rate", "driftloop_slo_over_share")
    )
    events = _sum(scrapes, "driftloop_slo_events_total", "result")
    worst: dict[str, int] = {}  # a version's breaker on the worker where it is furthest from closed
    for samples in scrapes:
        for labels, state in samples.get("driftloop_breaker_state", ()):
            version = labels["model_version"]
            worst[version] = max(worst.get(version, 0), _count(state))
    breakers = {version: BREAKER_STATES[state] for version, state in worst.items()}
    return {
        "objective_seconds": max(objective, default=None),
        "burn_rate": max(burn, default=None),
        "over_share": max(share, default=None),
        "events_within": _count(events.get(("within",), 0.0)),
        "events_over": _count(events.get(("over",), 0.0)),
        "batch_size": [_count(v) for v in _values(scrapes, "driftloop_batch_size_limit")],
        "fetch_wait_seconds": _values(scrapes, "driftloop_fetch_wait_seconds"),
        "breakers": {version: breakers[version] for version in sorted(breakers, key=_version_order)},
    }


def _by_label(scrapes: list[Scrape], name: str, label: str) -> dict[str, int]:
    return {value: _count(n) for (value,), n in sorted(_sum(scrapes, name, label).items()) if n}


def _live_metrics(scrapes: list[Scrape]) -> dict[str, dict[str, float | int | None]]:
    """Per version: each metric averaged over the workers, weighted by their window's samples."""
    weighted: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0.0, 0.0])  # [sum of value*n, sum of n]
    samples_of = _sum(scrapes, "driftloop_live_samples", "model_version")
    for samples in scrapes:
        window = {labels["model_version"]: n for labels, n in samples.get("driftloop_live_samples", ())}
        for labels, value in samples.get("driftloop_live_metric", ()):
            n = window.get(labels["model_version"], 0.0)
            if math.isnan(value) or n <= 0:  # NaN: undefined on that worker's window (one class)
                continue
            total = weighted[labels["model_version"], labels["metric"]]
            total[0] += value * n
            total[1] += n
    result = {}
    for (version,), n in sorted(samples_of.items(), key=lambda item: _version_order(item[0][0])):
        result[version] = {
            metric: (
                weighted[version, metric][0] / weighted[version, metric][1] if (version, metric) in weighted else None
            )
            for metric in LIVE_METRICS
        }
        result[version]["samples"] = _count(n)
    return result


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.3g} ms"


def render(summary: dict[str, Any]) -> str:
    """The summary as a few readable lines."""
    workers = summary["workers"]
    who = ", ".join(
        f"{info.get('worker_id', '?')} (spec {info.get('spec', '?')}, driftloop {info.get('version', '?')})"
        for info in workers["info"]
    ) or ", ".join(workers["answered"])
    lines = [f"workers     {len(workers['answered'])} answered: {who}"]
    lines += [f"            unreachable: {url}: {reason}" for url, reason in workers["unreachable"].items()]
    events = summary["events"]
    reasons = ", ".join(f"{reason} {n}" for reason, n in events["dead_lettered_by_reason"].items())
    lines.append(
        f"events      in {events['in']}, predicted {events['predicted']}, "
        f"dead-lettered {events['dead_lettered']}" + (f" ({reasons})" if reasons else "")
    )
    for title, key in (("unseen", "unseen_categories"), ("missing", "missing_values")):
        if summary[key]:
            lines.append(f"{title:<12}" + ", ".join(f"{field} {n}" for field, n in summary[key].items()))
    predictions = [
        f"v{version} {variant} {n}"
        for version, variants in summary["predictions"].items()
        for variant, n in variants.items()
    ]
    lines.append("predictions " + (", ".join(predictions) or "none"))
    models = [
        f"{model} {variant} v{'/v'.join(map(str, versions))}"
        for model, variants in summary["models"].items()
        for variant, versions in variants.items()
    ]
    lines.append("models      " + (", ".join(models) or "none reported"))
    batches = summary["batches"]
    if batches["count"]:
        lines.append(f"batches     {batches['count']}, mean size {batches['mean_size']:.1f}")
    stages = [
        f"{stage} {_ms(q['p50'])} / {_ms(q['p99'])}" for stage, q in summary["stage_seconds"].items() if q["count"]
    ]
    if stages:
        lines.append("stages      p50 / p99: " + ", ".join(stages))
    latency = summary["event_latency_seconds"]
    lines.append(
        f"latency     append to prediction: p50 {_ms(latency['p50'])}, p95 {_ms(latency['p95'])}, "
        f"p99 {_ms(latency['p99'])} over {latency['count']} events"
    )
    slo = summary["slo"]
    if slo["objective_seconds"] is not None:
        steering = ", ".join(
            f"batch {size}, fetch wait {_ms(wait)}" for size, wait in zip(slo["batch_size"], slo["fetch_wait_seconds"])
        )
        lines.append(
            f"slo         p99 within {_ms(slo['objective_seconds'])}: burn {slo['burn_rate']:.2f}x "
            f"({slo['over_share']:.2%} of the window's events over); {steering}"
        )
        open_breakers = [f"v{version} {state.replace('_', '-')}" for version, state in slo["breakers"].items()]
        if any(state != "closed" for state in slo["breakers"].values()):
            lines.append("breakers    " + ", ".join(open_breakers) + " (the fallback serves their events)")
    lag = summary["consumer_lag"]
    lines.append(
        f"lag         {lag['total']} records behind"
        + (" (" + ", ".join(f"{topic} {n}" for topic, n in lag["by_topic"].items()) + ")" if lag["by_topic"] else "")
    )
    outcomes = summary["outcomes"]
    lines.append(
        f"outcomes    joined {outcomes['joined']}, expired unmatched {outcomes['expired_unmatched']}, "
        f"invalid {outcomes['invalid']}, duplicate {outcomes['duplicate']}; pending: "
        f"{outcomes['pending_predictions']} predictions, {outcomes['pending_outcomes']} outcomes"
    )
    lines.append(f"feast       {summary['feast_rows']} rows written")
    for version, values in summary["live_metrics"].items():
        shown = ", ".join(
            f"{metric} {'-' if values[metric] is None else format(values[metric], '.3f')}" for metric in LIVE_METRICS
        )
        lines.append(f"{'live v' + version:<12}{shown} (window {values['samples']})")
    supervised = summary.get("supervisor")
    if supervised is not None:
        lines.append(
            "children    "
            + (
                f"not shown: {supervised['url']}: {supervised['unreachable']}"
                if "unreachable" in supervised
                else _children(supervised["children"])
            )
        )
    return "\n".join(lines)


def _children(children: dict[str, dict[str, Any]]) -> str:
    def one(child: str, state: dict[str, Any]) -> str:
        restarts = state["restarts"]
        return f"{child} {'up' if state['up'] else 'down'}" + (
            f" ({restarts} restart{'s' if restarts != 1 else ''})" if restarts else ""
        )

    return ", ".join(one(child, state) for child, state in children.items())
