//! A TCP relay between a client and a service, on an ephemeral loopback port.
//! It counts the bytes it forwards (what a client really put on the wire) and
//! can misbehave on purpose: drop everything coming back from the server
//! (lost acknowledgements), and cut every open connection at once, closing
//! both sockets without any protocol goodbye, which is what the server sees
//! when a client process crashes or its link dies. Clients reconnect through
//! it as to any server. Dropping the relay closes the listener and every
//! connection.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A running relay; dropping it closes the listener and every connection.
pub struct Relay {
    addr: SocketAddr,
    inner: Arc<Inner>,
    accept: JoinHandle<()>,
}

struct Inner {
    target: String,
    /// Bytes read from clients and sent on to the server.
    up: AtomicU64,
    /// Bytes read from the server and sent back to clients.
    down: AtomicU64,
    /// Bytes read from the server and thrown away.
    dropped: AtomicU64,
    blackhole: AtomicBool,
    accepted: AtomicU64,
    /// Connections relayed right now.
    open: watch::Sender<u64>,
    /// Bumped to close every open connection.
    cut: watch::Sender<u64>,
}

impl Relay {
    /// Listens on an ephemeral loopback port and forwards to `target` (`host:port`).
    pub async fn start(target: impl Into<String>) -> std::io::Result<Relay> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let inner = Arc::new(Inner {
            target: target.into(),
            up: AtomicU64::new(0),
            down: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            blackhole: AtomicBool::new(false),
            accepted: AtomicU64::new(0),
            open: watch::channel(0).0,
            cut: watch::channel(0).0,
        });
        let shared = inner.clone();
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                shared.accepted.fetch_add(1, Ordering::Relaxed);
                shared.open.send_modify(|n| *n += 1);
                let cut = shared.cut.subscribe();
                let inner = shared.clone();
                tokio::spawn(async move {
                    pipe(client, inner.clone(), cut).await;
                    inner.open.send_modify(|n| *n -= 1);
                });
            }
        });
        Ok(Relay {
            addr,
            inner,
            accept,
        })
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Bytes clients have sent to the server so far.
    pub fn up(&self) -> u64 {
        self.inner.up.load(Ordering::SeqCst)
    }

    /// The loopback port clients connect to.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Bytes the server has sent back to clients so far.
    pub fn down(&self) -> u64 {
        self.inner.down.load(Ordering::SeqCst)
    }

    /// Bytes from the server that were thrown away while blackholed.
    pub fn dropped(&self) -> u64 {
        self.inner.dropped.load(Ordering::SeqCst)
    }

    /// Connections accepted so far (reconnects included).
    pub fn accepted(&self) -> u64 {
        self.inner.accepted.load(Ordering::SeqCst)
    }

    /// While on, whatever the server sends is read and thrown away.
    pub fn blackhole(&self, on: bool) {
        self.inner.blackhole.store(on, Ordering::SeqCst);
    }

    /// Closes every open connection on both sides at once, with no protocol
    /// goodbye; the blackhole is switched off for the connections that follow.
    pub fn cut(&self) {
        self.blackhole(false);
        self.inner.cut.send_modify(|g| *g += 1);
    }

    /// [Cuts](Self::cut) every connection and returns once both sockets of
    /// each are closed (at most `limit`), so the server has been sent the
    /// end of every connection.
    pub async fn cut_and_wait(&self, limit: std::time::Duration) {
        self.cut();
        let mut open = self.inner.open.subscribe();
        let _ = tokio::time::timeout(limit, open.wait_for(|n| *n == 0)).await;
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.accept.abort();
        self.inner.cut.send_modify(|g| *g += 1);
    }
}

