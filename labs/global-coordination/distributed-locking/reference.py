"""distributed-locking, the reference solution in Python.

Needs python3-redis and python3-requests (Debian), or `pip install redis
requests`. Run it: infralab run distributed-locking --solution reference-python

Each instance adds 1 to the ledger's value INFRALAB_PARAM_INCREMENTS times,
by read-modify-write, under a lock kept on Redis:

- grant: one Lua script does SET lock owner NX PX ttl and, only when that
  succeeds, INCR of a fence counter, so tokens grow in grant order;
- every ledger access carries the token; a refusal (409) means a newer
  holder has been there: give the increment up and do it again;
- release: a script deletes the lock only while it is still ours.
"""

import os
import sys
import time

import redis
import requests

GRANT = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return redis.call('INCR', KEYS[2])
end
return 0"""

RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0"""


def param(name):
    return int(os.environ["INFRALAB_PARAM_" + name])


def increment(http, url, hold):
    """Read, work, write value + 1. False when the ledger refused the token."""
    read = http.get(url)
    if read.status_code == 409:
        return False
    read.raise_for_status()
    value = int(read.text)
    time.sleep(hold)
    write = http.put(url, data=str(value + 1))
    if write.status_code == 409:
        return False
    write.raise_for_status()
    return True


def main():
    r = redis.Redis.from_url(os.environ["REDIS_URL"])
    ledger = os.environ["LEDGER_URL"]
    instance = os.environ["INFRALAB_INSTANCE"]
    ns = os.environ["INFRALAB_NAMESPACE"]
    lock, fence = ns + ":lock", ns + ":fence"
    ttl_ms = param("TTL_MS")
    hold, retry = param("HOLD_MS") / 1000, param("RETRY_MS") / 1000
    grant, release = r.register_script(GRANT), r.register_script(RELEASE)
    http = requests.Session()
    http.trust_env = False  # no proxy between us and the ledger

    done = attempt = 0
    while done < param("INCREMENTS"):
        attempt += 1
        owner = f"{instance}-{attempt}"
        token = grant(keys=[lock, fence], args=[owner, ttl_ms])
        while token == 0:
            time.sleep(retry)
            token = grant(keys=[lock, fence], args=[owner, ttl_ms])
        url = f"{ledger}?instance={instance}&token={token}"
        ok = increment(http, url, hold)
        release(keys=[lock], args=[owner])
        if ok:
            done += 1
        else:
            print(f"token {token} was refused; doing it again", file=sys.stderr)
    print(f"instance {instance}: {done} increments")


if __name__ == "__main__":
    main()
