//! The `meshbroker` command: run a node from a config file, check a config, or run
//! the benchmark client.

use std::path::PathBuf;
use std::process::ExitCode;

use argh::FromArgs;
use meshbroker::{actors, Config, Node};

/// meshbroker: a broker node that speaks the NATS protocol.
#[derive(FromArgs)]
struct Cli {
    /// the node's config file (TOML)
    #[argh(option)]
    conf: Option<PathBuf>,
    /// validate the config file and exit (0 when valid, 1 otherwise)
    #[argh(switch)]
    check: bool,
    /// print the version and exit
    #[argh(switch)]
    version: bool,
    #[argh(subcommand)]
    command: Option<Subcommand>,
}

#[derive(FromArgs)]
#[argh(subcommand)]
enum Subcommand {
    Bench(Box<actors::bench::BenchArgs>),
    Mesh(MeshArgs),
}

/// manage the WireGuard mesh's keys
#[derive(FromArgs)]
#[argh(subcommand, name = "mesh")]
struct MeshArgs {
    #[argh(subcommand)]
    command: MeshCommand,
}

#[derive(FromArgs)]
#[argh(subcommand)]
enum MeshCommand {
    Keygen(KeygenArgs),
}

/// write a new WireGuard private key (mode 0600) and print its public key
#[derive(FromArgs)]
#[argh(subcommand, name = "keygen")]
struct KeygenArgs {
    /// the file to write (never overwritten)
    #[argh(option)]
    out: PathBuf,
}

// Buffers are allocated on executor threads and freed on others (the storage writer, a
// client's outbound task); glibc's allocator spent ~15% of a JetStream publish run
// consolidating such frees, mimalloc's free lists handle them without that.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli: Cli = argh::from_env();
    if cli.version {
        println!("meshbroker {}", env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    }
    if let Some(Subcommand::Mesh(MeshArgs {
        command: MeshCommand::Keygen(args),
    })) = &cli.command
    {
        return match actors::mesh::keygen(&args.out) {
            Ok(public) => {
                println!("{public}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("meshbroker mesh keygen: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if let Some(Subcommand::Bench(args)) = cli.command {
        return match actors::bench::run(*args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("meshbroker bench: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let Some(path) = cli.conf else {
        eprintln!("meshbroker: --conf FILE is required (try conf/node.toml); see --help");
        return ExitCode::from(2);
    };
    let config = match Config::load(&path, &meshbroker::actors::runtime::read_file) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("meshbroker: {e}");
            return ExitCode::FAILURE;
        }
    };
    if cli.check {
        println!("{}: configuration is valid", path.display());
        return ExitCode::SUCCESS;
    }
    // Everything passes the logger's own filter (unless RUST_LOG sets one); the level
    // is the global maximum, which a reload can change.
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("trace"))
        .format_timestamp_millis()
        .init();
    actors::node::apply_log_level(config.log_level);
    let node = match Node::start(config) {
        Ok(node) => node,
        Err(e) => {
            log::error!("{}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    };
    match actors::signals::run_until_signalled(node, &path) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("cannot wait for signals: {e}");
            ExitCode::FAILURE
        }
    }
}
