"""event-driven-pipeline, the starter in Python: it runs, and it fails.

Needs confluent-kafka (`pip install confluent-kafka`; Debian's
python3-confluent-kafka is too old for this broker) and psycopg2
(python3-psycopg2, or `pip install psycopg2-binary`). Copy it, then:
infralab run event-driven-pipeline --solution 'python3 my_consumer.py'

A consumer with the client's defaults (offsets committed on a timer) that
inserts a charge for every message it gets. Killed and started again, it
gets again what it had charged since the last commit, and charges it twice.
Your job: stay exact.
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
    consumer = Consumer({
        "bootstrap.servers": os.environ["KAFKA_BOOTSTRAP_SERVERS"],
        "group.id": os.environ["KAFKA_GROUP"],
        "auto.offset.reset": "earliest",
        "session.timeout.ms": int(os.environ["INFRALAB_PARAM_SESSION_TIMEOUT_MS"]),
        "fetch.wait.max.ms": 10,
    })
    consumer.subscribe([os.environ["ORDERS_TOPIC"]])
    with db.cursor() as cur:
        while True:
            message = consumer.poll(1.0)
            if message is None or message.error():
                continue
            order = json.loads(message.value())
            time.sleep(work)  # the payment provider
            # TODO: a second delivery of an order must not charge it again.
            cur.execute(
                f"INSERT INTO {table} (order_id, customer, amount, instance) VALUES (%s, %s, %s, %s)",
                (order["order"], order["customer"], order["amount"], instance),
            )
            # TODO: when is this order's offset committed: before or after its charge?


if __name__ == "__main__":
    main()
