//! The PostgreSQL sink over TLS, against a real PostgreSQL that accepts only TLS connections
//! (`hostssl`) with a certificate from a test CA: `sslmode=require` connects and verifies the
//! server against the extra root; without the root the certificate is refused; without
//! `sslmode=require` the connection is plain and the server turns it away; a certificate of the
//! trusted CA for another host name is refused.

use adapters::postgres::{PostgresConfig, PostgresWarehouse};
use proto::{Batch, Column, Row, RowOp, SqlType, TableSchema, Value, Version, Warehouse, WarehouseError};
use std::sync::Arc;
use testkit::postgres_server::postgres_tls;

/// A CA, and a server certificate for `names` (host names or addresses) signed by it:
/// (CA PEM, cert PEM, key PEM).
fn certificates(names: &[&str]) -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
    let cert = CertificateParams::new(names).unwrap().signed_by(&key, &ca, &ca_key).unwrap();
    (ca.pem(), cert.pem(), key.serialize_pem())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_is_required_verified_and_used() {
    let (ca, cert, key) = certificates(&["127.0.0.1"]);
    let server = postgres_tls(&cert, &key).unwrap();
    let dir = std::env::temp_dir().join(format!("tributary-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, ca).unwrap();

    let config = |extra: &str| format!("{} {extra}", server.url).parse::<PostgresConfig>().unwrap();
    let w =
        PostgresWarehouse::connect_with(config("sslmode=require"), Some(&ca_file)).await.expect("tls with the test CA");
    let used = w.query_text("SELECT ssl::text FROM pg_stat_ssl WHERE pid = pg_backend_pid()").await.unwrap();
    assert_eq!(used[0][0].as_deref(), Some("true"), "the session is encrypted");
    let table = Arc::new(TableSchema {
        name: "secure".into(),
        columns: vec![Column::new("id", SqlType::Text), Column::new("n", SqlType::BigInt)],
        key: vec![0],
        version_column: "_version".into(),
    });
    w.ensure_table(&table).await.unwrap();
    let row = Row {
        op: RowOp::Upsert,
        version: Version::from_text("00000001"),
        values: vec![Value::Text("a".into()), Value::Int(1)],
    };
    assert_eq!(w.commit(&Batch { table, rows: vec![row] }).await.unwrap().upserted, 1);

    // The system's roots alone do not know the test CA: the certificate is refused, as a
    // configuration error (not retried).
    let e = PostgresWarehouse::connect_with(config("sslmode=require"), None).await.err().expect("refused");
    assert!(matches!(e, WarehouseError::Rejected(_)) && e.to_string().contains("certificate"), "{e:?}");
    // Plain TCP (no sslmode=require): the server accepts only TLS.
    let e = PostgresWarehouse::connect_with(config(""), Some(&ca_file)).await.err().expect("rejected");
    assert!(e.to_string().contains("no encryption") || e.to_string().contains("pg_hba"), "{e}");
    // A root file that holds no certificate fails at start with its name.
    let empty = dir.join("empty.pem");
    std::fs::write(&empty, "").unwrap();
    let e = PostgresWarehouse::connect_with(config("sslmode=require"), Some(&empty)).await.err().unwrap();
    assert!(e.to_string().contains("empty.pem"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Host-name verification (libpq's `verify-full`): the server's certificate is signed by the CA
/// the client trusts but names only `db.example.internal`. Reached by its address or by
/// `localhost` it is refused, the error naming the mismatch; reached by that name (the address
/// given apart, as `hostaddr`) it connects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_for_another_host_name_is_refused() {
    let (ca, cert, key) = certificates(&["db.example.internal"]);
    let server = postgres_tls(&cert, &key).unwrap();
    let dir = std::env::temp_dir().join(format!("tributary-tls-name-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, ca).unwrap();

    let port = server.url.parse::<PostgresConfig>().unwrap().get_ports()[0];
    let config = |host: &str| {
        format!("{host} port={port} user=test dbname=postgres sslmode=require").parse::<PostgresConfig>().unwrap()
    };
    for host in ["host=127.0.0.1", "host=localhost"] {
        let Err(e) = PostgresWarehouse::connect_with(config(host), Some(&ca_file)).await else {
            panic!("{host}: connected, though the certificate is only for db.example.internal");
        };
        assert!(matches!(e, WarehouseError::Rejected(_)), "{host}: not retried: {e:?}");
        let e = e.to_string();
        assert!(e.contains("certificate not valid for name") && e.contains("db.example.internal"), "{host}: {e}");
    }
    let w = PostgresWarehouse::connect_with(config("host=db.example.internal hostaddr=127.0.0.1"), Some(&ca_file))
        .await
        .expect("the name the certificate is for");
    let used = w.query_text("SELECT ssl::text FROM pg_stat_ssl WHERE pid = pg_backend_pid()").await.unwrap();
    assert_eq!(used[0][0].as_deref(), Some("true"), "the session is encrypted");
    let _ = std::fs::remove_dir_all(&dir);
}
