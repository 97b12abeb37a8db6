"""JetStream through the official Python client (nats-py), as its users call it.

Usage: python3 nats_py_jetstream.py nats://127.0.0.1:PORT[,nats://…] [REPLICAS]
With several URLs (one per node of a cluster) the client writes through the first
and checks what it wrote from a client of the last; REPLICAS (default 1) is every
stream's, bucket's and object store's replica count.
Prints "all checks passed" and exits 0, or fails with the first broken check.
"""

import asyncio
import sys

import nats
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import BadRequestError, KeyNotFoundError, NotFoundError

TIMEOUT = 5
REPLICAS = 1


def check(cond, what):
    if not cond:
        raise AssertionError(what)


async def streams_and_acks(js):
    info = await js.add_stream(name="PY", subjects=["py.>"], num_replicas=REPLICAS)
    check(info.config.name == "PY", "stream created")
    check(info.config.storage == StorageType.FILE, "file storage by default")
    for i in range(10):
        ack = await js.publish(f"py.{i % 2}", f"m{i}".encode(), timeout=TIMEOUT)
        check(ack.stream == "PY" and ack.seq == i + 1, f"ack {i}: {ack}")
    dup = await js.publish("py.0", b"again", headers={"Nats-Msg-Id": "one"})
    again = await js.publish("py.0", b"again", headers={"Nats-Msg-Id": "one"})
    check(again.duplicate and again.seq == dup.seq, f"dedupe: {again}")
    info = await js.stream_info("PY")
    check(info.state.messages == 11, f"11 messages: {info.state}")
    check(info.state.first_seq == 1 and info.state.last_seq == 11, "sequences")
    names = await js.streams_info()
    check([s.config.name for s in names] == ["PY"], "stream list")
    msg = await js.get_msg("PY", 3)
    check(msg.data == b"m2" and msg.subject == "py.0", f"get_msg: {msg}")
    last = await js.get_last_msg("PY", "py.1")
    check(last.seq == 10 and last.data == b"m9", f"last by subject: {last}")
    try:
        await js.add_stream(name="PY2", subjects=["py.1"], num_replicas=REPLICAS)
        check(False, "overlapping subjects accepted")
    except BadRequestError as e:
        check(e.err_code == 10065, f"overlap error code: {e}")
    try:
        await js.stream_info("NOPE")
        check(False, "missing stream found")
    except NotFoundError as e:
        check(e.err_code == 10059, f"not found code: {e}")
    await js.purge_stream("PY", subject="py.1")
    info = await js.stream_info("PY")
    check(info.state.messages == 6, f"purged by subject: {info.state}")
    if REPLICAS > 1:
        cluster = info.cluster
        check(cluster is not None and cluster.leader, f"a leader: {cluster}")
        check(len(cluster.replicas) == REPLICAS - 1, f"replicas: {cluster.replicas}")


async def pull_consumer(js):
    await js.add_stream(name="WORK", subjects=["work.>"], num_replicas=REPLICAS)
    for i in range(20):
        await js.publish("work.job", f"job{i}".encode())
    sub = await js.pull_subscribe("work.job", durable="workers", stream="WORK")
    got = []
    while len(got) < 20:
        msgs = await sub.fetch(7, timeout=TIMEOUT)
        for m in msgs:
            got.append(m.data.decode())
            await m.ack()
    check(got == [f"job{i}" for i in range(20)], f"fetched in order: {got[:5]}")
    # Acks are applied: nothing pending, ack floor at the end.
    for _ in range(50):
        ci = await js.consumer_info("WORK", "workers")
        if ci.num_ack_pending == 0:
            break
        await asyncio.sleep(0.05)
    check(ci.num_ack_pending == 0 and ci.num_pending == 0, f"consumer drained: {ci}")
    check(ci.ack_floor.stream_seq == 20, f"ack floor: {ci.ack_floor}")
    # Nothing left: a fetch times out instead of returning messages.
    try:
        await sub.fetch(1, timeout=0.5)
        check(False, "fetch returned a message from an empty consumer")
    except nats.errors.TimeoutError:
        pass
    # A NAK redelivers, with a higher delivery count.
    await js.publish("work.job", b"retry-me")
    first = (await sub.fetch(1, timeout=TIMEOUT))[0]
    await first.nak()
    second = (await sub.fetch(1, timeout=TIMEOUT))[0]
    check(second.data == b"retry-me", "nak redelivered")
    check(second.metadata.num_delivered == 2, f"delivery count {second.metadata}")
    await second.ack_sync(timeout=TIMEOUT)


