//! What to simulate: group size, load, network model, faults and adversaries. Readable from
//! TOML (`conclave sim --scenario FILE`) and buildable in a few lines from Rust.

use serde::{Deserialize, Serialize};

/// How the network treats a lost transmission.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// Like QUIC: a lost transmission is retransmitted after a retransmission timeout
    /// (3 × the link's round trip, at least 10 ms), so loss shows up as delay.
    #[default]
    Quic,
    /// Like raw datagrams: a lost transmission is gone; the coordinator's timeouts recover.
    Datagram,
}

/// Which group a simulated request is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum GroupChoice {
    /// Uniform over the groups.
    #[default]
    Random,
    /// Always the first group.
    Hot,
}

/// Shape of the random part of a link's latency.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Jitter {
    /// Uniform in [-jitter, +jitter] (never below zero total latency).
    #[default]
    Uniform,
    /// Exponential with mean `jitter`, added: a long tail.
    Exponential,
}

/// One direction-symmetric link between the coordinator and a participant.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Link {
    /// Fixed one-way latency.
    pub latency_ms: f64,
    /// Size of the random part.
    pub jitter_ms: f64,
    pub jitter: Jitter,
    /// Probability that one transmission is lost.
    pub loss: f64,
    /// Probability that a message is delivered twice.
    pub duplicate: f64,
    /// Probability that a message is held back (up to 2 × latency more), overtaking order.
    pub reorder: f64,
}

impl Default for Link {
    fn default() -> Self {
        Self {
            latency_ms: 1.0,
            jitter_ms: 0.0,
            jitter: Jitter::Uniform,
            loss: 0.0,
            duplicate: 0.0,
            reorder: 0.0,
        }
    }
}

/// A different link for one participant.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkOverride {
    /// Participant number, 1-based.
    pub participant: usize,
    #[serde(flatten)]
    pub link: Link,
}

/// A participant process dies (losing its in-memory nonces) and maybe comes back.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Crash {
    pub participant: usize,
    pub at_ms: u64,
    /// Restart time; never restarts when absent.
    pub restart_at_ms: Option<u64>,
}

/// The listed participants cannot talk to the coordinator between `from_ms` and `until_ms`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Partition {
    pub participants: Vec<usize>,
    pub from_ms: u64,
    pub until_ms: u64,
}

/// A participant that takes `delay_ms` longer to answer every request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Slow {
    pub participant: usize,
    pub delay_ms: u64,
}

/// A participant whose wall clock is off by `offset_secs` (ahead when positive): it judges
/// request expiry by its own clock, as a real node with a wrong clock does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Skew {
    pub participant: usize,
    pub offset_secs: i64,
}

/// What a byzantine participant does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Behaviour {
    /// Sends signature shares that do not verify.
    InvalidShares,
    /// Replays old messages: an earlier signature share in place of the one asked for, and the
    /// earlier reply itself once more.
    Replay,
    /// Hands out commitments, then refuses to sign with them.
    RefuseCommitments,
    /// Answers only a fraction (`rate`) of requests and ignores the rest.
    Selective,
}

/// A participant that misbehaves.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Byzantine {
    pub participant: usize,
    pub behaviour: Behaviour,
    /// For `selective`: the fraction of requests answered (default 0.5).
    #[serde(default = "half")]
    pub rate: f64,
}

fn half() -> f64 {
    0.5
}

/// A whole simulation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Scenario {
    pub threshold: u16,
    pub participants: usize,
    /// Signing requests to run.
    pub requests: usize,
    /// Requests in flight at once.
    pub concurrency: usize,
    /// Seed of the one RNG everything random comes from.
    pub seed: u64,
    /// Bytes in each message signed.
    pub message_bytes: usize,
    /// Each request's deadline.
    pub request_timeout_ms: u64,
    /// How long the coordinator waits for one participant's answer (the ceiling of a signer's
    /// adaptive round-2 timeout).
    pub participant_timeout_ms: u64,
    /// The floor of a signer's adaptive round-2 timeout.
    pub min_participant_timeout_ms: u64,
    /// Most commitments the coordinator pools per participant (a busy group's pools).
    pub pool_target: u16,
    /// Commitments pooled per participant for a group with no recent request.
    pub pool_idle: u16,
    /// Groups served by the same participants (each dealt on its own).
    pub groups: usize,
    /// Which group each request is for: `random` (uniform over the groups) or `hot` (always
    /// the first).
    pub group_choice: GroupChoice,
    /// How long until the coordinator notices a silent dead connection (QUIC idle timeout).
    pub connection_timeout_ms: u64,
    /// How long a reconnection takes once a participant is reachable again.
    pub reconnect_ms: u64,
    pub transport: Transport,
    /// The link to every participant, unless overridden.
    pub link: Link,
    pub links: Vec<LinkOverride>,
    pub crashes: Vec<Crash>,
    pub partitions: Vec<Partition>,
    pub slow: Vec<Slow>,
    pub byzantine: Vec<Byzantine>,
    pub skew: Vec<Skew>,
}

