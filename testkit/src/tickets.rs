//! Ticket activity: a relational source (sport events, tickets, customers) whose
//! `ticket_activity` changes arrive as AWS DMS records, and the denormalized warehouse table
//! `sport_event_activity` they become: the generator, the pipeline and the oracle.

use proto::memory::MemoryReferenceSource;
use rand::Rng;
use serde_json::{json, Value as Json};
use std::collections::BTreeMap;

pub const TARGET: &str = "sport_event_activity";
/// The variable holding the key that tokenizes e-mail addresses.
pub const KEY_ENV: &str = "TRIBUTARY_TOKENIZE_KEY";

/// The pipeline: one row per ticket, joined with its ticket, event and buyer; phone masked,
/// e-mail tokenized; versions from DMS commit order.
pub const PIPELINE: &str = r#"
format = "dms"
tokenize_key_env = "TRIBUTARY_TOKENIZE_KEY"

[[reference]]
name = "ticket"
key = "ticket_id"
[[reference]]
name = "sport_event"
key = "event_id"
[[reference]]
name = "customer"
key = "customer_id"

[[table]]
name = "sport_event_activity"
source_table = "ticket_activity"
key = ["ticket_id"]
join = [
    { reference = "ticket", key = "ticket_id", on_missing = "dead-letter" },
    { reference = "sport_event", as = "event", key = "ticket.event_id", on_missing = "dead-letter" },
    { reference = "customer", key = "purchased_by", on_missing = "null" },
]
column = [
    { name = "ticket_id", from = "ticket_id", type = "bigint" },
    { name = "purchased_by", from = "purchased_by", type = "bigint" },
    { name = "created_at", from = "created_at", type = "timestamp" },
    { name = "updated_at", from = "updated_at", type = "timestamp" },
    { name = "event_id", from = "ticket.event_id", type = "bigint" },
    { name = "sport_type", from = "event.sport_type", type = "text" },
    { name = "start_date", from = "event.start_date", type = "timestamp" },
    { name = "location", from = "event.location", type = "text" },
    { name = "seat_level", from = "ticket.seat_level", type = "text" },
    { name = "seat_location", from = "ticket.seat_location", type = "text" },
    { name = "ticket_price", from = "ticket.ticket_price", type = "double" },
    { name = "customer_name", from = "customer.name", type = "text" },
    { name = "email", from = "customer.email", type = "text", transform = "tokenize" },
    { name = "phone", from = "customer.phone", type = "text", transform = "mask" },
]
"#;

const SPORTS: [&str; 4] = ["baseball", "football", "basketball", "soccer"];
const CITIES: [&str; 5] = ["Seattle", "Boston", "Chicago", "Denver", "Austin"];
const FIRST: [&str; 6] = ["Ana", "Bo", "Chen", "Dara", "Eli", "Fatima"];
const LAST: [&str; 5] = ["Ito", "Jones", "Kowalski", "Lopez", "Musa"];

/// The state of one ticket's activity row.
#[derive(Clone, Debug, PartialEq)]
pub struct Activity {
    pub ticket_id: u64,
    pub purchased_by: u64,
    pub created_at: String,
    pub updated_at: String,
}

/// The dimension tables and the activity generator.
pub struct TicketWorld {
    pub customers: BTreeMap<u64, Json>,
    pub tickets: BTreeMap<u64, Json>,
    pub events: BTreeMap<u64, Json>,
    /// Each ticket's current activity row (`None` once deleted), the oracle.
    pub activity: BTreeMap<u64, Option<Activity>>,
    clock_ms: i64,
    record_id: u64,
}

pub fn iso(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let s = crate::ev::rfc3339(secs);
    format!("{}.{:03}Z", s.trim_end_matches('Z'), ms.rem_euclid(1000))
}

impl TicketWorld {
    pub fn new(rng: &mut impl Rng, events: u64, tickets_per_event: u64, customers: u64, start_ms: i64) -> Self {
        let mut w = TicketWorld {
            customers: BTreeMap::new(),
            tickets: BTreeMap::new(),
            events: BTreeMap::new(),
            activity: BTreeMap::new(),
            clock_ms: start_ms,
            record_id: 0,
        };
        for id in 1..=customers {
            let name = format!("{} {}", FIRST[rng.gen_range(0..FIRST.len())], LAST[rng.gen_range(0..LAST.len())]);
            let phone =
                format!("+1-{}-{}-{}", rng.gen_range(200..999), rng.gen_range(100..999), rng.gen_range(1000..9999));
            let email = format!("{}.{id}@example.com", name.to_lowercase().replace(' ', "."));
            w.customers.insert(id, json!({"customer_id": id, "name": name, "email": email, "phone": phone}));
        }
        for id in 1..=events {
            let start = iso(start_ms + rng.gen_range(1..90) * 86_400_000);
            w.events.insert(
                id,
                json!({"event_id": id, "sport_type": SPORTS[rng.gen_range(0..SPORTS.len())], "start_date": start,
                       "location": CITIES[rng.gen_range(0..CITIES.len())]}),
            );
            for seat in 0..tickets_per_event {
                let ticket_id = id * 10_000 + seat;
                let level = ["standard", "premium", "luxury"][rng.gen_range(0..3)];
                w.tickets.insert(
                    ticket_id,
                    json!({"ticket_id": ticket_id, "event_id": id, "seat_level": level,
                           "seat_location": format!("{}-{}", rng.gen_range(1..40), rng.gen_range(1..30)),
                           "ticket_price": (rng.gen_range(2000..30000) as f64) / 100.0}),
                );
            }
        }
        w
    }

