//! Subscribes to an engine's KV events (vLLM's ZMQ PUB format) and feeds its [`PreciseIndex`].
//!
//! Frames are `[topic, seq (8-byte big-endian), payload]`, payload a msgpack array
//! `[ts, [event…], data_parallel_rank]` with events as tagged arrays:
//! `["BlockStored", hashes, parent, token_ids, block_size, lora_id, medium…]`,
//! `["BlockRemoved", hashes, medium…]`, `["AllBlocksCleared"]` (vLLM's `array_like` msgspec
//! structs; trailing fields newer vLLM versions append are ignored).
//!
//! Hashes are used as they are: they match the router's own hashes when the engine hashes
//! blocks with `muster_prefix::block_hash` (engine-sim does). On every (re)connection the index
//! is cleared, since events published while disconnected are lost.
//!
//! [`PreciseIndex`]: super::index::PreciseIndex

use std::sync::Weak;
use std::time::{Duration, Instant};

use serde_json::Value;
use zeromq::{Socket, SocketEvent, SocketRecv};

use super::index::KvEvent;
use crate::endpoints::EndpointState;

/// Why a message could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Not `[topic, seq, payload]`.
    #[error("expected 3 frames (topic, sequence, payload), got {0}")]
    Frames(usize),
    /// The sequence frame is not 8 bytes.
    #[error("sequence frame has {0} bytes, expected 8")]
    Sequence(usize),
    /// The payload is not a msgpack `[ts, events, rank]` array.
    #[error("payload: {0}")]
    Payload(String),
}

fn hashes(v: Option<&Value>) -> Vec<u64> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|h| h.as_u64().or_else(|| h.as_i64().map(|i| i as u64)))
                .collect()
        })
        .unwrap_or_default()
}

/// Decodes one payload into events; unknown event tags are skipped.
pub fn decode_payload(payload: &[u8]) -> Result<Vec<KvEvent>, DecodeError> {
    let v: Value =
        rmp_serde::from_slice(payload).map_err(|e| DecodeError::Payload(e.to_string()))?;
    let events = v
        .as_array()
        .and_then(|a| a.get(1))
        .and_then(Value::as_array)
        .ok_or_else(|| DecodeError::Payload("expected [ts, [events], rank]".into()))?;
    Ok(events
        .iter()
        .filter_map(|e| {
            let a = e.as_array()?;
            match a.first()?.as_str()? {
                "BlockStored" => Some(KvEvent::BlockStored {
                    block_hashes: hashes(a.get(1)),
                }),
                "BlockRemoved" => Some(KvEvent::BlockRemoved {
                    block_hashes: hashes(a.get(1)),
                }),
                "AllBlocksCleared" => Some(KvEvent::AllBlocksCleared),
                _ => None,
            }
        })
        .collect())
}

/// Decodes a whole message: its sequence number and events.
pub fn decode_message(frames: &[bytes::Bytes]) -> Result<(u64, Vec<KvEvent>), DecodeError> {
    if frames.len() != 3 {
        return Err(DecodeError::Frames(frames.len()));
    }
    let seq: [u8; 8] = frames[1][..]
        .try_into()
        .map_err(|_| DecodeError::Sequence(frames[1].len()))?;
    Ok((u64::from_be_bytes(seq), decode_payload(&frames[2])?))
}

/// Runs until the endpoint is dropped: connects a SUB socket to `address` (zeromq reconnects
/// by itself), applies every event to the endpoint's precise index and keeps its feed state.
pub async fn subscribe(endpoint: Weak<EndpointState>, address: String) {
    let mut socket = zeromq::SubSocket::new();
    let mut monitor = socket.monitor();
    // The engine may not be up yet: retry until it is, or until the endpoint goes away.
    loop {
        if endpoint.strong_count() == 0 {
            return;
        }
        match tokio::time::timeout(Duration::from_secs(2), socket.connect(&address)).await {
            Ok(Ok(())) => break,
            Ok(Err(e)) => tracing::debug!(address, error = %e, "kv events: connect failed"),
            Err(_) => tracing::debug!(address, "kv events: connect timed out"),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    if let Err(e) = socket.subscribe("").await {
        tracing::warn!(address, error = %e, "kv events: subscribe failed");
        return;
    }
    if let Some(state) = endpoint.upgrade() {
        state.prefix.on_connected(true);
    }
    tracing::info!(address, "kv events: subscribed");
    let mut last_seq: Option<u64> = None;
    loop {
        tokio::select! {
            msg = socket.recv() => {
                let Some(state) = endpoint.upgrade() else { return };
                match msg {
                    Ok(m) => match decode_message(&m.into_vec()) {
                        Ok((seq, events)) => {
                            let gap = last_seq.is_some_and(|l| seq != l.wrapping_add(1));
                            last_seq = Some(seq);
                            state.prefix.apply_events(&events, gap, Instant::now());
                        }
                        Err(e) => tracing::debug!(address, error = %e, "kv events: bad message"),
                    },
                    Err(e) => {
                        tracing::debug!(address, error = %e, "kv events: receive failed");
                        state.prefix.on_connected(false);
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
            ev = monitor.recv() => {
                let Some(state) = endpoint.upgrade() else { return };
                match ev {
                    Ok(SocketEvent::Connected(..)) => {
                        // A new connection: what was published meanwhile is lost.
                        last_seq = None;
                        state.prefix.on_connected(true);
                    }
                    Ok(SocketEvent::Disconnected(..)) => state.prefix.on_connected(false),
                    Ok(_) => {}
                    // The monitor is gone (socket closing): only the receive branch is left.
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
            _ = tokio::time::sleep(Duration::from_secs(1)) => {
                if endpoint.strong_count() == 0 {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_vllm_array_like_batches() {
        let payload = rmp_serde::to_vec(&serde_json::json!([
            1.5,
            [
                [
                    "BlockStored",
                    [u64::MAX, 7],
                    null,
                    [1, 2],
                    2,
                    null,
                    "GPU",
                    "extra"
                ],
                ["BlockRemoved", [9], "GPU"],
                ["AllBlocksCleared"],
                ["SomethingNew", 1]
            ],
            0
        ]))
        .unwrap();
        assert_eq!(
            decode_payload(&payload).unwrap(),
            vec![
                KvEvent::BlockStored {
                    block_hashes: vec![u64::MAX, 7]
                },
                KvEvent::BlockRemoved {
                    block_hashes: vec![9]
                },
                KvEvent::AllBlocksCleared,
            ]
        );
        let frames = [
            bytes::Bytes::from_static(b"kv@x"),
            bytes::Bytes::copy_from_slice(&5u64.to_be_bytes()),
            bytes::Bytes::from(payload),
        ];
        assert_eq!(decode_message(&frames).unwrap().0, 5);
        assert_eq!(decode_message(&frames[..2]), Err(DecodeError::Frames(2)));
        assert!(decode_payload(b"\xc1").is_err());
    }
}