impl Default for Scenario {
    fn default() -> Self {
        Self {
            threshold: 3,
            participants: 5,
            requests: 100,
            concurrency: 1,
            seed: 1,
            message_bytes: 32,
            request_timeout_ms: 10_000,
            participant_timeout_ms: 2_000,
            min_participant_timeout_ms: 250,
            pool_target: 32,
            pool_idle: 1,
            groups: 1,
            group_choice: GroupChoice::Random,
            connection_timeout_ms: 10_000,
            reconnect_ms: 200,
            transport: Transport::Quic,
            link: Link::default(),
            links: Vec::new(),
            crashes: Vec::new(),
            partitions: Vec::new(),
            slow: Vec::new(),
            byzantine: Vec::new(),
            skew: Vec::new(),
        }
    }
}

/// A scenario that cannot run.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("scenario: {0}")]
pub struct ScenarioError(pub String);

impl Scenario {
    /// A `t`-of-`n` scenario with default settings.
    pub fn new(t: u16, n: usize) -> Self {
        Self {
            threshold: t,
            participants: n,
            ..Self::default()
        }
    }

    /// Parses TOML.
    pub fn from_toml(text: &str) -> Result<Self, ScenarioError> {
        let s: Self = toml::from_str(text).map_err(|e| ScenarioError(e.message().to_owned()))?;
        s.validate()?;
        Ok(s)
    }

