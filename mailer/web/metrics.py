"""Prometheus metrics, counted in the database at scrape time (prometheus-client text format)."""

from __future__ import annotations

import enum
import hmac
import ipaddress
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from mailer import __version__
from mailer.returns.kinds import ReturnKind
from mailer.rows import RelayHealth
from mailer.states import DeliveryStatus, SubscriptionStatus
from mailer.web.ports import MetricsStore

# The text format every Prometheus version reads; generate_latest writes exactly this.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Seconds from queueing an issue to its last outcome: a few seconds for a small list on a
# local relay, hours for a large one behind a rate limit.
SEND_DURATION_BUCKETS = (1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0,
                         14400.0, 43200.0, 86400.0)
# Outcomes that only ever grow: counters. Pending and sending rows are the queue: a gauge.
FINAL = (DeliveryStatus.SENT, DeliveryStatus.FAILED, DeliveryStatus.UNKNOWN,
         DeliveryStatus.SKIPPED)
QUEUED = (DeliveryStatus.PENDING, DeliveryStatus.SENDING)


class Access(enum.Enum):
    ALLOWED = "allowed"
    UNAUTHORIZED = "unauthorized"  # 401: a token is set and the request lacks it
    FORBIDDEN = "forbidden"  # 403: no token is set and the client is not on loopback


def access(token: str | None, *, authorization: str | None, peer: str | None) -> Access:
    """Who may read the metrics: with a token set, only its bearer (RFC 6750), wherever
    they are; without one, only clients on loopback. The per-state subscriber counts
    change with each sign-up, so a public scrape would tell who is on a list."""
    if token is not None:
        scheme, _, given = (authorization or "").strip().partition(" ")
        # compare_digest: the time taken tells nothing of how much of a guess was right.
        if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(),
                                                              token.encode()):
            return Access.ALLOWED
        return Access.UNAUTHORIZED
    return Access.ALLOWED if is_loopback(peer) else Access.FORBIDDEN


def is_loopback(host: str | None) -> bool:
    """True for 127.0.0.0/8 and ::1 (also IPv4-mapped, ::ffff:127.0.0.1); False for
    anything else, a name or no address at all (a Unix socket may be a proxy's)."""
    try:
        address = ipaddress.ip_address(host or "")
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


@dataclass(frozen=True)
class ScrapeCounts:
    """The numbers of one scrape, read from the database."""

    newsletters: Sequence[str]
    subscriptions: dict[tuple[str, SubscriptionStatus], int]
    deliveries: dict[tuple[str, DeliveryStatus], int]
    send_durations: Sequence[tuple[str, float]]
    possible_duplicates: dict[str, int] = field(default_factory=dict)
    relays: Sequence[RelayHealth] = ()
    returned: dict[tuple[str, str], int] = field(default_factory=dict)


async def snapshot(store: MetricsStore, newsletters: Iterable[str],
                   relays: Sequence[RelayHealth] = ()) -> ScrapeCounts:
    """Read what the metrics report. Every process that shares the database (the daemon,
    `send-now`, a second web process) is counted, which in-process counters could not do."""
    subscriptions = await store.subscription_counts()
    deliveries = await store.delivery_totals()
    durations = await store.send_durations()
    duplicates = await store.possible_duplicate_totals()
    # Configured newsletters report zeros rather than vanish; ones that left the config
    # but still have rows in the database are reported too.
    known = set(newsletters) | {n for n, _ in subscriptions} | {n for n, _ in deliveries}
    return ScrapeCounts(sorted(known), subscriptions, deliveries, durations, duplicates,
                        relays, await store.returned_totals())


class DatabaseCollector:
    """A prometheus-client collector that yields the metric families of one snapshot."""

    def __init__(self, data: ScrapeCounts) -> None:
        self.data = data

    def collect(self) -> Iterator[Metric]:
        """The metric families: subscribers, messages, queue and send durations."""
        d = self.data
        info = GaugeMetricFamily("mailer_info", "mailer version", labels=["version"])
        info.add_metric([__version__], 1)
        yield info

        subscribers = GaugeMetricFamily(
            "mailer_subscribers", "Subscriptions by newsletter and state",
            labels=["newsletter", "state"])
        for newsletter in d.newsletters:
            for state in SubscriptionStatus:
                subscribers.add_metric([newsletter, state.value],
                                       d.subscriptions.get((newsletter, state), 0))
        yield subscribers

        messages = CounterMetricFamily(
            "mailer_messages", "Messages of sent issues by final outcome "
            "(sent, failed, unknown: maybe delivered, skipped: left before their turn)",
            labels=["newsletter", "outcome"])
        queued = GaugeMetricFamily(
            "mailer_messages_queued", "Messages waiting to be sent or being sent",
            labels=["newsletter"])
        for newsletter in d.newsletters:
            for outcome in FINAL:
                messages.add_metric([newsletter, outcome.value],
                                    d.deliveries.get((newsletter, outcome), 0))
            queued.add_metric([newsletter],
                              sum(d.deliveries.get((newsletter, s), 0) for s in QUEUED))
        yield messages
        yield queued

        duplicates = CounterMetricFamily(
            "mailer_messages_possible_duplicates", "Messages resent once because the "
            "connection was cut after the whole message with no reply (maybe had twice)",
            labels=["newsletter"])
        for newsletter in d.newsletters:
            duplicates.add_metric([newsletter], d.possible_duplicates.get(newsletter, 0))
        yield duplicates

        returned = CounterMetricFamily(
            "mailer_returned_messages", "Bounces, complaints and auto-replies that came back "
            "for messages of sent issues, by kind", labels=["newsletter", "kind"])
        for newsletter in d.newsletters:
            for kind in ReturnKind:
                returned.add_metric([newsletter, kind.value],
                                    d.returned.get((newsletter, kind.value), 0))
        yield returned

        if d.relays:  # only a sending process knows its relays (`mailer run`)
            relay_up = GaugeMetricFamily(
                "mailer_relay_up", "1 if the relay answered its last try, 0 if it is down "
                "(this process's view; a relay not tried yet counts as up)", labels=["relay"])
            for relay in d.relays:
                relay_up.add_metric([relay.relay], 0 if relay.up is False else 1)
            yield relay_up

        durations = HistogramMetricFamily(
            "mailer_send_duration_seconds",
            "Time from queueing an issue to the outcome of its last message, finished sends",
            labels=["newsletter"])
        for newsletter in d.newsletters:
            seconds = [s for n, s in d.send_durations if n == newsletter]
            buckets = [(_le(bound), float(sum(1 for s in seconds if s <= bound)))
                       for bound in SEND_DURATION_BUCKETS]
            buckets.append(("+Inf", float(len(seconds))))
            durations.add_metric([newsletter], buckets, sum_value=sum(seconds))
        yield durations


def _le(bound: float) -> str:
    return str(int(bound)) if bound.is_integer() else str(bound)


async def exposition(store: MetricsStore, newsletters: Iterable[str],
                     relays: Sequence[RelayHealth] = ()) -> bytes:
    """The Prometheus text of everything mailer reports, counted now."""
    registry = CollectorRegistry()
    registry.register(DatabaseCollector(await snapshot(store, newsletters, relays)))
    return generate_latest(registry)
