//! The chaos run's oracle and its audit: what the generators wrote, against what the warehouse
//! holds.
//!
//! - Every well-formed EV record lands once in the raw table: its payload is counted there.
//!   Absent, it is lost; there twice, or there but never written, it is duplicated.
//! - Every malformed EV record lands once in the dead-letter table; the ticket stream has none.
//! - Every EV session and every ticket is at its last written state: a ticket deleted last is
//!   absent, a session or ticket at any other state counts as lost (its last write did not
//!   take effect, or an older one was applied over it); a key never written is duplicated.

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use testkit::tickets::TicketWorld;

/// What the generators wrote.
#[derive(Default)]
pub struct Oracle {
    /// Written well-formed EV payloads, by hash, with how often each was written.
    pub raw: HashMap<u64, u32>,
    pub malformed: usize,
    /// Ticket changes written (DMS records: full load, inserts, updates, deletes).
    pub ticket_changes: usize,
    /// Each session's last written energy.
    pub sessions: BTreeMap<String, f64>,
    /// Each ticket's last state: `(purchased_by, updated_at)`, or `None` once deleted.
    pub tickets: BTreeMap<u64, Option<(u64, String)>>,
}

impl Oracle {
    pub fn written_raw(&self) -> usize {
        self.raw.values().map(|n| *n as usize).sum()
    }

    /// The ticket world's activity, as the oracle holds it.
    pub fn take_tickets(&mut self, world: &TicketWorld) {
        self.tickets = world
            .activity
            .iter()
            .map(|(id, a)| (*id, a.as_ref().map(|a| (a.purchased_by, a.updated_at.clone()))))
            .collect();
    }
}

pub fn payload_hash(payload: &[u8]) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    payload.hash(&mut hasher);
    hasher.finish()
}

/// What the warehouse holds.
#[derive(Default)]
pub struct Found {
    pub raw: Vec<u64>,
    pub ev_dead_letters: usize,
    pub ticket_dead_letters: usize,
    pub sessions: Vec<(String, f64)>,
    pub tickets: Vec<(u64, u64, String)>,
}

/// Lost and duplicated effects, and the first few of them described.
#[derive(Debug, Default, PartialEq)]
pub struct Tally {
    pub lost: usize,
    pub duplicated: usize,
    pub examples: Vec<String>,
}

impl Tally {
    fn lost(&mut self, n: usize, what: impl FnOnce() -> String) {
        if n > 0 {
            self.lost += n;
            self.note(what);
        }
    }

    fn duplicated(&mut self, n: usize, what: impl FnOnce() -> String) {
        if n > 0 {
            self.duplicated += n;
            self.note(what);
        }
    }

    fn note(&mut self, what: impl FnOnce() -> String) {
        if self.examples.len() < 8 {
            self.examples.push(what());
        }
    }

    pub fn clean(&self) -> bool {
        self.lost == 0 && self.duplicated == 0
    }
}

pub fn tally(oracle: &Oracle, found: &Found) -> Tally {
    let mut t = Tally::default();
    let mut landed: HashMap<u64, u32> = HashMap::new();
    for h in &found.raw {
        *landed.entry(*h).or_default() += 1;
    }
    let (mut missing, mut extra) = (0, 0);
    for (h, written) in &oracle.raw {
        let got = landed.get(h).copied().unwrap_or(0);
        missing += written.saturating_sub(got) as usize;
        extra += got.saturating_sub(*written) as usize;
    }
    extra += landed.iter().filter(|(h, _)| !oracle.raw.contains_key(h)).map(|(_, n)| *n as usize).sum::<usize>();
    t.lost(missing, || format!("{missing} EV records missing from the raw table"));
    t.duplicated(extra, || format!("{extra} raw rows more than the records written"));
    let dead = found.ev_dead_letters;
    t.lost(oracle.malformed.saturating_sub(dead), || format!("{dead} EV dead letters of {}", oracle.malformed));
    t.duplicated(dead.saturating_sub(oracle.malformed), || format!("{dead} EV dead letters of {}", oracle.malformed));
    let tickets_dead = found.ticket_dead_letters;
    t.lost(tickets_dead, || format!("{tickets_dead} ticket changes dead-lettered"));

    let sessions: HashMap<&str, f64> = found.sessions.iter().map(|(id, kwh)| (id.as_str(), *kwh)).collect();
    for (id, kwh) in &oracle.sessions {
        match sessions.get(id.as_str()) {
            Some(got) if got == kwh => {}
            Some(got) => t.lost(1, || format!("session {id}: {got} kWh in the warehouse, last written {kwh}")),
            None => t.lost(1, || format!("session {id} missing")),
        }
    }
    let never = sessions.keys().filter(|id| !oracle.sessions.contains_key(**id)).count();
    t.duplicated(never, || format!("{never} sessions never written"));

    let tickets: HashMap<u64, (u64, &str)> =
        found.tickets.iter().map(|(id, by, at)| (*id, (*by, at.as_str()))).collect();
    for (id, want) in &oracle.tickets {
        match (want, tickets.get(id)) {
            (None, None) => {}
            (Some((by, at)), Some(got)) if (*by, at.as_str()) == *got => {}
            (None, Some(got)) => t.lost(1, || format!("ticket {id}: deleted last, still there as {got:?}")),
            (Some(want), got) => t.lost(1, || format!("ticket {id}: {got:?} in the warehouse, last written {want:?}")),
        }
    }
    let never = tickets.keys().filter(|id| !oracle.tickets.contains_key(id)).count();
    t.duplicated(never, || format!("{never} tickets never written"));
    t
}

