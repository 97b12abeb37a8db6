//! Acknowledged means durable: the node is killed with SIGKILL while publishers wait for
//! acks, restarted on the same store, and every acknowledged message must be there,
//! once, with sequences continuing after the last one. Both kinds of ack are tested:
//! after the fsynced redb commit (the default) and after the journal write
//! (`ack = "write"`, where a restart commits what the journal holds past redb).

mod common;

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use futures::stream::FuturesUnordered;
use futures::StreamExt;

use common::{free_port, meshbroker_binary, wait_for_port, Child, TempDir};

/// Starts the node on `dir`'s store; its log goes to `dir/<log>`.
fn run_node(dir: &TempDir, port: u16, ack: &str, log: &str) -> Child {
    let conf = dir.0.join("node.toml");
    std::fs::write(
        &conf,
        format!(
            "listen = \"127.0.0.1:{port}\"\nlog_level = \"info\"\n[jetstream]\nstore_dir = \"{}\"\nack = \"{ack}\"\n",
            dir.0.join("js").display()
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.0.join(log)).unwrap();
    let child = Command::new(meshbroker_binary())
        .args(["--conf", conf.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    assert!(wait_for_port(addr, Duration::from_secs(20)), "node listens");
    Child(child)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acked_messages_survive_kill_9() {
    kill_9_under_load("fsync").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acked_messages_survive_kill_9_with_write_acks() {
    kill_9_under_load("write").await;
}

async fn kill_9_under_load(ack: &str) {
    let dir = TempDir::new("js-crash");
    let port = free_port();
    let mut node = run_node(&dir, port, ack, "before.log");
    let url = format!("nats://127.0.0.1:{port}");
    let client = async_nats::connect(&url).await.unwrap();
    let js = jetstream::new(client.clone());
    js.create_stream(stream::Config {
        name: "CRASH".into(),
        subjects: vec!["crash.>".into()],
        ..Default::default()
    })
    .await
    .unwrap();

    // Publishers keep a window of acks outstanding; every ack is recorded.
    let acked: Arc<Mutex<BTreeMap<u64, u64>>> = Arc::default();
    let mut tasks = Vec::new();
    for p in 0..2u64 {
        let js = js.clone();
        let acked = acked.clone();
        tasks.push(tokio::spawn(async move {
            let mut inflight = FuturesUnordered::new();
            let mut i = 0u64;
            loop {
                while inflight.len() < 128 {
                    let id = p * 1_000_000_000 + i;
                    i += 1;
                    let Ok(fut) = js.publish("crash.data", id.to_string().into()).await else {
                        return;
                    };
                    inflight.push(async move { (id, fut.await) });
                }
                match inflight.next().await {
                    Some((id, Ok(ack))) => {
                        acked.lock().unwrap().insert(ack.sequence, id);
                    }
                    Some((_, Err(_))) | None => return,
                }
            }
        }));
    }
    // A durable consumer works through the stream meanwhile, one confirmed ack
    // (double ack) at a time, in order: its ack floor is the last one confirmed.
    let acked_floor = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let worker: consumer::PullConsumer = js
        .get_stream("CRASH")
        .await
        .unwrap()
        .create_consumer(consumer::pull::Config {
            durable_name: Some("WORKER".into()),
            ack_policy: consumer::AckPolicy::Explicit,
            ..Default::default()
        })
        .await
        .unwrap();
    let floor = acked_floor.clone();
    tasks.push(tokio::spawn(async move {
        loop {
            let Ok(mut batch) = worker.fetch().max_messages(100).messages().await else {
                return;
            };
            while let Some(Ok(m)) = batch.next().await {
                let Ok(info) = m.info().map(|i| i.stream_sequence) else {
                    return;
                };
                if m.double_ack().await.is_err() {
                    return;
                }
                floor.store(info, std::sync::atomic::Ordering::SeqCst);
            }
        }
    }));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    node.0.kill().unwrap();
    let _ = node.0.wait();
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(15), t).await;
    }
    drop(client);
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() > 100,
        "publishers got acks before the kill: {}",
        acked.len()
    );

    let _node = run_node(&dir, port, ack, "after.log");
    let client = async_nats::connect(&url).await.unwrap();
    let js = jetstream::new(client);
    let mut s = js.get_stream("CRASH").await.unwrap();
    let info = s.info().await.unwrap().clone();
    let max_acked = *acked.keys().last().unwrap();
    assert!(info.state.last_sequence >= max_acked);

    // The consumer resumes where its confirmed acks left it.
    let confirmed = acked_floor.load(std::sync::atomic::Ordering::SeqCst);
    assert!(confirmed > 0, "the consumer confirmed acks before the kill");
    let mut worker: consumer::PullConsumer = s.get_consumer("WORKER").await.unwrap();
    let floor = worker.info().await.unwrap().ack_floor.stream_sequence;
    assert!(
        floor >= confirmed,
        "ack floor {floor} after restart, {confirmed} confirmed before the kill"
    );
    let mut next = worker.fetch().max_messages(1).messages().await.unwrap();
    let first = next.next().await.unwrap().unwrap();
    assert!(first.info().unwrap().stream_sequence > floor);
    drop(next);

    // Read everything back: every acked message is present with its payload, and no
    // payload appears twice.
    let c: consumer::PullConsumer = s
        .create_consumer(consumer::pull::Config {
            ack_policy: consumer::AckPolicy::None,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut stored: BTreeMap<u64, u64> = BTreeMap::new();
    let mut seen = HashSet::new();
    while stored.len() < info.state.messages as usize {
        let mut batch = c.fetch().max_messages(1000).messages().await.unwrap();
        let mut got = 0;
        while let Some(m) = tokio::time::timeout(Duration::from_secs(10), batch.next())
            .await
            .unwrap()
        {
            let m = m.unwrap();
            let id: u64 = std::str::from_utf8(&m.payload).unwrap().parse().unwrap();
            assert!(seen.insert(id), "payload {id} stored twice");
            stored.insert(m.info().unwrap().stream_sequence, id);
            got += 1;
        }
        assert!(
            got > 0,
            "messages missing: {} of {}",
            stored.len(),
            info.state.messages
        );
    }
    for (seq, id) in &acked {
        assert_eq!(
            stored.get(seq),
            Some(id),
            "acked message {seq} lost or changed"
        );
    }
    let next = js
        .publish("crash.data", "after".into())
        .await
        .unwrap()
        .await
        .unwrap();
    assert_eq!(next.sequence, info.state.last_sequence + 1);
    let log = std::fs::read_to_string(dir.0.join("after.log")).unwrap_or_default();
    let replay = log
        .lines()
        .find(|l| l.contains("JetStream journal"))
        .unwrap_or("nothing replayed from the journal");
    eprintln!(
        "kill -9 (ack = {ack}): {} acked before the kill, {} stored after restart, \
         consumer ack floor {floor} ({confirmed} confirmed); {replay}",
        acked.len(),
        stored.len()
    );
}