    pub fn requests(mut self, n: usize) -> Self {
        self.requests = n;
        self
    }
    /// `n` groups, each request for one as `choice` says.
    pub fn groups(mut self, n: usize, choice: GroupChoice) -> Self {
        self.groups = n;
        self.group_choice = choice;
        self
    }
    pub fn concurrency(mut self, c: usize) -> Self {
        self.concurrency = c;
        self
    }
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }
    pub fn link(mut self, link: Link) -> Self {
        self.link = link;
        self
    }
    pub fn transport(mut self, t: Transport) -> Self {
        self.transport = t;
        self
    }
    pub fn crash(mut self, participant: usize, at_ms: u64, restart_at_ms: Option<u64>) -> Self {
        self.crashes.push(Crash {
            participant,
            at_ms,
            restart_at_ms,
        });
        self
    }
    pub fn partition(mut self, participants: Vec<usize>, from_ms: u64, until_ms: u64) -> Self {
        self.partitions.push(Partition {
            participants,
            from_ms,
            until_ms,
        });
        self
    }
    pub fn slow(mut self, participant: usize, delay_ms: u64) -> Self {
        self.slow.push(Slow {
            participant,
            delay_ms,
        });
        self
    }
    pub fn byzantine(mut self, participant: usize, behaviour: Behaviour) -> Self {
        self.byzantine.push(Byzantine {
            participant,
            behaviour,
            rate: 0.5,
        });
        self
    }

    /// Checks ranges and references.
    pub fn validate(&self) -> Result<(), ScenarioError> {
        let err = |m: String| Err(ScenarioError(m));
        let n = self.participants;
        if !(2..=1000).contains(&n) || self.threshold < 2 || usize::from(self.threshold) > n {
            return err(format!(
                "need 2 <= threshold <= participants <= 1000, got {}-of-{n}",
                self.threshold
            ));
        }
        if self.groups == 0 || self.groups > 100_000 {
            return err("groups must be 1..=100000".into());
        }
        if self.concurrency == 0 || self.concurrency > 10_000 {
            return err("concurrency must be 1..=10000".into());
        }
        if self.requests > 10_000_000 {
            return err("at most 10,000,000 requests".into());
        }
        if !(16..=conclave_protocol::MAX_SIGN_MESSAGE_LEN).contains(&self.message_bytes) {
            return err(format!(
                "message_bytes must be 16..={}",
                conclave_protocol::MAX_SIGN_MESSAGE_LEN
            ));
        }
        let links = std::iter::once(&self.link).chain(self.links.iter().map(|l| &l.link));
        for l in links {
            let p = |x: f64| (0.0..=1.0).contains(&x);
            if !(p(l.loss) && p(l.duplicate) && p(l.reorder))
                || l.loss >= 1.0 && self.transport == Transport::Quic
            {
                return err(
                    "loss, duplicate and reorder are probabilities (loss < 1 with transport quic)"
                        .into(),
                );
            }
            if !(l.latency_ms >= 0.0
                && l.jitter_ms >= 0.0
                && l.latency_ms.is_finite()
                && l.jitter_ms.is_finite())
            {
                return err("latency_ms and jitter_ms must be finite and non-negative".into());
            }
        }
        let check = |i: usize, what: &str| {
            if i == 0 || i > n {
                Err(ScenarioError(format!(
                    "{what}: participant {i} does not exist (1..={n})"
                )))
            } else {
                Ok(())
            }
        };
        for l in &self.links {
            check(l.participant, "links")?;
        }
        for c in &self.crashes {
            check(c.participant, "crashes")?;
            if c.restart_at_ms.is_some_and(|r| r <= c.at_ms) {
                return err("crashes: restart_at_ms must be after at_ms".into());
            }
        }
        for p in &self.partitions {
            for &i in &p.participants {
                check(i, "partitions")?;
            }
            if p.until_ms <= p.from_ms {
                return err("partitions: until_ms must be after from_ms".into());
            }
        }
        for s in &self.slow {
            check(s.participant, "slow")?;
        }
        let mut skewed = std::collections::BTreeSet::new();
        for s in &self.skew {
            check(s.participant, "skew")?;
            if !skewed.insert(s.participant) {
                return err(format!(
                    "skew: participant {} has two [[skew]] entries (give one offset)",
                    s.participant
                ));
            }
            if s.offset_secs.unsigned_abs() > 365 * 86_400 {
                return err("skew: offset_secs is at most a year either way".into());
            }
        }
        for b in &self.byzantine {
            check(b.participant, "byzantine")?;
            if !(0.0..=1.0).contains(&b.rate) {
                return err("byzantine: rate is a probability".into());
            }
        }
        Ok(())
    }

    /// The link of participant `i` (1-based).
    pub fn link_of(&self, i: usize) -> Link {
        self.links
            .iter()
            .rev()
            .find(|l| l.participant == i)
            .map_or(self.link, |l| l.link)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_clocks_for_one_participant_are_refused() {
        let two = "[[skew]]\nparticipant = 2\noffset_secs = 30\n[[skew]]\nparticipant = 2\noffset_secs = -30\n";
        let e = Scenario::from_toml(two)
            .and_then(|s| s.validate())
            .unwrap_err();
        assert!(e.to_string().contains("two [[skew]] entries"), "{e}");
        let one = "[[skew]]\nparticipant = 2\noffset_secs = 30\n";
        Scenario::from_toml(one).unwrap().validate().unwrap();
    }

    #[test]
    fn toml_scenarios_parse_and_are_checked() {
        let s = Scenario::from_toml(
            r#"
            threshold = 3
            participants = 5
            requests = 50
            [link]
            latency_ms = 50
            jitter_ms = 10
            loss = 0.05
            [[links]]
            participant = 2
            latency_ms = 200
            [[crashes]]
            participant = 1
            at_ms = 100
            restart_at_ms = 900
            [[byzantine]]
            participant = 4
            behaviour = "invalid-shares"
            "#,
        )
        .unwrap();
        assert_eq!(s.link_of(2).latency_ms, 200.0);
        assert_eq!(s.link_of(3).latency_ms, 50.0);
        assert_eq!(s.byzantine[0].behaviour, Behaviour::InvalidShares);
        assert!(Scenario::from_toml("threshold = 6").is_err());
        assert!(Scenario::from_toml("[[crashes]]\nparticipant = 9\nat_ms = 1").is_err());
        assert!(Scenario::from_toml("bogus = 1").is_err());
    }
}
