//! The `ReferenceSource` conformance suite: the same assertions against the in-memory source and
//! the DynamoDB adapter on the local stack (moto: DynamoDB and DynamoDB Streams), with and
//! without a change feed; then the reference cache following a DynamoDB table through its
//! stream while it changes, without a restart.

use adapters::dynamodb_reference::DynamoReferenceSource;
use async_trait::async_trait;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType,
    StreamSpecification, StreamViewType,
};
use proto::memory::MemoryReferenceSource;
use proto::{Item, ReferenceChange, ReferenceError, ReferenceSource};
use serde_json::json;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;
use testkit::local_stack::{emulator, Emulator, Service};
use worker::reference_set::{ReferenceSet, ReferenceSpec};

#[async_trait]
trait TableUnderTest: Send + Sync {
    fn source(&self) -> Arc<dyn ReferenceSource>;
    fn table(&self) -> &str;
    async fn put(&self, code: &str, name: &str, population: i64);
    async fn remove(&self, code: &str);
}

fn item(code: &str, name: &str, population: i64) -> Item {
    json!({"code": code, "name": name, "population": population}).as_object().unwrap().clone()
}

struct Memory {
    source: MemoryReferenceSource,
    table: String,
}

#[async_trait]
impl TableUnderTest for Memory {
    fn source(&self) -> Arc<dyn ReferenceSource> {
        Arc::new(self.source.clone())
    }
    fn table(&self) -> &str {
        &self.table
    }
    async fn put(&self, code: &str, name: &str, population: i64) {
        self.source.put(&self.table, code, item(code, name, population));
    }
    async fn remove(&self, code: &str) {
        self.source.remove(&self.table, code);
    }
}

struct Dynamo {
    client: aws_sdk_dynamodb::Client,
    source: Arc<DynamoReferenceSource>,
    table: String,
}

static TABLES: AtomicU32 = AtomicU32::new(0);

impl Dynamo {
    /// A table with a NEW_AND_OLD_IMAGES stream (`feed`) or none.
    async fn create(stack: &Emulator, feed: bool) -> Self {
        Self::create_viewed(stack, feed.then_some(StreamViewType::NewAndOldImages)).await
    }

    /// A table with a stream of this view type, or none.
    async fn create_viewed(stack: &Emulator, view: Option<StreamViewType>) -> Self {
        let name = format!("countries-{}-{}", std::process::id(), TABLES.fetch_add(1, Ordering::Relaxed));
        Self::create_named(stack, view, name).await
    }

    async fn create_named(stack: &Emulator, view: Option<StreamViewType>, table: String) -> Self {
        let config = stack.sdk_config();
        let client = aws_sdk_dynamodb::Client::new(&config);
        let mut create = client
            .create_table()
            .table_name(&table)
            .attribute_definitions(
                AttributeDefinition::builder()
                    .attribute_name("code")
                    .attribute_type(ScalarAttributeType::S)
                    .build()
                    .unwrap(),
            )
            .key_schema(KeySchemaElement::builder().attribute_name("code").key_type(KeyType::Hash).build().unwrap())
            .billing_mode(BillingMode::PayPerRequest);
        if let Some(view) = view {
            create = create.stream_specification(
                StreamSpecification::builder().stream_enabled(true).stream_view_type(view).build().unwrap(),
            );
        }
        create.send().await.unwrap();
        Self { client, source: Arc::new(DynamoReferenceSource::new(&config)), table }
    }
}

#[async_trait]
impl TableUnderTest for Dynamo {
    fn source(&self) -> Arc<dyn ReferenceSource> {
        self.source.clone()
    }
    fn table(&self) -> &str {
        &self.table
    }
    async fn put(&self, code: &str, name: &str, population: i64) {
        self.client
            .put_item()
            .table_name(&self.table)
            .item("code", AttributeValue::S(code.into()))
            .item("name", AttributeValue::S(name.into()))
            .item("population", AttributeValue::N(population.to_string()))
            .send()
            .await
            .unwrap();
    }
    async fn remove(&self, code: &str) {
        self.client
            .delete_item()
            .table_name(&self.table)
            .key("code", AttributeValue::S(code.into()))
            .send()
            .await
            .unwrap();
    }
}

