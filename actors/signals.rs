//! Process signals for the `meshbroker` binary: SIGINT stops the node at once,
//! SIGTERM puts it in lame-duck mode, SIGHUP reloads the config file.

use std::path::Path;

use super::node::Node;
use super::runtime::{ProcessSignal, ProcessSignals};
use crate::config::Config;

/// Runs until SIGINT or SIGTERM, then stops `node` accordingly; on SIGHUP reads
/// `conf` again and applies it (an invalid file is logged and the running config
/// stays).
/// `signals` is made before the node starts, so that no signal sent once it
/// listens meets the default action.
pub fn run_until_signalled(mut signals: ProcessSignals, node: Node, conf: &Path) {
    loop {
        match signals.wait() {
            Some(ProcessSignal::Hangup) => reload(&node, conf),
            Some(ProcessSignal::Terminate) => {
                log::info!("SIGTERM: entering lame duck mode");
                node.lame_duck();
                return;
            }
            _ => {
                log::info!("SIGINT: shutting down");
                node.shutdown();
                return;
            }
        }
    }
}

/// A client member: runs until SIGINT or SIGTERM, then leaves the mesh (SIGHUP
/// changes nothing: the mesh's settings need a restart).
pub fn run_member_until_signalled(mut signals: ProcessSignals, member: super::mesh::Member) {
    loop {
        match signals.wait() {
            Some(ProcessSignal::Hangup) => {
                log::info!("SIGHUP: a client member's mesh settings apply at its next start")
            }
            _ => {
                log::info!("leaving the mesh");
                member.shutdown();
                return;
            }
        }
    }
}

fn reload(node: &Node, conf: &Path) {
    let result = Config::load(conf, &super::runtime::read_file)
        .map_err(|e| e.to_string())
        .and_then(|config| {
            node.reload(config)
                .map_err(|e| format!("{}: {e}", conf.display()))
        });
    if let Err(e) = result {
        log::error!("SIGHUP: reload refused, the running config stays: {e}");
    }
}
