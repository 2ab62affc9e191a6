//! A loopback TCP proxy whose link a test can cut and heal: how a test cuts a process off from
//! its database the way a dead network path does.
//!
//! A process whose database is shut down, or whose connections are reset, learns of it at
//! once: the connection fails. A path that silently drops packets (a switch that died, a
//! partition, a firewall that drops) tells it nothing: what it sends is never answered, and
//! nothing fails until TCP gives up, a quarter of an hour later on Linux. That is the case
//! deadlines exist for, and the one a test cannot make by stopping the server.
//!
//! [`Proxy`] forwards every connection made to it to a target. [`Proxy::cut`] stops the
//! forwarding both ways and keeps every socket open: no FIN, no RST, no error, just silence.
//! The proxy stops reading, so what the peers send waits in the sockets' buffers, as TCP
//! would keep retransmitting it; new connections are accepted (the kernel would complete the
//! handshake anyway) but reach the target only once healed. [`Proxy::heal`] resumes the
//! forwarding: what waited is delivered, in order, as it would be on a path that came back
//! before TCP gave up.
//!
//! Everything runs on the test's tokio runtime, in tasks the proxy owns: dropping it closes
//! every connection. At most [`MAX_CONNECTIONS`] are forwarded at once (one more is accepted
//! and closed at once), and each direction of each holds at most one buffer of
//! [`BUFFER_BYTES`] outside the sockets.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

/// The most connections a [`Proxy`] forwards at once.
pub const MAX_CONNECTIONS: usize = 256;

/// The size of the buffer each direction of a connection copies through.
pub const BUFFER_BYTES: usize = 16 * 1024;

/// A loopback TCP proxy to one target, whose link can be cut and healed (see the
/// [module documentation](self)).
#[derive(Debug)]
pub struct Proxy {
    addr: SocketAddr,
    cut: watch::Sender<bool>,
    counts: Arc<Counts>,
    /// The accept loop, which owns the connections' tasks: aborted (closing them all) when
    /// the proxy is dropped.
    _tasks: JoinSet<()>,
}

#[derive(Debug, Default)]
struct Counts {
    accepted: AtomicU64,
    open: AtomicUsize,
    closed_by_client: AtomicU64,
}

impl Proxy {
    /// Listens on a free port of `127.0.0.1` and forwards every connection to `target`.
    ///
    /// # Errors
    /// The listener cannot be bound.
    pub async fn start(target: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let (cut, healed) = watch::channel(false);
        let counts = Arc::new(Counts::default());
        let mut tasks = JoinSet::new();
        tasks.spawn(accept(listener, target, healed, counts.clone()));
        Ok(Self {
            addr,
            cut,
            counts,
            _tasks: tasks,
        })
    }

    /// A proxy to the server a database URL names
    /// (`scheme://[user[:password]@]host[:port][/rest]`; the port is PostgreSQL's 5432 if the
    /// URL has none). Clients given [`Proxy::url`] of the same URL connect through it.
    ///
    /// # Errors
    /// The host cannot be resolved, or the listener cannot be bound.
    ///
    /// # Panics
    /// If `url` has no `://`.
    pub async fn to_url(url: &str) -> std::io::Result<Self> {
        let (host_at, end) = authority(url);
        let host_port = &url[host_at..end];
        let target = match host_port.rsplit_once(':') {
            // `[::1]` alone has colons but no port.
            Some((_, port)) if !port.ends_with(']') => host_port.to_owned(),
            _ => format!("{host_port}:5432"),
        };
        let target = tokio::net::lookup_host(target)
            .await?
            .next()
            .ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!("{host_port}: no address"),
                )
            })?;
        Self::start(target).await
    }

    /// Where clients connect.
    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `url` (`scheme://[user[:password]@]host[:port][/rest]`) with its host and port replaced
    /// by the proxy's, so that a client given it connects through the proxy.
    ///
    /// # Panics
    /// If `url` has no `://`.
    #[must_use]
    pub fn url(&self, url: &str) -> String {
        let (host_at, end) = authority(url);
        format!("{}{}{}", &url[..host_at], self.addr, &url[end..])
    }

    /// Stops forwarding, both ways, keeping every socket open.
    pub fn cut(&self) {
        self.cut.send_replace(true);
    }

    /// Forwards again, delivering what waited.
    pub fn heal(&self) {
        self.cut.send_replace(false);
    }

    /// Whether the link is cut.
    #[must_use]
    pub fn is_cut(&self) -> bool {
        *self.cut.borrow()
    }

    /// How many connections the proxy has accepted.
    #[must_use]
    pub fn accepted(&self) -> u64 {
        self.counts.accepted.load(Ordering::SeqCst)
    }

    /// How many connections are open now (neither side has closed both ways).
    #[must_use]
    pub fn open(&self) -> usize {
        self.counts.open.load(Ordering::SeqCst)
    }

    /// How many connections the client closed (its side reached end of file, as forwarded):
    /// a client that gives up a connection closes it, even one whose link is cut, and the
    /// proxy sees it once healed.
    #[must_use]
    pub fn closed_by_client(&self) -> u64 {
        self.counts.closed_by_client.load(Ordering::SeqCst)
    }
}

