//! Database errors that mean "try again", told apart from faults. Both
//! daemons answer them with `503` and a stable code instead of a `500`.

use crate::schema::MOVED_SQLSTATE;

/// SQLSTATEs after which PostgreSQL asks the client to retry the transaction.
const RETRY_TRANSACTION: [&str; 2] = ["40001", "40P01"];

/// SQLSTATE of a statement cancelled, as `statement_timeout` does.
const CANCELLED: &str = "57014";

/// SQLSTATEs of a server that is shutting down, starting, out of connections,
/// or without the database.
const SERVER_UNAVAILABLE: [&str; 4] = ["57P01", "57P03", "53300", "3D000"];

/// SQLSTATEs with which the server ends a connection (an administrator, a
/// crash): the connection is gone, whatever its statement was.
const CONNECTION_ENDED: [&str; 2] = ["57P01", "57P02"];

/// Whether `error` is the connection's rather than its statement's: the
/// server is gone or ended it. Nothing of a statement that failed so before
/// it began has run, and the same work may go to another connection.
pub fn connection_lost(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Database(error) => error.code().is_some_and(|code| CONNECTION_ENDED.contains(&code.as_ref())),
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed => false,
        _ => true,
    }
}

/// Database errors that are no fault of the request's and no bug of ours:
/// each is a `503` the client may retry. A storefront response carries it as
/// an extension, and the tenant gate replays the request whole first where
/// that can help (every handler runs in one transaction, and this one
/// committed nothing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryLater {
    /// A write met a closed move fence: the tenant now lives in another database.
    Moved,
    /// PostgreSQL aborted the transaction (a deadlock or a serialization
    /// failure) and asks for it to be run again.
    Aborted,
    /// The database is down, starting, saturated or gone.
    Unreachable,
    /// The statement ran past its timeout and was cancelled.
    TooSlow,
}

impl RetryLater {
    pub fn of(error: &sqlx::Error) -> Option<Self> {
        match error {
            sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => Some(Self::Unreachable),
            sqlx::Error::Database(error) => match error.code()?.as_ref() {
                MOVED_SQLSTATE => Some(Self::Moved),
                code if RETRY_TRANSACTION.contains(&code) => Some(Self::Aborted),
                code if SERVER_UNAVAILABLE.contains(&code) => Some(Self::Unreachable),
                CANCELLED => Some(Self::TooSlow),
                _ => None,
            },
            _ => None,
        }
    }

    pub fn code(self) -> &'static str {
        match self {
            Self::Moved => "tenant_moving",
            Self::Aborted => "transaction_aborted",
            Self::Unreachable => "database_unavailable",
            Self::TooSlow => "query_timeout",
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            Self::Moved => "this tenant is moving to another database; retry shortly",
            Self::Aborted => "the database aborted this request's transaction; retry",
            Self::Unreachable => "the database cannot be reached right now; retry shortly",
            Self::TooSlow => "the query took longer than this API allows and was cancelled; narrow it or retry later",
        }
    }
}
