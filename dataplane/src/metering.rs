//! Metering: every admitted request becomes a usage event with a unique id,
//! buffered in memory and flushed in batches to the control plane's usage store
//! (which ignores ids it has seen). A batch that cannot be delivered is written
//! to the spool directory and retried; nothing is dropped.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use indigo_core::api::{UsageBatch, UsageBatchResult, UsageEvent};

/// Where batches go.
#[derive(Clone)]
pub struct UsageSink {
    http: reqwest::Client,
    url: String,
    token: String,
}

impl UsageSink {
    pub fn new(control_plane_url: &str, token: &str) -> Self {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .expect("a client with only a timeout set always builds");
        Self {
            http,
            url: format!("{}/v1/usage/events", control_plane_url.trim_end_matches('/')),
            token: token.to_owned(),
        }
    }

    async fn deliver(&self, events: &[UsageEvent]) -> anyhow::Result<UsageBatchResult> {
        let batch = UsageBatch { events: events.to_vec() };
        let response = self.http.post(&self.url).bearer_auth(&self.token).json(&batch).send().await?;
        let status = response.status();
        if !status.is_success() {
            anyhow::bail!("usage store answered {status}: {}", response.text().await.unwrap_or_default());
        }
        Ok(response.json().await?)
    }
}

/// The in-memory buffer, shared by every request.
#[derive(Clone)]
pub struct Meter {
    buffer: Arc<Mutex<Vec<UsageEvent>>>,
    sink: Option<UsageSink>,
    spool: PathBuf,
}

/// Largest batch sent at once.
const MAX_BATCH: usize = 5_000;

impl Meter {
    /// `sink: None` keeps events in memory only (tests of the storefront alone).
    pub fn new(sink: Option<UsageSink>, spool: PathBuf) -> Self {
        Self { buffer: Arc::default(), sink, spool }
    }

    pub fn record(&self, event: UsageEvent) {
        self.buffer.lock().expect("meter lock").push(event);
    }

    /// How many events wait in memory.
    pub fn pending(&self) -> usize {
        self.buffer.lock().expect("meter lock").len()
    }

    /// Sends everything buffered, spooled batches first; what cannot be sent is spooled.
    pub async fn flush(&self) -> anyhow::Result<()> {
        let Some(sink) = &self.sink else { return Ok(()) };
        self.retry_spooled(sink).await?;
        let events = std::mem::take(&mut *self.buffer.lock().expect("meter lock"));
        let mut unsent = Unsent { buffer: &self.buffer, events, sent: 0 };
        while unsent.sent < unsent.events.len() {
            let chunk = &unsent.events[unsent.sent..unsent.events.len().min(unsent.sent + MAX_BATCH)];
            if let Err(error) = sink.deliver(chunk).await {
                tracing::warn!(%error, events = chunk.len(), "usage delivery failed; spooling the batch");
                // Should the disk refuse them too, they stay for the next flush.
                spool_batch(&self.spool, chunk)?;
            }
            unsent.sent += chunk.len();
        }
        Ok(())
    }

    async fn retry_spooled(&self, sink: &UsageSink) -> anyhow::Result<()> {
        let Ok(entries) = std::fs::read_dir(&self.spool) else { return Ok(()) };
        let mut files: Vec<PathBuf> =
            entries.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "jsonl")).collect();
        files.sort();
        for file in files {
            let events: Vec<UsageEvent> = std::fs::read_to_string(&file)?
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(serde_json::from_str)
                .collect::<Result<_, _>>()?;
            // Stop at the first failure: the store is still away.
            sink.deliver(&events).await?;
            std::fs::remove_file(&file)?;
        }
        Ok(())
    }
}

/// Events a flush took out of the buffer. Those neither delivered nor spooled
/// when it is dropped (an error, or the flush cancelled mid-delivery, as when
/// the process stops) go back to the front of the buffer: nothing is lost,
/// and one delivered twice is ignored by the store.
struct Unsent<'a> {
    buffer: &'a Mutex<Vec<UsageEvent>>,
    events: Vec<UsageEvent>,
    sent: usize,
}

impl Drop for Unsent<'_> {
    fn drop(&mut self) {
        if self.sent < self.events.len() {
            let rest = self.events.split_off(self.sent);
            let mut buffer = self.buffer.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            buffer.splice(0..0, rest);
        }
    }
}

fn spool_batch(dir: &Path, events: &[UsageEvent]) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let name = format!("{}.jsonl", uuid::Uuid::now_v7());
    let partial = dir.join(format!("{name}.partial"));
    let mut text = String::new();
    for event in events {
        text.push_str(&serde_json::to_string(event)?);
        text.push('\n');
    }
    // Written aside, then renamed: a crash never leaves half a batch to replay.
    std::fs::write(&partial, text)?;
    std::fs::rename(&partial, dir.join(name))?;
    Ok(())
}

/// Flushes every `interval` until cancelled.
pub async fn flush_forever(meter: Meter, interval: Duration) {
    loop {
        tokio::time::sleep(interval).await;
        if let Err(error) = meter.flush().await {
            tracing::warn!(%error, "usage flush failed; will retry");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event() -> UsageEvent {
        UsageEvent {
            id: uuid::Uuid::now_v7(),
            tenant_id: indigo_core::tenant::TenantId::new(),
            event_type: "api_call".into(),
            quantity: 1.0,
            route: None,
            status: None,
            latency_ms: None,
            occurred_at: chrono::Utc::now(),
            ai: None,
        }
    }

    /// A flush stopped while the store has not answered (the periodic flush
    /// aborted at shutdown) keeps its events for the final flush.
    #[tokio::test]
    async fn a_flush_cancelled_mid_delivery_keeps_its_events() {
        // Accepts connections and never answers.
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", silent.local_addr().unwrap());
        let held = tokio::spawn(async move {
            let mut connections = Vec::new();
            while let Ok((connection, _)) = silent.accept().await {
                connections.push(connection);
            }
        });
        let spool = std::env::temp_dir().join(format!("indigo-meter-test-{}", uuid::Uuid::new_v4().simple()));
        let meter = Meter::new(Some(UsageSink::new(&url, "token")), spool.clone());
        let recorded: Vec<UsageEvent> = (0..3).map(|_| event()).collect();
        for event in &recorded {
            meter.record(event.clone());
        }
        let cancelled = tokio::time::timeout(Duration::from_millis(200), meter.flush()).await;
        assert!(cancelled.is_err(), "the store never answers, so the flush is still waiting");
        meter.record(event());
        let kept: Vec<uuid::Uuid> = meter.buffer.lock().unwrap().iter().map(|e| e.id).collect();
        assert_eq!(kept.len(), 4, "the three in flight and the one recorded since");
        assert_eq!(kept[..3], recorded.iter().map(|e| e.id).collect::<Vec<_>>()[..], "in their order, first");
        held.abort();
        let _ = std::fs::remove_dir_all(spool);
    }
}
