//! Process signals for the `meshbroker` binary: SIGINT stops the node at once,
//! SIGTERM puts it in lame-duck mode, SIGHUP reloads the config file.

use std::path::Path;

use futures_lite::StreamExt;

use super::node::Node;
use crate::config::Config;

/// Runs until SIGINT or SIGTERM, then stops `node` accordingly; on SIGHUP reads
/// `conf` again and applies it (an invalid file is logged and the running config
/// stays).
pub fn run_until_signalled(node: Node, conf: &Path) -> std::io::Result<()> {
    use async_signal::{Signal, Signals};
    let mut signals = Signals::new([Signal::Int, Signal::Term, Signal::Hup])?;
    loop {
        match super::runtime::block_on(signals.next()) {
            Some(Ok(Signal::Hup)) => reload(&node, conf),
            Some(Ok(Signal::Term)) => {
                log::info!("SIGTERM: entering lame duck mode");
                node.lame_duck();
                return Ok(());
            }
            _ => {
                log::info!("SIGINT: shutting down");
                node.shutdown();
                return Ok(());
            }
        }
    }
}

fn reload(node: &Node, conf: &Path) {
    let result = Config::load(conf)
        .map_err(|e| e.to_string())
        .and_then(|config| {
            node.reload(config)
                .map_err(|e| format!("{}: {e}", conf.display()))
        });
    if let Err(e) = result {
        log::error!("SIGHUP: reload refused, the running config stays: {e}");
    }
}
