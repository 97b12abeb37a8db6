//! The mesh announcement decoder and membership: arbitrary datagrams are refused
//! without a panic (a forged or damaged MAC never reads as an announcement), and
//! arbitrary sequences of authentic announcements, hints and clock ticks keep
//! membership consistent: an encoded announcement decodes to itself, this node never
//! becomes its own member or the subject of an event, and a removed peer is gone.
//! Refusals (ICMP errors for a member's port), renewals (a new interface) and the
//! quiet members' probes are in the mix, and so are roles: this node is a broker or a
//! client member, announcements are sealed with the cluster's or the client members'
//! key, and every member holds an address in its role's range (a client member knows
//! brokers only).
#![no_main]

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use meshbroker::mesh::{
    decode, encode, AnnounceKey, Announcement, Membership, MeshEvent, Network, NodeRecord, Role,
    Sealed,
};

#[derive(Arbitrary, Debug)]
struct ArbRecord {
    key: u8,
    name: String,
    ip: [u8; 4],
    port: u16,
    addr: u16,
    route_port: u16,
    incarnation: u8,
    client: bool,
}

#[derive(Arbitrary, Debug)]
struct Input {
    me_client: bool,
    steps: Vec<Step>,
}

#[derive(Arbitrary, Debug)]
enum Step {
    Datagram(Vec<u8>),
    Announce {
        from: ArbRecord,
        seq: u8,
        skew_ms: i16,
        members: Vec<ArbRecord>,
        leave: bool,
        other_cluster: bool,
        sealed_client: bool,
        over_mesh: bool,
    },
    Hint(ArbRecord),
    Handshake(u8),
    Tick(u16),
    /// The network refused a datagram to the underlay of the member with this key
    /// (or to an address no member has).
    Refused(u8, u16),
    Renew(u8),
}

fn key_text(n: u8) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode([n; 32])
}

fn record(r: &ArbRecord) -> NodeRecord {
    NodeRecord {
        // A small key space so that records collide with each other and with us.
        key: key_text(r.key % 8),
        name: r.name.chars().take(32).collect(),
        endpoint: SocketAddr::from((r.ip, r.port)),
        mesh_addr: Ipv4Addr::new(10, 99, (r.addr >> 8) as u8, r.addr as u8).into(),
        route_port: r.route_port,
        incarnation: u64::from(r.incarnation % 4),
        role: if r.client { Role::Client } else { Role::Broker },
        client_port: None,
    }
}

fuzz_target!(|input: Input| {
    let Input { me_client, steps } = input;
    let key = AnnounceKey::derive(b"a-cluster-secret-for-fuzzing", "c1");
    let network = Network::parse("10.99.0.0/16", "c1").expect("network");
    let my_role = if me_client {
        Role::Client
    } else {
        Role::Broker
    };
    let me = NodeRecord {
        key: key_text(0),
        name: "me".into(),
        endpoint: "192.0.2.1:51820".parse().expect("addr"),
        mesh_addr: network.address_for(&[0; 32], my_role),
        route_port: 6222,
        incarnation: 1,
        role: my_role,
        client_port: None,
    };
    let mut membership = Membership::new(
        me.clone(),
        "c1",
        network,
        Duration::from_millis(500),
        Duration::from_secs(3),
        Duration::from_secs(60),
    );
    let start = Instant::now();
    let mut now = start;
    let now_ms = 1_000_000u64;
    for step in steps.into_iter().take(64) {
        let events = match step {
            Step::Datagram(bytes) => {
                // Random bytes never carry a valid MAC.
                assert!(decode(&key, &bytes).is_err());
                Vec::new()
            }
            Step::Announce {
                from,
                seq,
                skew_ms,
                members,
                leave,
                other_cluster,
                sealed_client,
                over_mesh,
            } => {
                let ann = Announcement {
                    cluster: if other_cluster {
                        "c2".into()
                    } else {
                        "c1".into()
                    },
                    from: record(&from),
                    seq: u64::from(seq),
                    part: 0,
                    ts_ms: now_ms.wrapping_add_signed(i64::from(skew_ms) * 1000),
                    members: members.iter().take(16).map(record).collect(),
                    leave,
                };
                let mut heard = Vec::new();
                for gram in encode(&key, &ann) {
                    let back = decode(&key, &gram).expect("our own datagram decodes");
                    assert_eq!(
                        (&back.from, back.seq, back.leave),
                        (&ann.from, ann.seq, ann.leave)
                    );
                    heard.extend(back.members.clone());
                    let sealed = if sealed_client {
                        Sealed::Client
                    } else {
                        Sealed::Cluster
                    };
                    if let Ok(ev) = membership.receive(back, sealed, over_mesh, now, now_ms) {
                        for e in &ev {
                            check(&membership, &me, e);
                        }
                    }
                }
                assert_eq!(heard, ann.members, "the member list survives the split");
                Vec::new()
            }
            Step::Hint(r) => membership.hint(record(&r), now),
            Step::Handshake(k) => {
                membership.handshake(&key_text(k % 8));
                Vec::new()
            }
            Step::Tick(ms) => {
                now += Duration::from_millis(u64::from(ms) * 10);
                membership.tick(now)
            }
            Step::Refused(k, port) => {
                let to = membership
                    .members()
                    .find(|m| m.record.key == key_text(k % 8))
                    .map_or_else(
                        || SocketAddr::from(([192, 0, 2, 9], port)),
                        |m| m.record.underlay_discovery(),
                    );
                let ev = membership.refused(to, now);
                // A refusal takes members down; it never brings one up or adds one.
                assert!(ev
                    .iter()
                    .all(|e| matches!(e, MeshEvent::Down(_) | MeshEvent::RemovePeer { .. })));
                ev
            }
            Step::Renew(inc) => {
                let before = membership.me().incarnation;
                let dropped = membership.renew(u64::from(inc));
                assert!(membership.me().incarnation > before, "a renewal is newer");
                assert!(dropped.iter().all(|r| r.key != me.key));
                assert!(membership.members().all(|m| !m.alive), "every member down");
                Vec::new()
            }
        };
        // Quiet members are silent ones; live ones get the probes.
        let quiet = membership.quiet(now);
        assert!(membership
            .members()
            .filter(|m| quiet.contains(&m.record.key))
            .all(|m| !m.alive && m.last_heard.is_some()));
        assert_eq!(
            membership.alive_underlay().len(),
            membership.members().filter(|m| m.alive).count()
        );
        for e in &events {
            check(&membership, &me, e);
        }
        assert!(membership.members().all(|m| m.record.key != me.key));
        for m in membership.members() {
            assert_eq!(
                network.role_of(m.record.mesh_addr),
                Some(m.record.role),
                "every member in its role's range"
            );
            assert!(
                !(me_client && m.record.role == Role::Client),
                "a client member knows brokers only"
            );
        }
    }
});

fn check(membership: &Membership, me: &NodeRecord, event: &MeshEvent) {
    match event {
        MeshEvent::SetPeer(r)
        | MeshEvent::Up(r)
        | MeshEvent::Down(r)
        | MeshEvent::Restarted(r)
        | MeshEvent::Firewalled(r) => {
            assert_ne!(r.key, me.key, "never an event about ourselves");
        }
        MeshEvent::RemovePeer { key, .. } => {
            assert_ne!(*key, me.key);
            assert!(
                membership.members().all(|m| &m.record.key != key),
                "a removed peer is no member"
            );
        }
    }
}
