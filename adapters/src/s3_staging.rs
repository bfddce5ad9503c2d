//! Where the Redshift COPY path stages its files: an S3 prefix (`s3://bucket/prefix/`), one
//! thin call per S3 operation (PutObject, DeleteObject), each failure classified. A file's key
//! is the prefix, the table's name, then a fresh name of fixed length ending `.csv.gz`, so no
//! key is the beginning of another (COPY loads every object whose key starts with the one it
//! names). Files are deleted once their commit ended; one a crash left behind is never read
//! again (a lifecycle rule on the prefix removes it: README).

use crate::aws::{classify, Failure};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::Client;
use proto::WarehouseError;
use std::sync::atomic::{AtomicU64, Ordering};

/// An S3 prefix to stage files under.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct S3Prefix {
    pub bucket: String,
    /// Empty, or ending in `/`.
    pub prefix: String,
}

impl S3Prefix {
    /// `s3://bucket` or `s3://bucket/some/prefix/` (a trailing `/` is added when missing).
    pub fn parse(url: &str) -> Result<Self, String> {
        let rest = url.strip_prefix("s3://").ok_or_else(|| format!("{url:?} does not start with s3://"))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let valid = bucket.len() >= 3
            && bucket.len() <= 63
            && bucket.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
        if !valid {
            return Err(format!("{bucket:?} is not an S3 bucket name"));
        }
        let mut prefix = prefix.to_owned();
        if !prefix.is_empty() && !prefix.ends_with('/') {
            prefix.push('/');
        }
        Ok(Self { bucket: bucket.to_owned(), prefix })
    }
}

pub struct S3Staging {
    client: Client,
    at: S3Prefix,
    /// This process's part of every file name (so two nodes never pick the same).
    node: String,
    files: AtomicU64,
}

/// Throttling, server faults and calls without an answer may pass on a retry (a PutObject or
/// DeleteObject applied twice does no harm); a refusal (no such bucket, access denied) will not.
fn s3_error(f: Failure) -> WarehouseError {
    if f.is_throttle() || f.is_server_fault() || !matches!(f, Failure::Service { .. }) {
        WarehouseError::Unavailable(format!("s3: {f}"))
    } else {
        WarehouseError::Rejected(format!("s3: {f}"))
    }
}

/// Whether S3 is reached at an endpoint of one's own (`AWS_ENDPOINT_URL`, `AWS_ENDPOINT_URL_S3`,
/// a profile's `endpoint_url`: the local stack's emulator), found as the SDK finds it. Such an
/// endpoint takes the bucket in the path; AWS's own take it in the host name (AWS retires
/// path-style requests).
fn own_endpoint(sdk: &aws_config::SdkConfig) -> bool {
    let s3 = aws_types::service_config::ServiceConfigKey::builder()
        .service_id("S3")
        .env("AWS_ENDPOINT_URL")
        .profile("endpoint_url")
        .build()
        .expect("every field is set");
    sdk.endpoint_url().is_some() || sdk.service_config().and_then(|c| c.load_config(s3)).is_some()
}

impl S3Staging {
    /// `node` names this process in the files' names: letters, digits and `-` only are kept.
    pub fn new(sdk: &aws_config::SdkConfig, at: S3Prefix, node: &str) -> Self {
        let config = aws_sdk_s3::config::Builder::from(sdk).force_path_style(own_endpoint(sdk)).build();
        let started = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or_default();
        Self::started_at(Client::from_conf(config), at, node, started)
    }