/// Where the host and port of `url` begin and end.
fn authority(url: &str) -> (usize, usize) {
    let start = url.find("://").expect("a URL with a scheme") + 3;
    let end = url[start..]
        .find(['/', '?', '#'])
        .map_or(url.len(), |i| start + i);
    let host_at = url[start..end].rfind('@').map_or(start, |i| start + i + 1);
    (host_at, end)
}

/// Accepts connections and forwards each, until dropped.
async fn accept(
    listener: TcpListener,
    target: SocketAddr,
    healed: watch::Receiver<bool>,
    counts: Arc<Counts>,
) {
    let mut connections = JoinSet::new();
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        while connections.try_join_next().is_some() {}
        counts.accepted.fetch_add(1, Ordering::SeqCst);
        if connections.len() >= MAX_CONNECTIONS {
            drop(client);
            continue;
        }
        counts.open.fetch_add(1, Ordering::SeqCst);
        connections.spawn(forward(client, target, healed.clone(), counts.clone()));
    }
}

/// Forwards one connection both ways until both sides have closed.
async fn forward(
    client: TcpStream,
    target: SocketAddr,
    mut healed: watch::Receiver<bool>,
    counts: Arc<Counts>,
) {
    // A cut link reaches no server: the target hears of the connection once healed.
    if wait_healed(&mut healed).await {
        if let Ok(server) = TcpStream::connect(target).await {
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            let (client_read, client_write) = client.into_split();
            let (server_read, server_write) = server.into_split();
            let (client_closed, _) = tokio::join!(
                pump(client_read, server_write, healed.clone()),
                pump(server_read, client_write, healed),
            );
            if client_closed {
                counts.closed_by_client.fetch_add(1, Ordering::SeqCst);
            }
        }
    }
    counts.open.fetch_sub(1, Ordering::SeqCst);
}

/// Copies `from` to `to` while the link is not cut, until `from` ends (then `to` is shut
/// down, passing the end on). Answers whether `from` ended (rather than failed, or the
/// proxy went away).
async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    mut healed: watch::Receiver<bool>,
) -> bool {
    let mut buf = vec![0; BUFFER_BYTES];
    let ended = loop {
        if !wait_healed(&mut healed).await {
            break false;
        }
        let read = from.read(&mut buf).await;
        // What was read just as the link was cut (data, or the end) waits for the heal, like
        // the rest.
        if !wait_healed(&mut healed).await {
            break false;
        }
        match read {
            Ok(0) => break true,
            Ok(n) => {
                if to.write_all(&buf[..n]).await.is_err() {
                    break false;
                }
            }
            Err(_) => break false,
        }
    };
    let _ = to.shutdown().await;
    ended
}

