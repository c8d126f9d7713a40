//! The `dbward-relay` binary: parses arguments, sets up logging, and calls
//! [`dbward_relay::ops::check`] or [`dbward_relay::ops::serve`].

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use dbward_relay::logging::{self, LogFormat};
use dbward_relay::ops::{self, ServeOptions};
use dbward_relay::replica::ReplicaId;

/// The dbward PostgreSQL relay: executes the frozen config that `dbward apply` wrote.
#[derive(Debug, Parser)]
#[command(
    name = "dbward-relay",
    version,
    after_help = "Signals:\n  \
        SIGHUP           Reload the config: sessions in flight keep the config they started \
        with, new sessions use the new one; a bad file keeps the old config and logs why. \
        The audit log is reopened.\n  \
        SIGTERM, SIGINT  Drain: /readyz turns 503, the listener closes, running sessions may \
        finish until limits.drain_timeout_ms (default 30 s) passes, then exit 0.\n  \
        second SIGTERM   (or SIGINT) while draining: exit at once with status 1, without \
        waiting for sessions.\n\n\
        Logs go to stderr, coloured only on a terminal and when NO_COLOR is unset."
)]
struct Args {
    /// The frozen config, `OUT/relay/frozen.json` of `dbward apply`.
    #[arg(long, value_name = "PATH")]
    config: PathBuf,
    /// Verify the config (format version, checksum, certificates, keys and their modes, audit
    /// log) and exit 0 or 1 without listening.
    #[arg(long)]
    check: bool,
    /// Log line format on stderr; the level comes from RUST_LOG (default info).
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Threads relaying sessions (default: half the CPU cores, at least one). Each session stays
    /// on one thread from handshake to end; new connections go to the thread with the fewest.
    /// A thread spends about 25 µs of CPU per query and 1 ms per new TLS session (README,
    /// Benchmarks); raise this on a host that runs nothing but the relay.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1024))]
    threads: Option<u16>,
    /// This relay's name among replicas serving the same config: written as `"replica"` into
    /// every audit event and the startup log line, so merged audit files say which relay wrote
    /// each event. 1 to 253 visible ASCII characters. Default: the host name (on Kubernetes,
    /// the pod's name).
    // Validated in `main`, not by clap, whose error would echo a control character raw.
    #[arg(long, value_name = "ID", env = "DBWARD_RELAY_REPLICA_ID")]
    replica_id: Option<String>,
    /// Listen for clients on ADDR (IP:port) instead of the config's `listen`, e.g. to run
    /// several replicas of one config on one host.
    #[arg(long, value_name = "ADDR", value_parser = socket_addr)]
    listen: Option<std::net::SocketAddr>,
    /// Serve /metrics, /livez and /readyz on ADDR (IP:port) instead of the config's `metrics`.
    #[arg(long, value_name = "ADDR", value_parser = socket_addr)]
    metrics: Option<std::net::SocketAddr>,
    /// This replica's id among the relay's peers (`relay { peers … }` in the manifest): it is
    /// encoded in the cancel keys this replica issues, so the others forward its cancels here.
    /// Default: the number at the end of the host name (`relay-2` is 2, as a Kubernetes
    /// StatefulSet names its pods). Ignored without peers.
    #[arg(long, value_name = "ID", env = "DBWARD_RELAY_PEER_ID",
          value_parser = clap::value_parser!(u16).range(0..=4095))]
    peer_id: Option<u16>,
}

/// `--listen`/`--metrics`: an IP address and port.
fn socket_addr(text: &str) -> Result<std::net::SocketAddr, String> {
    text.parse().map_err(|_| {
        "not an IP address and port; write it like 127.0.0.1:6433 or [::1]:6433".into()
    })
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.check {
        return match ops::check(&args.config) {
            Ok(summary) => {
                println!(
                    "{}: ok ({} databases, {} access entries)",
                    args.config.display(),
                    summary.databases,
                    summary.access_entries
                );
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("error: {error}");
                ExitCode::FAILURE
            }
        };
    }
    let given = args.replica_id.as_deref().map(ReplicaId::parse).transpose();
    let replica = match given.and_then(ReplicaId::given_or_host) {
        Ok(replica) => replica,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(error) = logging::init(args.log_format) {
        eprintln!("error: {error}");
        return ExitCode::FAILURE;
    }
    // Half the cores by default: most of a relay's CPU is the kernel's network work, which
    // needs cores of its own, and a relay often shares its machine with clients or the
    // database. On the 2-core benchmark machine, one session thread used 15-20 % less CPU per
    // query than two (README, Benchmarks) at the same throughput.
    let threads = args.threads.map_or_else(
        || std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1)),
        usize::from,
    );
    // Sessions run on their own threads (`ops::serve`); this one accepts, handles signals and
    // reloads, and serves /metrics.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let options = ServeOptions {
        listen: args.listen,
        metrics: args.metrics,
        peer_id: args.peer_id,
        ..ServeOptions::new(threads, replica)
    };
    match runtime.block_on(ops::serve(args.config, options)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "dbward-relay stopped");
            ExitCode::FAILURE
        }
    }
}
