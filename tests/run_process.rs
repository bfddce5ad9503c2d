//! `tributary run` as OS processes on the local stack: two nodes share a 4-shard kinesis-local
//! stream through a DynamoDB (moto) lease table and land EV records in PostgreSQL; one node gets
//! SIGTERM mid-run and hands its shards over; at the end every record is in PostgreSQL once, every
//! process exited 0 on SIGTERM, and the lease table shows every lease released.

use adapters::dynamodb_lease_table::DynamoLeaseTable;
use adapters::kinesis::Kinesis;
use adapters::postgres::PostgresWarehouse;
use processes::{count, database, ev_record, wait_count, NodeProcess};
use proto::LeaseTable;
use std::time::{Duration, Instant};
use testkit::local_stack::{emulator, Service};
use testkit::postgres_server::postgres;

mod processes;
mod prometheus;
use prometheus::{promtool, sample, scrape};

async fn put(kinesis: &Kinesis, range: std::ops::Range<usize>) {
    let entries: Vec<(String, Vec<u8>)> = range.map(ev_record).collect();
    for chunk in entries.chunks(100) {
        let refused = kinesis.put_records(chunk).await.unwrap();
        assert!(refused.is_empty(), "{refused:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_share_a_stream_and_hand_over_on_sigterm() {
    let (kinesis_stack, dynamo_stack) = (emulator(Service::Kinesis).unwrap(), emulator(Service::Dynamo).unwrap());
    let pg = postgres().unwrap();
    let admin = PostgresWarehouse::connect(&pg.url).await.unwrap();
    let url = database(&admin, &pg.url, "run_process").await;

    let stream = format!("run-process-{}", std::process::id());
    let kinesis = Kinesis::new(&kinesis_stack.sdk_config(), &stream);
    kinesis.create_stream(4).await.unwrap();
    let lease_table = format!("run-process-leases-{}", std::process::id());
    let dir = std::env::temp_dir().join(format!("tributary-run-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("node.toml");
    std::fs::write(
        &config,
        // The pipeline's top-level keys first: in TOML they would otherwise belong to a section.
        format!(
            "{}\n[node]\nfailover_time = \"3s\"\nshutdown_deadline = \"20s\"\n[stream]\nname = \"{stream}\"\n\
             [lease_table]\nname = \"{lease_table}\"\n[warehouse]\nkind = \"postgres\"\nurl = \"{url}\"\n",
            testkit::ev::PIPELINE
        ),
    )
    .unwrap();
    // node-b also serves its Prometheus metrics, on a port the system picks (it logs which).
    let config_b = dir.join("node-b.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config_b, format!("{text}[metrics]\nlisten = \"127.0.0.1:0\"\n")).unwrap();
    let mut a = NodeProcess::spawn(&config, "node-a", &kinesis_stack, &dynamo_stack);
    let mut b = NodeProcess::spawn(&config_b, "node-b", &kinesis_stack, &dynamo_stack);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(a.is_running() && b.is_running(), "both nodes run: {}{}", a.log(), b.log());
    let metrics_port = b.metrics_port().unwrap_or_else(|| panic!("node-b logs its metrics address:\n{}", b.log()));
    let warehouse = PostgresWarehouse::connect(&url).await.unwrap();
    put(&kinesis, 0..400).await;
    let raw = "SELECT count(*) FROM ev_charging_sessions_raw";
    assert_eq!(wait_count(&warehouse, raw, 400).await, 400, "both nodes consume");

    // SIGTERM node-a: it flushes, checkpoints and releases; node-b takes every shard.
    let stopped = Instant::now();
    assert_eq!(a.terminate(), Some(0), "node-a exits 0 on SIGTERM");
    let stop_time = stopped.elapsed();
    put(&kinesis, 400..600).await;
    assert_eq!(wait_count(&warehouse, raw, 600).await, 600, "node-b took over");
    let table = DynamoLeaseTable::new(&dynamo_stack.sdk_config(), &lease_table);
    let leases = table.scan().await.unwrap();
    assert_eq!(leases.len(), 4);
    assert!(leases.iter().all(|l| l.owner.as_ref().is_some_and(|o| o.as_str().starts_with("node-b"))), "{leases:?}");
    // What node-b reports of its work, valid for Prometheus: at least the 200 records written
    // after node-a left were read and committed by it. Each table's sink commits on its own:
    // the raw rows being in does not mean the sessions' batch is yet.
    let upserts = "tributary_rows_committed_total{op=\"upsert\",table=\"ev_charging_sessions\"}";
    let mut metrics = String::new();
    for _ in 0..50 {
        metrics = scrape(("127.0.0.1", metrics_port)).await.1;
        if sample(&metrics, upserts).is_some_and(|n| n >= 200.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let value = |name: &str| sample(&metrics, name).unwrap_or(-1.0);
    assert!(value("tributary_records_read_total") >= 200.0, "{metrics}");
    assert!(value(upserts) >= 200.0, "{metrics}");
    assert!(value("tributary_checkpoints_total") >= 1.0, "{metrics}");
    promtool(&["check", "metrics"], &metrics);
    assert_eq!(b.terminate(), Some(0), "node-b exits 0 on SIGTERM");

    // Once each, and every lease released with its checkpoint.
    assert_eq!(
        count(&warehouse, "SELECT count(DISTINCT (shard_id, sequence_number)) FROM ev_charging_sessions_raw").await,
        600
    );
    assert_eq!(count(&warehouse, "SELECT count(*) FROM ev_charging_sessions").await, 600);
    let leases = table.scan().await.unwrap();
    assert!(leases.iter().all(|l| l.owner.is_none() && matches!(l.checkpoint, proto::Checkpoint::At(_))), "{leases:?}");
    assert!(table.membership(true).await.map(|m| m.workers).unwrap().is_empty(), "heartbeat rows removed");
    eprintln!("node-a stopped (flush, checkpoint, release, exit) in {:.2}s", stop_time.as_secs_f64());

    // `tributary leases` on that table: each checkpoint whole, and a node killed a moment ago
    // (its heartbeat row still there, not yet evicted) shown as silent, not as a member.
    let mut c = NodeProcess::spawn(&config, "node-c", &kinesis_stack, &dynamo_stack);
    let started = Instant::now();
    while table.scan().await.unwrap().iter().any(|l| l.owner.is_none()) && started.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    c.kill();
    let out = processes::tributary_at(&kinesis_stack.endpoint, &dynamo_stack.endpoint)
        .args(["leases", "--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    for lease in table.scan().await.unwrap() {
        let proto::Checkpoint::At(p) = &lease.checkpoint else { panic!("{lease:?}") };
        assert!(text.contains(&format!(" {} ", p.sequence)), "the whole sequence number of {}:\n{text}", lease.key);
    }
    // node-c's id is its name plus its process id: `node-c-1234 (silent: …)`.
    let nodes = text.lines().last().unwrap_or_default();
    assert!(nodes.contains(&format!("node-c-{} (silent", c.pid())), "the killed node is silent:\n{text}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// SIGTERM while the node still starts (here: its lease table does not answer) ends the run at
/// once with exit 0; the handler is in place from the first instant (as PID 1 in a container a
/// signal without one would be dropped, and the pod would wait out its grace period).
#[tokio::test]
async fn sigterm_while_starting_exits_0_at_once() {
    // A DynamoDB that accepts connections and never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", silent.local_addr().unwrap());
    let dir = std::env::temp_dir().join(format!("tributary-starting-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("node.toml");
    std::fs::write(
        &config,
        format!(
            "{}\n[stream]\nname = \"s\"\n[lease_table]\nname = \"l\"\n[warehouse]\nkind = \"sqlite\"\nurl = \"{}\"\n\
             [metrics]\nlisten = \"127.0.0.1:0\"\n",
            testkit::ev::PIPELINE,
            dir.join("w.db").display()
        ),
    )
    .unwrap();
    let mut node = NodeProcess::spawn_at(&config, "starting", &endpoint, &endpoint);
    // Serving already (the listener comes first), and not ready.
    let mut port = None;
    for _ in 0..100 {
        port = node.metrics_port();
        if port.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let port = port.unwrap_or_else(|| panic!("the node serves while it starts:\n{}", node.log()));
    let (head, _) = prometheus::get(("127.0.0.1", port), "/healthz").await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    let (head, body) = prometheus::get(("127.0.0.1", port), "/readyz").await;
    assert!(head.starts_with("http/1.1 503") && body.contains("starting"), "{head} {body}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let asked = Instant::now();
    assert_eq!(node.terminate(), Some(0), "exit 0 on SIGTERM while starting:\n{}", node.log());
    assert!(asked.elapsed() < Duration::from_secs(5), "at once: {:?}", asked.elapsed());
    assert!(node.log().contains("stopped while starting"), "{}", node.log());
    drop(silent);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `tributary check`: a valid file exits 0 with what the node would run, offline; a bad one
/// exits non-zero with one line naming the field, and never echoes a secret.
#[test]
fn check_validates_offline_and_names_the_bad_field() {
    let dir = std::env::temp_dir().join(format!("tributary-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let check = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tributary"))
            .args(["check", "--config"])
            .arg(&path)
            // Nothing may be reached: endpoints that refuse every connection.
            .env("AWS_ENDPOINT_URL_DYNAMODB", "http://127.0.0.1:9")
            .env("AWS_ENDPOINT_URL_KINESIS", "http://127.0.0.1:9")
            .output()
            .unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        (out.status.code(), text)
    };
    let base = format!(
        "{}\n[stream]\nname = \"ev\"\n[lease_table]\nname = \"ev-leases\"\n[warehouse]\nkind = \"postgres\"\n",
        testkit::ev::PIPELINE
    );
    let (code, text) = check("good.toml", &format!("{base}url = \"host=db.internal dbname=analytics\"\n"));
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("is valid") && text.contains("stream       ev") && text.contains("ev_charging_sessions"),
        "{text}"
    );
    let (code, text) = check("typo.toml", &format!("{base}url = \"host=db\"\n[node]\nfailover_tme = \"5s\"\n"));
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("node.failover_tme") && text.lines().count() == 1, "{text}");
    let (code, text) = check("secret.toml", &format!("{base}url = \"host=db password=hunter2\"\n"));
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("warehouse.url") && !text.contains("hunter2"), "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A KCL worker still running on the same lease table (it renews its leases: their counters
/// move): a tributary node takes none of them and says why; once the worker stops renewing, the
/// node takes them after `failover_time` and resumes from KCL's checkpoints, landing exactly the
/// records after them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_kcl_workers_leases_are_left_alone_until_it_stops() {
    use proto::{Checkpoint, Expect, Lease, LeaseChange, Position, ShardReader, StartingPosition, WorkerId};
    let (kinesis_stack, dynamo_stack) = (emulator(Service::Kinesis).unwrap(), emulator(Service::Dynamo).unwrap());
    let pg = postgres().unwrap();
    let admin = PostgresWarehouse::connect(&pg.url).await.unwrap();
    let url = database(&admin, &pg.url, "kcl_side_by_side").await;
    let stream = format!("kcl-side-{}", std::process::id());
    let kinesis = Kinesis::new(&kinesis_stack.sdk_config(), &stream);
    kinesis.create_stream(2).await.unwrap();
    put(&kinesis, 0..120).await;

    // The KCL application processed the first 20 records of each shard and checkpointed there.
    let lease_table = format!("kcl-side-leases-{}", std::process::id());
    let table = DynamoLeaseTable::new(&dynamo_stack.sdk_config(), &lease_table);
    table.ensure_table().await.unwrap();
    let kcl = WorkerId::new("kcl-worker-1");
    let mut after_checkpoints = 0;
    for shard in kinesis.list_shards().await.unwrap() {
        let iterator = kinesis.iterator(&shard.id, &StartingPosition::TrimHorizon).await.unwrap();
        let records = kinesis.read(&shard.id, &iterator, 1000).await.unwrap().records;
        assert!(records.len() > 20, "{} records in {}", records.len(), shard.id);
        after_checkpoints += records.len() - 20;
        let checkpoint = Checkpoint::At(Position::new(records[19].sequence.clone(), 0));
        let mut lease = Lease::for_shard(&shard.id, Vec::new(), Some(shard.hash_range), checkpoint);
        lease.owner = Some(kcl.clone());
        table.create(&lease).await.unwrap();
    }
    // KCL renews each lease (counter + 1) every second while it runs.
    let renewing = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let renewer = {
        let (renewing, table) = (renewing.clone(), DynamoLeaseTable::new(&dynamo_stack.sdk_config(), &lease_table));
        tokio::spawn(async move {
            while renewing.load(std::sync::atomic::Ordering::Relaxed) {
                for lease in table.scan().await.unwrap() {
                    if lease.owner.as_ref().is_some_and(|o| o.as_str() == "kcl-worker-1") {
                        let _ = table.update(&lease.key, &Expect::unchanged(&lease), &LeaseChange::default()).await;
                    }
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        })
    };

    let dir = std::env::temp_dir().join(format!("tributary-kcl-side-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("node.toml");
    std::fs::write(
        &config,
        format!(
            "{}\n[node]\nfailover_time = \"3s\"\n[stream]\nname = \"{stream}\"\n[lease_table]\nname = \"{lease_table}\"\n\
             [warehouse]\nkind = \"postgres\"\nurl = \"{url}\"\n",
            testkit::ev::PIPELINE
        ),
    )
    .unwrap();
    let mut node = NodeProcess::spawn(&config, "node-a", &kinesis_stack, &dynamo_stack);
    tokio::time::sleep(Duration::from_secs(9)).await;
    let leases = table.scan().await.unwrap();
    assert!(leases.iter().all(|l| l.owner.as_ref() == Some(&kcl)), "three failover times on: {leases:?}");
    let warehouse = PostgresWarehouse::connect(&url).await.unwrap();
    let raw = "SELECT count(*) FROM ev_charging_sessions_raw";
    assert_eq!(count(&warehouse, raw).await, 0, "nothing read while KCL holds the shards");
    assert!(node.log().contains("not a node of this cluster renews leases"), "{}", node.log());

    // KCL stops (without releasing, as after a crash): the node takes over from its checkpoints.
    renewing.store(false, std::sync::atomic::Ordering::Relaxed);
    renewer.await.unwrap();
    let stopped = Instant::now();
    assert_eq!(wait_count(&warehouse, raw, after_checkpoints).await, after_checkpoints);
    let took_over = stopped.elapsed();
    let leases = table.scan().await.unwrap();
    assert!(leases.iter().all(|l| l.owner.as_ref().is_some_and(|o| o.as_str().starts_with("node-a"))), "{leases:?}");
    assert_eq!(node.terminate(), Some(0), "{}", node.log());
    assert_eq!(count(&warehouse, raw).await, after_checkpoints, "nothing before KCL's checkpoints was re-read");
    eprintln!("a stopped KCL worker's shards taken over from its checkpoints in {:.1}s", took_over.as_secs_f64());
    let _ = std::fs::remove_dir_all(&dir);
}

/// `tributary leases` on a multi-stream table (`[[stream]]`): every lease listed, and the leases
/// of a stream the config no longer lists deleted only by `--forget-stream` (refused for a
/// stream the config still reads).
#[tokio::test]
async fn leases_of_a_removed_stream_go_only_when_asked() {
    use proto::{Checkpoint, Lease, LeaseTable, ShardId};
    let (kinesis_stack, dynamo_stack) = (emulator(Service::Kinesis).unwrap(), emulator(Service::Dynamo).unwrap());
    let stream = format!("kept-{}", std::process::id());
    let kinesis = Kinesis::new(&kinesis_stack.sdk_config(), &stream);
    kinesis.create_stream(1).await.unwrap();
    let kept = kinesis.stream_identifier().await.unwrap();
    assert!(kept.starts_with(&format!("000000000000:{stream}:")), "{kept}");
    let lease_table = format!("forget-leases-{}", std::process::id());
    let table = DynamoLeaseTable::new(&dynamo_stack.sdk_config(), &lease_table);
    table.ensure_table().await.unwrap();
    let gone = "000000000000:removed:1600000000";
    for (stream, shard) in [(kept.as_str(), 0), (gone, 0), (gone, 1)] {
        let lease =
            Lease::for_stream_shard(Some(stream), &ShardId::numbered(shard), vec![], None, Checkpoint::TrimHorizon);
        table.create(&lease).await.unwrap();
    }
    let dir = std::env::temp_dir().join(format!("tributary-forget-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("node.toml");
    let pipeline = testkit::ev::PIPELINE.replace("[[table]]", "[[stream.table]]");
    std::fs::write(
        &config,
        format!(
            "[[stream]]\nname = \"{stream}\"\n{pipeline}\n[lease_table]\nname = \"{lease_table}\"\n\
             [warehouse]\nkind = \"postgres\"\nurl = \"host=127.0.0.1\"\n"
        ),
    )
    .unwrap();
    let leases = |args: &[&str]| {
        let mut all = vec!["leases", "--config", config.to_str().unwrap()];
        all.extend_from_slice(args);
        let out = processes::tributary_at(&kinesis_stack.endpoint, &dynamo_stack.endpoint).args(&all).output().unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        (out.status.success(), text)
    };
    let (ok, text) = leases(&[]);
    assert!(ok, "{text}");
    for key in [format!("{kept}:shardId-000000000000"), format!("{gone}:shardId-000000000001")] {
        assert!(text.contains(&key), "{key} listed:\n{text}");
    }
    let (ok, text) = leases(&["--forget-stream", &kept, "--yes"]);
    assert!(!ok && text.contains("is in the config"), "{text}");
    let (ok, text) = leases(&["--forget-stream", gone, "--yes"]);
    assert!(ok && text.contains("2 leases of stream"), "{text}");
    let left: Vec<String> = table.scan().await.unwrap().into_iter().map(|l| l.key).collect();
    assert_eq!(left, [format!("{kept}:shardId-000000000000")]);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A constraint the pipeline cannot know of (a CHECK its owner added to a target table): the
/// node commits every row the table takes, dead-letters each record whose row it refuses with
/// PostgreSQL's reason and the record's payload, and checkpoints past them all: the shards move
/// on, nothing is lost, nothing is doubled. Then: a `tombstone_retention` shorter than the
/// stream's retention is refused at start, naming the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_a_constraint_refuses_are_dead_lettered_and_the_shards_move_on() {
    use base64::Engine;
    let (kinesis_stack, dynamo_stack) = (emulator(Service::Kinesis).unwrap(), emulator(Service::Dynamo).unwrap());
    let pg = postgres().unwrap();
    let admin = PostgresWarehouse::connect(&pg.url).await.unwrap();
    let url = database(&admin, &pg.url, "refused_rows").await;
    let stream = format!("refused-rows-{}", std::process::id());
    let kinesis = Kinesis::new(&kinesis_stack.sdk_config(), &stream);
    kinesis.create_stream(2).await.unwrap();
    let lease_table = format!("refused-rows-leases-{}", std::process::id());
    let dir = std::env::temp_dir().join(format!("tributary-refused-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("node.toml");
    std::fs::write(
        &config,
        format!(
            "{}\n[node]\nfailover_time = \"3s\"\n[stream]\nname = \"{stream}\"\n[lease_table]\nname = \"{lease_table}\"\n\
             [warehouse]\nkind = \"postgres\"\nurl = \"{url}\"\n",
            testkit::ev::PIPELINE
        ),
    )
    .unwrap();
    let mut node = NodeProcess::spawn(&config, "node-a", &kinesis_stack, &dynamo_stack);
    let warehouse = PostgresWarehouse::connect(&url).await.unwrap();
    let created = "SELECT count(*) FROM pg_tables WHERE tablename = 'ev_charging_sessions'";
    assert_eq!(wait_count(&warehouse, created, 1).await, 1, "the node creates its tables: {}", node.log());
    // Sessions of 30 kWh or more are refused from now on; the raw table takes every record.
    warehouse
        .query_text(
            "ALTER TABLE ev_charging_sessions ADD CONSTRAINT under_30_kwh CHECK (\"kWhDelivered\" < 30) NOT VALID",
        )
        .await
        .unwrap();
    put(&kinesis, 0..200).await;
    let refused: Vec<usize> = (0..200).filter(|i| i % 40 >= 30).collect();
    let raw = "SELECT count(*) FROM ev_charging_sessions_raw";
    assert_eq!(wait_count(&warehouse, raw, 200).await, 200, "{}", node.log());
    let letters = "SELECT count(*) FROM tributary_dead_letters";
    assert_eq!(wait_count(&warehouse, letters, refused.len()).await, refused.len(), "{}", node.log());
    let sessions = "SELECT count(*) FROM ev_charging_sessions";
    assert_eq!(wait_count(&warehouse, sessions, 200 - refused.len()).await, 200 - refused.len());
    assert_eq!(count(&warehouse, "SELECT count(*) FROM ev_charging_sessions WHERE \"kWhDelivered\" >= 30").await, 0);

    // Each refused record once, with PostgreSQL's reason and its whole payload.
    let rows = warehouse
        .query_text("SELECT partition_key, reason, payload_base64 FROM tributary_dead_letters ORDER BY partition_key")
        .await
        .unwrap();
    let keys: Vec<String> = rows.iter().map(|r| r[0].clone().unwrap()).collect();
    assert_eq!(keys, refused.iter().map(|&i| processes::ev_record(i).0).collect::<Vec<_>>());
    for (row, &i) in rows.iter().zip(&refused) {
        let reason = row[1].as_deref().unwrap();
        assert!(reason.contains("ev_charging_sessions") && reason.contains("under_30_kwh"), "{reason}");
        let payload = base64::engine::general_purpose::STANDARD.decode(row[2].as_deref().unwrap()).unwrap();
        assert_eq!(payload, processes::ev_record(i).1);
    }

    // Every shard checkpointed up to its last record, past the refused ones.
    assert_eq!(node.terminate(), Some(0), "exits 0 on SIGTERM: {}", node.log());
    let last = warehouse
        .query_text(
            "SELECT shard_id, max(sequence_number::numeric)::text FROM ev_charging_sessions_raw GROUP BY shard_id",
        )
        .await
        .unwrap();
    let leases = DynamoLeaseTable::new(&dynamo_stack.sdk_config(), &lease_table).scan().await.unwrap();
    for shard in &last {
        let lease = leases.iter().find(|l| Some(l.key.as_str()) == shard[0].as_deref()).expect("a lease per shard");
        let proto::Checkpoint::At(at) = &lease.checkpoint else { panic!("{lease:?}") };
        assert_eq!(Some(at.sequence.to_string()), shard[1], "{lease:?}");
    }

    // Tombstones kept for less than the stream keeps records: refused at start, naming the key
    // (kinesis-local keeps a stream's records 24 hours, as Kinesis does by default).
    let short = dir.join("short.toml");
    let text = std::fs::read_to_string(&config).unwrap().replace("[node]\n", "[node]\ntombstone_retention = \"2h\"\n");
    std::fs::write(&short, text).unwrap();
    let mut refused = NodeProcess::spawn(&short, "node-short", &kinesis_stack, &dynamo_stack);
    let started = Instant::now();
    while refused.is_running() && started.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!refused.is_running(), "it stops at start: {}", refused.log());
    let log = refused.log();
    assert!(
        log.contains("node.tombstone_retention: 2.0h is shorter than the retention of stream") && log.contains("24.0h"),
        "{log}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
