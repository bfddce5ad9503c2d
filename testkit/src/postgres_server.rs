//! A throwaway PostgreSQL server for tests and local runs: `initdb` into a temporary folder,
//! started on 127.0.0.1 on a free port, stopped (and its folder removed) when the last handle is
//! dropped. Uses the Debian packages' binaries (`/usr/lib/postgresql/<v>/bin`); when running as
//! root it runs them as the `postgres` user, since `initdb` refuses root.
//!
//! `TRIBUTARY_PG_URL` overrides all of this: tests then use that server as it is.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

#[derive(Debug, thiserror::Error)]
#[error("cannot start a test postgresql: {0}")]
pub struct ServerError(String);

struct Server {
    dir: PathBuf,
    bin: PathBuf,
    as_postgres: bool,
    url: String,
}

static SHARED: Mutex<(usize, Option<Server>)> = Mutex::new((0, None));

/// Keeps the shared server up while it lives.
pub struct PgHandle {
    pub url: String,
    owned: bool,
}

impl Drop for PgHandle {
    fn drop(&mut self) {
        if !self.owned {
            return;
        }
        let mut shared = SHARED.lock().unwrap_or_else(|e| e.into_inner());
        shared.0 -= 1;
        if shared.0 == 0 {
            if let Some(server) = shared.1.take() {
                server.stop();
            }
        }
    }
}

/// A handle on a running server (started on first use).
pub fn postgres() -> Result<PgHandle, ServerError> {
    if let Ok(url) = std::env::var("TRIBUTARY_PG_URL") {
        return Ok(PgHandle { url, owned: false });
    }
    let mut shared = SHARED.lock().unwrap_or_else(|e| e.into_inner());
    if shared.1.is_none() {
        shared.1 = Some(Server::start(None, false)?);
    }
    shared.0 += 1;
    Ok(PgHandle { url: shared.1.as_ref().expect("started").url.clone(), owned: true })
}

/// The oldest PostgreSQL the tests accept: what the sink is specified against.
const MIN_MAJOR: u32 = 15;

/// The newest installed PostgreSQL's `bin`, by major version (as a number: 9.6 is older than 15).
fn find_bin() -> Result<PathBuf, ServerError> {
    let newest = std::fs::read_dir("/usr/lib/postgresql")
        .map_err(|_| ServerError("postgresql is not installed (apt-get install postgresql)".into()))?
        .filter_map(|e| {
            let path = e.ok()?.path();
            let major: u32 = path.file_name()?.to_str()?.split('.').next()?.parse().ok()?;
            path.join("bin/initdb").exists().then(|| (major, path.join("bin")))
        })
        .max();
    match newest {
        None => Err(ServerError("no initdb under /usr/lib/postgresql/*/bin".into())),
        Some((major, _)) if major < MIN_MAJOR => {
            Err(ServerError(format!("postgresql {major} is installed; the tests need {MIN_MAJOR} or newer")))
        }
        Some((_, bin)) => Ok(bin),
    }
}

fn free_port() -> Result<u16, ServerError> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| ServerError(e.to_string()))?;
    Ok(listener.local_addr().map_err(|e| ServerError(e.to_string()))?.port())
}

