//! Database errors that are the request's fault, not the server's: both
//! daemons answer them with a `4xx` and a stable code instead of a `500`.

/// SQLSTATEs of text PostgreSQL cannot store: the NUL character (U+0000),
/// which no `text` value may hold, or a character the database's encoding lacks.
const UNSTORABLE_TEXT: [&str; 2] = ["22021", "22P05"];

/// The stable code and message for a request whose text the database refused.
pub const INVALID_TEXT: (&str, &str) =
    ("invalid_text", "text must not contain the NUL character (U+0000) or characters the database cannot store");

/// Whether `error` means that the request carried text PostgreSQL cannot store.
pub fn is_unstorable_text(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(e) if e.code().is_some_and(|code| UNSTORABLE_TEXT.contains(&code.as_ref())))
}
