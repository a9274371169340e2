//! The mail outbox: workflow steps write messages into `outbox_emails` in
//! their own transaction (one per step, keyed by the step's idempotency key);
//! this sender delivers them through an SMTP relay, or logs them when none is
//! configured. A message is marked sent only after the relay accepted it.

use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::config::Config;

#[derive(Debug, Clone)]
pub struct Mailer {
    relay: Option<String>,
    from: String,
}

#[derive(Debug, thiserror::Error)]
pub enum MailError {
    #[error("SMTP relay {relay}: {source}")]
    Io { relay: String, source: std::io::Error },
    #[error("SMTP relay {relay} refused `{command}`: {reply}")]
    Refused { relay: String, command: String, reply: String },
}

struct Message {
    id: uuid::Uuid,
    to: String,
    subject: String,
    body: String,
}

impl Mailer {
    pub fn new(config: &Config) -> Self {
        Self::with_relay(config.smtp_relay.clone(), config.mail_from.clone())
    }

    /// `relay`: `host:port`, or `None` to log mail instead of sending it.
    pub fn with_relay(relay: Option<String>, from: String) -> Self {
        Self { relay, from }
    }

    async fn deliver(&self, message: &Message) -> Result<(), MailError> {
        let Some(relay) = &self.relay else {
            tracing::info!(to = %message.to, subject = %message.subject, "mail (no smtp_relay configured, logged only)");
            return Ok(());
        };
        let io = |source| MailError::Io { relay: relay.clone(), source };
        let stream = TcpStream::connect(relay).await.map_err(io)?;
        let (read, mut write) = stream.into_split();
        let mut replies = BufReader::new(read).lines();
        let mut expect = async |command: &str, code: &str| -> Result<(), MailError> {
            if !command.is_empty() {
                write.write_all(format!("{command}\r\n").as_bytes()).await.map_err(io)?;
            }
            // Multi-line replies continue with `NNN-`; the last line is `NNN `.
            loop {
                let line = replies.next_line().await.map_err(io)?.unwrap_or_default();
                if line.len() < 4 || !line.starts_with(code) {
                    return Err(MailError::Refused { relay: relay.clone(), command: command.into(), reply: line });
                }
                if line.as_bytes()[3] == b' ' {
                    return Ok(());
                }
            }
        };
        expect("", "220").await?;
        expect("EHLO indigo", "250").await?;
        expect(&format!("MAIL FROM:<{}>", self.from), "250").await?;
        expect(&format!("RCPT TO:<{}>", message.to), "250").await?;
        expect("DATA", "354").await?;
        // A line of the body starting with `.` gets another (RFC 5321 §4.5.2).
        let body: String = message
            .body
            .lines()
            .map(|l| if l.starts_with('.') { format!(".{l}\r\n") } else { format!("{l}\r\n") })
            .collect();
        let data = format!(
            "From: <{}>\r\nTo: <{}>\r\nSubject: {}\r\nMessage-ID: <{}@indigo>\r\n\r\n{body}.",
            self.from, message.to, message.subject, message.id
        );
        expect(&data, "250").await?;
        expect("QUIT", "221").await
    }
}

/// Delivers unsent mail every few seconds, until the task is aborted.
/// `SKIP LOCKED` lets several daemons share the outbox without sending twice.
pub async fn send_forever(db: sqlx::PgPool, mailer: Mailer) {
    loop {
        if let Err(error) = send_batch(&db, &mailer).await {
            tracing::warn!(%error, "outbox: cannot read unsent mail");
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

pub async fn send_batch(db: &sqlx::PgPool, mailer: &Mailer) -> Result<usize, sqlx::Error> {
    let mut tx = db.begin().await?;
    let rows: Vec<(uuid::Uuid, String, String, String)> = sqlx::query_as(
        "SELECT id, to_address, subject, body FROM outbox_emails
         WHERE sent_at IS NULL AND attempts < 20 ORDER BY created_at LIMIT 20 FOR UPDATE SKIP LOCKED",
    )
    .fetch_all(&mut *tx)
    .await?;
    let mut sent = 0;
    for (id, to, subject, body) in rows {
        let message = Message { id, to, subject, body };
        match mailer.deliver(&message).await {
            Ok(()) => {
                sqlx::query("UPDATE outbox_emails SET sent_at = now(), attempts = attempts + 1 WHERE id = $1")
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                sent += 1;
            }
            Err(error) => {
                tracing::warn!(%error, email = %id, "outbox: delivery failed; will retry");
                sqlx::query("UPDATE outbox_emails SET attempts = attempts + 1, last_error = $2 WHERE id = $1")
                    .bind(id)
                    .bind(error.to_string())
                    .execute(&mut *tx)
                    .await?;
            }
        }
    }
    tx.commit().await?;
    Ok(sent)
}
