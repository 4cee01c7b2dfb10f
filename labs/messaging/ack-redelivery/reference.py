"""ack-redelivery, the reference solution in Python.

Needs python3-pika and python3-requests (Debian), or `pip install pika
requests`. Run it: infralab run ack-redelivery --solution reference-python

A work-queue consumer that loses nothing when it is killed mid-work:

- manual acknowledgements, and the ack only once the work is done and the
  sink has accepted the report: a message this instance dies with is still
  unacknowledged, so the broker gives it to another consumer;
- a bounded prefetch window (basic.qos), so a dying instance holds a few
  messages, not the whole queue;
- a refused report (503) is not done: basic.nack with requeue puts the
  message back for another try.

At-least-once: killed after its report and before its ack, a message is
done twice. Duplicates are allowed, losses are not.
"""

import os
import sys
import time

import pika
import requests


def main():
    instance = os.environ["INFRALAB_INSTANCE"]
    queue = os.environ["QUEUE"]
    report = f"{os.environ['SINK_URL']}?instance={instance}"
    prefetch = max(1, int(os.environ["INFRALAB_PARAM_PREFETCH"]))
    work = int(os.environ["INFRALAB_PARAM_WORK_MS"]) / 1000
    http = requests.Session()
    http.trust_env = False
    conn = pika.BlockingConnection(pika.URLParameters(os.environ["AMQP_URL"]))
    ch = conn.channel()
    ch.basic_qos(prefetch_count=prefetch)
    print(f"instance {instance}: consuming {queue}", flush=True)
    for method, _properties, body in ch.consume(queue):
        message = body.decode().strip()
        time.sleep(work)
        try:
            accepted = http.post(report, data=message, timeout=5).ok
        except requests.RequestException as e:
            print(f"reporting {message}: {e}", file=sys.stderr, flush=True)
            accepted = False
        if accepted:
            ch.basic_ack(method.delivery_tag)
        else:
            print(f"the sink refused {message}; back to the queue", file=sys.stderr, flush=True)
            ch.basic_nack(method.delivery_tag, requeue=True)
    sys.exit("the broker ended the consumer")


if __name__ == "__main__":
    main()
