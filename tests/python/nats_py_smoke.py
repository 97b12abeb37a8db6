"""The core protocol through the official Python client (nats-py).

Run by tests/python_client.rs against a running meshbroker: pub/sub with wildcards,
queue groups, request/reply, headers with repeated keys, no-responders, and a drain.
Exits non-zero with a message on the first thing that is not as nats-py expects.
"""
import asyncio
import sys

import nats
from nats.errors import NoRespondersError


async def main(url: str) -> None:
    # The handshake, many times: nats-py takes the first line after CONNECT+PING as
    # the PONG, so any ordering slip shows up here.
    for _ in range(20):
        probe = await nats.connect(url, connect_timeout=5, allow_reconnect=False)
        assert probe.is_connected, "handshake did not complete"
        await probe.close()

    nc = await nats.connect(url, connect_timeout=5, allow_reconnect=False)
    assert nc.is_connected
    assert nc.max_payload == 1024 * 1024, nc.max_payload

    got = []
    sub = await nc.subscribe("py.*.x")
    await nc.publish("py.a.x", b"one")
    await nc.publish("py.b.y", b"skip")
    await nc.flush()
    msg = await sub.next_msg(timeout=5)
    got.append(msg.data)
    assert got == [b"one"], got

    # Queue group: each message to exactly one member.
    counts = [0, 0]

    def make(i):
        async def cb(m):
            counts[i] += 1
        return cb

    q1 = await nc.subscribe("py.q", queue="workers", cb=make(0))
    q2 = await nc.subscribe("py.q", queue="workers", cb=make(1))
    await nc.flush()
    for _ in range(100):
        await nc.publish("py.q", b"job")
    await nc.flush()
    for _ in range(50):
        if sum(counts) == 100:
            break
        await asyncio.sleep(0.05)
    assert sum(counts) == 100, counts

    # Request/reply.
    async def echo(m):
        await m.respond(b"re:" + m.data)

    await nc.subscribe("py.echo", cb=echo)
    await nc.flush()
    reply = await nc.request("py.echo", b"hi", timeout=5)
    assert reply.data == b"re:hi", reply.data

    # Headers, including a repeated key.
    hsub = await nc.subscribe("py.h")
    await nc.publish("py.h", b"body", headers={"X-One": "1", "X-Two": "2"})
    m = await hsub.next_msg(timeout=5)
    assert m.headers == {"X-One": "1", "X-Two": "2"}, m.headers
    assert m.data == b"body"

    # No responders.
    try:
        await nc.request("py.nobody", b"?", timeout=5)
    except NoRespondersError:
        pass
    else:
        raise AssertionError("expected NoRespondersError")

    await q1.unsubscribe()
    await q2.unsubscribe()
    await nc.drain()
    print("nats-py: all checks passed")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