    /// Loads the dimension tables into a reference source (with change feeds).
    pub fn load_references(&self, source: &MemoryReferenceSource) {
        for (table, rows) in [("customer", &self.customers), ("ticket", &self.tickets), ("sport_event", &self.events)] {
            source.create_table(table, true);
            for (id, row) in rows {
                source.put(table, &id.to_string(), row.as_object().expect("object").clone());
            }
        }
    }

    fn record(&mut self, operation: &str, a: &Activity) -> (String, Vec<u8>) {
        self.record_with_before(operation, a, None)
    }

    /// A DMS record; `before` is the row's before-image (a primary-key change needs it).
    fn record_with_before(&mut self, operation: &str, a: &Activity, before: Option<&Activity>) -> (String, Vec<u8>) {
        self.clock_ms += 3;
        self.record_id += 1;
        let mut metadata = json!({
            "timestamp": iso(self.clock_ms), "record-type": "data", "operation": operation,
            "partition-key-type": "primary-key", "schema-name": "dms_sample", "table-name": "ticket_activity",
        });
        if operation != "load" {
            // As a MySQL source reports them: commit times in whole seconds (many transactions
            // share one; the binlog position orders them), the position as file:offset:….
            let (file, offset) = (1 + self.record_id / 1_000, 4 + (self.record_id % 1_000) * 397);
            metadata["transaction-id"] = json!(self.record_id);
            metadata["commit-timestamp"] = json!(iso(self.clock_ms / 1000 * 1000));
            metadata["stream-position"] = json!(format!(
                "mysql-bin-changelog.{file:06}:{offset}:-1:{}:1:mysql-bin-changelog.{file:06}:{offset}",
                offset + 1
            ));
            metadata["transaction-record-id"] = json!(1);
        }
        let image = |a: &Activity| {
            json!({"ticket_id": a.ticket_id, "purchased_by": a.purchased_by,
                   "created_at": a.created_at, "updated_at": a.updated_at})
        };
        let mut record = json!({"data": image(a), "metadata": metadata});
        if let Some(before) = before {
            record["before-image"] = image(before);
        }
        (a.ticket_id.to_string(), record.to_string().into_bytes())
    }

    /// The full-load phase: one `load` record per sold ticket (about half of them).
    pub fn full_load(&mut self, rng: &mut impl Rng) -> Vec<(String, Vec<u8>)> {
        let ids: Vec<u64> = self.tickets.keys().copied().collect();
        let mut out = Vec::new();
        for id in ids {
            if rng.gen_bool(0.5) {
                let now = iso(self.clock_ms);
                let a = Activity {
                    ticket_id: id,
                    purchased_by: self.customer(rng),
                    created_at: now.clone(),
                    updated_at: now,
                };
                out.push(self.record("load", &a));
                self.activity.insert(id, Some(a));
            }
        }
        out
    }

    fn customer(&self, rng: &mut impl Rng) -> u64 {
        rng.gen_range(1..=self.customers.len() as u64)
    }

    /// One change: a purchase, a resale (update), a seat exchange (the activity moves to an
    /// unsold ticket: a primary-key change, with its before-image), or a refund (delete).
    pub fn change(&mut self, rng: &mut impl Rng) -> (String, Vec<u8>) {
        let ids: Vec<u64> = self.tickets.keys().copied().collect();
        let id = ids[rng.gen_range(0..ids.len())];
        let now = iso(self.clock_ms + 3);
        let unsold: Vec<u64> = ids.iter().copied().filter(|t| !matches!(self.activity.get(t), Some(Some(_)))).collect();
        match self.activity.get(&id).cloned().flatten() {
            Some(before) if !unsold.is_empty() && rng.gen_bool(0.1) => {
                let to = unsold[rng.gen_range(0..unsold.len())];
                let a = Activity { ticket_id: to, updated_at: now, ..before.clone() };
                let r = self.record_with_before("update", &a, Some(&before));
                self.activity.insert(id, None);
                self.activity.insert(to, Some(a));
                r
            }
            None => {
                let a = Activity {
                    ticket_id: id,
                    purchased_by: self.customer(rng),
                    created_at: now.clone(),
                    updated_at: now,
                };
                let r = self.record("insert", &a);
                self.activity.insert(id, Some(a));
                r
            }
            Some(mut a) if rng.gen_bool(0.8) => {
                a.purchased_by = self.customer(rng);
                a.updated_at = now;
                let r = self.record("update", &a);
                self.activity.insert(id, Some(a));
                r
            }
            Some(a) => {
                let r = self.record("delete", &a);
                self.activity.insert(id, None);
                r
            }
        }
    }

    /// A dimension change in the source database (a customer moves to another phone).
    pub fn change_customer_phone(&mut self, source: &MemoryReferenceSource, id: u64, phone: &str) {
        if let Some(c) = self.customers.get_mut(&id) {
            c["phone"] = json!(phone);
            source.put("customer", &id.to_string(), c.as_object().expect("object").clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn changes_include_seat_exchanges_with_their_before_image() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let mut world = TicketWorld::new(&mut rng, 5, 20, 30, 1_700_000_000_000);
        world.full_load(&mut rng);
        let mut exchanges = 0;
        for _ in 0..2_000 {
            let (key, data) = world.change(&mut rng);
            let record: Json = serde_json::from_slice(&data).unwrap();
            assert_eq!(key, record["data"]["ticket_id"].to_string(), "partitioned by the primary key");
            if let Some(before) = record.get("before-image") {
                exchanges += 1;
                let (from, to) = (before["ticket_id"].as_u64().unwrap(), record["data"]["ticket_id"].as_u64().unwrap());
                assert_ne!(from, to);
                assert_eq!(before["purchased_by"], record["data"]["purchased_by"]);
            }
        }
        assert!(exchanges >= 20, "{exchanges} seat exchanges");
    }
}
