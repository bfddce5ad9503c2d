//! The reference tables of a pipeline: loaded at start (a table that cannot be loaded fails the
//! start), then kept fresh by one `Refresher` actor each — following the table's change feed
//! every `poll_interval`, or reloading it whole every `refresh_interval` when it has none —
//! under a supervisor. A refresh that fails leaves the last snapshot in service and is counted
//! (`reference_refresh_failures_total`); a refresher that panics is counted the same way, logged,
//! and started again, reloading the table whole after its refresh interval.

use crate::reference_cache::{CacheError, ReferenceCache};
use proto::{ReferenceError, ReferenceSource};
use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tracing::{error, info, warn};

/// How one reference table is loaded and kept fresh.
#[derive(Clone, Debug, PartialEq)]
pub struct ReferenceSpec {
    pub name: String,
    /// The table in the reference source.
    pub table: String,
    /// The attribute holding the lookup key.
    pub key: String,
    /// The attributes kept (the ones the pipeline reads).
    pub attributes: Vec<String>,
    /// Full reload period when the table has no change feed.
    pub refresh_interval: Duration,
    /// How often the change feed is read when there is one.
    pub poll_interval: Duration,
    /// Refuse to hold more than this many items (a cache that silently dropped rows would join
    /// wrong values).
    pub max_items: usize,
}

/// Runs a rebuild of the cache's tables (a full load, a batch of changes, a fold: whole seconds
/// of CPU for millions of rows) on the blocking pool, so the runtime's workers keep serving
/// consumers and heartbeats meanwhile.
async fn rebuild<R: Send + 'static>(
    cache: &Arc<ReferenceCache>,
    work: impl FnOnce(&ReferenceCache) -> Result<(), R> + Send + 'static,
) -> Result<(), R> {
    let cache = cache.clone();
    match tokio::task::spawn_blocking(move || work(&cache)).await {
        Ok(outcome) => outcome,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        // Cancelled: the runtime is shutting down.
        Err(_) => Ok(()),
    }
}

async fn load(
    source: &dyn ReferenceSource,
    spec: &ReferenceSpec,
    cache: &Arc<ReferenceCache>,
) -> Result<Option<String>, CacheError> {
    let snapshot = source
        .load(&spec.table, &spec.key)
        .await
        .map_err(|e| CacheError::Source { name: spec.name.clone(), source: e })?;
    if snapshot.items.len() > spec.max_items {
        return Err(CacheError::TooLarge { name: spec.name.clone(), items: snapshot.items.len(), max: spec.max_items });
    }
    rebuild(cache, move |cache| {
        cache.replace(snapshot.items);
        Ok::<_, CacheError>(())
    })
    .await?;
    Ok(snapshot.cursor)
}

/// Keeps one table fresh.
struct Refresher;

#[derive(Clone)]
struct Refreshed {
    source: Arc<dyn ReferenceSource>,
    spec: ReferenceSpec,
    cache: Arc<ReferenceCache>,
}

struct RefresherState {
    table: Refreshed,
    /// Where the change feed goes on (`None`: no feed, or reload whole next).
    cursor: Option<String>,
    failed: bool,
}

struct Tick;

impl RefresherState {
    /// After a failure, wait a full refresh interval: a refusal (max_items) would otherwise
    /// repeat every poll, and turn into a full scan each time once the cursor expires.
    fn pause(&self) -> Duration {
        let spec = &self.table.spec;
        if self.cursor.is_some() && !self.failed {
            spec.poll_interval
        } else {
            spec.refresh_interval
        }
    }

    async fn refresh(&mut self) {
        let Refreshed { source, spec, cache } = &self.table;
        let outcome = match &self.cursor {
            Some(c) => match source.changes(&spec.table, &spec.key, c).await {
                Ok(Some((changes, next))) => {
                    let max = spec.max_items;
                    rebuild(cache, move |cache| cache.apply(changes, max)).await.map(|()| Some(next))
                }
                Ok(None) | Err(ReferenceError::CursorExpired) => load(source.as_ref(), spec, cache).await,
                Err(e) => Err(CacheError::Source { name: spec.name.clone(), source: e }),
            },
            None => load(source.as_ref(), spec, cache).await,
        };
        cache.refreshed(outcome.is_ok());
        self.failed = outcome.is_err();
        match outcome {
            Ok(next) => self.cursor = next,
            Err(e) => warn!(error = %e, "reference refresh failed; serving the last snapshot"),
        }
    }
}

