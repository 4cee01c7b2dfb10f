"""event-driven-pipeline, the reference in Python.

Needs confluent-kafka (`pip install confluent-kafka`) and psycopg2
(python3-psycopg2). Run it: infralab run event-driven-pipeline --solution reference-python

At least once plus idempotence: an order's offset is stored only after its
charge is written (enable.auto.offset.store off, then store_offsets; the
client's auto-commit commits what was stored), and the order id is unique
in the table, so a second delivery after a kill charges nothing.
"""

import json
import os
import time

import psycopg2
from confluent_kafka import Consumer


def main():
    table = os.environ["CHARGES_TABLE"]
    instance = int(os.environ["INFRALAB_INSTANCE"])
    work = int(os.environ["INFRALAB_PARAM_WORK_MS"]) / 1000
    db = psycopg2.connect(os.environ["DATABASE_URL"])
    db.autocommit = True
    with db.cursor() as cur:
        cur.execute(f"CREATE UNIQUE INDEX IF NOT EXISTS {table}_order ON {table} (order_id)")
    consumer = Consumer({
        "bootstrap.servers": os.environ["KAFKA_BOOTSTRAP_SERVERS"],
        "group.id": os.environ["KAFKA_GROUP"],
        "auto.offset.reset": "earliest",
        "session.timeout.ms": int(os.environ["INFRALAB_PARAM_SESSION_TIMEOUT_MS"]),
        "heartbeat.interval.ms": 500,
        "fetch.wait.max.ms": 10,
        "enable.auto.offset.store": False,
    })
    consumer.subscribe([os.environ["ORDERS_TOPIC"]])
    with db.cursor() as cur:
        while True:
            message = consumer.poll(1.0)
            if message is None or message.error():
                continue
            order = json.loads(message.value())
            time.sleep(work)  # the payment provider
            cur.execute(
                f"INSERT INTO {table} (order_id, customer, amount, instance) VALUES (%s, %s, %s, %s)"
                " ON CONFLICT (order_id) DO NOTHING",
                (order["order"], order["customer"], order["amount"], instance),
            )
            consumer.store_offsets(message)


if __name__ == "__main__":
    main()
