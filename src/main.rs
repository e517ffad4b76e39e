//! The `sparkgate` command: `serve` (default), `check`, `token` (development JWTs) and
//! `audit verify`.

use anyhow::Context;
use clap::{Parser, Subcommand};
use sparkgate::config::{self, Sources};
use std::path::PathBuf;

/// mimalloc instead of glibc's malloc: the request path allocates and frees many small
/// objects across two worker threads, where glibc's arenas spent a fifth of the CPU
/// (bench/README.md, "Throughput"). Built without transparent huge pages (`no_thp`): with
/// them an idle gateway's RSS grew from 17 to 27 MiB for no speed.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(name = "sparkgate", version, about = "A security-first, Livy-compatible REST gateway for Apache Spark")]
struct Cli {
    /// Configuration file (default: conf/sparkgate.toml if it exists).
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,
    /// Override a configuration key, e.g. --set sessions.idle_timeout=30m (repeatable).
    #[arg(long = "set", global = true, value_name = "KEY=VALUE")]
    overrides: Vec<String>,
    /// Log as JSON lines.
    #[arg(long, global = true)]
    log_json: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the gateway.
    Serve,
    /// Check the configuration, the Spark installation and the drivers' sandbox, then exit.
    Check,
    /// Print (or write to a 0600 file) a development JWT signed with the generated key pair.
    Token {
        /// The user (the token's user claim).
        #[arg(long)]
        user: String,
        /// Groups, comma-separated.
        #[arg(long, value_delimiter = ',')]
        groups: Vec<String>,
        /// Lifetime, e.g. 30m, 1h, 8h.
        #[arg(long, default_value = "1h")]
        ttl: String,
        /// Write the token to this file (mode 0600) instead of printing it.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Audit trail tools.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// (Internal) Run one spark-submit for the gateway, recording its output and exit status
    /// (see `engine::launch::supervisor`).
    #[command(hide = true)]
    Supervise {
        /// The launch's log file.
        #[arg(long)]
        log: PathBuf,
        /// The size the log file may reach.
        #[arg(long)]
        max_log_bytes: u64,
        /// The program and its arguments.
        #[arg(last = true, required = true)]
        command: Vec<std::ffi::OsString>,
    },
}

#[derive(Subcommand, Debug)]
enum AuditCommand {
    /// Check that audit files form one unbroken hash chain; exit status 1 if they do not.
    Verify {
        /// The files, oldest first: rotated files (audit.log.<seq>) in order, then audit.log.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // The supervisor reads no configuration and runs no gateway runtime.
    if let Some(Command::Supervise { log, max_log_bytes, mut command }) = cli.command {
        let program = command.remove(0);
        let task = sparkgate::engine::launch::supervisor::Supervise { log, max_log_bytes, program, args: command };
        std::process::exit(sparkgate::engine::launch::supervisor::main(&task));
    }
    tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(serve(cli))
}

async fn serve(cli: Cli) -> anyhow::Result<()> {
    sparkgate::telemetry::init(cli.log_json);
    let default_path = PathBuf::from("conf/sparkgate.toml");
    let file = cli.config.clone().or_else(|| default_path.exists().then_some(default_path));
    let sources = Sources { file: file.as_deref(), env: std::env::vars().collect(), overrides: cli.overrides.clone() };
    let validated = config::load(&sources).context("configuration")?;
    match cli.command.unwrap_or(Command::Serve) {
        Command::Check => {
            let spark = sparkgate::engine::launch::SparkEnv::discover(
                &validated.config.spark,
                validated.durations.spark_check_timeout,
            )
            .await?;
            // Key files, the LDAP service password and CA are read as `serve` reads them.
            sparkgate::auth::build_chain(&validated)?;
            println!("configuration ok; Spark {} at {}", spark.version, spark.home.display());
            let sandbox = sparkgate::engine::sandbox::Sandbox::discover(
                &validated.config,
                &spark,
                validated.durations.spark_check_timeout,
            )
            .await?;
            match sandbox {
                Some(sandbox) => println!(
                    "drivers run in a bubblewrap sandbox that shows read-only: {}",
                    sandbox.read_only_paths().map(|p| p.display().to_string()).collect::<Vec<_>>().join(" ")
                ),
                None if validated.config.spark.deploy_mode == "cluster" => {}
                None => println!("DANGEROUS: spark.local_sandbox = \"dangerous_off\": drivers run unconfined"),
            }
            Ok(())
        }
        Command::Token { user, groups, ttl, out } => {
            let ttl = config::parse_duration(&ttl).map_err(anyhow::Error::msg).context("--ttl")?;
            let token = sparkgate::auth::jwt::mint_dev_token(&validated, &user, &groups, ttl)?;
            match out {
                Some(path) => {
                    sparkgate::fs::write_file(&path, token.as_bytes(), 0o600)?;
                    eprintln!("wrote a token for {user} (valid {}s) to {}", ttl.as_secs(), path.display());
                }
                None => println!("{token}"),
            }
            Ok(())
        }
        Command::Audit { command: AuditCommand::Verify { files } } => {
            let report = sparkgate::audit::verify_files(&files)?;
            println!("{report}");
            if !report.is_intact() {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Serve => {
            let scheme = if validated.config.server.dangerous_plain_http { "http" } else { "https" };
            let validated_recovers = validated.config.recovers();
            let how = if validated.config.auth.methods.iter().any(|m| m == "jwt") {
                "-H \"Authorization: Bearer $TOKEN\" https://{addr}/sessions; TOKEN from `sparkgate token --user NAME`"
            } else if validated.config.auth.methods.iter().any(|m| m == "ldap") {
                "-u NAME https://{addr}/sessions, or a browser at https://{addr}/ui"
            } else {
                "https://{addr}/sessions"
            };
            let gateway = sparkgate::Gateway::start(validated, sparkgate::StartOptions::default()).await?;
            println!("sparkgate listening on {scheme}://{}", gateway.addr);
            if let Some(ca) = &gateway.dev_ca {
                let how = how.replace("{addr}", &gateway.addr.to_string());
                println!("development CA: {} (curl --cacert {} {how})", ca.display(), ca.display());
            }
            wait_for_signal().await;
            if validated_recovers {
                tracing::info!("shutting down: sessions and batches are left running for the next start");
            } else {
                tracing::info!("shutting down: stopping every session and batch");
            }
            gateway.shutdown().await;
            Ok(())
        }
        // Handled before the runtime starts.
        Command::Supervise { .. } => Ok(()),
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
