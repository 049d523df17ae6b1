//! KV-cache events on a ZMQ PUB socket, byte-compatible with vLLM's publisher.
//!
//! vLLM (`vllm/distributed/kv_events.py`) encodes with msgspec structs declared
//! `array_like=True, tag=True`, so every struct is a msgpack **array** and every event starts
//! with its class name as tag. Each ZMQ message has three frames:
//!
//! ```text
//! [ topic (utf-8) , sequence (8-byte big-endian u64, from 0) , payload (msgpack) ]
//! payload = [ ts: float64 (unix seconds), events: [...], data_parallel_rank: int ]
//! event   = ["BlockStored", block_hashes: [u64], parent_block_hash: u64|nil,
//!            token_ids: [int], block_size: int, lora_id: int|nil, medium: "GPU"]
//!         | ["BlockRemoved", block_hashes: [u64], medium: "GPU"]
//!         | ["AllBlocksCleared"]
//! ```
//!
//! Block hashes are the chained hashes of [`crate::block_hash`], as unsigned 64-bit integers
//! (vLLM's default integer form of its block hashes).

use bytes::Bytes;
use serde::ser::{SerializeTuple, Serializer};
use serde::Serialize;
use tokio::sync::mpsc;
use zeromq::{Socket, SocketSend, ZmqMessage};

use crate::kv_cache::KvEvent;

/// Storage tier reported with every event; the simulator only has device memory.
pub const MEDIUM_GPU: &str = "GPU";

struct WireEvent<'a>(&'a KvEvent);

impl Serialize for WireEvent<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            KvEvent::BlockStored {
                block_hashes,
                parent_block_hash,
                token_ids,
                block_size,
                lora_id,
            } => {
                let mut t = s.serialize_tuple(7)?;
                t.serialize_element("BlockStored")?;
                t.serialize_element(block_hashes)?;
                t.serialize_element(parent_block_hash)?;
                t.serialize_element(token_ids)?;
                t.serialize_element(block_size)?;
                t.serialize_element(lora_id)?;
                t.serialize_element(MEDIUM_GPU)?;
                t.end()
            }
            KvEvent::BlockRemoved { block_hashes } => {
                let mut t = s.serialize_tuple(3)?;
                t.serialize_element("BlockRemoved")?;
                t.serialize_element(block_hashes)?;
                t.serialize_element(MEDIUM_GPU)?;
                t.end()
            }
            KvEvent::AllBlocksCleared => {
                let mut t = s.serialize_tuple(1)?;
                t.serialize_element("AllBlocksCleared")?;
                t.end()
            }
        }
    }
}

struct WireBatch<'a> {
    ts: f64,
    events: &'a [KvEvent],
    dp_rank: u32,
}

impl Serialize for WireBatch<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut t = s.serialize_tuple(3)?;
        t.serialize_element(&self.ts)?;
        let events: Vec<WireEvent<'_>> = self.events.iter().map(WireEvent).collect();
        t.serialize_element(&events)?;
        t.serialize_element(&self.dp_rank)?;
        t.end()
    }
}

/// Encodes one event batch as vLLM's msgpack payload.
pub fn encode_batch(ts: f64, events: &[KvEvent], dp_rank: u32) -> Vec<u8> {
    rmp_serde::to_vec(&WireBatch {
        ts,
        events,
        dp_rank,
    })
    .expect("msgpack encoding of plain data cannot fail")
}

/// A bound publisher: send batches on `tx`; a background task owns the socket.
#[derive(Debug, Clone)]
pub struct KvEventPublisher {
    tx: mpsc::UnboundedSender<Vec<KvEvent>>,
    /// The endpoint actually bound (resolved port), e.g. `tcp://127.0.0.1:5557`.
    pub endpoint: String,
    /// Topic frame of every message.
    pub topic: String,
}

impl KvEventPublisher {
    /// Binds a PUB socket on `endpoint` (e.g. `tcp://127.1.0.5:5557`, port 0 for any) and
    /// starts the publishing task.
    pub async fn bind(endpoint: &str, topic: String) -> Result<Self, zeromq::ZmqError> {
        let mut socket = zeromq::PubSocket::new();
        let bound = socket.bind(endpoint).await?.to_string();
        let (tx, mut rx) = mpsc::unbounded_channel::<Vec<KvEvent>>();
        let topic_frame = Bytes::from(topic.clone().into_bytes());
        tokio::spawn(async move {
            let mut seq: u64 = 0;
            while let Some(events) = rx.recv().await {
                let ts = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs_f64())
                    .unwrap_or(0.0);
                let payload = encode_batch(ts, &events, 0);
                let frames = vec![
                    topic_frame.clone(),
                    Bytes::copy_from_slice(&seq.to_be_bytes()),
                    Bytes::from(payload),
                ];
                seq += 1;
                let msg = ZmqMessage::try_from(frames).expect("three frames");
                // PUB drops for slow or absent subscribers, as in vLLM; errors are not fatal.
                if let Err(e) = socket.send(msg).await {
                    tracing::debug!(error = %e, "kv event publish failed");
                }
            }
        });
        Ok(Self {
            tx,
            endpoint: bound,
            topic,
        })
    }

    /// Queues a batch for publishing; empty batches are skipped.
    pub fn publish(&self, events: Vec<KvEvent>) {
        if !events.is_empty() {
            let _ = self.tx.send(events);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_layout_matches_vllm_array_like_structs() {
        let events = vec![
            KvEvent::BlockStored {
                block_hashes: vec![u64::MAX, 7],
                parent_block_hash: None,
                token_ids: vec![1, 2, 3, 4],
                block_size: 2,
                lora_id: None,
            },
            KvEvent::BlockRemoved {
                block_hashes: vec![9],
            },
            KvEvent::AllBlocksCleared,
        ];
        let bytes = encode_batch(1.5, &events, 0);
        let v: serde_json::Value = rmp_serde::from_slice(&bytes).unwrap();
        assert_eq!(
            v,
            serde_json::json!([
                1.5,
                [
                    [
                        "BlockStored",
                        [u64::MAX, 7],
                        null,
                        [1, 2, 3, 4],
                        2,
                        null,
                        "GPU"
                    ],
                    ["BlockRemoved", [9], "GPU"],
                    ["AllBlocksCleared"]
                ],
                0
            ])
        );
    }
}
