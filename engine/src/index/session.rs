//! One connection to the index database, opened with every timeout set: the whole opening
//! bounded, TCP keepalive and `TCP_USER_TIMEOUT` on the socket, and server-side timeouts on the
//! session. A session owns its connection's task, so dropping it closes the socket even while an
//! answer is still awaited (tokio-postgres keeps such a connection waiting forever on a network
//! that went silent).

use std::time::Duration;

use tokio_postgres::{Client, Config, NoTls};

use crate::limits::{
    INDEX_CLIENT_CHECK_INTERVAL_MS, INDEX_CONNECT_TIMEOUT_MS, INDEX_IDLE_IN_TRANSACTION_TIMEOUT_MS,
    INDEX_KEEPALIVE_IDLE_MS, INDEX_KEEPALIVE_INTERVAL_MS, INDEX_KEEPALIVE_RETRIES, INDEX_QUERY_STATEMENT_TIMEOUT_MS,
    INDEX_TCP_USER_TIMEOUT_MS, INDEX_WRITER_STATEMENT_TIMEOUT_MS,
};

/// How long a dropped session's connection may take to say goodbye to the server before its task
/// is aborted (a healthy one needs a round trip; one on a silent network never finishes).
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// tokio-postgres' default keepalive idle time (2 hours), which Kapsel replaces unless the URL
/// set another.
const KEEPALIVE_IDLE_DEFAULT: Duration = Duration::from_secs(2 * 60 * 60);

/// Which side of the index a session serves: its settings and its `application_name`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Role {
    /// The one connection that writes batches and checkpoints.
    Writer,
    /// A pooled connection serving admin queries.
    Query,
}

impl Role {
    fn application_name(self) -> &'static str {
        match self {
            Self::Writer => "kapsel-index-writer",
            Self::Query => "kapsel-index-query",
        }
    }

    fn statement_timeout_ms(self) -> u64 {
        match self {
            Self::Writer => INDEX_WRITER_STATEMENT_TIMEOUT_MS,
            Self::Query => INDEX_QUERY_STATEMENT_TIMEOUT_MS,
        }
    }
}

/// An open connection and the task that drives it.
pub(super) struct Session {
    /// The connection's client.
    pub(super) client: Client,
    connection: Option<tokio::task::JoinHandle<()>>,
}

impl Session {
    /// Opens a connection within `limit` (and never longer than [`INDEX_CONNECT_TIMEOUT_MS`]).
    pub(super) async fn open(config: &Config, role: Role, limit: Duration) -> Result<Self, String> {
        let limit = limit.min(Duration::from_millis(INDEX_CONNECT_TIMEOUT_MS));
        let config = with_socket_timeouts(config.clone(), role);
        let opening = async {
            let (client, connection) = config
                .connect(NoTls)
                .await
                .map_err(|error| format!("connecting to the index database: {}", describe(&error)))?;
            let connection = tokio::spawn(async move {
                if let Err(error) = connection.await {
                    tracing::debug!(%error, "index connection closed");
                }
            });
            Ok::<_, String>(Self { client, connection: Some(connection) })
        };
        tokio::time::timeout(limit, opening)
            .await
            .map_err(|_| format!("connecting to the index database timed out after {} ms", limit.as_millis()))?
    }

    /// Sets the session's server-side timeouts (see `crate::limits`). Parameters the server does
    /// not know (`client_connection_check_interval` before PostgreSQL 14) are skipped.
    pub(super) async fn apply_settings(&self, role: Role) -> Result<(), tokio_postgres::Error> {
        let keepalive_s = |ms: u64| (ms / 1000).max(1).to_string();
        let wanted: [(&str, String); 7] = [
            ("statement_timeout", format!("{}ms", role.statement_timeout_ms())),
            ("idle_in_transaction_session_timeout", format!("{INDEX_IDLE_IN_TRANSACTION_TIMEOUT_MS}ms")),
            ("client_connection_check_interval", format!("{INDEX_CLIENT_CHECK_INTERVAL_MS}ms")),
            ("tcp_keepalives_idle", keepalive_s(INDEX_KEEPALIVE_IDLE_MS)),
            ("tcp_keepalives_interval", keepalive_s(INDEX_KEEPALIVE_INTERVAL_MS)),
            ("tcp_keepalives_count", INDEX_KEEPALIVE_RETRIES.to_string()),
            ("tcp_user_timeout", format!("{INDEX_TCP_USER_TIMEOUT_MS}ms")),
        ];
        let names: Vec<&str> = wanted.iter().map(|(name, _)| *name).collect();
        let values: Vec<&str> = wanted.iter().map(|(_, value)| value.as_str()).collect();
        self.client
            .execute(
                "SELECT set_config(wanted.name, wanted.value, false)
                 FROM UNNEST($1::text[], $2::text[]) AS wanted(name, value)
                 WHERE wanted.name IN (SELECT name FROM pg_settings)",
                &[&names, &values],
            )
            .await
            .map(drop)
    }

