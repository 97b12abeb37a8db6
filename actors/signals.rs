//! Process signals for the `meshbroker` binary: SIGINT stops the node at once,
//! SIGTERM puts it in lame-duck mode.

use futures_lite::StreamExt;

use super::node::Node;

/// Runs until SIGINT or SIGTERM, then stops `node` accordingly.
pub fn run_until_signalled(node: Node) -> std::io::Result<()> {
    use async_signal::{Signal, Signals};
    let mut signals = Signals::new([Signal::Int, Signal::Term])?;
    let signal = super::runtime::block_on(signals.next());
    match signal {
        Some(Ok(Signal::Term)) => {
            log::info!("SIGTERM: entering lame duck mode");
            node.lame_duck();
        }
        _ => {
            log::info!("SIGINT: shutting down");
            node.shutdown();
        }
    }
    Ok(())
}
