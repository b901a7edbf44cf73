"""A Quix Streams stateful job: the reference `driftloop bench --quix-python PYTHON` measures beside the data plane.

Per key (the event's user), a running count, sum and max of `amount` in Quix's RocksDB state (with its
changelog topic), added to the event, which goes to the output topic as JSON, stamped with the time it
was produced: the least a stateful stream processor does, written as Quix's documentation writes it.
The bench runs this file with an interpreter that has `quixstreams` installed (`make quix`: its pins
conflict with driftloop's, so it lives in a virtualenv of its own); it imports nothing from driftloop.

    python quix_stateful.py --bootstrap HOST:PORT --input IN --output OUT --group G --state-dir DIR
"""

import argparse
import time

from quixstreams import Application, State


def running_totals(event: dict, state: State) -> dict:
    amount = float(event.get("amount") or 0.0)
    totals = state.get("totals", {"count": 0, "sum": 0.0, "max": amount})
    totals["count"] += 1
    totals["sum"] += amount
    totals["max"] = max(totals["max"], amount)
    state.set("totals", totals)
    event.update(user_count=totals["count"], user_sum=totals["sum"], user_max=totals["max"])
    return event


def produced_now(_value: dict, _key: object, _timestamp: int, _headers: object) -> int:
    return int(time.time() * 1000)


def main() -> None:
    parser = argparse.ArgumentParser()
    for name in ("--bootstrap", "--input", "--output", "--group", "--state-dir"):
        parser.add_argument(name, required=True)
    args = parser.parse_args()
    app = Application(
        broker_address=args.bootstrap,
        consumer_group=args.group,
        auto_offset_reset="earliest",
        state_dir=args.state_dir,
        processing_guarantee="at-least-once",
    )
    events = app.dataframe(app.topic(args.input, value_deserializer="json")).apply(running_totals, stateful=True)
    # Quix keeps the input's timestamp on an output; the bench times an output by when it was produced.
    events = events.set_timestamp(produced_now)
    events.to_topic(app.topic(args.output, value_serializer="json"))
    app.run()  # until SIGTERM, which Quix handles by committing and closing


if __name__ == "__main__":
    main()
