//! The `meshbroker` command: run a node from a config file, check a config, or run
//! the benchmark client.

use std::path::PathBuf;
use std::process::ExitCode;

use argh::FromArgs;
use meshbroker::actors::runtime::ProcessSignals;
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
    Auth(AuthArgs),
}

/// operator mode's keys, JWTs and creds, as nsc writes them
#[derive(FromArgs)]
#[argh(subcommand, name = "auth")]
struct AuthArgs {
    #[argh(subcommand)]
    command: AuthCommand,
}

#[derive(FromArgs)]
#[argh(subcommand)]
enum AuthCommand {
    Init(AuthInitArgs),
    Account(AuthAccountArgs),
    User(AuthUserArgs),
    Push(AuthPushArgs),
}

/// add an application account (JetStream on unless --no-jetstream) to the
/// directory `auth init` wrote; `auth push` sends it to running nodes
#[derive(FromArgs)]
#[argh(subcommand, name = "account")]
struct AuthAccountArgs {
    /// the directory `auth init` wrote
    #[argh(option)]
    dir: PathBuf,
    /// the account's name
    #[argh(option)]
    name: String,
    /// without JetStream
    #[argh(switch)]
    no_jetstream: bool,
    /// revoke this user (public key `U…`, or `*` for every user) issued until now;
    /// re-issues the account's JWT (may be repeated)
    #[argh(option)]
    revoke: Vec<String>,
}

/// send account JWTs to running nodes, as `nsc push` does: as a temporary user of
/// the system account, on $SYS.REQ.ACCOUNT.<key>.CLAIMS.UPDATE; prints every node's
/// answer
#[derive(FromArgs)]
#[argh(subcommand, name = "push")]
struct AuthPushArgs {
    /// the directory `auth init` wrote
    #[argh(option)]
    dir: PathBuf,
    /// a node's client URL (default nats://127.0.0.1:4222)
    #[argh(option, default = "String::from(\"nats://127.0.0.1:4222\")")]
    server: String,
    /// only this account (default: every account in the directory)
    #[argh(option)]
    account: Option<String>,
    /// how long to collect answers, in milliseconds (default 1000)
    #[argh(option, default = "1000")]
    wait_ms: u64,
}

/// create an operator, its system account and application accounts (with
/// JetStream) in a directory, and write the node's config block (auth.toml)
#[derive(FromArgs)]
#[argh(subcommand, name = "init")]
struct AuthInitArgs {
    /// the directory (created; an existing operator there is never overwritten)
    #[argh(option)]
    dir: PathBuf,
    /// the operator's name
    #[argh(option, default = "String::from(\"OP\")")]
    operator: String,
    /// an application account (JetStream on); may be repeated
    #[argh(option)]
    account: Vec<String>,
    /// the node's resolver: `full` (account JWTs stored in DIR/jwt, updated by
    /// `auth push`; the default) or `memory` (the preload only)
    #[argh(option, default = "String::from(\"full\")")]
    resolver: String,
}

/// mint a user of an account and write its .creds file (mode 0600)
#[derive(FromArgs)]
#[argh(subcommand, name = "user")]
struct AuthUserArgs {
    /// the directory `auth init` wrote
    #[argh(option)]
    dir: PathBuf,
    /// the account
    #[argh(option)]
    account: String,
    /// the user's name
    #[argh(option)]
    name: String,
    /// a subject it may publish to (may be repeated; none: any)
    #[argh(option, long = "pub")]
    publish: Vec<String>,
    /// a subject it may subscribe to (may be repeated; none: any)
    #[argh(option, long = "sub")]
    subscribe: Vec<String>,
    /// seconds until the JWT expires (none: never)
    #[argh(option)]
    expires: Option<i64>,
    /// a bearer JWT: no signature of the nonce needed
    #[argh(switch)]
    bearer: bool,
    /// only over WebSocket
    #[argh(switch)]
    websocket_only: bool,
    /// the .creds file to write (default DIR/users/NAME.creds)
    #[argh(option)]
    out: Option<PathBuf>,
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
    Member(MemberArgs),
}