/// Loads, changes the table, and checks what the source reports.
async fn conformance(t: &dyn TableUnderTest, feed: bool) {
    let source = t.source();
    t.put("FR", "France", 68).await;
    t.put("DE", "Germany", 84).await;
    let snap = source.load(t.table(), "code").await.unwrap();
    let mut keys: Vec<&str> = snap.items.iter().map(|(k, _)| k.as_str()).collect();
    keys.sort();
    assert_eq!(keys, ["DE", "FR"]);
    let fr = &snap.items.iter().find(|(k, _)| k == "FR").unwrap().1;
    assert_eq!(fr, &item("FR", "France", 68), "numbers stay numbers");
    assert_eq!(snap.cursor.is_some(), feed);

    t.put("FR", "République française", 68).await;
    t.remove("DE").await;
    t.put("IT", "Italy", 59).await;
    if let Some(cursor) = snap.cursor {
        // The feed reports the three changes in order (bounded wait: streams may lag a little).
        let mut seen: Vec<ReferenceChange> = Vec::new();
        let mut cursor = cursor;
        for _ in 0..50 {
            let (changes, next) = source.changes(t.table(), "code", &cursor).await.unwrap().unwrap();
            seen.extend(changes);
            cursor = next;
            if seen.len() >= 3 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(
            seen,
            vec![
                ReferenceChange::Put { key: "FR".into(), item: item("FR", "République française", 68) },
                ReferenceChange::Remove { key: "DE".into() },
                ReferenceChange::Put { key: "IT".into(), item: item("IT", "Italy", 59) },
            ]
        );
        let (again, _) = source.changes(t.table(), "code", &cursor).await.unwrap().unwrap();
        assert!(again.is_empty(), "nothing twice: {again:?}");
        assert!(source.changes(t.table(), "code", "not a cursor").await.is_err());
    }
    // A full load always shows the current table.
    let snap = source.load(t.table(), "code").await.unwrap();
    let mut now: Vec<(String, String)> =
        snap.items.iter().map(|(k, i)| (k.clone(), i["name"].as_str().unwrap().to_owned())).collect();
    now.sort();
    assert_eq!(now, [("FR".into(), "République française".into()), ("IT".into(), "Italy".into())]);
}

#[tokio::test]
async fn memory_source_conforms() {
    for feed in [true, false] {
        let source = MemoryReferenceSource::new();
        source.create_table("countries", feed);
        conformance(&Memory { source, table: "countries".into() }, feed).await;
    }
}

#[tokio::test]
async fn dynamodb_source_with_a_stream_conforms() {
    let stack = emulator(Service::Dynamo).unwrap();
    conformance(&Dynamo::create(&stack, true).await, true).await;
}

#[tokio::test]
async fn dynamodb_source_without_a_stream_conforms() {
    let stack = emulator(Service::Dynamo).unwrap();
    conformance(&Dynamo::create(&stack, false).await, false).await;
}

/// A stream without item images (KEYS_ONLY) cannot bring the rows: the table is read by full
/// reloads, as one without a stream is.
#[tokio::test]
async fn dynamodb_source_with_a_keys_only_stream_is_reloaded() {
    let stack = emulator(Service::Dynamo).unwrap();
    conformance(&Dynamo::create_viewed(&stack, Some(StreamViewType::KeysOnly)).await, false).await;
}

/// The worker's cache over DynamoDB follows an update through the stream within its poll
/// interval, and follows a table without a stream by full reloads.
#[tokio::test]
async fn the_cache_follows_a_dynamodb_table_without_restart() {
    let stack = emulator(Service::Dynamo).unwrap();
    for feed in [true, false] {
        let t = Dynamo::create(&stack, feed).await;
        t.put("FR", "France", 68).await;
        let spec = ReferenceSpec {
            name: "country".into(),
            table: t.table.clone(),
            key: "code".into(),
            attributes: vec!["name".into()],
            refresh_interval: Duration::from_millis(500),
            poll_interval: Duration::from_millis(200),
            max_items: 1000,
        };
        let set = ReferenceSet::start(t.source(), &[spec]).await.unwrap();
        let cache = set.get("country").unwrap().clone();
        assert_eq!(cache.get_attr("FR", "name"), Some(json!("France")));
        t.put("FR", "République française", 68).await;
        t.put("ES", "Spain", 48).await;
        let mut followed = false;
        for _ in 0..100 {
            if cache.get_attr("FR", "name") == Some(json!("République française")) && cache.get("ES").is_some() {
                followed = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(followed, "feed={feed}: the cache did not follow the table");
    }
}

/// A stream turned off, or replaced by a new one (here: the table dropped and created again),
/// ends the cursor: the cache reloads instead of following a stream that will never carry
/// another change.
#[tokio::test]
async fn a_replaced_stream_ends_the_cursor() {
    let stack = emulator(Service::Dynamo).unwrap();
    let source = DynamoReferenceSource::new(&stack.sdk_config()).with_stream_check_interval(Duration::ZERO);
    let t = Dynamo::create(&stack, true).await;
    t.put("FR", "France", 68).await;
    let cursor = source.load(&t.table, "code").await.unwrap().cursor.expect("a stream");
    let (_, cursor) = source.changes(&t.table, "code", &cursor).await.unwrap().expect("still followed");
    let disabled = StreamSpecification::builder().stream_enabled(false).build().unwrap();
    t.client.update_table().table_name(&t.table).stream_specification(disabled).send().await.unwrap();
    let e = source.changes(&t.table, "code", &cursor).await.unwrap_err();
    assert!(matches!(e, ReferenceError::CursorExpired), "disabled: {e:?}");

    let t = Dynamo::create(&stack, true).await;
    let cursor = source.load(&t.table, "code").await.unwrap().cursor.expect("a stream");
    t.client.delete_table().table_name(&t.table).send().await.unwrap();
    let t = Dynamo::create_named(&stack, Some(StreamViewType::NewAndOldImages), t.table.clone()).await;
    let e = source.changes(&t.table, "code", &cursor).await.unwrap_err();
    assert!(matches!(e, ReferenceError::CursorExpired), "replaced: {e:?}");
    // A fresh load follows the new stream.
    let cursor = source.load(&t.table, "code").await.unwrap().cursor.expect("the new stream");
    t.put("DE", "Germany", 84).await;
    let (changes, _) = source.changes(&t.table, "code", &cursor).await.unwrap().unwrap();
    assert!(changes.iter().any(|c| matches!(c, ReferenceChange::Put { key, .. } if key == "DE")), "{changes:?}");
}
