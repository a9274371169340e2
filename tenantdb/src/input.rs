//! Database errors that are the request's fault, not the server's: both
//! daemons answer them with a `4xx` and a stable code instead of a `500`.

/// SQLSTATEs of text PostgreSQL cannot store: the NUL character (U+0000),
/// which no `text` value may hold, or a character the database's encoding lacks.
const UNSTORABLE_TEXT: [&str; 2] = ["22021", "22P05"];

/// When `error` is the request's fault, the stable code and message to answer with.
pub fn client_fault(error: &sqlx::Error) -> Option<(&'static str, &'static str)> {
    let unstorable = matches!(error, sqlx::Error::Database(e)
        if e.code().is_some_and(|code| UNSTORABLE_TEXT.contains(&code.as_ref())));
    unstorable.then_some((
        "invalid_text",
        "text must not contain the NUL character (U+0000) or characters the database cannot store",
    ))
}