/// join the mesh as a client member (an application host): bring up the WireGuard
/// interface, peer with the brokers, keep their nats:// URLs in mesh.brokers_file;
/// the config has [mesh] role = "client" and client_secret_file, and cluster.name
#[derive(FromArgs)]
#[argh(subcommand, name = "member")]
struct MemberArgs {
    /// the client member's config file (TOML)
    #[argh(option)]
    conf: PathBuf,
    /// validate the config file and exit (0 when valid, 1 otherwise)
    #[argh(switch)]
    check: bool,
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
    if let Some(Subcommand::Mesh(MeshArgs {
        command: MeshCommand::Member(args),
    })) = &cli.command
    {
        let config = match Config::load(&args.conf, &meshbroker::actors::runtime::read_file) {
            Ok(config) => config,
            Err(e) => {
                eprintln!("meshbroker: {e}");
                return ExitCode::FAILURE;
            }
        };
        if !config.is_mesh_member() {
            eprintln!(
                "meshbroker mesh member: {}: key `mesh.role`: a client member's config has [mesh] with role = \"client\" (a broker runs with `meshbroker --conf`)",
                args.conf.display()
            );
            return ExitCode::FAILURE;
        }
        if args.check {
            println!("{}: configuration is valid", args.conf.display());
            return ExitCode::SUCCESS;
        }
        return run_member(&config, &args.conf);
    }
    if let Some(Subcommand::Auth(args)) = &cli.command {
        let result = match &args.command {
            AuthCommand::Init(a) => auth_cmd::init(a),
            AuthCommand::Account(a) => auth_cmd::account(a),
            AuthCommand::User(a) => auth_cmd::user(a),
            AuthCommand::Push(a) => auth_cmd::push(a),
        };
        return match result {
            Ok(said) => {
                println!("{said}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("meshbroker auth: {e}");
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
    if config.is_mesh_member() {
        return run_member(&config, &path);
    }
    init_logs(&config);
    // Signals are taken before anything listens: a SIGHUP sent as soon as the
    // client port answers must reload, not kill with the default action.
    let signals = match ProcessSignals::new() {
        Ok(signals) => signals,
        Err(e) => {
            log::error!("cannot wait for signals: {e}");
            return ExitCode::FAILURE;
        }
    };
    let node = match Node::start(config) {
        Ok(node) => node,
        Err(e) => {
            log::error!("{}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    };
    actors::signals::run_until_signalled(signals, node, &path);
    ExitCode::SUCCESS
}

/// Runs a client member of the mesh until a signal.
fn run_member(config: &Config, path: &std::path::Path) -> ExitCode {
    init_logs(config);
    let signals = match ProcessSignals::new() {
        Ok(signals) => signals,
        Err(e) => {
            log::error!("cannot wait for signals: {e}");
            return ExitCode::FAILURE;
        }
    };
    let member = match actors::mesh::Member::start(config) {
        Ok(member) => member,
        Err(e) => {
            log::error!("{}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    };
    actors::signals::run_member_until_signalled(signals, member);
    ExitCode::SUCCESS
}

fn init_logs(config: &Config) {
    // Everything passes the logger's own filter (unless RUST_LOG sets one); the level
    // is the global maximum, which a reload can change.
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("trace"))
        .format_timestamp_millis()
        .init();
    actors::node::apply_log_level(config.log_level);
}

/// `meshbroker auth`: the files behind operator mode. Keys (seeds) are written with
/// mode 0600 and never printed; JWTs are public.
mod auth_cmd {
    use std::io::Write;
    use std::path::{Path, PathBuf};

    use meshbroker::auth::mint;

    use super::{AuthAccountArgs, AuthInitArgs, AuthPushArgs, AuthUserArgs};

    fn now() -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64)
    }

    /// Writes `text` to a new file (`secret`: mode 0600); never overwrites.
    fn write_new(path: &Path, text: &str, secret: bool) -> Result<(), String> {
        use std::os::unix::fs::OpenOptionsExt;
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        if secret {
            options.mode(0o600);
        }
        let mut file = options
            .open(path)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        file.write_all(text.as_bytes())
            .map_err(|e| format!("{}: {e}", path.display()))
    }

    fn read(path: &Path) -> Result<String, String> {
        std::fs::read_to_string(path)
            .map(|s| s.trim().to_string())
            .map_err(|e| format!("{}: {e}", path.display()))
    }

    fn valid_name(name: &str) -> Result<(), String> {
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(format!("{name:?}: names are letters, digits, `_` and `-`"));
        }
        Ok(())
    }

    pub fn init(args: &AuthInitArgs) -> Result<String, String> {
        for name in args.account.iter().chain([&args.operator]) {
            valid_name(name)?;
        }
        if args.account.iter().any(|a| a == "SYS") {
            return Err("SYS is the system account's name; pick another".into());
        }
        let dir = &args.dir;
        for sub in ["", "accounts", "users"] {
            std::fs::create_dir_all(dir.join(sub))
                .map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        let now = now();
        let operator = nkeys::KeyPair::new_operator();
        let sys = nkeys::KeyPair::new_account();
        let seed = |k: &nkeys::KeyPair| k.seed().map_err(|e| e.to_string());
        let jwt_err = |e: meshbroker::auth::jwt::JwtError| e.to_string();
        write_new(&dir.join("operator.nk"), &seed(&operator)?, true)?;
        let op_jwt = mint::operator_jwt(&operator, &args.operator, &sys.public_key(), now)
            .map_err(jwt_err)?;
        write_new(&dir.join("operator.jwt"), &op_jwt, false)?;
        let mut preload = Vec::new();
        let accounts = std::iter::once(("SYS", &sys, false));
        let apps: Vec<(String, nkeys::KeyPair)> = args
            .account
            .iter()
            .map(|a| (a.clone(), nkeys::KeyPair::new_account()))
            .collect();
        for (name, key, jetstream) in
            accounts.chain(apps.iter().map(|(n, k)| (n.as_str(), k, true)))
        {
            let jwt = mint::account_jwt(&operator, key, name, jetstream, now).map_err(jwt_err)?;
            write_new(
                &dir.join("accounts").join(format!("{name}.nk")),
                &seed(key)?,
                true,
            )?;
            write_new(
                &dir.join("accounts").join(format!("{name}.jwt")),
                &jwt,
                false,
            )?;
            preload.push((key.public_key(), jwt));
        }
        let op_path = std::fs::canonicalize(dir.join("operator.jwt"))
            .map_err(|e| format!("{}: {e}", dir.display()))?;
        let resolver = match args.resolver.as_str() {
            "memory" => mint::Resolver::Memory,
            "full" => mint::Resolver::Full {
                dir: op_path
                    .parent()
                    .unwrap_or(Path::new("."))
                    .join("jwt")
                    .display()
                    .to_string(),
            },
            other => return Err(format!("--resolver {other:?}: `full` or `memory`")),
        };
        let block = mint::config_block(
            &op_path.display().to_string(),
            &sys.public_key(),
            &resolver,
            &preload,
        );
        write_new(&dir.join("auth.toml"), &block, false)?;
        Ok(format!(
            "operator {} with accounts SYS{}; add {} to the node's config",
            operator.public_key(),
            apps.iter()
                .map(|(n, _)| format!(", {n}"))
                .collect::<String>(),
            dir.join("auth.toml").display()
        ))
    }

    /// The operator's key pair, from the directory `auth init` wrote.
    fn operator_key(dir: &Path) -> Result<nkeys::KeyPair, String> {
        nkeys::KeyPair::from_seed(&read(&dir.join("operator.nk"))?)
            .map_err(|e| format!("operator key: {e}"))
    }

    pub fn account(args: &AuthAccountArgs) -> Result<String, String> {
        valid_name(&args.name)?;
        let operator = operator_key(&args.dir)?;
        let accounts = args.dir.join("accounts");
        let seed_path = accounts.join(format!("{}.nk", args.name));
        let jwt_path = accounts.join(format!("{}.jwt", args.name));
        let existing = seed_path.exists();
        let account = if existing {
            nkeys::KeyPair::from_seed(&read(&seed_path)?)
                .map_err(|e| format!("account {}: {e}", args.name))?
        } else {
            let key = nkeys::KeyPair::new_account();
            write_new(&seed_path, &key.seed().map_err(|e| e.to_string())?, true)?;
            key
        };
        // Revocations accumulate: the held JWT's stay.
        let mut revocations = std::collections::BTreeMap::new();
        if existing {
            let held = meshbroker::auth::jwt::decode(&read(&jwt_path)?)
                .map_err(|e| format!("{}: {e}", jwt_path.display()))?;
            revocations = held.nats.revocations;
        }
        let now = now();
        for user in &args.revoke {
            if user != "*"
                && !(user.starts_with('U') && nkeys::KeyPair::from_public_key(user).is_ok())
            {
                return Err(format!(
                    "--revoke {user:?}: a user's public key (U…) or `*`"
                ));
            }
            revocations.insert(user.clone(), now);
        }
        let jwt = mint::account_jwt_with(
            &operator,
            &account,
            &args.name,
            !args.no_jetstream,
            revocations,
            now,
        )
        .map_err(|e| e.to_string())?;
        let tmp = accounts.join(format!(".{}.jwt.tmp", args.name));
        std::fs::write(&tmp, &jwt).map_err(|e| format!("{}: {e}", tmp.display()))?;
        std::fs::rename(&tmp, &jwt_path).map_err(|e| format!("{}: {e}", jwt_path.display()))?;
        Ok(format!(
            "account {} {} ({}); `meshbroker auth push --dir {} --account {}` sends it to the nodes",
            args.name,
            if existing { "re-issued" } else { "created" },
            account.public_key(),
            args.dir.display(),
            args.name
        ))
    }

    pub fn push(args: &AuthPushArgs) -> Result<String, String> {
        let accounts = args.dir.join("accounts");
        let mut jwts = Vec::new();
        let names: Vec<String> = match &args.account {
            Some(name) => vec![name.clone()],
            None => {
                let mut names: Vec<String> = std::fs::read_dir(&accounts)
                    .map_err(|e| format!("{}: {e}", accounts.display()))?
                    .filter_map(|e| e.ok())
                    .filter_map(|e| e.file_name().to_str().map(str::to_string))
                    .filter_map(|n| n.strip_suffix(".jwt").map(str::to_string))
                    .filter(|n| !n.starts_with('.'))
                    .collect();
                names.sort();
                names
            }
        };
        for name in &names {
            valid_name(name)?;
            let jwt = read(&accounts.join(format!("{name}.jwt")))?;
            let claims = meshbroker::auth::jwt::decode(&jwt).map_err(|e| format!("{name}: {e}"))?;
            jwts.push((name.clone(), claims.sub, jwt));
        }
        // As nsc: a user of the system account that lives two minutes.
        let sys = nkeys::KeyPair::from_seed(&read(&accounts.join("SYS.nk"))?)
            .map_err(|e| format!("system account key: {e}"))?;
        let user = nkeys::KeyPair::new_user();
        let spec = mint::UserSpec {
            name: "meshbroker-auth-push".into(),
            expires_in: Some(120),
            ..mint::UserSpec::default()
        };
        let user_jwt = mint::user_jwt(&sys, &user, &spec, now()).map_err(|e| e.to_string())?;
        let answers = meshbroker::actors::push::push(
            &args.server,
            &user_jwt,
            &user,
            &jwts,
            std::time::Duration::from_millis(args.wait_ms),
        )?;
        let mut out = String::new();
        let mut failed = false;
        for (name, answer) in &answers {
            failed |= answer.failed;
            out.push_str(&format!("{name}: {}\n", answer.text));
        }
        for (name, key, _) in &jwts {
            if !answers.iter().any(|(n, _)| n == name) {
                failed = true;
                out.push_str(&format!("{name} ({key}): no node answered\n"));
            }
        }
        if failed {
            return Err(format!("not every push was taken:\n{}", out.trim_end()));
        }
        Ok(out.trim_end().to_string())
    }

    pub fn user(args: &AuthUserArgs) -> Result<String, String> {
        valid_name(&args.account)?;
        valid_name(&args.name)?;
        let account_seed = read(
            &args
                .dir
                .join("accounts")
                .join(format!("{}.nk", args.account)),
        )?;
        let account = nkeys::KeyPair::from_seed(&account_seed)
            .map_err(|e| format!("account {}: {e}", args.account))?;
        let user = nkeys::KeyPair::new_user();
        let spec = mint::UserSpec {
            name: args.name.clone(),
            publish: args.publish.clone(),
            subscribe: args.subscribe.clone(),
            expires_in: args.expires,
            bearer: args.bearer,
            connection_types: if args.websocket_only {
                vec!["WEBSOCKET".into()]
            } else {
                Vec::new()
            },
        };
        let jwt = mint::user_jwt(&account, &user, &spec, now()).map_err(|e| e.to_string())?;
        let seed = user.seed().map_err(|e| e.to_string())?;
        let out: PathBuf = args
            .out
            .clone()
            .unwrap_or_else(|| args.dir.join("users").join(format!("{}.creds", args.name)));
        write_new(&out, &mint::creds(&jwt, &seed), true)?;
        Ok(format!("{}", out.display()))
    }
}
