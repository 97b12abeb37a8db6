"""JetStream through nats-py on an application host that reaches the brokers over the
mesh only (a client member).

Run by tests/mesh.rs inside the app host's namespace with the client member's brokers
file: reads the URLs from it (one comma-separated line of nats://[mesh address]:port),
connects with them as its server list, publishes ten messages to the R3 stream APP
(each acked), and consumes them through a durable pull consumer.
"""
import asyncio
import sys

import nats


async def main(brokers_file: str) -> None:
    with open(brokers_file) as f:
        servers = f.read().strip().split(",")
    assert len(servers) >= 3 and all(s.startswith("nats://[fd") for s in servers), servers
    nc = await nats.connect(servers=servers, connect_timeout=3)
    js = nc.jetstream()
    for i in range(10):
        ack = await js.publish("app.py", f"py-{i}".encode())
        assert ack.stream == "APP", ack
    sub = await js.pull_subscribe("app.py", durable="py")
    got = []
    while len(got) < 10:
        for m in await sub.fetch(10 - len(got), timeout=10):
            got.append(m.data.decode())
            await m.ack()
    assert got == [f"py-{i}" for i in range(10)], got
    await nc.close()
    print("all checks passed")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
