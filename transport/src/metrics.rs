//! Prometheus metrics of the daemons, opt-in (`metrics_listen` in the config), served on
//! `/metrics` in the OpenMetrics text format by a small hyper server.
//!
//! Label values come from bounded sets only: group names and member names from the manifests,
//! client names from the policy file, result and rule codes. Never a message, a request id or
//! a key.

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Method, Request, Response, StatusCode};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GroupResult {
    pub group: String,
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GroupLabel {
    pub group: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GroupSigner {
    pub group: String,
    pub signer: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GroupSignerRule {
    pub group: String,
    pub signer: String,
    pub rule: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GroupClientRule {
    pub group: String,
    pub client: String,
    pub rule: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabels {
    pub version: String,
    pub role: String,
}

/// Metrics connections served at once.
const MAX_CONNECTIONS: usize = 16;

type F<L> = Family<L, Counter>;
type G<L> = Family<L, Gauge>;

/// Every metric of a daemon. One struct for both daemons: the families a role does not use
/// stay empty and are not printed with samples.
pub struct Metrics {
    registry: Registry,
    /// Coordinator: sign requests by group and result (`ok` or an error code).
    pub sign_requests: F<GroupResult>,
    /// Coordinator: latency of sign requests, seconds.
    pub sign_duration: Family<GroupLabel, Histogram>,
    /// Coordinator: invalid signature shares, by signer.
    pub culprits: F<GroupSigner>,
    /// Coordinator: policy refusals, by signer ("coordinator" for its own) and rule.
    pub policy_refusals_by_signer: F<GroupSignerRule>,
    /// Coordinator: pooled round-1 commitments per signer.
    pub pool_depth: G<GroupSigner>,
    /// Coordinator: participants connected.
    pub participants_connected: Gauge,
    /// Both: epoch served per group (the participant reports its newest).
    pub group_epoch: G<GroupLabel>,
    /// Coordinator: signers frozen by their operators, per group.
    pub frozen_signers: G<GroupLabel>,
    /// Participant: signature shares by group and result.
    pub shares: F<GroupResult>,
    /// Participant: policy refusals by client and rule.
    pub policy_refusals_by_client: F<GroupClientRule>,
    /// Participant: 1 for each frozen group ("*" for all).
    pub frozen: G<GroupLabel>,
    /// Participant: decrypted shares in memory.
    pub shares_in_memory: Gauge,
    /// Both: audit records that could not be written (each one stopped a signature).
    pub audit_write_failures: Counter,
    /// Both: configuration reloads by result.
    pub reloads: F<ResultLabel>,
    /// Both: sessions (coordinator) or requests (participant) in flight.
    pub in_flight: Gauge,
    /// Both: 1 while draining after SIGTERM.
    pub draining: Gauge,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

fn latency_buckets() -> impl Iterator<Item = f64> {
    [
        0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0,
    ]
    .into_iter()
}

impl Metrics {
    /// A registry for a daemon of `role` ("participant", "coordinator").
    pub fn new(role: &str) -> Arc<Self> {
        let mut registry = Registry::with_prefix("conclave");
        let sign_requests = F::<GroupResult>::default();
        registry.register(
            "sign_requests",
            "Sign requests by group and result (ok, or the error code)",
            sign_requests.clone(),
        );
        let sign_duration = Family::<GroupLabel, Histogram>::new_with_constructor(|| {
            Histogram::new(latency_buckets())
        });
        registry.register(
            "sign_duration_seconds",
            "Time from a sign request's arrival to its answer",
            sign_duration.clone(),
        );
        let culprits = F::<GroupSigner>::default();
        registry.register(
            "culprits",
            "Invalid signature shares, by signer",
            culprits.clone(),
        );
        let policy_refusals_by_signer = F::<GroupSignerRule>::default();
        registry.register(
            "policy_refusals",
            "Sign requests refused on policy, by the signer that refused and its rule",
            policy_refusals_by_signer.clone(),
        );
        let pool_depth = G::<GroupSigner>::default();
        registry.register(
            "commitment_pool_depth",
            "Round-1 commitments pooled per signer",
            pool_depth.clone(),
        );
        let participants_connected = Gauge::default();
        registry.register(
            "participants_connected",
            "Participants with a live connection",
            participants_connected.clone(),
        );
        let group_epoch = G::<GroupLabel>::default();
        registry.register("group_epoch", "Epoch served per group", group_epoch.clone());
        let frozen_signers = G::<GroupLabel>::default();
        registry.register(
            "frozen_signers",
            "Signers of the group that refuse because their operator froze it",
            frozen_signers.clone(),
        );
        let shares = F::<GroupResult>::default();
        registry.register(
            "signature_shares",
            "Signature share requests by group and result (ok, or the refusal)",
            shares.clone(),
        );
        let policy_refusals_by_client = F::<GroupClientRule>::default();
        registry.register(
            "client_refusals",
            "Sign requests this signer refused on its policy, by client and rule",
            policy_refusals_by_client.clone(),
        );
        let frozen = G::<GroupLabel>::default();
        registry.register(
            "frozen",
            "1 for each group this signer is frozen for (group=\"*\": all)",
            frozen.clone(),
        );
        let shares_in_memory = Gauge::default();
        registry.register(
            "shares_in_memory",
            "Decrypted key shares held in memory",
            shares_in_memory.clone(),
        );
        let audit_write_failures = Counter::default();
        registry.register(
            "audit_write_failures",
            "Audit records that could not be written (each stopped what it recorded)",
            audit_write_failures.clone(),
        );
        let reloads = F::<ResultLabel>::default();
        registry.register(
            "config_reloads",
            "Configuration reloads by result",
            reloads.clone(),
        );
        let in_flight = Gauge::default();
        registry.register(
            "in_flight",
            "Sessions (coordinator) or requests (participant) in progress",
            in_flight.clone(),
        );
        let draining = Gauge::default();
        registry.register(
            "draining",
            "1 while the daemon drains after SIGTERM",
            draining.clone(),
        );
        let start = Gauge::<f64, AtomicU64>::default();
        start.set(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()),
        );
        registry.register(
            "process_start_time_seconds",
            "Start time of the process, seconds since the Unix epoch",
            start,
        );
        let build = G::<BuildLabels>::default();
        build
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION").to_owned(),
                role: role.to_owned(),
            })
            .set(1);
        registry.register("build_info", "Version and role of this daemon", build);
        Arc::new(Self {
            registry,
            sign_requests,
            sign_duration,
            culprits,
            policy_refusals_by_signer,
            pool_depth,
            participants_connected,
            group_epoch,
            frozen_signers,
            shares,
            policy_refusals_by_client,
            frozen,
            shares_in_memory,
            audit_write_failures,
            reloads,
            in_flight,
            draining,
        })
    }

    /// The exposition text.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String does not fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// Counts a finished sign request at the coordinator.
    pub fn sign_done(&self, group: &str, result: &str, elapsed: Duration) {
        self.sign_requests
            .get_or_create(&GroupResult {
                group: group.to_owned(),
                result: result.to_owned(),
            })
            .inc();
        self.sign_duration
            .get_or_create(&GroupLabel {
                group: group.to_owned(),
            })
            .observe(elapsed.as_secs_f64());
    }
}

/// Serves `/metrics` on `listen` until the task is dropped. Anything else is 404; only GET
/// and HEAD.
pub async fn serve(listen: SocketAddr, metrics: Arc<Metrics>) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    // A few scrapers at a time: more connections are closed at once, so that nobody can use
    // up the daemon's file descriptors through this port.
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    tokio::spawn(async move {
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(error = %e, "metrics accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                drop(stream);
                continue;
            };
            let metrics = metrics.clone();
            tokio::spawn(async move {
                let _slot = slot;
                let io = hyper_util::rt::TokioIo::new(stream);
                let service =
                    hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                        let metrics = metrics.clone();
                        async move { Ok::<_, std::convert::Infallible>(respond(&req, &metrics)) }
                    });
                let conn = hyper::server::conn::http1::Builder::new()
                    .max_buf_size(16 * 1024)
                    .header_read_timeout(Duration::from_secs(10))
                    .timer(hyper_util::rt::TokioTimer::new())
                    .serve_connection(io, service);
                if let Err(e) = tokio::time::timeout(Duration::from_secs(10), conn).await {
                    tracing::debug!(error = %e, "metrics connection timed out");
                }
            });
        }
    });
    Ok(addr)
}

fn respond(req: &Request<hyper::body::Incoming>, metrics: &Metrics) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, body: String, ctype: &'static str| {
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = status;
        if let Ok(v) = hyper::header::HeaderValue::from_str(ctype) {
            r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
        }
        r
    };
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "only GET\n".into(),
            "text/plain",
        );
    }
    if req.uri().path() != "/metrics" {
        return reply(StatusCode::NOT_FOUND, "see /metrics\n".into(), "text/plain");
    }
    reply(
        StatusCode::OK,
        metrics.encode(),
        "application/openmetrics-text; version=1.0.0; charset=utf-8",
    )
}
