//! Frames: `u32` big-endian length, then a version byte, then a postcard-encoded [`Envelope`].
//! The length is checked against [`MAX_FRAME_LEN`] before anything is allocated; decoding
//! never panics on any input.

use crate::message::Envelope;
use crate::PROTOCOL_VERSION;

/// Largest frame body accepted (version byte + payload): 1 MiB. Comfortably above the largest
/// legitimate message (a 64 KiB message to sign plus a signing package for 100 signers).
pub const MAX_FRAME_LEN: usize = 1024 * 1024;
/// Bytes of the length prefix.
pub const FRAME_HEADER_LEN: usize = 4;

/// Why bytes could not be decoded into a message. Every variant is the peer's fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    #[error("frame is truncated: need {needed} bytes, have {have}")]
    Truncated { needed: usize, have: usize },
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    TooLarge { len: usize, max: usize },
    #[error("empty frame")]
    Empty,
    #[error("unsupported protocol version {0} (this node speaks {PROTOCOL_VERSION})")]
    UnsupportedVersion(u8),
    #[error("malformed message: {0}")]
    Malformed(String),
    #[error("{0} trailing bytes after the frame")]
    TrailingBytes(usize),
}

/// Why this node could not encode one of its own messages (never the peer's fault).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    #[error("message could not be encoded: {0}")]
    Serialize(String),
    #[error("message of {len} bytes exceeds the frame limit of {max}")]
    TooLarge { len: usize, max: usize },
}

/// Encodes one envelope as a complete frame.
pub fn encode_frame(envelope: &Envelope) -> Result<Vec<u8>, EncodeError> {
    let mut out = vec![0u8; FRAME_HEADER_LEN];
    out.push(PROTOCOL_VERSION);
    let out =
        postcard::to_extend(envelope, out).map_err(|e| EncodeError::Serialize(e.to_string()))?;
    let body_len = out.len() - FRAME_HEADER_LEN;
    if body_len > MAX_FRAME_LEN {
        return Err(EncodeError::TooLarge {
            len: body_len,
            max: MAX_FRAME_LEN,
        });
    }
    let mut out = out;
    let prefix = (body_len as u32).to_be_bytes();
    out.splice(0..FRAME_HEADER_LEN, prefix);
    Ok(out)
}

/// Reads the body length from a frame header, refusing lengths over the limit.
pub fn body_len(header: [u8; FRAME_HEADER_LEN]) -> Result<usize, CodecError> {
    let len = u32::from_be_bytes(header) as usize;
    if len > MAX_FRAME_LEN {
        return Err(CodecError::TooLarge {
            len,
            max: MAX_FRAME_LEN,
        });
    }
    if len == 0 {
        return Err(CodecError::Empty);
    }
    Ok(len)
}

/// Decodes a frame body (version byte + payload, without the length prefix).
pub fn decode_body(body: &[u8]) -> Result<Envelope, CodecError> {
    let (&version, payload) = body.split_first().ok_or(CodecError::Empty)?;
    if version != PROTOCOL_VERSION {
        return Err(CodecError::UnsupportedVersion(version));
    }
    let (envelope, rest) = postcard::take_from_bytes::<Envelope>(payload)
        .map_err(|e| CodecError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(CodecError::TrailingBytes(rest.len()));
    }
    Ok(envelope)
}