impl Actor for Refresher {
    type Msg = Tick;
    type State = RefresherState;
    type Arguments = (Refreshed, Option<String>);

    async fn pre_start(
        &self,
        myself: ActorRef<Tick>,
        (table, cursor): Self::Arguments,
    ) -> Result<RefresherState, ActorProcessingErr> {
        let state = RefresherState { table, cursor, failed: false };
        myself.send_after(state.pause(), || Tick);
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<Tick>,
        _: Tick,
        state: &mut RefresherState,
    ) -> Result<(), ActorProcessingErr> {
        state.refresh().await;
        myself.send_after(state.pause(), || Tick);
        Ok(())
    }
}

/// Starts the refreshers, and each one again when it fails.
struct RefreshSupervisor;

impl Actor for RefreshSupervisor {
    type Msg = ();
    /// Each refresher's table, by its actor.
    type State = BTreeMap<ractor::ActorId, Refreshed>;
    type Arguments = Vec<(Refreshed, Option<String>)>;

    async fn pre_start(
        &self,
        myself: ActorRef<()>,
        tables: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        let mut children = BTreeMap::new();
        for (table, cursor) in tables {
            let (child, _) = Actor::spawn_linked(None, Refresher, (table.clone(), cursor), myself.get_cell()).await?;
            children.insert(child.get_id(), table);
        }
        Ok(children)
    }

    async fn post_stop(&self, myself: ActorRef<()>, _: &mut Self::State) -> Result<(), ActorProcessingErr> {
        myself.stop_children(None);
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<()>,
        event: SupervisionEvent,
        children: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if let SupervisionEvent::ActorFailed(cell, why) = event {
            if let Some(table) = children.remove(&cell.get_id()) {
                error!(reference = %table.spec.name, %why, "reference refresher failed; starting it again");
                table.cache.refreshed(false);
                let (child, _) = Actor::spawn_linked(None, Refresher, (table.clone(), None), myself.get_cell()).await?;
                children.insert(child.get_id(), table);
            }
        }
        Ok(())
    }
}

/// Every reference table of a pipeline, kept fresh by its refresher; they stop when the set is
/// dropped.
pub struct ReferenceSet {
    caches: BTreeMap<String, Arc<ReferenceCache>>,
    refreshers: Option<ActorRef<()>>,
}

impl Drop for ReferenceSet {
    fn drop(&mut self) {
        if let Some(supervisor) = &self.refreshers {
            supervisor.stop(None);
        }
    }
}

impl ReferenceSet {
    /// No reference tables.
    pub fn empty() -> Self {
        Self { caches: BTreeMap::new(), refreshers: None }
    }

    /// Loads every table (failing if one cannot be loaded) and starts their refreshers.
    pub async fn start(source: Arc<dyn ReferenceSource>, specs: &[ReferenceSpec]) -> Result<Self, CacheError> {
        let mut caches = BTreeMap::new();
        let mut tables = Vec::new();
        for spec in specs {
            let mut cache = ReferenceCache::new(&spec.name, spec.attributes.clone());
            cache.refresh_interval = spec.refresh_interval;
            let cache = Arc::new(cache);
            let cursor = load(source.as_ref(), spec, &cache).await?;
            info!(reference = %spec.name, items = cache.len(), bytes = cache.bytes(), change_feed = cursor.is_some(), "reference loaded");
            tables.push((Refreshed { source: source.clone(), spec: spec.clone(), cache: cache.clone() }, cursor));
            caches.insert(spec.name.clone(), cache);
        }
        let (refreshers, _) =
            Actor::spawn(None, RefreshSupervisor, tables).await.map_err(|e| CacheError::Refreshers(e.to_string()))?;
        Ok(Self { caches, refreshers: Some(refreshers) })
    }

