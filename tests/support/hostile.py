"""Shared test helpers: hostile."""

from __future__ import annotations

import json
import random

from driftloop.settings import DEMO_SPEC
from driftloop.spec import load_spec


def encode(doc) -> bytes:
    return json.dumps(doc).encode()


NOW = 1795435200.0  # 2026-11-23T12:00:00Z, the validator's clock in these tests


SPEC = load_spec(DEMO_SPEC)


CATEGORIES = {name: set(f.values) for name, f in SPEC.events.fields.items() if f.type == "category"}


HOSTILE_VALUES = [
    "",
    "x",
    "31.5",
    "true",
    0,
    -1,
    1.5,
    10**30,
    -(10**30),
    True,
    False,
    None,
    [],
    {},
    [1],
    {"a": 1},
    "\u0000",
    "\U0001f4a9" * 10,
    "NaN",
]


NON_FINITE = [b"NaN", b"Infinity", b"-Infinity", b"1e999", b"-1e999"]


FAR_TIMES = [
    NOW + 10 * 365 * 86400,
    "9999-12-31T23:59:59Z",
    "2100-01-01",
    1e11,
    NOW * 1000,
    10**20,
    NOW + 3600.5,
    -1,
    -1e9,
    "1900-01-01T00:00:00Z",
    "0001-01-01T00:00:00+05:00",
    "1969-12-31",
    "",
    "now",
    "2026-11-23T25:00:00Z",
    0,
    0.0,
]


def valid_event_doc(rng: random.Random, i: int) -> dict:
    return {
        "event_id": f"e-{i}" if rng.random() < 0.8 else i,
        "user_id": f"u-{rng.randrange(50)}" if rng.random() < 0.8 else rng.randrange(50),
        "event_time": rng.choice([NOW - rng.uniform(0, 86400), "2026-11-23T11:00:00Z", "2026-11-23T12:30:00+01:00"]),
        "amount": round(rng.uniform(0, 5000), 2),
        "merchant_category": rng.choice(sorted(CATEGORIES["merchant_category"]) + ["crypto"]),
        "country": rng.choice(["US", "NL", "GB", "XX"]),
        "channel": rng.choice(["pos", "web", "app"]),
        "card_present": rng.random() < 0.5,
        "account_age_days": rng.choice([rng.randrange(3000), None]),
    }


def hostile_record(rng: random.Random, i: int, earlier: list[bytes]) -> bytes | None:
    doc = valid_event_doc(rng, i)
    raw = encode(doc)
    kind = rng.randrange(16)
    if kind == 0:
        return rng.randbytes(rng.randrange(0, 300))
    if kind == 1:
        return raw[: rng.randrange(len(raw))]
    if kind == 2:
        doc[rng.choice(sorted(doc))] = rng.choice(HOSTILE_VALUES)
        return encode(doc)
    if kind == 3 and rng.random() < 0.05:  # rare: each is a megabyte
        doc[rng.choice(["user_id", "merchant_category", "padding"])] = "A" * 1_000_000
        return encode(doc)
    if kind == 4:
        return rng.choice(
            [b"[" * 100_000, b"[" * rng.randrange(1000, 60_000), b'{"amount":' + b"{" * rng.randrange(1, 30_000)]
        )
    if kind == 5:
        for key in rng.sample(sorted(doc), rng.randrange(1, 4)):
            del doc[key]
        return encode(doc)
    if kind == 6:
        field = rng.choice(["amount", "account_age_days", "event_time", "padding"])
        doc[field] = "@@"
        return encode(doc).replace(b'"@@"', rng.choice(NON_FINITE))
    if kind == 7:
        doc["event_time"] = rng.choice(FAR_TIMES)
        return encode(doc)
    if kind == 8 and earlier:
        return rng.choice(earlier)  # a redelivery: same bytes, same id
    if kind == 9:
        doc["user_id"] = rng.choice(["", "\U0001f600" * 5, "u-" + rng.randbytes(8).hex(), -5, 2**63, "a" * 65])
        return encode(doc)
    if kind == 10:
        return None
    if kind == 11:
        flipped = bytearray(raw)
        for _ in range(rng.randrange(1, 4)):
            flipped[rng.randrange(len(flipped))] = rng.randrange(256)
        return bytes(flipped)
    if kind == 12:
        return rng.choice(
            [
                b"[]",
                b"1",
                b'"s"',
                b"true",
                b"null",
                b" ",
                b"{}",
                b'{"event_id":null}',
                json.dumps(rng.choice(HOSTILE_VALUES)).encode(),
            ]
        )
    if kind == 13:
        doc[rng.choice(["amount", "account_age_days"])] = rng.choice([-0.001, 1e6 + 1, 36501, -1, 10**400])
        return encode(doc)
    return raw  # kinds 14-15 (and a skipped 3 or 8): valid, for duplicates and the Event checks