impl Server {
    fn run(&self, program: &str, args: &[&str]) -> Result<(), ServerError> {
        let exe = self.bin.join(program);
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&exe);
            c
        } else {
            Command::new(&exe)
        };
        let out = cmd.args(args).output().map_err(|e| ServerError(format!("{program}: {e}")))?;
        if !out.status.success() {
            return Err(ServerError(format!("{program} failed: {}", String::from_utf8_lossy(&out.stderr).trim())));
        }
        Ok(())
    }

    /// `durable`: a commit is in the write-ahead log before it is acknowledged
    /// (`synchronous_commit` on), so a crash of the server (not of the machine: `fsync` stays
    /// off) loses no acknowledged commit. The shared server trades that for speed.
    fn start(tls: Option<(&str, &str)>, durable: bool) -> Result<Self, ServerError> {
        let bin = find_bin()?;
        let as_postgres = running_as_root();
        let dir = std::env::temp_dir().join(format!("tributary-pg-{}-{}", std::process::id(), free_port()?));
        std::fs::create_dir_all(&dir).map_err(|e| ServerError(e.to_string()))?;
        if as_postgres {
            let status = Command::new("chown").arg("postgres:postgres").arg(&dir).status();
            if !status.is_ok_and(|s| s.success()) {
                return Err(ServerError(format!("cannot give {} to the postgres user", dir.display())));
            }
        }
        let port = free_port()?;
        let server =
            Server { url: format!("host=127.0.0.1 port={port} user=test dbname=postgres"), dir, bin, as_postgres };
        let data = server.dir.join("data");
        let data = data.to_str().ok_or_else(|| ServerError("non-utf-8 temp dir".into()))?;
        server.run("initdb", &["-D", data, "-U", "test", "--auth=trust", "-E", "UTF8", "--no-locale", "--no-sync"])?;
        let log = server.dir.join("log");
        let mut options = format!(
            "-c listen_addresses=127.0.0.1 -p {port} -k {} -c fsync=off -c full_page_writes=off",
            server.dir.display()
        );
        if !durable {
            options.push_str(" -c synchronous_commit=off");
        }
        if let Some((cert, key)) = tls {
            let data = Path::new(data);
            let write = |name: &str, text: &str| -> Result<(), ServerError> {
                use std::os::unix::fs::PermissionsExt;
                let path = data.join(name);
                std::fs::write(&path, text).map_err(|e| ServerError(format!("{name}: {e}")))?;
                // The server refuses a key others can read.
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                    .map_err(|e| ServerError(format!("{name}: {e}")))?;
                if server.as_postgres {
                    let _ = Command::new("chown").arg("postgres:postgres").arg(&path).status();
                }
                Ok(())
            };
            write("server.crt", cert)?;
            write("server.key", key)?;
            write(
                "pg_hba.conf",
                "local all all trust\nhostssl all all 127.0.0.1/32 trust\nhostnossl all all 127.0.0.1/32 reject\n",
            )?;
            options.push_str(" -c ssl=on -c ssl_cert_file=server.crt -c ssl_key_file=server.key");
        }
        server.run("pg_ctl", &["-D", data, "-l", log.to_str().unwrap_or("log"), "-w", "-o", &options, "start"])?;
        Ok(server)
    }

    fn stop(self) {
        let data = self.dir.join("data");
        let _ = self.run("pg_ctl", &["-D", data.to_str().unwrap_or(""), "-m", "immediate", "-w", "stop"]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A server of its own that accepts only TLS connections (`hostssl`; plain ones are rejected),
/// with this certificate and key (PEM); stopped when dropped.
pub struct TlsServer {
    pub url: String,
    server: Option<Server>,
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            server.stop();
        }
    }
}

pub fn postgres_tls(cert_pem: &str, key_pem: &str) -> Result<TlsServer, ServerError> {
    let server = Server::start(Some((cert_pem, key_pem)), false)?;
    Ok(TlsServer { url: server.url.clone(), server: Some(server) })
}

/// A server of its own, for tests that restart it under load; stopped when dropped.
pub struct OwnServer {
    pub url: String,
    server: Option<Server>,
}

/// How a restart stops the server (`pg_ctl -m`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shutdown {
    /// Open transactions are rolled back, connections closed, then a clean stop.
    Fast,
    /// Every process killed at once; the restart recovers from the write-ahead log (a crash).
    Immediate,
}

impl OwnServer {
    /// `durable` as `Server::start` says: off, an acknowledged commit may be lost in a crash
    /// (`Shutdown::Immediate`) unless the committing transaction asks for it to be durable.
    pub fn start(durable: bool) -> Result<Self, ServerError> {
        let server = Server::start(None, durable)?;
        Ok(Self { url: server.url.clone(), server: Some(server) })
    }

    /// Stops the server as `how` says and starts it again on the same port (returns once it
    /// accepts connections).
    pub fn restart(&self, how: Shutdown) -> Result<(), ServerError> {
        let server = self.server.as_ref().expect("running until dropped");
        let data = server.dir.join("data");
        let mode = match how {
            Shutdown::Fast => "fast",
            Shutdown::Immediate => "immediate",
        };
        let log = server.dir.join("log");
        let (data, log) = (data.to_str().unwrap_or(""), log.to_str().unwrap_or("log"));
        server.run("pg_ctl", &["-D", data, "-l", log, "-m", mode, "-w", "restart"])
    }
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            server.stop();
        }
    }
}

/// Whether this process runs as root (initdb then has to run as `postgres`).
fn running_as_root() -> bool {
    Path::new("/proc/self/status")
        .exists()
        .then(|| std::fs::read_to_string("/proc/self/status").ok())
        .flatten()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).map(|l| l.split_whitespace().nth(1) == Some("0")))
        .unwrap_or(false)
}
