"""nats-py logs in from a .creds file (user_credentials=) in operator mode, publishes
and subscribes inside its permissions, is refused outside them, and uses JetStream in
its account. Args: URL CREDS. Prints "all checks passed"."""
import asyncio
import sys

import nats
from nats.errors import NoRespondersError


async def main(url, creds):
    errors = []

    async def on_error(e):
        errors.append(str(e))

    nc = await nats.connect(url, user_credentials=creds, error_cb=on_error,
                            allow_reconnect=False)
    got = []
    sub = await nc.subscribe("chat.>")
    await nc.publish("chat.room", b"hello")
    await nc.flush()
    msg = await sub.next_msg(timeout=5)
    assert msg.data == b"hello", msg
    got.append(msg.subject)

    # Outside its publish permissions: the server says so, the connection stays.
    await nc.publish("secret.plans", b"x")
    await nc.flush()
    for _ in range(50):
        if errors:
            break
        await asyncio.sleep(0.05)
    assert any("permissions violation" in e.lower() for e in errors), errors
    assert nc.is_connected

    js = nc.jetstream()
    await js.add_stream(name="CHAT", subjects=["chat.>"])
    ack = await js.publish("chat.saved", b"kept")
    assert ack.stream == "CHAT" and ack.seq == 1, ack
    info = await js.stream_info("CHAT")
    assert info.state.messages == 1, info.state
    await nc.close()
    print("all checks passed", got)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
