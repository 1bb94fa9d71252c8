//! A chaos UDP forwarder for real processes: put it between a coordinator and a participant
//! (the manifest names the proxy's address) and it injects delay, jitter, loss, duplication
//! and blackholes into the QUIC datagrams, both ways. Each client address gets its own
//! upstream socket, so replies find their way back.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

/// Most distinct clients one proxy serves (each gets an upstream socket).
const MAX_CLIENTS: usize = 256;
const MAX_DATAGRAM: usize = 65_535;

/// What the proxy does to each datagram.
#[derive(Clone, Copy, Debug)]
pub struct ProxyConfig {
    /// Fixed one-way delay added to every datagram.
    pub delay: Duration,
    /// Uniform jitter in [-jitter, +jitter] around `delay`.
    pub jitter: Duration,
    /// Probability a datagram is dropped.
    pub loss: f64,
    /// Probability a datagram is sent twice.
    pub duplicate: f64,
    pub seed: u64,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            delay: Duration::ZERO,
            jitter: Duration::ZERO,
            loss: 0.0,
            duplicate: 0.0,
            seed: 1,
        }
    }
}

/// Counters of a running proxy.
#[derive(Debug, Default)]
pub struct ProxyStats {
    pub forwarded: AtomicU64,
    pub dropped: AtomicU64,
    pub blackholed: AtomicU64,
    pub duplicated: AtomicU64,
}

struct Shared {
    config: ProxyConfig,
    rng: Mutex<ChaCha20Rng>,
    blackhole: AtomicBool,
    stats: ProxyStats,
}

impl Shared {
    /// Decides a datagram's fate: `None` to drop it, else the delays of its copies.
    fn fate(&self) -> Option<Vec<Duration>> {
        if self.blackhole.load(Ordering::Relaxed) {
            self.stats.blackholed.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let mut rng = self.rng.lock().ok()?;
        if rng.gen_bool(self.config.loss.clamp(0.0, 1.0)) {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let copies = if rng.gen_bool(self.config.duplicate.clamp(0.0, 1.0)) {
            2
        } else {
            1
        };
        if copies == 2 {
            self.stats.duplicated.fetch_add(1, Ordering::Relaxed);
        }
        let base = self.config.delay.as_secs_f64();
        let jitter = self.config.jitter.as_secs_f64();
        Some(
            (0..copies)
                .map(|_| {
                    let j = if jitter > 0.0 {
                        rng.gen_range(-jitter..=jitter)
                    } else {
                        0.0
                    };
                    Duration::from_secs_f64((base + j).max(0.0))
                })
                .collect(),
        )
    }
}

/// Sends `data` to `to` from `socket` after each delay in `fate`.
fn forward(shared: &Arc<Shared>, socket: &Arc<UdpSocket>, data: &[u8], to: SocketAddr) {
    let Some(delays) = shared.fate() else { return };
    for delay in delays {
        shared.stats.forwarded.fetch_add(1, Ordering::Relaxed);
        let (socket, data) = (socket.clone(), data.to_vec());
        if delay.is_zero() {
            let _ = socket.try_send_to(&data, to);
        } else {
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let _ = socket.send_to(&data, to).await;
            });
        }
    }
}

/// A running proxy. Dropping it stops it.
pub struct Proxy {
    local_addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Proxy {
    /// Listens on `listen` (port 0: the OS chooses) and forwards to `upstream`.
    pub async fn start(
        listen: SocketAddr,
        upstream: SocketAddr,
        config: ProxyConfig,
    ) -> std::io::Result<Self> {
        let front = Arc::new(UdpSocket::bind(listen).await?);
        let local_addr = front.local_addr()?;
        let shared = Arc::new(Shared {
            config,
            rng: Mutex::new(ChaCha20Rng::seed_from_u64(config.seed)),
            blackhole: AtomicBool::new(false),
            stats: ProxyStats::default(),
        });
        let task = tokio::spawn(run(front, upstream, shared.clone()));
        Ok(Self {
            local_addr,
            shared,
            task,
        })
    }

    /// The address clients send to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Drops every datagram, both ways, while on.
    pub fn set_blackhole(&self, on: bool) {
        self.shared.blackhole.store(on, Ordering::Relaxed);
    }

    /// Counters so far.
    pub fn stats(&self) -> &ProxyStats {
        &self.shared.stats
    }
}

async fn run(front: Arc<UdpSocket>, upstream: SocketAddr, shared: Arc<Shared>) {
    let mut backs: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let Ok((len, client)) = front.recv_from(&mut buf).await else {
            continue;
        };
        let back = match backs.get(&client) {
            Some(b) => b.clone(),
            None => {
                if backs.len() >= MAX_CLIENTS {
                    continue;
                }
                let bind: SocketAddr = if upstream.is_ipv6() {
                    ([0u16; 8], 0).into()
                } else {
                    ([127, 0, 0, 1], 0).into()
                };
                let Ok(sock) = UdpSocket::bind(bind).await else {
                    continue;
                };
                let sock = Arc::new(sock);
                backs.insert(client, sock.clone());
                // Replies from upstream go back to this client through the front socket.
                let (front, shared, reply_sock) = (front.clone(), shared.clone(), sock.clone());
                tokio::spawn(async move {
                    let mut buf = vec![0u8; MAX_DATAGRAM];
                    while let Ok((len, from)) = reply_sock.recv_from(&mut buf).await {
                        if from == upstream {
                            if let Some(data) = buf.get(..len) {
                                forward(&shared, &front, data, client);
                            }
                        }
                    }
                });
                sock
            }
        };
        if let Some(data) = buf.get(..len) {
            forward(&shared, &back, data, upstream);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn echo() -> SocketAddr {
        let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = s.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = [0u8; 1500];
            while let Ok((n, from)) = s.recv_from(&mut buf).await {
                let _ = s.send_to(&buf[..n], from).await;
            }
        });
        addr
    }

    #[tokio::test]
    async fn forwards_both_ways_with_delay_and_blackholes() {
        let upstream = echo().await;
        let cfg = ProxyConfig {
            delay: Duration::from_millis(20),
            ..ProxyConfig::default()
        };
        let proxy = Proxy::start("127.0.0.1:0".parse().unwrap(), upstream, cfg)
            .await
            .unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let start = std::time::Instant::now();
        client.send_to(b"ping", proxy.local_addr()).await.unwrap();
        let mut buf = [0u8; 16];
        let (n, _) = tokio::time::timeout(Duration::from_secs(2), client.recv_from(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&buf[..n], b"ping");
        assert!(
            start.elapsed() >= Duration::from_millis(40),
            "delayed both ways"
        );
        proxy.set_blackhole(true);
        client.send_to(b"lost", proxy.local_addr()).await.unwrap();
        assert!(
            tokio::time::timeout(Duration::from_millis(200), client.recv_from(&mut buf))
                .await
                .is_err()
        );
        assert!(proxy.stats().blackholed.load(Ordering::Relaxed) >= 1);
    }

    #[tokio::test]
    async fn total_loss_drops_everything() {
        let upstream = echo().await;
        let cfg = ProxyConfig {
            loss: 1.0,
            ..ProxyConfig::default()
        };
        let proxy = Proxy::start("127.0.0.1:0".parse().unwrap(), upstream, cfg)
            .await
            .unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        client.send_to(b"x", proxy.local_addr()).await.unwrap();
        let mut buf = [0u8; 4];
        assert!(
            tokio::time::timeout(Duration::from_millis(150), client.recv_from(&mut buf))
                .await
                .is_err()
        );
        assert_eq!(proxy.stats().dropped.load(Ordering::Relaxed), 1);
    }
}
