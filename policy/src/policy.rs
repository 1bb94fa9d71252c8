//! A signer's own policy: which client may have which group sign which kinds of message, how
//! large, how often, and never twice the same request. Default deny. Every participant holds
//! its own policy file and decides from it and from the bytes; the coordinator's word counts
//! for nothing here. Sans-IO: time (Unix seconds) is passed in.
//!
//! ```toml
//! clock_skew_secs = 30        # optional, default 30
//! [[client]]
//! name = "release-ci"
//! key = "<hex identity key>"
//! groups = ["release"]
//! kinds = ["raw", "sshsig:git", "sshsig:file", "ssh-auth"]   # also "transition"
//! max_message_bytes = 4096
//! rate = "60/min"             # per client per group (a burst of 60, refilled over a minute)
//! prefix = "release "         # optional: raw messages must start with it
//! window = "08:00-18:00"      # optional: UTC hours in which it may sign
//! ```

use std::collections::{BTreeMap, HashMap};

use conclave_protocol::request::SignedRequest;
use conclave_protocol::{GroupName, NodeId};
use serde::Deserialize;

use crate::kinds::{classify, MessageKind};

/// Largest policy file read.
pub const MAX_POLICY_LEN: u64 = 1024 * 1024;
/// Request ids remembered at most per client (about 40 bytes each): beyond, that client's new
/// requests are refused until its old ones expire (fail closed). Per client, so that one busy
/// client cannot lock the others out.
pub const MAX_REMEMBERED: usize = 100_000;
/// Largest clock skew a policy may tolerate.
pub const MAX_CLOCK_SKEW_SECS: u64 = 600;
/// Longest a request may be valid for (bounds how long an id must be remembered).
pub const MAX_VALIDITY_SECS: u64 = 3600;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default = "default_skew")]
    clock_skew_secs: u64,
    #[serde(default)]
    client: Vec<ClientRule>,
}

fn default_skew() -> u64 {
    30
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientRule {
    name: String,
    key: String,
    groups: Vec<String>,
    kinds: Vec<String>,
    max_message_bytes: usize,
    rate: String,
    #[serde(default)]
    prefix: Option<String>,
    #[serde(default)]
    window: Option<String>,
}

/// A policy file that cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    #[error("policy is not valid TOML: {0}")]
    Syntax(String),
    #[error("cannot read policy {0}")]
    Read(String),
    #[error("client {name:?}: {what}")]
    Client { name: String, what: String },
}

#[derive(Clone, Copy, Debug)]
struct Rate {
    per: u64,
    period_secs: u64,
}

fn parse_rate(s: &str) -> Option<Rate> {
    let (n, unit) = s.split_once('/')?;
    let per: u64 = n.trim().parse().ok().filter(|n| *n > 0)?;
    let period_secs = match unit.trim() {
        "s" | "sec" | "second" => 1,
        "min" | "minute" => 60,
        "h" | "hour" => 3600,
        "day" => 86_400,
        _ => return None,
    };
    Some(Rate { per, period_secs })
}

fn parse_window(s: &str) -> Option<(u32, u32)> {
    let minutes = |t: &str| -> Option<u32> {
        let (h, m) = t.trim().split_once(':')?;
        let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
        (h < 24 && m < 60).then_some(h * 60 + m)
    };
    let (a, b) = s.split_once('-')?;
    let (from, to) = (minutes(a)?, minutes(b)?);
    // An empty window would allow nothing: say so rather than refuse every request.
    (from != to).then_some((from, to))
}

#[derive(Debug)]
struct Client {
    name: String,
    groups: Vec<GroupName>,
    kinds: Vec<String>,
    max_message_bytes: usize,
    rate: Rate,
    prefix: Option<Vec<u8>>,
    window: Option<(u32, u32)>,
}

/// Which rule refused a request (a wire code, shared with the refusal message).
pub use conclave_protocol::PolicyRule as Rule;