    fn started_at(client: Client, at: S3Prefix, node: &str, started: u128) -> Self {
        let node: String = node.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '-').take(48).collect();
        // Two stagings of one name started in the same millisecond (two sinks of one process, a
        // node restarted at once under its id) must still not pick the same keys: a random part.
        let random = std::hash::BuildHasher::hash_one(&std::collections::hash_map::RandomState::new(), started);
        Self { client, at, node: format!("{node}-{started:013}-{random:016x}"), files: AtomicU64::new(0) }
    }

    /// A fresh key for a file of `table`: `<prefix><table>/<node>-<start ms>-<random>-<n:012>.csv.gz`.
    pub fn fresh_key(&self, table: &str) -> String {
        let n = self.files.fetch_add(1, Ordering::Relaxed);
        let table: String =
            table.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '-' }).collect();
        format!("{}{table}/{}-{n:012}.csv.gz", self.at.prefix, self.node)
    }

    /// The `s3://` URL COPY reads `key` by.
    pub fn url(&self, key: &str) -> String {
        format!("s3://{}/{key}", self.at.bucket)
    }

    /// PutObject of `body` at `key`.
    pub async fn put(&self, key: &str, body: Vec<u8>) -> Result<(), WarehouseError> {
        self.client
            .put_object()
            .bucket(&self.at.bucket)
            .key(key)
            .content_type("text/csv")
            .content_encoding("gzip")
            .body(ByteStream::from(body))
            .send()
            .await
            .map(|_| ())
            .map_err(|e| s3_error(classify(&e)))
    }

    /// DeleteObject at `key` (deleting a missing key succeeds).
    pub async fn delete(&self, key: &str) -> Result<(), WarehouseError> {
        self.client
            .delete_object()
            .bucket(&self.at.bucket)
            .key(key)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| s3_error(classify(&e)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_parse_and_keys_never_begin_one_another() {
        let at = S3Prefix::parse("s3://tributary-staging/loads").unwrap();
        assert_eq!(at, S3Prefix { bucket: "tributary-staging".into(), prefix: "loads/".into() });
        assert_eq!(S3Prefix::parse("s3://bucket").unwrap().prefix, "");
        for bad in ["https://bucket/x", "s3://B/x", "s3://ab", "s3:///x"] {
            assert!(S3Prefix::parse(bad).is_err(), "{bad}");
        }
        let sdk = aws_config::SdkConfig::builder().behavior_version(aws_config::BehaviorVersion::latest()).build();
        let staging = S3Staging::new(&sdk, at, "node/7 (a)");
        let keys: Vec<String> = (0..3).map(|_| staging.fresh_key("charge \"sessions\"")).collect();
        assert!(keys[0].starts_with("loads/charge--sessions-/node7a-"), "{}", keys[0]);
        assert!(keys.iter().all(|k| k.ends_with(".csv.gz") && k.len() == keys[0].len()), "{keys:?}");
        for a in &keys {
            assert!(keys.iter().filter(|b| b.starts_with(a.as_str())).count() == 1, "{a} begins another key");
        }
        assert_eq!(staging.url(&keys[0]), format!("s3://tributary-staging/{}", keys[0]));
        // Two stagings of the same name started in the same millisecond pick other keys.
        let twins: Vec<String> = (0..2)
            .map(|_| {
                let client = Client::new(&sdk);
                S3Staging::started_at(client, S3Prefix::parse("s3://bkt/p").unwrap(), "n", 1).fresh_key("t")
            })
            .collect();
        assert!(twins[0] != twins[1] && twins[0].len() == twins[1].len(), "{twins:?}");
    }

    /// On AWS a bucket is named in the host (path-style requests are being retired); at an
    /// endpoint of one's own (the emulator) in the path.
    #[test]
    fn the_bucket_goes_in_the_path_only_at_an_endpoint_of_ones_own() {
        let builder = || aws_config::SdkConfig::builder().behavior_version(aws_config::BehaviorVersion::latest());
        assert!(!own_endpoint(&builder().build()));
        assert!(own_endpoint(&builder().endpoint_url("http://127.0.0.1:5000").build()));
        /// `AWS_ENDPOINT_URL_S3` set, as the SDK's loader reads it.
        #[derive(Debug)]
        struct OnlyS3;
        impl aws_types::service_config::LoadServiceConfig for OnlyS3 {
            fn load_config(&self, key: aws_types::service_config::ServiceConfigKey<'_>) -> Option<String> {
                (key.service_id() == "S3" && key.env() == "AWS_ENDPOINT_URL").then(|| "http://127.0.0.1:5000".into())
            }
        }
        assert!(own_endpoint(&builder().service_config(OnlyS3).build()));
    }
}
