//! The demo's second scenario: ticket activity as AWS DMS change records, joined with ticket,
//! event and customer tables, phone masked and e-mail tokenized, into `sport_event_activity`.

use anyhow::Context;
use coordinator::ClusterSettings;
use proto::memory::{MemoryLeaseTable, MemoryReferenceSource, MemoryStream};
use proto::{Clock, Warehouse, WorkerId};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use testkit::cluster::LocalCluster;
use testkit::tickets::{self, TicketWorld};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use worker::pipeline::transform::TokenKey;
use worker::reference_set::ReferenceSet;
use worker::{NodeConfig, NodePorts, Pipeline, PipelineConfig};

pub struct TicketDemo {
    cluster: LocalCluster,
    world: Arc<Mutex<TicketWorld>>,
    producer: JoinHandle<()>,
    key: TokenKey,
    pub key_source: &'static str,
    pub changes: Arc<Mutex<usize>>,
}

/// What the ticket table holds against the source.
#[derive(Debug, Default)]
pub struct TicketVerdict {
    pub changes: usize,
    pub rows: usize,
    pub expected: usize,
    /// Rows missing, extra, or not equal to the source joined, masked and tokenized.
    pub wrong: usize,
}

impl TicketDemo {
    pub async fn start(
        warehouse: Arc<dyn Warehouse>,
        failover: Duration,
        rate: u32,
        duration: Duration,
        seed: u64,
    ) -> anyhow::Result<Self> {
        let (key, key_source) = match std::env::var(tickets::KEY_ENV) {
            Ok(_) => (TokenKey::from_env(tickets::KEY_ENV)?, "from TRIBUTARY_TOKENIZE_KEY"),
            Err(_) => {
                // A key for this run only, never printed: set TRIBUTARY_TOKENIZE_KEY to choose one.
                let mut bytes = [0u8; 32];
                std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut bytes)?;
                std::env::set_var(tickets::KEY_ENV, hex_key(&bytes));
                (TokenKey::from_env(tickets::KEY_ENV)?, "random for this run (set TRIBUTARY_TOKENIZE_KEY)")
            }
        };
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x71c4e7);
        let world = TicketWorld::new(&mut rng, 8, 30, 60, Clock::system().now_ms());
        let refs = MemoryReferenceSource::new();
        world.load_references(&refs);
        let config = PipelineConfig::from_toml(tickets::PIPELINE)?;
        let set = ReferenceSet::start(Arc::new(refs), &config.reference_specs()).await?;
        let pipeline = Pipeline::new(&config, Arc::new(set))?;
        let stream = MemoryStream::new(2, Clock::system());
        let ports = NodePorts {
            table: Arc::new(MemoryLeaseTable::new()),
            reader: Arc::new(stream.clone()),
            warehouse,
            mapper: Arc::new(pipeline),
        };
        let mut template = NodeConfig::new(WorkerId::new("t"), ClusterSettings::with_failover(failover));
        template.consumer.idle_read_interval = Duration::from_millis(200);
        template.sink.batch_latency = Duration::from_millis(300);
        let mut cluster = LocalCluster::new(ports, template);
        for i in 0..2 {
            cluster
                .start_node(Some(WorkerId::new(format!("tickets-{i}"))))
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        let world = Arc::new(Mutex::new(world));
        let changes = Arc::new(Mutex::new(0));
        let producer = {
            let (world, changes) = (world.clone(), changes.clone());
            tokio::spawn(async move {
                let load = world.lock().unwrap().full_load(&mut rng);
                for (key, data) in load {
                    stream.put(&key, data);
                }
                let started = Instant::now();
                let mut ticker = tokio::time::interval(Duration::from_millis(50));
                let mut written = 0u64;
                while started.elapsed() < duration {
                    ticker.tick().await;
                    let due = (started.elapsed().as_secs_f64() * f64::from(rate)) as u64;
                    while written < due {
                        let (key, data) = world.lock().unwrap().change(&mut rng);
                        stream.put(&key, data);
                        written += 1;
                        *changes.lock().unwrap() += 1;
                    }
                }
            })
        };
        Ok(Self { cluster, world, producer, key, key_source, changes })
    }

    pub fn producing(&self) -> bool {
        !self.producer.is_finished()
    }

    /// Rows the table should hold now (sold, not refunded tickets).
    pub fn expected_rows(&self) -> usize {
        self.world.lock().unwrap().activity.values().filter(|a| a.is_some()).count()
    }

    pub async fn stop(&mut self) {
        self.cluster.stop_all().await;
    }

    /// Compares `sport_event_activity` in the SQLite file with the source, joined by hand.
    pub fn verify(&self, db: &Path) -> anyhow::Result<TicketVerdict> {
        let world = self.world.lock().unwrap();
        let conn = rusqlite::Connection::open(db)?;
        let mut stmt = conn
            .prepare(&format!(
                "SELECT ticket_id, purchased_by, sport_type, seat_level, customer_name, email, phone FROM {}",
                adapters::sql_text::quote_ident(tickets::TARGET)?
            ))
            .context("reading sport_event_activity")?;
        let mut seen = BTreeMap::new();
        let mut v = TicketVerdict { changes: *self.changes.lock().unwrap(), ..TicketVerdict::default() };
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)? as u64,
                r.get::<_, i64>(1)? as u64,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, Option<String>>(4)?,
                r.get::<_, Option<String>>(5)?,
                r.get::<_, Option<String>>(6)?,
            ))
        })?;
        for row in rows {
            let (id, buyer, sport, level, name, email, phone) = row?;
            v.rows += 1;
            let expected = world.activity.get(&id).cloned().flatten().map(|a| {
                let t = &world.tickets[&id];
                let e = &world.events[&t["event_id"].as_u64().unwrap_or(0)];
                let c = &world.customers[&a.purchased_by];
                (
                    a.purchased_by,
                    e["sport_type"].as_str().unwrap_or("").to_owned(),
                    t["seat_level"].as_str().unwrap_or("").to_owned(),
                    c["name"].as_str().map(str::to_owned),
                    c["email"].as_str().map(|m| self.key.tokenize(m)),
                    c["phone"].as_str().map(worker::pipeline::transform::mask),
                )
            });
            let got = (buyer, sport, level, name, email, phone);
            if seen.insert(id, ()).is_some() || expected.as_ref() != Some(&got) {
                v.wrong += 1;
            }
        }
        v.expected = world.activity.values().filter(|a| a.is_some()).count();
        v.wrong += world.activity.iter().filter(|(id, a)| a.is_some() && !seen.contains_key(*id)).count();
        Ok(v)
    }
}

fn hex_key(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