/// Decodes exactly one complete frame (length prefix included).
pub fn decode_frame(frame: &[u8]) -> Result<Envelope, CodecError> {
    let header: [u8; FRAME_HEADER_LEN] = frame
        .get(..FRAME_HEADER_LEN)
        .and_then(|h| h.try_into().ok())
        .ok_or(CodecError::Truncated {
            needed: FRAME_HEADER_LEN,
            have: frame.len(),
        })?;
    let len = body_len(header)?;
    let body = frame.get(FRAME_HEADER_LEN..).unwrap_or_default();
    if body.len() < len {
        return Err(CodecError::Truncated {
            needed: FRAME_HEADER_LEN + len,
            have: frame.len(),
        });
    }
    if body.len() > len {
        return Err(CodecError::TrailingBytes(body.len() - len));
    }
    decode_body(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{
        CommitmentEntry, GroupName, Message, PackageEntry, Refusal, SignPackage, WireCommitments,
    };
    use proptest::prelude::*;

    fn samples() -> Vec<Envelope> {
        let g = GroupName::new("g1").unwrap();
        vec![
            Envelope {
                id: 0,
                msg: Message::Ping,
            },
            Envelope {
                id: 7,
                msg: Message::Pong {
                    groups: vec![(g.clone(), 3)],
                },
            },
            Envelope {
                id: u64::MAX,
                msg: Message::Commit {
                    group: g.clone(),
                    epoch: 1,
                    count: 16,
                },
            },
            Envelope {
                id: 9,
                msg: Message::Commitments {
                    group: g.clone(),
                    epoch: 1,
                    entries: vec![CommitmentEntry {
                        id: 4,
                        commitments: WireCommitments {
                            hiding: [1; 32],
                            binding: [2; 32],
                        },
                    }],
                },
            },
            Envelope {
                id: 10,
                msg: Message::Sign {
                    group: g.clone(),
                    epoch: 2,
                    commitment_id: 5,
                    signing_package: std::sync::Arc::new(SignPackage {
                        message: vec![9; 300],
                        commitments: vec![PackageEntry {
                            identifier: [3; 32],
                            commitments: WireCommitments {
                                hiding: [4; 32],
                                binding: [5; 32],
                            },
                        }],
                    }),
                    request: Box::new(sample_request(&g)),
                },
            },
            Envelope {
                id: 11,
                msg: Message::SignatureShare {
                    commitment_id: 5,
                    share: vec![1; 32],
                },
            },
            Envelope {
                id: 12,
                msg: Message::SignRequest {
                    request: Box::new(sample_request(&g)),
                    message: b"hello".to_vec(),
                    timeout_ms: 5000,
                },
            },
            Envelope {
                id: 16,
                msg: Message::NotAuthorized {
                    refusals: vec![("p1".into(), crate::PolicyRule::UnknownClient)],
                },
            },
            Envelope {
                id: 17,
                msg: Message::Refused(Refusal::NotAuthorized {
                    rule: crate::PolicyRule::Replay,
                }),
            },
            Envelope {
                id: 13,
                msg: Message::Signature {
                    public_key: [3; 32],
                    signature: vec![4; 64],
                    signers: vec!["a".into()],
                },
            },
            Envelope {
                id: 14,
                msg: Message::Refused(Refusal::SignerUnavailable {
                    reachable: 2,
                    needed: 3,
                }),
            },
            Envelope {
                id: 15,
                msg: Message::Refused(Refusal::EpochMismatch { current: 4 }),
            },
        ]
    }

    fn sample_request(g: &GroupName) -> crate::request::SignedRequest {
        crate::request::SignedRequest {
            body: crate::request::SignRequestBody {
                group: g.clone(),
                epoch: 2,
                message: crate::request::MessageRef::Sha512([5; 64]),
                kind: "raw".into(),
                request_id: [6; 16],
                not_after: 1_800_000_000,
            },
            client: crate::NodeId([8; 32]),
            signature: vec![9; 64],
        }
    }

    #[test]
    fn every_message_round_trips() {
        for env in samples() {
            let frame = encode_frame(&env).unwrap();
            assert_eq!(decode_frame(&frame).unwrap(), env);
        }
    }

    #[test]
    fn truncated_frames_are_typed_errors() {
        for env in samples() {
            let frame = encode_frame(&env).unwrap();
            for cut in 0..frame.len() {
                let err = decode_frame(&frame[..cut]).unwrap_err();
                assert!(
                    matches!(err, CodecError::Truncated { .. }),
                    "cut {cut}: {err:?}"
                );
            }
        }
    }

    #[test]
    fn oversized_length_is_refused_before_allocating() {
        let mut frame = ((MAX_FRAME_LEN + 1) as u32).to_be_bytes().to_vec();
        frame.push(PROTOCOL_VERSION);
        assert_eq!(
            decode_frame(&frame).unwrap_err(),
            CodecError::TooLarge {
                len: MAX_FRAME_LEN + 1,
                max: MAX_FRAME_LEN
            }
        );
        assert!(matches!(
            body_len([0xff; 4]),
            Err(CodecError::TooLarge { .. })
        ));
    }

    #[test]
    fn oversized_message_is_refused_on_encode() {
        let env = Envelope {
            id: 1,
            msg: Message::SignatureShare {
                commitment_id: 1,
                share: vec![0; MAX_FRAME_LEN],
            },
        };
        assert!(matches!(
            encode_frame(&env),
            Err(EncodeError::TooLarge { .. })
        ));
    }

    #[test]
    fn wrong_version_is_refused() {
        let mut frame = encode_frame(&samples()[0]).unwrap();
        frame[FRAME_HEADER_LEN] = PROTOCOL_VERSION + 1;
        assert_eq!(
            decode_frame(&frame).unwrap_err(),
            CodecError::UnsupportedVersion(PROTOCOL_VERSION + 1)
        );
    }

    #[test]
    fn trailing_bytes_are_refused() {
        let mut frame = encode_frame(&samples()[0]).unwrap();
        frame.push(0);
        assert!(matches!(
            decode_frame(&frame),
            Err(CodecError::TrailingBytes(1))
        ));
        // Trailing bytes inside the declared body, too.
        let mut frame = encode_frame(&samples()[0]).unwrap();
        frame.push(0);
        let len = (frame.len() - FRAME_HEADER_LEN) as u32;
        frame[..4].copy_from_slice(&len.to_be_bytes());
        assert!(matches!(
            decode_frame(&frame),
            Err(CodecError::TrailingBytes(1))
        ));
    }

    #[test]
    fn unknown_message_kind_is_malformed() {
        let mut frame = encode_frame(&samples()[0]).unwrap();
        // Envelope { id: 0 (1 byte), msg tag (1 byte) }: make the tag unknown.
        let tag = FRAME_HEADER_LEN + 2;
        frame[tag] = 200;
        assert!(matches!(
            decode_frame(&frame),
            Err(CodecError::Malformed(_))
        ));
    }

    #[test]
    fn invalid_group_name_is_malformed() {
        let env = Envelope {
            id: 1,
            msg: Message::GroupInfoRequest {
                group: GroupName::new("ok").unwrap(),
            },
        };
        let mut frame = encode_frame(&env).unwrap();
        let last = frame.len() - 1;
        frame[last] = b'/';
        assert!(matches!(
            decode_frame(&frame),
            Err(CodecError::Malformed(_))
        ));
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = decode_frame(&bytes);
            let _ = decode_body(&bytes);
        }

        #[test]
        fn mutated_frames_never_panic_and_valid_ones_round_trip(
            which in 0usize..10, pos in any::<usize>(), byte in any::<u8>()
        ) {
            let env = samples()[which % 10].clone();
            let mut frame = encode_frame(&env).unwrap();
            let i = pos % frame.len();
            frame[i] = byte;
            if let Ok(decoded) = decode_frame(&frame) {
                // Whatever decodes must survive a re-encode unchanged.
                let again = decode_frame(&encode_frame(&decoded).unwrap()).unwrap();
                prop_assert_eq!(again, decoded);
            }
        }
    }
}