/// A request the policy allows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    pub client: String,
    pub kind: MessageKind,
}

/// A signer's policy with its rate and replay state.
#[derive(Debug)]
pub struct Policy {
    skew: u64,
    clients: HashMap<NodeId, Client>,
    buckets: HashMap<(NodeId, GroupName), (f64, u64)>,
    /// Per client: request id → its not-after.
    seen: HashMap<NodeId, HashMap<[u8; 16], u64>>,
}

impl Policy {
    /// Takes over the replay memory and the rate buckets of `old` (the policy this one
    /// replaces on a reload), so that a reload neither makes a request already signed
    /// signable again nor refills a client's rate. Buckets of clients or groups this policy no
    /// longer allows are dropped; a bucket is capped at this policy's rate.
    pub fn take_state(&mut self, old: &mut Policy) {
        self.seen = std::mem::take(&mut old.seen);
        for ((client, group), bucket) in std::mem::take(&mut old.buckets) {
            if let Some(c) = self.clients.get(&client) {
                if !c.groups.contains(&group) {
                    continue;
                }
                let capped = (bucket.0.min(c.rate.per as f64), bucket.1);
                self.buckets.insert((client, group), capped);
            }
        }
    }

    /// Parses a policy file's text.
    pub fn from_toml(text: &str) -> Result<Self, PolicyError> {
        let f: File =
            toml::from_str(text).map_err(|e| PolicyError::Syntax(e.message().to_owned()))?;
        if f.clock_skew_secs > MAX_CLOCK_SKEW_SECS {
            return Err(PolicyError::Syntax(format!(
                "clock_skew_secs is at most {MAX_CLOCK_SKEW_SECS}"
            )));
        }
        let mut clients = HashMap::new();
        let mut names = std::collections::BTreeSet::new();
        for c in f.client {
            let bad = |what: &str| PolicyError::Client {
                name: c.name.clone(),
                what: what.to_owned(),
            };
            let key = NodeId::from_hex(&c.key)
                .map_err(|_| bad("key is not a hex Ed25519 identity key"))?;
            let groups = c
                .groups
                .iter()
                .map(|g| GroupName::new(g).map_err(|_| bad("a group name is invalid")))
                .collect::<Result<Vec<_>, _>>()?;
            for k in &c.kinds {
                let known = matches!(k.as_str(), "raw" | "ssh-auth" | "transition")
                    || k.strip_prefix("sshsig:").is_some_and(|ns| !ns.is_empty());
                if !known {
                    return Err(bad(&format!(
                        "unknown kind {k:?} (raw, sshsig:NAMESPACE, ssh-auth, transition)"
                    )));
                }
            }
            let rate = parse_rate(&c.rate).ok_or_else(|| bad("rate must be like \"60/min\""))?;
            let window = match &c.window {
                Some(w) => Some(
                    parse_window(w).ok_or_else(|| bad("window must be like \"08:00-18:00\""))?,
                ),
                None => None,
            };
            if !names.insert(c.name.clone()) {
                return Err(bad("the name is used twice"));
            }
            let client = Client {
                name: c.name.clone(),
                groups,
                kinds: c.kinds.clone(),
                max_message_bytes: c.max_message_bytes,
                rate,
                prefix: c.prefix.clone().map(String::into_bytes),
                window,
            };
            if clients.insert(key, client).is_some() {
                return Err(bad("the key is used by two clients"));
            }
        }
        Ok(Self {
            skew: f.clock_skew_secs,
            clients,
            buckets: HashMap::new(),
            seen: HashMap::new(),
        })
    }

