"""distributed-locking, the starter in Python: it runs, and it fails.

Needs python3-redis and python3-requests (Debian), or `pip install redis
requests`. Copy it, then: infralab run distributed-locking --solution 'python3 my_lock.py'

Each instance adds 1 to the ledger's value INFRALAB_PARAM_INCREMENTS times by
read-modify-write, with no lock at all: instances read the same value and
overwrite each other's increments. Your job is the lock.
"""

import os
import time

import redis  # noqa: F401  (you will need it)
import requests


def main():
    ledger = os.environ["LEDGER_URL"]
    instance = os.environ["INFRALAB_INSTANCE"]
    increments = int(os.environ["INFRALAB_PARAM_INCREMENTS"])
    hold = int(os.environ["INFRALAB_PARAM_HOLD_MS"]) / 1000
    # TODO: connect to REDIS_URL; the lock's keys go under INFRALAB_NAMESPACE.
    http = requests.Session()
    http.trust_env = False
    for _ in range(increments):
        # TODO: take the lock (leased for INFRALAB_PARAM_TTL_MS, retried every
        # INFRALAB_PARAM_RETRY_MS) and get a fence token with it.
        url = f"{ledger}?instance={instance}"  # TODO: &token=T
        value = int(http.get(url).text)
        time.sleep(hold)
        http.put(url, data=str(value + 1)).raise_for_status()
        # TODO: a 409 means your token is too old: release and retry.
        # TODO: release the lock, but only if it is still yours.


if __name__ == "__main__":
    main()