    /// True once the connection is gone (closed by either side, or its task ended).
    pub(super) fn is_closed(&self) -> bool {
        self.client.is_closed() || self.connection.as_ref().is_none_or(tokio::task::JoinHandle::is_finished)
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let Some(connection) = self.connection.take() else { return };
        // The client is dropped right after this: a healthy connection then sends Terminate and
        // ends by itself. One still waiting for an answer (a query or a batch given up on) would
        // wait forever on a silent network, so after a moment its task is aborted, which closes
        // the socket.
        let abort = connection.abort_handle();
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    if tokio::time::timeout(CLOSE_GRACE, connection).await.is_err() {
                        abort.abort();
                    }
                });
            }
            Err(_) => abort.abort(),
        }
    }
}

/// The client side's timeouts, where the URL left tokio-postgres' defaults: the TCP connect,
/// keepalive (off by default for all practical purposes: 2 hours), `TCP_USER_TIMEOUT`, and the
/// session's name in `pg_stat_activity`.
fn with_socket_timeouts(mut config: Config, role: Role) -> Config {
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(Duration::from_millis(INDEX_CONNECT_TIMEOUT_MS));
    }
    if config.get_keepalives() && config.get_keepalives_idle() == KEEPALIVE_IDLE_DEFAULT {
        config.keepalives_idle(Duration::from_millis(INDEX_KEEPALIVE_IDLE_MS));
        config.keepalives_interval(Duration::from_millis(INDEX_KEEPALIVE_INTERVAL_MS));
        config.keepalives_retries(INDEX_KEEPALIVE_RETRIES);
    }
    if config.get_tcp_user_timeout().is_none() {
        config.tcp_user_timeout(Duration::from_millis(INDEX_TCP_USER_TIMEOUT_MS));
    }
    if config.get_application_name().is_none() {
        config.application_name(role.application_name());
    }
    config
}

/// tokio-postgres says only "db error" or "error connecting to server"; the cause is in the
/// database's message or the source error.
pub(super) fn describe(error: &tokio_postgres::Error) -> String {
    if let Some(database) = error.as_db_error() {
        return format!("{}: {}", database.severity(), database.message());
    }
    match std::error::Error::source(error) {
        Some(source) => format!("{error}: {source}"),
        None => error.to_string(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn the_urls_own_timeouts_are_kept_and_defaults_replaced() {
        let defaults: Config = "postgres://kapsel@db/kapsel".parse().unwrap();
        let set = with_socket_timeouts(defaults, Role::Writer);
        assert_eq!(set.get_connect_timeout(), Some(&Duration::from_millis(INDEX_CONNECT_TIMEOUT_MS)));
        assert_eq!(set.get_keepalives_idle(), Duration::from_millis(INDEX_KEEPALIVE_IDLE_MS));
        assert_eq!(set.get_tcp_user_timeout(), Some(&Duration::from_millis(INDEX_TCP_USER_TIMEOUT_MS)));
        assert_eq!(set.get_application_name(), Some("kapsel-index-writer"));

        let chosen: Config =
            "postgres://kapsel@db/kapsel?connect_timeout=2&keepalives_idle=60&application_name=ops".parse().unwrap();
        let kept = with_socket_timeouts(chosen, Role::Query);
        assert_eq!(kept.get_connect_timeout(), Some(&Duration::from_secs(2)));
        assert_eq!(kept.get_keepalives_idle(), Duration::from_secs(60));
        assert_eq!(kept.get_application_name(), Some("ops"));
    }
}