    /// Decides on `request` for `group`, which this signer serves at `epoch`, where `message`
    /// is the message of the signing package it was asked to sign. On a grant the request id
    /// is remembered (until its not-after) and one unit of the client's rate is spent.
    pub fn decide(
        &mut self,
        now: u64,
        request: &SignedRequest,
        group: &GroupName,
        epoch: u64,
        message: &[u8],
    ) -> Result<Grant, Rule> {
        request.verify().map_err(|_| Rule::BadSignature)?;
        let body = &request.body;
        let client = self
            .clients
            .get(&request.client)
            .ok_or(Rule::UnknownClient)?;
        if body.group != *group {
            return Err(Rule::Group);
        }
        if now > body.not_after.saturating_add(self.skew) {
            return Err(Rule::Expired);
        }
        if body.not_after > now.saturating_add(MAX_VALIDITY_SECS + self.skew) {
            return Err(Rule::TooLong);
        }
        if !client.groups.contains(&body.group) {
            return Err(Rule::Group);
        }
        if body.epoch != epoch {
            return Err(Rule::Epoch);
        }
        if !body.message.matches(message) {
            return Err(Rule::MessageMismatch);
        }
        if message.len() > client.max_message_bytes {
            return Err(Rule::TooLarge);
        }
        let kind = classify(message);
        if kind.name() != body.kind || matches!(kind, MessageKind::Invalid(_)) {
            return Err(Rule::KindMismatch);
        }
        if !client.kinds.contains(&body.kind) {
            return Err(Rule::Kind);
        }
        if let Some(p) = &client.prefix {
            if kind == MessageKind::Raw && !message.starts_with(p) {
                return Err(Rule::Prefix);
            }
        }
        if let Some((from, to)) = client.window {
            let minute = u32::try_from((now % 86_400) / 60).unwrap_or(0);
            let inside = if from <= to {
                (from..to).contains(&minute)
            } else {
                minute >= from || minute < to
            };
            if !inside {
                return Err(Rule::Window);
            }
        }
        let skew = self.skew;
        let seen = self.seen.entry(request.client).or_default();
        if seen.contains_key(&body.request_id) {
            return Err(Rule::Replay);
        }
        if seen.len() >= MAX_REMEMBERED {
            seen.retain(|_, not_after| not_after.saturating_add(skew) >= now);
            if seen.len() >= MAX_REMEMBERED {
                return Err(Rule::Busy);
            }
        }
        // Token bucket: `per` tokens, refilled evenly over the period.
        let rate = client.rate;
        let bucket = self
            .buckets
            .entry((request.client, body.group.clone()))
            .or_insert((rate.per as f64, now));
        let refill =
            (now.saturating_sub(bucket.1)) as f64 * rate.per as f64 / rate.period_secs as f64;
        bucket.0 = (bucket.0 + refill).min(rate.per as f64);
        bucket.1 = now;
        if bucket.0 < 1.0 {
            return Err(Rule::Rate);
        }
        bucket.0 -= 1.0;
        let grant = Grant {
            client: client.name.clone(),
            kind,
        };
        self.seen
            .entry(request.client)
            .or_default()
            .insert(body.request_id, body.not_after);
        Ok(grant)
    }

    /// The name this policy gives the client with key `key`.
    pub fn client_name(&self, key: &NodeId) -> Option<&str> {
        self.clients.get(key).map(|c| c.name.as_str())
    }

    /// A policy that allows nothing.
    pub fn deny_all() -> Self {
        Self {
            skew: default_skew(),
            clients: HashMap::new(),
            buckets: HashMap::new(),
            seen: HashMap::new(),
        }
    }

    /// Reads and parses a policy file (at most [`MAX_POLICY_LEN`] bytes).
    pub fn read(path: &std::path::Path) -> Result<Self, PolicyError> {
        let text = conclave_protocol::read_bounded_to_string(path, MAX_POLICY_LEN)
            .map_err(|e| PolicyError::Read(format!("{}: {e}", path.display())))?;
        Self::from_toml(&text)
    }

