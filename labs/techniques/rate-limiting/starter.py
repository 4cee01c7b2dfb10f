"""rate-limiting, the starter in Python: it runs, and it fails.

Needs python3-redis and python3-requests (Debian), or `pip install redis
requests`. Copy it, then: infralab run rate-limiting --solution 'python3 my_limiter.py'

Each instance takes tickets (the offered load) until there are none left,
and calls the API for every one of them: no limiter at all, so the burst
goes straight through. Your job is the limiter, shared by every instance.
"""

import os

import redis  # noqa: F401  (you will need it)
import requests


def main():
    tickets = os.environ["TICKETS_URL"]
    instance = os.environ["INFRALAB_INSTANCE"]
    # TODO: connect to REDIS_URL; the limiter's keys go under INFRALAB_NAMESPACE.
    http = requests.Session()
    http.trust_env = False
    while True:
        nxt = http.get(f"{tickets}/next", params={"instance": instance})
        nxt.raise_for_status()
        if nxt.status_code == 204:
            break
        ticket = nxt.text.strip()
        # TODO: admit it only within INFRALAB_PARAM_RATE per second, with
        # bursts of at most INFRALAB_PARAM_CAPACITY, across all instances.
        http.post(
            f"{tickets}/call", params={"ticket": ticket, "instance": instance}
        ).raise_for_status()


if __name__ == "__main__":
    main()
