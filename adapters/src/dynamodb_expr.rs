//! DynamoDB update and condition expressions for one conditional write: the text with `#names`
//! and `:values` aliases, and the aliases' maps. `expect` writes a lease write's precondition.

use crate::kcl_lease_item::{attr, n, s, Item};
use aws_sdk_dynamodb::types::AttributeValue;
use proto::{Expect, WorkerId};
use std::collections::HashMap;

/// Builds one conditional write: expression text with `#names` and `:values`.
#[derive(Default)]
pub(crate) struct Expr {
    pub(crate) names: HashMap<String, String>,
    pub(crate) values: Item,
    pub(crate) condition: Vec<String>,
    pub(crate) set: Vec<String>,
    pub(crate) remove: Vec<String>,
}

impl Expr {
    pub(crate) fn name(&mut self, attribute: &str) -> String {
        let alias = format!("#{attribute}");
        self.names.insert(alias.clone(), attribute.to_owned());
        alias
    }

    pub(crate) fn value(&mut self, v: AttributeValue) -> String {
        let alias = format!(":v{}", self.values.len());
        self.values.insert(alias.clone(), v);
        alias
    }

    /// `attribute = value`, or `attribute_not_exists(attribute)` for `None`.
    fn expect_optional(&mut self, attribute: &str, value: Option<&str>) {
        let name = self.name(attribute);
        let clause = match value {
            Some(v) => format!("{name} = {}", self.value(s(v))),
            None => format!("attribute_not_exists({name})"),
        };
        self.condition.push(clause);
    }

    pub(crate) fn set(&mut self, attribute: &str, value: AttributeValue) {
        let (name, value) = (self.name(attribute), self.value(value));
        self.set.push(format!("{name} = {value}"));
    }

    pub(crate) fn remove(&mut self, attribute: &str) {
        let name = self.name(attribute);
        self.remove.push(name);
    }

    pub(crate) fn expect(&mut self, expect: &Expect) {
        let key = self.name(attr::KEY);
        self.condition.push(format!("attribute_exists({key})"));
        if let Some(c) = expect.counter {
            let (name, value) = (self.name(attr::COUNTER), self.value(n(c)));
            self.condition.push(format!("{name} = {value}"));
        }
        if let Some(o) = &expect.owner {
            self.expect_optional(attr::OWNER, o.as_ref().map(WorkerId::as_str));
        }
        if let Some(o) = &expect.checkpoint_owner {
            self.expect_optional(attr::CHECKPOINT_OWNER, o.as_ref().map(WorkerId::as_str));
        }
    }

    pub(crate) fn update_text(&self) -> String {
        let mut text = String::new();
        if !self.set.is_empty() {
            text.push_str("SET ");
            text.push_str(&self.set.join(", "));
        }
        if !self.remove.is_empty() {
            text.push_str(" REMOVE ");
            text.push_str(&self.remove.join(", "));
        }
        text
    }

    pub(crate) fn condition_text(&self) -> String {
        self.condition.join(" AND ")
    }
}