/// Waits until the link is not cut; `false` if the proxy went away meanwhile.
async fn wait_healed(healed: &mut watch::Receiver<bool>) -> bool {
    healed.wait_for(|cut| !*cut).await.is_ok()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// An echo server on a free port: it writes back what it reads.
    async fn echo() -> (SocketAddr, JoinSet<()>) {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut tasks = JoinSet::new();
        tasks.spawn(async move {
            let mut conns = JoinSet::new();
            while let Ok((mut s, _)) = listener.accept().await {
                conns.spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        (addr, tasks)
    }

    async fn round_trip(conn: &mut TcpStream, text: &[u8]) -> Vec<u8> {
        conn.write_all(text).await.unwrap();
        let mut back = vec![0; text.len()];
        conn.read_exact(&mut back).await.unwrap();
        back
    }

    #[tokio::test]
    async fn forwards_goes_silent_when_cut_and_delivers_what_waited_when_healed() {
        let (target, _server) = echo().await;
        let proxy = Proxy::start(target).await.unwrap();
        let mut conn = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(round_trip(&mut conn, b"hello").await, b"hello");

        proxy.cut();
        assert!(proxy.is_cut());
        conn.write_all(b"lost?").await.unwrap();
        let mut back = [0; 5];
        let silent = tokio::time::timeout(Duration::from_millis(300), conn.read(&mut back)).await;
        assert!(silent.is_err(), "a cut link answers nothing: {silent:?}");
        // A connection made while cut is accepted, and silent too.
        let mut late = TcpStream::connect(proxy.addr()).await.unwrap();
        late.write_all(b"late!").await.unwrap();
        let silent = tokio::time::timeout(Duration::from_millis(200), late.read(&mut back)).await;
        assert!(silent.is_err(), "{silent:?}");

        proxy.heal();
        conn.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"lost?", "what waited is delivered");
        late.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"late!");
        assert_eq!(round_trip(&mut conn, b"again").await, b"again");
        assert_eq!(proxy.accepted(), 2);
        assert_eq!(proxy.open(), 2);
    }

    #[tokio::test]
    async fn a_client_closing_is_seen_once_healed() {
        let (target, _server) = echo().await;
        let proxy = Proxy::start(target).await.unwrap();
        let mut conn = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(round_trip(&mut conn, b"x").await, b"x");
        proxy.cut();
        drop(conn);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(proxy.closed_by_client(), 0, "nothing is read while cut");
        assert_eq!(proxy.open(), 1);
        proxy.heal();
        for _ in 0..100 {
            if proxy.open() == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(proxy.open(), 0);
        assert_eq!(proxy.closed_by_client(), 1);
    }

    #[tokio::test]
    async fn dropping_the_proxy_closes_its_connections() {
        let (target, _server) = echo().await;
        let proxy = Proxy::start(target).await.unwrap();
        let mut conn = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(round_trip(&mut conn, b"x").await, b"x");
        drop(proxy);
        let mut back = [0; 1];
        let end = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut back))
            .await
            .expect("the connection ends");
        assert!(matches!(end, Ok(0) | Err(_)), "{end:?}");
    }

    #[tokio::test]
    async fn a_proxy_to_a_url_reaches_its_server() {
        let (target, _server) = echo().await;
        let url = format!("postgres://u:p@{target}/db?x=1");
        let proxy = Proxy::to_url(&url).await.unwrap();
        assert_eq!(
            proxy.url(&url),
            format!("postgres://u:p@{}/db?x=1", proxy.addr())
        );
        let mut conn = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(round_trip(&mut conn, b"ping").await, b"ping");
    }

    #[tokio::test]
    async fn urls_are_pointed_at_the_proxy() {
        let proxy = Proxy::start("127.0.0.1:9".parse().unwrap()).await.unwrap();
        let at = proxy.addr();
        for (url, proxied) in [
            (
                "postgres://postgres@127.0.0.1:5432/postgres",
                format!("postgres://postgres@{at}/postgres"),
            ),
            (
                "postgres://u:p@ss@db.internal/ops?sslmode=disable",
                format!("postgres://u:p@ss@{at}/ops?sslmode=disable"),
            ),
            ("postgresql://localhost", format!("postgresql://{at}")),
        ] {
            assert_eq!(proxy.url(url), proxied, "{url}");
        }
    }
}