async fn pipe(client: TcpStream, inner: Arc<Inner>, mut cut: watch::Receiver<u64>) {
    let server = tokio::select! {
        s = TcpStream::connect(inner.target.as_str()) => match s {
            Ok(s) => s,
            Err(_) => return,
        },
        _ = cut.changed() => return,
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (mut client_rx, mut client_tx) = client.into_split();
    let (mut server_rx, mut server_tx) = server.into_split();
    let up = async {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = client_rx.read(&mut buf).await?;
            if n == 0 {
                return Ok::<_, std::io::Error>(());
            }
            // Counted before it is sent on: once the server has answered,
            // the count includes everything it answered to.
            inner.up.fetch_add(n as u64, Ordering::SeqCst);
            server_tx.write_all(&buf[..n]).await?;
        }
    };
    let down = async {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = server_rx.read(&mut buf).await?;
            if n == 0 {
                return Ok::<_, std::io::Error>(());
            }
            if inner.blackhole.load(Ordering::SeqCst) {
                inner.dropped.fetch_add(n as u64, Ordering::SeqCst);
            } else {
                inner.down.fetch_add(n as u64, Ordering::SeqCst);
                client_tx.write_all(&buf[..n]).await?;
            }
        }
    };
    // Whichever side ends first (or a cut) ends the connection on both sides:
    // dropping the halves closes both sockets.
    tokio::select! {
        _ = up => {}
        _ = down => {}
        _ = cut.changed() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A TCP echo server on loopback.
    async fn echo() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        addr
    }

    async fn settle(relay: &Relay, up: u64, down: u64) {
        for _ in 0..200 {
            if relay.up() >= up && relay.down() + relay.dropped() >= down {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn counts_bytes_both_ways() {
        let relay = Relay::start(echo().await.to_string()).await.unwrap();
        let mut s = TcpStream::connect(relay.addr()).await.unwrap();
        s.write_all(b"hello world").await.unwrap();
        let mut back = [0u8; 11];
        s.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"hello world");
        settle(&relay, 11, 11).await;
        assert_eq!((relay.up(), relay.down(), relay.dropped()), (11, 11, 0));
        assert_eq!(relay.accepted(), 1);
    }

    #[tokio::test]
    async fn blackhole_drops_the_way_back_and_cut_closes_connections() {
        let relay = Relay::start(echo().await.to_string()).await.unwrap();
        let mut s = TcpStream::connect(relay.addr()).await.unwrap();
        relay.blackhole(true);
        s.write_all(b"lost").await.unwrap();
        settle(&relay, 4, 4).await;
        assert_eq!((relay.up(), relay.down(), relay.dropped()), (4, 0, 4));
        relay.cut();
        let mut buf = [0u8; 8];
        let n = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf))
            .await
            .expect("the cut closes the client side")
            .unwrap_or(0);
        assert_eq!(n, 0, "nothing comes back after the cut");
        // A new connection works normally again.
        let mut s = TcpStream::connect(relay.addr()).await.unwrap();
        s.write_all(b"ok").await.unwrap();
        let mut back = [0u8; 2];
        s.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"ok");
        assert_eq!(relay.accepted(), 2);
    }

    #[tokio::test]
    async fn a_cut_closes_both_sides_like_a_crash() {
        let server = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let relay = Relay::start(server.local_addr().unwrap().to_string())
            .await
            .unwrap();
        let mut client = TcpStream::connect(relay.addr()).await.unwrap();
        let (mut upstream, _) = server.accept().await.unwrap();
        client.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        upstream.read_exact(&mut buf).await.unwrap();
        relay.cut_and_wait(Duration::from_secs(5)).await;
        assert_eq!(*relay.inner.open.borrow(), 0);
        // Both ends see the connection end without any goodbye from the peer.
        for end in [&mut client, &mut upstream] {
            let n = tokio::time::timeout(Duration::from_secs(5), end.read(&mut buf))
                .await
                .expect("closed")
                .unwrap_or(0);
            assert_eq!(n, 0);
        }
    }

    #[tokio::test]
    async fn dropping_the_relay_closes_its_connections() {
        let relay = Relay::start(echo().await.to_string()).await.unwrap();
        let mut s = TcpStream::connect(relay.addr()).await.unwrap();
        s.write_all(b"x").await.unwrap();
        let mut one = [0u8; 1];
        s.read_exact(&mut one).await.unwrap();
        drop(relay);
        let n = tokio::time::timeout(Duration::from_secs(2), s.read(&mut one))
            .await
            .expect("the drop closes the client side")
            .unwrap_or(0);
        assert_eq!(n, 0);
    }
}