    pub fn get(&self, name: &str) -> Option<&Arc<ReferenceCache>> {
        self.caches.get(name)
    }

    /// Every table's cache, by name.
    pub fn caches(&self) -> impl Iterator<Item = &Arc<ReferenceCache>> {
        self.caches.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::memory::MemoryReferenceSource;
    use proto::{Item, Snapshot};
    use serde_json::json;
    use std::sync::atomic::{AtomicBool, Ordering};

    fn item(name: &str) -> Item {
        json!({ "name": name }).as_object().unwrap().clone()
    }

    fn spec(name: &str) -> ReferenceSpec {
        ReferenceSpec {
            name: name.into(),
            table: name.into(),
            key: "code".into(),
            attributes: vec!["name".into()],
            refresh_interval: Duration::from_secs(30),
            poll_interval: Duration::from_secs(1),
            max_items: 1_000_000,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn follows_a_change_feed_and_refreshes_without_one() {
        let source = MemoryReferenceSource::new();
        source.create_table("country", true);
        source.create_table("plain", false);
        source.put("country", "FR", item("France"));
        source.put("plain", "a", item("A"));
        let set = ReferenceSet::start(Arc::new(source.clone()), &[spec("country"), spec("plain")]).await.unwrap();
        source.put("country", "FR", item("République française"));
        source.put("plain", "a", item("A2"));
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(set.get("country").unwrap().get_attr("FR", "name").unwrap(), "République française");
        assert_eq!(set.get("plain").unwrap().get_attr("a", "name").unwrap(), "A", "no feed: wait for the refresh");
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert_eq!(set.get("plain").unwrap().get_attr("a", "name").unwrap(), "A2");
    }

    #[tokio::test]
    async fn a_missing_or_oversized_table_fails_at_start() {
        let source = MemoryReferenceSource::new();
        assert!(ReferenceSet::start(Arc::new(source.clone()), &[spec("nope")]).await.is_err());
        source.create_table("big", false);
        for i in 0..5 {
            source.put("big", &i.to_string(), item("x"));
        }
        let err = ReferenceSet::start(Arc::new(source), &[ReferenceSpec { max_items: 3, ..spec("big") }])
            .await
            .err()
            .unwrap();
        assert!(err.to_string().contains("max_items"), "{err}");
    }

    /// A source whose change feed panics once.
    struct PanicsOnce {
        inner: MemoryReferenceSource,
        panicked: AtomicBool,
    }

    #[async_trait::async_trait]
    impl ReferenceSource for PanicsOnce {
        async fn load(&self, table: &str, key: &str) -> Result<Snapshot, ReferenceError> {
            self.inner.load(table, key).await
        }
        async fn changes(
            &self,
            table: &str,
            key: &str,
            cursor: &str,
        ) -> Result<Option<(Vec<proto::ReferenceChange>, String)>, ReferenceError> {
            if !self.panicked.swap(true, Ordering::SeqCst) {
                panic!("planted panic in the change feed");
            }
            self.inner.changes(table, key, cursor).await
        }
    }

    /// A refresher that panics is counted as a failed refresh and started again: the table
    /// reloads whole after its refresh interval and follows its feed from then on.
    #[tokio::test(start_paused = true)]
    async fn a_refresher_that_panics_is_started_again() {
        let inner = MemoryReferenceSource::new();
        inner.create_table("country", true);
        inner.put("country", "FR", item("France"));
        let source = Arc::new(PanicsOnce { inner: inner.clone(), panicked: AtomicBool::new(false) });
        let set = ReferenceSet::start(source, &[spec("country")]).await.unwrap();
        let cache = set.get("country").unwrap();
        inner.put("country", "FR", item("République française"));
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(cache.refresh_failures(), 1, "the panic is counted");
        assert_eq!(cache.get_attr("FR", "name").unwrap(), "France", "the last snapshot serves");
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert_eq!(cache.get_attr("FR", "name").unwrap(), "République française", "reloaded whole");
        inner.put("country", "DE", item("Deutschland"));
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(cache.get_attr("DE", "name").unwrap(), "Deutschland", "its feed followed again");
        assert_eq!(cache.refresh_failures(), 1);
    }
}
