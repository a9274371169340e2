//! Metering: every admitted request becomes a usage event with a unique id,
//! flushed in batches to the control plane's usage store (which ignores ids it
//! has seen). Before a request is answered its event is already outside the
//! process: appended to this replica's journal (one `write`, which the kernel
//! keeps when the process is SIGKILLed; machine loss is another matter, see
//! docs/metering-and-billing.md). A flush closes the journal's segment and
//! removes it once its events are delivered; a segment left behind — the
//! store away, or the process killed — is a spool file, delivered by the next
//! flush of whichever replica takes this spool directory. Nothing is dropped;
//! something delivered twice is counted once.

use std::collections::HashSet;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use indigo_core::api::{UsageBatch, UsageBatchResult, UsageEvent};
use uuid::Uuid;

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

    #[tracing::instrument(name = "usage.deliver", skip_all, fields(otel.kind = "client", events = events.len()))]
    async fn deliver(&self, events: &[UsageEvent]) -> anyhow::Result<UsageBatchResult> {
        let batch = UsageBatch { events: events.to_vec() };
        let request = self.http.post(&self.url).headers(indigo_core::traces::context_headers());
        let response = request.bearer_auth(&self.token).json(&batch).send().await?;
        let status = response.status();
        if !status.is_success() {
            anyhow::bail!("usage store answered {status}: {}", response.text().await.unwrap_or_default());
        }
        Ok(response.json().await?)
    }
}

/// What every request shares: the events not yet flushed, and the journal
/// segment they are written to.
#[derive(Clone)]
pub struct Meter {
    events: Arc<Mutex<Vec<UsageEvent>>>,
    /// The open segment: `<spool>/<v7>.jsonl.open`, renamed to `.jsonl` when
    /// closed. Requests append to it together, each holding the read side
    /// until its event is also in `events`; a flush takes the write side to
    /// close it, so the events it takes are exactly the lines of the segment.
    journal: Arc<RwLock<Option<Segment>>>,
    /// Events the journal could not take (the disk refused): until they are
    /// delivered, a failed delivery spools them, as the journal would have.
    unjournaled: Arc<Mutex<HashSet<Uuid>>>,
    sink: Option<UsageSink>,
    spool: PathBuf,
    /// Tests make the journal refuse writes, as a full disk would.
    #[cfg(test)]
    journal_refuses: Arc<std::sync::atomic::AtomicBool>,
}

struct Segment {
    path: PathBuf,
    file: File,
}

/// Largest batch sent at once.
const MAX_BATCH: usize = 5_000;
const OPEN: &str = "open";

