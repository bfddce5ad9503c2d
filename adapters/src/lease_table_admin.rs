//! Administration of the lease table and its state table: their definitions, and the wait for
//! a table to be active. The calls are sent by `DynamoLeaseTable::ensure_table`.

use crate::kcl_lease_item::attr;
use aws_sdk_dynamodb::operation::create_table::builders::CreateTableFluentBuilder;
use aws_sdk_dynamodb::operation::describe_table::DescribeTableOutput;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, GlobalSecondaryIndex, KeySchemaElement, KeyType, Projection, ProjectionType,
    ScalarAttributeType, TableStatus,
};
use proto::LeaseError;
use std::future::Future;
use std::time::Duration;

/// KCL's index of leases by owner (leaseOwner, leaseKey).
pub const OWNER_INDEX: &str = "LeaseOwnerToLeaseKeyIndex";

/// CreateTable of KCL's schema: hash key `leaseKey` (S), on-demand billing, and the owner index
/// with every attribute projected.
pub(crate) fn kcl_table(create: CreateTableFluentBuilder) -> CreateTableFluentBuilder {
    let definitions = [attr::KEY, attr::OWNER].map(|a| {
        AttributeDefinition::builder()
            .attribute_name(a)
            .attribute_type(ScalarAttributeType::S)
            .build()
            .expect("name and type set")
    });
    let key = |a: &str, t: KeyType| KeySchemaElement::builder().attribute_name(a).key_type(t).build().expect("set");
    let index = GlobalSecondaryIndex::builder()
        .index_name(OWNER_INDEX)
        .key_schema(key(attr::OWNER, KeyType::Hash))
        .key_schema(key(attr::KEY, KeyType::Range))
        .projection(Projection::builder().projection_type(ProjectionType::All).build())
        .build()
        .expect("index fields set");
    create
        .set_attribute_definitions(Some(definitions.to_vec()))
        .key_schema(key(attr::KEY, KeyType::Hash))
        .global_secondary_indexes(index)
        .billing_mode(BillingMode::PayPerRequest)
}

/// CreateTable of tributary's state table (the membership row): hash key
/// `leaseKey` (S), as the lease table, so both rows keep their codec; on-demand billing, no index.
pub(crate) fn state_table(create: CreateTableFluentBuilder) -> CreateTableFluentBuilder {
    let definition = AttributeDefinition::builder()
        .attribute_name(attr::KEY)
        .attribute_type(ScalarAttributeType::S)
        .build()
        .expect("name and type set");
    let key = KeySchemaElement::builder().attribute_name(attr::KEY).key_type(KeyType::Hash).build().expect("set");
    create.attribute_definitions(definition).key_schema(key).billing_mode(BillingMode::PayPerRequest)
}

/// The state table of the lease table `lease_table`: `<lease_table>-TributaryState`, beside it
/// as KCL v3's `<application>-CoordinatorState` is beside its lease table.
pub fn state_table_name(lease_table: &str) -> String {
    format!("{lease_table}-TributaryState")
}

/// Polls DescribeTable (`describe`) every 100 ms until `table` is active, for at most a minute:
/// whether it has the owner index (tables made by old KCL versions may not).
pub(crate) async fn wait_active<F, Fut>(table: &str, mut describe: F) -> Result<bool, LeaseError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<DescribeTableOutput, LeaseError>>,
{
    for _ in 0..600 {
        let out = describe().await?;
        let description = out.table().ok_or_else(|| LeaseError::Fatal("describe_table returned no table".into()))?;
        if description.table_status() == Some(&TableStatus::Active) {
            return Ok(description.global_secondary_indexes().iter().any(|i| i.index_name() == Some(OWNER_INDEX)));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(LeaseError::Unavailable(format!("table {table} not active after a minute")))
}
