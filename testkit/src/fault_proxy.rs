//! A TCP proxy that misbehaves on demand, for the chaos run and tests: one per node and service
//! (DynamoDB, Kinesis, PostgreSQL), listening on 127.0.0.1, forwarding to the real endpoint.
//! What it can do to the traffic:
//! - `Mode::Pass`: forward as it comes;
//! - `Mode::Delay(d)`: hold every chunk `d` before forwarding it (a slow link);
//! - `Mode::Blackhole`: forward nothing and answer nothing, in either direction, until the mode
//!   changes (a partition: TCP keeps the connection, the peer's timeouts decide); new
//!   connections are accepted and held the same way;
//! - `Mode::Refuse`: close new connections at once (the service is down);
//! - `cut()`: close every open connection now (a reset, a restart of the far end).
//!
//! Test-only: it is not a general-purpose proxy.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// What the proxy does to the traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Pass,
    Delay(Duration),
    Blackhole,
    Refuse,
}

/// The proxy's controls: the mode, and a counter whose change closes every connection.
struct Controls {
    mode: watch::Sender<Mode>,
    cuts: watch::Sender<u64>,
}

/// A running proxy; stopped (with every connection) when dropped.
pub struct FaultProxy {
    addr: SocketAddr,
    controls: Arc<Controls>,
    accept: JoinHandle<()>,
}

impl FaultProxy {
    /// Listens on 127.0.0.1 (a free port) and forwards to `upstream`.
    pub async fn start(upstream: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let controls = Arc::new(Controls { mode: watch::channel(Mode::Pass).0, cuts: watch::channel(0).0 });
        let accept = tokio::spawn(accept_loop(listener, upstream, controls.clone()));
        Ok(Self { addr, controls, accept })
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn set(&self, mode: Mode) {
        self.controls.mode.send_replace(mode);
    }

    pub fn mode(&self) -> Mode {
        *self.controls.mode.borrow()
    }

    /// Closes every open connection (new ones are taken as the mode says).
    pub fn cut(&self) {
        self.controls.cuts.send_modify(|n| *n += 1);
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

async fn accept_loop(listener: TcpListener, upstream: SocketAddr, controls: Arc<Controls>) {
    while let Ok((client, _)) = listener.accept().await {
        if *controls.mode.borrow() == Mode::Refuse {
            drop(client);
            continue;
        }
        let (mode, mut cuts) = (controls.mode.subscribe(), controls.cuts.subscribe());
        cuts.mark_unchanged();
        tokio::spawn(async move {
            let connection = async {
                // A black hole holds the connection before it reaches the far end too.
                wait_while_blackholed(&mut mode.clone()).await;
                let Ok(server) = TcpStream::connect(upstream).await else { return };
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                tokio::join!(
                    pipe(client_read, server_write, mode.clone()),
                    pipe(server_read, client_write, mode.clone())
                );
            };
            tokio::select! {
                () = connection => {}
                _ = cuts.changed() => {}
            }
        });
    }
}

async fn wait_while_blackholed(mode: &mut watch::Receiver<Mode>) {
    let _ = mode.wait_for(|m| *m != Mode::Blackhole).await;
}

/// One direction: each chunk read is held as the mode says, then written; the end of either
/// side ends it (and shuts the write side, so the peer sees the close).
async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut mode: watch::Receiver<Mode>,
) {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        wait_while_blackholed(&mut mode).await;
        let current = *mode.borrow();
        if let Mode::Delay(d) = current {
            tokio::time::sleep(d).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An echo server on 127.0.0.1: what it reads, it writes back.
    async fn echo() -> SocketAddr {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        addr
    }

    async fn round_trip(s: &mut TcpStream, text: &[u8]) -> std::io::Result<Vec<u8>> {
        s.write_all(text).await?;
        let mut back = vec![0u8; text.len()];
        s.read_exact(&mut back).await?;
        Ok(back)
    }

    #[tokio::test]
    async fn passes_delays_blackholes_refuses_and_cuts() {
        let proxy = FaultProxy::start(echo().await).await.unwrap();
        let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(round_trip(&mut s, b"pass").await.unwrap(), b"pass");

        proxy.set(Mode::Delay(Duration::from_millis(150)));
        let started = tokio::time::Instant::now();
        assert_eq!(round_trip(&mut s, b"slow").await.unwrap(), b"slow");
        assert!(started.elapsed() >= Duration::from_millis(300), "held each way: {:?}", started.elapsed());

        // A black hole: nothing comes back while it lasts, and all of it once it ends.
        proxy.set(Mode::Blackhole);
        let held = tokio::time::timeout(Duration::from_millis(300), round_trip(&mut s, b"hole")).await;
        assert!(held.is_err(), "no answer through a black hole");
        proxy.set(Mode::Pass);
        let mut back = [0u8; 4];
        s.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"hole", "delivered once the partition heals");

        // Cut: the open connection is closed.
        proxy.cut();
        let mut rest = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(5), s.read(&mut rest)).await.unwrap();
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");

        // Refuse: a new connection is closed at once.
        proxy.set(Mode::Refuse);
        let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
        let read = tokio::time::timeout(Duration::from_secs(5), s.read(&mut rest)).await.unwrap();
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
        proxy.set(Mode::Pass);
        let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(round_trip(&mut s, b"back").await.unwrap(), b"back");
    }
}