impl Meter {
    /// `sink: None` keeps events in memory only (tests of the storefront
    /// alone). Segments a killed predecessor left open become spool files.
    pub fn new(sink: Option<UsageSink>, spool: PathBuf) -> Self {
        if sink.is_some()
            && let Ok(entries) = std::fs::read_dir(&spool)
        {
            for path in entries.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == OPEN)) {
                if let Err(error) = std::fs::rename(&path, path.with_extension("")) {
                    tracing::warn!(%error, path = %path.display(), "cannot recover a usage journal segment");
                }
            }
        }
        Self {
            events: Arc::default(),
            journal: Arc::default(),
            unjournaled: Arc::default(),
            sink,
            spool,
            #[cfg(test)]
            journal_refuses: Arc::default(),
        }
    }

    pub fn record(&self, event: UsageEvent) {
        if self.sink.is_none() {
            self.events.lock().expect("meter lock").push(event);
            return;
        }
        let mut line = serde_json::to_vec(&event).expect("a usage event serializes");
        line.push(b'\n');
        let journal = match self.append(&line) {
            Ok(journal) => journal,
            Err(error) => {
                // The disk refusing costs the crash safety until the next flush, not the event. The
                // segment stays as it is: what other requests wrote there is theirs.
                tracing::warn!(%error, "usage journal write failed; the event is kept in memory until delivered");
                self.unjournaled.lock().expect("meter lock").insert(event.id);
                self.events.lock().expect("meter lock").push(event);
                return;
            }
        };
        self.events.lock().expect("meter lock").push(event);
        drop(journal);
    }

    /// Appends `line` to the open segment, opening one first if need be, and
    /// returns the read side still held. One `write` of a line opened for
    /// appending: the kernel puts it whole at the end, whoever else appends
    /// at the same time; a line torn by machine loss is skipped when read back.
    fn append(&self, line: &[u8]) -> anyhow::Result<std::sync::RwLockReadGuard<'_, Option<Segment>>> {
        #[cfg(test)]
        if self.journal_refuses.load(std::sync::atomic::Ordering::Relaxed) {
            anyhow::bail!("the journal refuses writes (test)");
        }
        loop {
            let journal = self.journal.read().expect("journal lock");
            if let Some(segment) = journal.as_ref() {
                (&segment.file).write_all(line)?;
                return Ok(journal);
            }
            drop(journal);
            let mut journal = self.journal.write().expect("journal lock");
            if journal.is_none() {
                std::fs::create_dir_all(&self.spool)?;
                let path = self.spool.join(format!("{}.jsonl.{OPEN}", uuid::Uuid::now_v7()));
                let file = std::fs::OpenOptions::new().create_new(true).append(true).open(&path)?;
                *journal = Some(Segment { path, file });
            }
        }
    }

    /// How many events wait to be flushed.
    pub fn pending(&self) -> usize {
        self.events.lock().expect("meter lock").len()
    }

    /// Sends everything recorded, spooled batches first. The segment holding
    /// the events taken is closed; it is removed once they are all delivered,
    /// and otherwise stays as a spool file for the next flush.
    pub async fn flush(&self) -> anyhow::Result<()> {
        let Some(sink) = &self.sink else { return Ok(()) };
        self.retry_spooled(sink).await?;
        let (events, segment) = {
            // Waits out the requests appending now: each one's event is in `events` when it lets go.
            let mut journal = self.journal.write().expect("journal lock");
            let segment = journal.take().map(|segment| close(&segment.path)).transpose()?;
            (std::mem::take(&mut *self.events.lock().expect("meter lock")), segment)
        };
        let mut unsent = Unsent { events_left: &self.events, events, sent: 0 };
        let mut delivered = true;
        while unsent.sent < unsent.events.len() {
            let chunk = &unsent.events[unsent.sent..unsent.events.len().min(unsent.sent + MAX_BATCH)];
            if let Err(error) = sink.deliver(chunk).await {
                tracing::warn!(%error, events = chunk.len(), "usage delivery failed; the events stay spooled");
                // The journaled ones are in the closed segment; the others are spooled now.
                let unjournaled = self.unjournaled.lock().expect("meter lock").clone();
                let loose: Vec<UsageEvent> = chunk.iter().filter(|e| unjournaled.contains(&e.id)).cloned().collect();
                if !loose.is_empty() {
                    spool_batch(&self.spool, &loose)?;
                }
                delivered = false;
            }
            // Delivered or on disk now.
            let mut unjournaled = self.unjournaled.lock().expect("meter lock");
            chunk.iter().for_each(|e| {
                unjournaled.remove(&e.id);
            });
            drop(unjournaled);
            unsent.sent += chunk.len();
        }
        if delivered && let Some(segment) = segment {
            std::fs::remove_file(segment)?;
        }
        Ok(())
    }

    async fn retry_spooled(&self, sink: &UsageSink) -> anyhow::Result<()> {
        let Ok(entries) = std::fs::read_dir(&self.spool) else { return Ok(()) };
        let mut files: Vec<PathBuf> =
            entries.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "jsonl")).collect();
        files.sort();
        for file in files {
            // A torn last line (the machine lost mid-write) was never answered: skip it.
            let events: Vec<UsageEvent> =
                std::fs::read_to_string(&file)?.lines().filter_map(|line| serde_json::from_str(line).ok()).collect();
            // Stop at the first failure: the store is still away.
            sink.deliver(&events).await?;
            std::fs::remove_file(&file)?;
        }
        Ok(())
    }
}

/// Events a flush took. Those not yet tried when it is dropped (the flush
/// cancelled mid-delivery, as when the process stops) go back to the front of
/// the events still to flush: nothing is lost, and one delivered twice (it is
/// also in the closed segment) is ignored by the store.
struct Unsent<'a> {
    events_left: &'a Mutex<Vec<UsageEvent>>,
    events: Vec<UsageEvent>,
    sent: usize,
}

impl Drop for Unsent<'_> {
    fn drop(&mut self) {
        if self.sent < self.events.len() {
            let rest = self.events.split_off(self.sent);
            let mut left = self.events_left.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            left.splice(0..0, rest);
        }
    }
}

