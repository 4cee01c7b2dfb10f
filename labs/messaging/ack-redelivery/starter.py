"""ack-redelivery, the starter in Python: it runs, and it fails.

Needs python3-pika and python3-requests (Debian), or `pip install pika
requests`. Copy it, then: infralab run ack-redelivery --solution 'python3 my_consumer.py'

Each instance consumes the queue with auto-ack: the broker counts a message
as done the moment it sends it, and pushes as many as the connection takes
(prefetch does not apply). When an instance dies, every message it had
received but not finished is gone. Your job: nothing lost, whoever is killed.
"""

import os
import sys
import time

import pika
import requests


def main():
    instance = os.environ["INFRALAB_INSTANCE"]
    report = f"{os.environ['SINK_URL']}?instance={instance}"
    work = int(os.environ["INFRALAB_PARAM_WORK_MS"]) / 1000
    http = requests.Session()
    http.trust_env = False
    conn = pika.BlockingConnection(pika.URLParameters(os.environ["AMQP_URL"]))
    ch = conn.channel()
    # TODO: a prefetch window of INFRALAB_PARAM_PREFETCH (basic_qos).
    # TODO: acknowledge yourself (auto_ack=False), once the work is done.
    for _method, _properties, body in ch.consume(os.environ["QUEUE"], auto_ack=True):
        message = body.decode().strip()
        time.sleep(work)  # the work
        if not http.post(report, data=message, timeout=5).ok:
            # TODO: the sink refused it: the work is not done.
            print(f"the sink refused {message}", file=sys.stderr, flush=True)
        # TODO: ack here, and only here.
    sys.exit("the broker ended the consumer")


if __name__ == "__main__":
    main()
