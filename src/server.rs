//! Starting the server: configuration, admin token, TLS, the engine, and signal handling.

use std::io::Write as _;

use kapsel_engine::{Engine, EngineConfig};
use kapsel_http::{Limits, ServerConfig};
use signal_hook::consts::{SIGINT, SIGTERM};

use crate::config::{self, Configuration};

/// How long a graceful shutdown may take before the process exits anyway, non-zero: SIGTERM
/// stops Kapsel within 10 s whatever state a shard, a destination or the index is in. Exiting
/// loses nothing: what was acknowledged is durable already, and an attempt cut short is made
/// again after the restart.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(8);

/// Runs until a shutdown signal and a clean stop, or until a shard fails. Bad configuration is
/// refused before anything starts, with a message naming the setting.
pub fn run(configuration: &Configuration) -> Result<(), String> {
    let settings = configuration.settings().map_err(|error| error.to_string())?;
    let shards = configuration.shards(&settings).map_err(|error| error.to_string())?;
    let data_directory = settings.data_directory.as_path();
    kapsel_wal::create_dir_all_durable(data_directory)
        .map_err(|error| format!("cannot create {}: {error}", data_directory.display()))?;
    let admin_token = config::admin_token(settings.admin_token.clone(), data_directory)
        .map_err(|error| format!("admin token in {}: {error}", data_directory.display()))?;
    let tls = match &settings.tls {
        Some((certificate, key)) => Some(std::sync::Arc::new(
            kapsel_http::load_tls_config(certificate, key).map_err(|error| error.to_string())?,
        )),
        None => None,
    };
    let server = ServerConfig {
        limits: Limits::default().with_payload_bytes_max(settings.max_payload_bytes),
        tls,
        ..ServerConfig::default()
    };
    let client_tls = kapsel_http::tls_client_config(settings.extra_ca_file.as_deref())
        .map_err(|error| format!("{}: {error}", config::VARIABLES.extra_ca_file))?;
    let mut client = kapsel_http::ClientConfig::new(std::sync::Arc::new(client_tls));
    client.destinations = settings.destinations.clone();
    // Registered before the engine starts, so a signal sent as soon as the listening line is
    // printed (or during start-up) is a graceful stop, not the default action's abrupt exit.
    let mut signals =
        signal_hook::iterator::Signals::new([SIGTERM, SIGINT]).map_err(|error| format!("signal handling: {error}"))?;
    let engine = Engine::start(EngineConfig {
        listen: settings.listen,
        data_directory: data_directory.to_path_buf(),
        shards,
        io_driver: settings.io_driver,
        admin_token,
        server,
        wal_segment_bytes: settings.wal_segment_bytes,
        state_limits: settings.state_limits,
        client,
        index: settings.index.clone(),
        retention_ms: settings.retention_ms,
        cluster: settings.cluster.clone(),
    })
    .map_err(|error| error.to_string())?;
    let scheme = if settings.tls.is_some() { "https" } else { "http" };
    // One plain line for people and scripts (tests read the port from it when SERVER_ADDR ends in :0).
    let mut stdout = std::io::stdout();
    let _ = writeln!(stdout, "kapsel listening on {scheme}://{}", engine.address());
    let _ = stdout.flush();
    tracing::info!(address = %engine.address(), shards, "listening");
    let shared = engine.shared();
    std::thread::Builder::new()
        .name("kapsel-signals".into())
        .spawn(move || {
            let mut received = signals.forever();
            let Some(signal) = received.next() else {
                return;
            };
            tracing::info!(signal, "shutting down: no new connections, finishing in-flight requests");
            shared.begin_shutdown();
            let watchdog = std::thread::Builder::new().name("kapsel-shutdown".into()).spawn(|| {
                std::thread::sleep(SHUTDOWN_GRACE);
                tracing::error!(
                    grace_s = SHUTDOWN_GRACE.as_secs(),
                    "graceful shutdown did not finish in time; exiting now (everything acknowledged is already durable)"
                );
                std::process::exit(1);
            });
            if let Err(error) = watchdog {
                tracing::error!(%error, "cannot start the shutdown watchdog");
            }
            if let Some(signal) = received.next() {
                tracing::warn!(signal, "second signal: exiting now (everything acknowledged is already durable)");
                std::process::exit(1);
            }
        })
        .map_err(|error| format!("signal thread: {error}"))?;
    engine.wait()?;
    tracing::info!("stopped cleanly");
    Ok(())
}