    /// The clients of this policy, by name (for status output).
    pub fn clients(&self) -> BTreeMap<String, String> {
        self.clients
            .iter()
            .map(|(k, c)| (c.name.clone(), k.short()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use conclave_protocol::request::{MessageRef, SignRequestBody};
    use conclave_protocol::IdentityKey;

    const NOW: u64 = 1_800_000_000 - 1_800_000_000 % 86_400 + 10 * 3600; // 10:00 UTC

    fn g() -> GroupName {
        GroupName::new("release").unwrap()
    }

    fn policy(a: &IdentityKey, extra: &str) -> Policy {
        Policy::from_toml(&format!(
            "[[client]]\nname = \"release-ci\"\nkey = \"{}\"\ngroups = [\"release\"]\nkinds = [\"raw\", \"sshsig:git\"]\nmax_message_bytes = 256\nrate = \"3/min\"\n{extra}",
            a.node_id().to_hex()
        ))
        .unwrap()
    }

    fn request(id: &IdentityKey, message: &[u8], kind: &str, n: u8) -> SignedRequest {
        SignRequestBody {
            group: GroupName::new("release").unwrap(),
            epoch: 1,
            message: MessageRef::Full(message.to_vec()),
            kind: kind.into(),
            request_id: [n; 16],
            not_after: NOW + 60,
        }
        .sign(id)
        .unwrap()
    }

    #[test]
    fn default_deny_and_every_rule_refuses_what_it_should() {
        let a = IdentityKey::generate(&mut rand::rngs::OsRng);
        let b = IdentityKey::generate(&mut rand::rngs::OsRng);
        let mut p = policy(&a, "");
        assert_eq!(
            p.decide(
                NOW,
                &request(&a, b"release 1", "raw", 1),
                &g(),
                1,
                b"release 1"
            )
            .unwrap()
            .client,
            "release-ci"
        );
        // Not in the policy.
        assert_eq!(
            p.decide(NOW, &request(&b, b"x", "raw", 2), &g(), 1, b"x"),
            Err(Rule::UnknownClient)
        );
        // The coordinator altered the message after the client signed.
        assert_eq!(
            p.decide(
                NOW,
                &request(&a, b"release 2", "raw", 3),
                &g(),
                1,
                b"release 6"
            ),
            Err(Rule::MessageMismatch)
        );
        // Replay of an answered request.
        assert_eq!(
            p.decide(
                NOW,
                &request(&a, b"release 1", "raw", 1),
                &g(),
                1,
                b"release 1"
            ),
            Err(Rule::Replay)
        );
        // Expired, or valid for too long.
        let mut old = request(&a, b"r", "raw", 4);
        old.body.not_after = NOW - 1000;
        let old = old.body.sign(&a).unwrap();
        assert_eq!(p.decide(NOW, &old, &g(), 1, b"r"), Err(Rule::Expired));
        let mut long = request(&a, b"r", "raw", 5).body;
        long.not_after = NOW + 10 * MAX_VALIDITY_SECS;
        assert_eq!(
            p.decide(NOW, &long.sign(&a).unwrap(), &g(), 1, b"r"),
            Err(Rule::TooLong)
        );
        // Another epoch, a forged client signature, too large.
        assert_eq!(
            p.decide(NOW, &request(&a, b"r", "raw", 6), &g(), 2, b"r"),
            Err(Rule::Epoch)
        );
        let mut forged = request(&a, b"r", "raw", 7);
        forged.signature[0] ^= 1;
        assert_eq!(
            p.decide(NOW, &forged, &g(), 1, b"r"),
            Err(Rule::BadSignature)
        );
        let big = vec![b'a'; 257];
        assert_eq!(
            p.decide(NOW, &request(&a, &big, "raw", 8), &g(), 1, &big),
            Err(Rule::TooLarge)
        );
    }

    #[test]
    fn kinds_are_recognised_from_the_bytes_not_taken_from_the_request() {
        let a = IdentityKey::generate(&mut rand::rngs::OsRng);
        let mut p = policy(&a, "");
        let mut blob = b"SSHSIG".to_vec();
        for s in [b"file".as_slice(), b"", b"sha512", &[1u8; 64]] {
            blob.extend_from_slice(&(s.len() as u32).to_be_bytes());
            blob.extend_from_slice(s);
        }
        // An sshsig:file blob declared as raw: refused (kind mismatch), and as what it is:
        // not allowed (only sshsig:git).
        assert_eq!(
            p.decide(NOW, &request(&a, &blob, "raw", 1), &g(), 1, &blob),
            Err(Rule::KindMismatch)
        );
        assert_eq!(
            p.decide(NOW, &request(&a, &blob, "sshsig:file", 2), &g(), 1, &blob),
            Err(Rule::Kind)
        );
        // A transition statement needs the transition kind.
        let mut t = conclave_protocol::TRANSITION_PREFIX.to_vec();
        t.extend_from_slice(b"x\n");
        assert_eq!(
            p.decide(NOW, &request(&a, &t, "raw", 3), &g(), 1, &t),
            Err(Rule::KindMismatch)
        );
        assert_eq!(
            p.decide(NOW, &request(&a, &t, "transition", 4), &g(), 1, &t),
            Err(Rule::Kind)
        );
    }

    #[test]
    fn rate_prefix_and_window() {
        let a = IdentityKey::generate(&mut rand::rngs::OsRng);
        let mut p = policy(&a, "");
        for n in 1..=3 {
            p.decide(NOW, &request(&a, b"m", "raw", n), &g(), 1, b"m")
                .unwrap();
        }
        // The 4th in the same minute: refused; a minute later: allowed again.
        assert_eq!(
            p.decide(NOW, &request(&a, b"m", "raw", 4), &g(), 1, b"m"),
            Err(Rule::Rate)
        );
        p.decide(NOW + 60, &request(&a, b"m", "raw", 5), &g(), 1, b"m")
            .unwrap();
        let mut p = policy(&a, "prefix = \"release \"\nwindow = \"08:00-12:00\"\n");
        assert_eq!(
            p.decide(NOW, &request(&a, b"other", "raw", 1), &g(), 1, b"other"),
            Err(Rule::Prefix)
        );
        p.decide(
            NOW,
            &request(&a, b"release 9", "raw", 2),
            &g(),
            1,
            b"release 9",
        )
        .unwrap();
        let late = NOW + 3 * 3600;
        let mut r = request(&a, b"release 9", "raw", 3).body;
        r.not_after = late + 60;
        assert_eq!(
            p.decide(late, &r.sign(&a).unwrap(), &g(), 1, b"release 9"),
            Err(Rule::Window)
        );
    }

    #[test]
    fn bad_policy_files_are_refused_with_the_reason() {
        let a = IdentityKey::generate(&mut rand::rngs::OsRng);
        let base = |extra: &str, kinds: &str, rate: &str| {
            Policy::from_toml(&format!(
                "[[client]]\nname = \"c\"\nkey = \"{}\"\ngroups = [\"g\"]\nkinds = {kinds}\nmax_message_bytes = 1\nrate = \"{rate}\"\n{extra}",
                a.node_id().to_hex()
            ))
        };
        assert!(base("", "[\"raw\"]", "1/min").is_ok());
        assert!(base("", "[\"everything\"]", "1/min").is_err());
        assert!(base("", "[\"raw\"]", "fast").is_err());
        assert!(base("window = \"25:00-26:00\"", "[\"raw\"]", "1/min").is_err());
        assert!(base("window = \"08:00-08:00\"", "[\"raw\"]", "1/min").is_err());
        assert!(Policy::from_toml("clock_skew_secs = 100000\n").is_err());
        assert!(Policy::from_toml("clock_skew_secs = 600\n").is_ok());
        assert!(base("unknown = 1", "[\"raw\"]", "1/min").is_err());
        assert!(Policy::from_toml("[[client]]\nname = 1").is_err());
    }
}