/// Closes an open segment: from now on it is a spool file.
fn close(open: &Path) -> std::io::Result<PathBuf> {
    let closed = open.with_extension("");
    std::fs::rename(open, &closed)?;
    Ok(closed)
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
        let kept: Vec<uuid::Uuid> = meter.events.lock().unwrap().iter().map(|e| e.id).collect();
        assert_eq!(kept.len(), 4, "the three in flight and the one recorded since");
        assert_eq!(kept[..3], recorded.iter().map(|e| e.id).collect::<Vec<_>>()[..], "in their order, first");
        held.abort();
        let _ = std::fs::remove_dir_all(spool);
    }

    /// The journal refusing a write (a full disk) loses nothing: an event it
    /// did not take is kept, and spooled when its delivery fails, beside the
    /// segment of those it took; the segment other requests wrote to stays.
    #[tokio::test]
    async fn an_event_the_journal_refused_is_spooled_when_its_delivery_fails() {
        let spool = std::env::temp_dir().join(format!("indigo-meter-test-{}", uuid::Uuid::new_v4().simple()));
        // Nothing listens there: every delivery fails.
        let meter = Meter::new(Some(UsageSink::new("http://127.0.0.1:9", "token")), spool.clone());
        let journaled = event();
        meter.record(journaled.clone());
        meter.journal_refuses.store(true, std::sync::atomic::Ordering::Relaxed);
        let refused = event();
        meter.record(refused.clone());
        meter.journal_refuses.store(false, std::sync::atomic::Ordering::Relaxed);
        let later = event();
        meter.record(later.clone());
        meter.flush().await.unwrap();

        let mut on_disk: Vec<uuid::Uuid> = std::fs::read_dir(&spool)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .inspect(|path| assert_eq!(path.extension().unwrap(), "jsonl", "closed files only: {path:?}"))
            .flat_map(|path| {
                let text = std::fs::read_to_string(path).unwrap();
                text.lines().map(|l| serde_json::from_str::<UsageEvent>(l).unwrap().id).collect::<Vec<_>>()
            })
            .collect();
        on_disk.sort();
        let mut recorded = vec![journaled.id, refused.id, later.id];
        recorded.sort();
        assert_eq!(on_disk, recorded, "each event on disk once, for the next flush");
        let _ = std::fs::remove_dir_all(spool);
    }

    /// An answered request's event is on disk before the answer goes out: a
    /// replica killed before it flushed leaves them in its journal, and the
    /// next replica on the same spool directory takes them as spooled.
    #[test]
    fn events_are_journaled_when_recorded_and_recovered_after_a_kill() {
        let spool = std::env::temp_dir().join(format!("indigo-meter-test-{}", uuid::Uuid::new_v4().simple()));
        let meter = Meter::new(Some(UsageSink::new("http://127.0.0.1:9", "token")), spool.clone());
        let recorded: Vec<UsageEvent> = (0..3).map(|_| event()).collect();
        for event in &recorded {
            meter.record(event.clone());
        }
        let files = |extension: &str| -> Vec<PathBuf> {
            let mut found: Vec<PathBuf> = std::fs::read_dir(&spool)
                .unwrap()
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == extension))
                .collect();
            found.sort();
            found
        };
        let open = files(OPEN);
        assert_eq!(open.len(), 1, "one open segment");
        let read = |path: &Path| -> Vec<uuid::Uuid> {
            std::fs::read_to_string(path)
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str::<UsageEvent>(l).unwrap().id)
                .collect()
        };
        let ids: Vec<uuid::Uuid> = recorded.iter().map(|e| e.id).collect();
        assert_eq!(read(&open[0]), ids, "every event, in order, before any flush");

        // Killed: nothing ran after the writes. Its successor finds them.
        drop(meter);
        let _successor = Meter::new(Some(UsageSink::new("http://127.0.0.1:9", "token")), spool.clone());
        assert!(files(OPEN).is_empty());
        let spooled = files("jsonl");
        assert_eq!(spooled.len(), 1);
        assert_eq!(read(&spooled[0]), ids, "a spool file for the next flush");
        let _ = std::fs::remove_dir_all(spool);
    }
    /// Requests append to the journal together while flushes close its
    /// segments: every event recorded reaches the store once, and no segment
    /// is left behind.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn events_recorded_while_flushes_close_segments_are_each_delivered_once() {
        let delivered: Arc<Mutex<Vec<uuid::Uuid>>> = Arc::default();
        let store = axum::Router::new().route(
            "/v1/usage/events",
            axum::routing::post({
                let delivered = delivered.clone();
                move |axum::Json(batch): axum::Json<UsageBatch>| async move {
                    let accepted = batch.events.len() as u64;
                    delivered.lock().unwrap().extend(batch.events.into_iter().map(|e| e.id));
                    axum::Json(UsageBatchResult { accepted, duplicates: 0, rejected: vec![] })
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, store).await });
        let spool = std::env::temp_dir().join(format!("indigo-meter-test-{}", uuid::Uuid::new_v4().simple()));
        let meter = Meter::new(Some(UsageSink::new(&url, "token")), spool.clone());

        // Halfway through, each recorder waits for a flush to end, so that
        // flushes run while events are recorded however the threads are scheduled.
        let flushes = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let recorders: Vec<_> = (0..4)
            .map(|_| {
                let (meter, flushes) = (meter.clone(), flushes.clone());
                std::thread::spawn(move || {
                    let mut seen = None;
                    (0..2_000)
                        .map(|n| {
                            if n == 1_000 {
                                seen = Some(flushes.load(std::sync::atomic::Ordering::SeqCst));
                            }
                            while seen == Some(flushes.load(std::sync::atomic::Ordering::SeqCst)) {
                                std::thread::yield_now();
                            }
                            let event = event();
                            let id = event.id;
                            meter.record(event);
                            id
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        while !recorders.iter().all(|r| r.is_finished()) {
            meter.flush().await.unwrap();
            flushes.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        meter.flush().await.unwrap();
        let mut recorded: Vec<uuid::Uuid> = recorders.into_iter().flat_map(|r| r.join().unwrap()).collect();
        let mut delivered = delivered.lock().unwrap().clone();
        recorded.sort();
        delivered.sort();
        assert_eq!(delivered.len(), recorded.len(), "each event delivered once");
        assert_eq!(delivered, recorded);
        let left: Vec<PathBuf> = std::fs::read_dir(&spool).unwrap().flatten().map(|e| e.path()).collect();
        assert_eq!(left, Vec::<PathBuf>::new(), "every segment removed once delivered");
        let _ = std::fs::remove_dir_all(spool);
    }
}