async def push_consumer(js):
    await js.add_stream(name="EVENTS", subjects=["events.*"], num_replicas=REPLICAS)
    for i in range(5):
        await js.publish("events.a", f"e{i}".encode())
    received = []
    done = asyncio.get_running_loop().create_future()

    async def handler(msg):
        received.append(msg.data)
        await msg.ack()
        if len(received) == 8 and not done.done():
            done.set_result(True)

    sub = await js.subscribe(
        "events.*",
        stream="EVENTS",
        cb=handler,
        config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, deliver_policy=DeliverPolicy.ALL),
    )
    for i in range(5, 8):
        await js.publish("events.a", f"e{i}".encode())
    await asyncio.wait_for(done, TIMEOUT)
    check(received == [f"e{i}".encode() for i in range(8)], f"push order: {received}")
    await sub.unsubscribe()


async def key_value(js):
    kv = await js.create_key_value(bucket="config", history=3, replicas=REPLICAS)
    rev1 = await kv.put("color", b"red")
    rev2 = await kv.put("color", b"blue")
    check(rev2 == rev1 + 1, "revisions increase")
    entry = await kv.get("color")
    check(entry.value == b"blue" and entry.revision == rev2, f"get latest: {entry}")
    await kv.put("size", b"L")
    keys = sorted(await kv.keys())
    check(keys == ["color", "size"], f"keys: {keys}")
    hist = await kv.history("color")
    check([e.value for e in hist] == [b"red", b"blue"], "history")
    await kv.delete("size")
    try:
        await kv.get("size")
        check(False, "deleted key still readable")
    except KeyNotFoundError:
        pass
    updated = await kv.update("color", b"green", last=rev2)
    # Revisions are stream sequences: the put of "size" and its delete came between.
    check(updated == rev2 + 3, f"update with the right revision: {updated}")
    check((await kv.get("color")).value == b"green", "updated value")
    try:
        await kv.update("color", b"x", last=rev1)
        check(False, "update with a stale revision accepted")
    except Exception:  # nats-py raises KeyWrongLastSequenceError (a BadRequestError)
        pass
    status = await kv.status()
    check(status.bucket == "config" and status.history == 3, f"status: {status}")


async def object_store(js):
    obs = await js.create_object_store(bucket="files", replicas=REPLICAS)
    data = bytes(range(256)) * 1000  # 256,000 bytes: several chunks
    info = await obs.put("blob.bin", data)
    check(info.size == len(data), f"object size: {info}")
    back = await obs.get("blob.bin")
    check(back.data == data, "object round trip")
    listed = await obs.list()
    check([o.name for o in listed] == ["blob.bin"], "object list")
    await obs.delete("blob.bin")
    try:
        await obs.get("blob.bin")
        check(False, "deleted object still readable")
    except Exception:
        pass


async def main(urls):
    nc = await nats.connect(urls[0], connect_timeout=TIMEOUT)
    js = nc.jetstream(timeout=TIMEOUT)
    account = await js.account_info()
    check(account.streams == 0, "empty account")
    await streams_and_acks(js)
    if len(urls) > 1:
        # Another node's client sees the same stream.
        other = await nats.connect(urls[-1], connect_timeout=TIMEOUT)
        info = await other.jetstream(timeout=TIMEOUT).stream_info("PY")
        check(info.state.messages == 6, f"PY from {urls[-1]}: {info.state}")
        await other.close()
    await pull_consumer(js)
    await push_consumer(js)
    await key_value(js)
    await object_store(js)
    account = await js.account_info()
    check(account.streams == 5, f"five streams: {account.streams}")
    await nc.close()
    print("all checks passed")


if __name__ == "__main__":
    if len(sys.argv) > 2:
        REPLICAS = int(sys.argv[2])
    asyncio.run(main(sys.argv[1].split(",")))
