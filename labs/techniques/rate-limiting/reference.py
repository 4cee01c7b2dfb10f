"""rate-limiting, the reference in Python.

Needs python3-redis and python3-requests (Debian), or `pip install redis
requests`. Run it: infralab run rate-limiting --solution reference-python

A token bucket kept in Redis, shared by every instance: one Lua script
refills it for the time passed on Redis's own clock, spends a token or
refuses, atomically. Only admitted tickets reach the API.
"""

import os

import redis
import requests

TOKEN_BUCKET = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local cap = tonumber(ARGV[1])
local b = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(b[1]) or cap
local ts = tonumber(b[2]) or now
tokens = math.min(cap, tokens + math.max(0, now - ts) * tonumber(ARGV[2]))
local ok = 0
if tokens >= 1 then
  tokens = tokens - 1
  ok = 1
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
redis.call('PEXPIRE', KEYS[1], 60000)
return ok
"""


def main():
    tickets = os.environ["TICKETS_URL"]
    instance = os.environ["INFRALAB_INSTANCE"]
    rate = float(os.environ["INFRALAB_PARAM_RATE"])
    capacity = float(os.environ["INFRALAB_PARAM_CAPACITY"])
    bucket = redis.Redis.from_url(os.environ["REDIS_URL"]).register_script(TOKEN_BUCKET)
    key = os.environ["INFRALAB_NAMESPACE"] + ":bucket"
    http = requests.Session()
    http.trust_env = False
    while True:
        nxt = http.get(f"{tickets}/next", params={"instance": instance})
        nxt.raise_for_status()
        if nxt.status_code == 204:
            break
        ticket = nxt.text.strip()
        if bucket(keys=[key], args=[capacity, rate / 1000]) == 1:
            http.post(
                f"{tickets}/call", params={"ticket": ticket, "instance": instance}
            ).raise_for_status()


if __name__ == "__main__":
    main()