/// Reads what the audit compares from the warehouse.
pub async fn read(
    w: &adapters::postgres::PostgresWarehouse,
    ev_stream: &str,
    ticket_stream: &str,
) -> Result<Found, String> {
    let query = |sql: String| async move { w.query_text(&sql).await.map_err(|e| e.to_string()) };
    let text = |v: &Option<String>| v.clone().unwrap_or_default();
    let count = |rows: Vec<Vec<Option<String>>>| -> usize {
        rows.first().and_then(|r| r[0].as_deref()?.parse().ok()).unwrap_or(0)
    };
    let raw = query("SELECT payload FROM ev_charging_sessions_raw".into()).await?;
    let dead = |stream: &str| {
        format!("SELECT count(*) FROM tributary_dead_letters WHERE payload_part = 0 AND shard_id LIKE '%:{stream}:%'")
    };
    let sessions = query("SELECT \"_id\", \"kWhDelivered\" FROM ev_charging_sessions".into()).await?;
    let tickets = query(
        "SELECT ticket_id, purchased_by, to_char(updated_at, 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"') \
         FROM sport_event_activity"
            .into(),
    )
    .await?;
    Ok(Found {
        raw: raw.iter().map(|r| payload_hash(text(&r[0]).as_bytes())).collect(),
        ev_dead_letters: count(query(dead(ev_stream)).await?),
        ticket_dead_letters: count(query(dead(ticket_stream)).await?),
        sessions: sessions.iter().map(|r| (text(&r[0]), text(&r[1]).parse().unwrap_or(f64::NAN))).collect(),
        tickets: tickets
            .iter()
            .map(|r| (text(&r[0]).parse().unwrap_or(0), text(&r[1]).parse().unwrap_or(0), text(&r[2])))
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn oracle() -> Oracle {
        let mut o = Oracle { malformed: 2, ..Oracle::default() };
        for p in ["a", "b", "c"] {
            *o.raw.entry(payload_hash(p.as_bytes())).or_default() += 1;
        }
        o.sessions.insert("s1".into(), 2.5);
        o.sessions.insert("s2".into(), 7.0);
        o.tickets.insert(1, Some((10, "t1".into())));
        o.tickets.insert(2, None);
        o
    }

    fn found() -> Found {
        Found {
            raw: ["a", "b", "c"].map(|p| payload_hash(p.as_bytes())).to_vec(),
            ev_dead_letters: 2,
            ticket_dead_letters: 0,
            sessions: vec![("s1".into(), 2.5), ("s2".into(), 7.0)],
            tickets: vec![(1, 10, "t1".into())],
        }
    }

    #[test]
    fn the_warehouse_as_written_is_clean() {
        assert_eq!(tally(&oracle(), &found()), Tally::default());
    }

    #[test]
    fn each_departure_from_the_oracle_is_counted() {
        let o = oracle();
        type Plant = fn(&mut Found);
        let cases: Vec<(Plant, usize, usize)> = vec![
            (|f| f.raw.truncate(2), 1, 0),
            (|f| f.raw.push(f.raw[0]), 0, 1),
            (|f| f.raw.push(payload_hash(b"never")), 0, 1),
            (|f| f.ev_dead_letters = 1, 1, 0),
            (|f| f.ev_dead_letters = 3, 0, 1),
            (|f| f.ticket_dead_letters = 1, 1, 0),
            // An older energy over the last one: the last write lost.
            (|f| f.sessions[1].1 = 6.0, 1, 0),
            (|f| f.sessions.truncate(1), 1, 0),
            (|f| f.sessions.push(("s9".into(), 1.0)), 0, 1),
            (|f| f.tickets[0].2 = "t0".into(), 1, 0),
            // A deleted ticket back: the delete lost.
            (|f| f.tickets.push((2, 11, "t2".into())), 1, 0),
            (|f| f.tickets.push((3, 11, "t3".into())), 0, 1),
            (|f| f.tickets.clear(), 1, 0),
        ];
        for (i, (plant, lost, duplicated)) in cases.into_iter().enumerate() {
            let mut f = found();
            plant(&mut f);
            let t = tally(&o, &f);
            assert_eq!((t.lost, t.duplicated), (lost, duplicated), "case {i}: {t:?}");
            assert_eq!(t.examples.len(), 1, "case {i}: described");
        }
    }
}
