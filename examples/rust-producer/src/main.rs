//! A Rust primary producing to the grain replication topic (stream-replica wire contract 1.1).
//!
//!     stream-replica-rust-producer --bootstrap HOST:PORT [--topic grain-replication]
//!                                  [--source-cluster rust-primary] [--grains 3]
//!
//! Writes, for i in 1..=N, grain `order/rust/named/{i}` encoded by name
//! (`rmp_serde::to_vec_named`) and grain `order/rust/positional/{i}` encoded by position
//! (`rmp_serde::to_vec`, the crate's default), all FullState with sequence 1; then a second
//! FullState (sequence 2) of `order/rust/positional/1`; then a tombstone for
//! `order/rust/named/{N}`. Prints one line per acknowledged record:
//!
//!     delivered key=order/rust/named/1 encoding=named partition=0 offset=0
//!
//! and exits 1 if any record was not acknowledged.
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::ClientContext;
use serde::Serialize;
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// `entry_type`: rmp-serde writes a unit variant as its name ("FullState", "Delta").
#[derive(Clone, Copy, Serialize)]
pub enum EntryType {
    FullState,
    /// Valid on the wire, but replicas (contract v1) refuse it: it goes to the dead-letter topic.
    #[allow(dead_code)]
    Delta,
}

/// The value of a replication record. The field order is the contract's: the positional form
/// (`rmp_serde::to_vec`) is an array in exactly this order. Append new fields at the end only.
#[derive(Serialize)]
pub struct ReplicationEntry {
    pub grain_type: String,
    pub grain_key: String,
    /// 1 <= sequence; each new state of a grain gets a higher one.
    pub sequence: u64,
    pub timestamp_millis: i64,
    pub source_cluster: String,
    pub entry_type: EntryType,
    /// `serde_bytes` makes this msgpack bin; without it a Vec<u8> is an array of ints, which
    /// replicas accept too but which is up to twice as large.
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
}

#[derive(Clone, Copy, Debug)]
pub enum Encoding {
    /// `rmp_serde::to_vec_named`: a map keyed by field name.
    Named,
    /// `rmp_serde::to_vec`: an array in field order (contract 1.1).
    Positional,
}

impl Encoding {
    fn name(self) -> &'static str {
        LABELS[self.label()]
    }
    fn label(self) -> usize {
        match self {
            Encoding::Named => 0,
            Encoding::Positional => 1,
        }
    }
}

/// What a delivery report prints as `encoding=`, indexed by the record's delivery opaque.
const LABELS: [&str; 3] = ["named", "positional", "tombstone"];
const TOMBSTONE: usize = 2;

/// The record key: `"{grain_type}/{grain_key}"`. grain_type non-empty without '/', grain_key
/// non-empty (it may contain '/': the key is split at the first one).
pub fn record_key(grain_type: &str, grain_key: &str) -> Result<String, String> {
    if grain_type.is_empty() || grain_type.contains('/') {
        return Err(format!(
            "grain_type {grain_type:?} must be non-empty and without '/'"
        ));
    }
    if grain_key.is_empty() {
        return Err(format!(
            "grain_key of grain_type {grain_type:?} must be non-empty"
        ));
    }
    Ok(format!("{grain_type}/{grain_key}"))
}

/// The producer for the replication topic: idempotent (no duplicates or reordering on
/// retries; implies acks=all) and partitioning keyed records like the Java client and
/// aiokafka (murmur2), so every producer puts a grain in the same partition.
pub fn replication_producer(bootstrap: &str) -> Result<BaseProducer<Reports>, KafkaError> {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("client.id", "rust-primary-example")
        .set("enable.idempotence", "true")
        .set("partitioner", "murmur2_random")
        .set("linger.ms", "5")
        .set("message.timeout.ms", "60000")
        .create_with_context(Reports::default())
}

/// Delivery reports: print each acknowledged record, count the failures.
#[derive(Default)]
pub struct Reports {
    failed: AtomicUsize,
}

impl ClientContext for Reports {}

impl ProducerContext for Reports {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, label: Self::DeliveryOpaque) {
        let encoding = LABELS[label];
        match result {
            Ok(message) => println!(
                "delivered key={} encoding={} partition={} offset={}",
                String::from_utf8_lossy(message.key().unwrap_or_default()),
                encoding,
                message.partition(),
                message.offset()
            ),
            Err((error, message)) => {
                self.failed.fetch_add(1, Ordering::SeqCst);
                eprintln!(
                    "NOT delivered key={} encoding={}: {error}",
                    String::from_utf8_lossy(message.key().unwrap_or_default()),
                    encoding
                );
            }
        }
    }
}

/// Queue one record; waits (serving delivery reports) while librdkafka's queue is full.
fn send(
    producer: &BaseProducer<Reports>,
    mut record: BaseRecord<'_, str, [u8], usize>,
) -> Result<(), KafkaError> {
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                record = back;
                producer.poll(Duration::from_millis(100));
            }
            Err((error, _)) => return Err(error),
        }
    }
}

/// Produce one entry in the given encoding.
pub fn put(
    producer: &BaseProducer<Reports>,
    topic: &str,
    entry: &ReplicationEntry,
    encoding: Encoding,
) -> Result<(), String> {
    let key = record_key(&entry.grain_type, &entry.grain_key)?;
    let value = match encoding {
        Encoding::Named => rmp_serde::to_vec_named(entry),
        Encoding::Positional => rmp_serde::to_vec(entry),
    }
    .map_err(|e| format!("encoding {key}: {e}"))?;
    let record = BaseRecord::with_opaque_to(topic, encoding.label())
        .key(key.as_str())
        .payload(value.as_slice());
    send(producer, record).map_err(|e| format!("producing {key}: {e}"))
}

/// Delete a grain: a tombstone, a record with the grain's key and a null value.
pub fn delete(
    producer: &BaseProducer<Reports>,
    topic: &str,
    grain_type: &str,
    grain_key: &str,
) -> Result<(), String> {
    let key = record_key(grain_type, grain_key)?;
    let record = BaseRecord::with_opaque_to(topic, TOMBSTONE).key(key.as_str());
    send(producer, record).map_err(|e| format!("producing tombstone {key}: {e}"))
}

struct Args {
    bootstrap: String,
    topic: String,
    source_cluster: String,
    grains: u32,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        bootstrap: String::new(),
        topic: "grain-replication".into(),
        source_cluster: "rust-primary".into(),
        grains: 3,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--bootstrap" => args.bootstrap = value()?,
            "--topic" => args.topic = value()?,
            "--source-cluster" => args.source_cluster = value()?,
            "--grains" => {
                let text = value()?;
                args.grains = text
                    .parse()
                    .ok()
                    .filter(|n| *n >= 1)
                    .ok_or_else(|| format!("--grains {text:?}: expected an integer >= 1"))?;
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if args.bootstrap.is_empty() {
        return Err("--bootstrap HOST:PORT is required".into());
    }
    Ok(args)
}

fn run(args: &Args) -> Result<(), String> {
    let producer = replication_producer(&args.bootstrap)
        .map_err(|e| format!("cannot create the producer: {e}"))?;
    let now_millis = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    let entry = |grain_key: String, sequence: u64, payload: String| ReplicationEntry {
        grain_type: "order".into(),
        grain_key,
        sequence,
        timestamp_millis: now_millis,
        source_cluster: args.source_cluster.clone(),
        entry_type: EntryType::FullState,
        payload: payload.into_bytes(),
    };
    for i in 1..=args.grains {
        for encoding in [Encoding::Named, Encoding::Positional] {
            let name = encoding.name();
            let e = entry(format!("rust/{name}/{i}"), 1, format!("{name} {i} v1"));
            put(&producer, &args.topic, &e, encoding)?;
        }
    }
    let update = entry("rust/positional/1".into(), 2, "positional 1 v2".into());
    put(&producer, &args.topic, &update, Encoding::Positional)?;
    delete(
        &producer,
        &args.topic,
        "order",
        &format!("rust/named/{}", args.grains),
    )?;

    producer
        .flush(Duration::from_secs(60))
        .map_err(|e| format!("flush: {e}"))?;
    let failed = producer.context().failed.load(Ordering::SeqCst);
    if failed > 0 {
        return Err(format!("{failed} record(s) were not delivered"));
    }
    Ok(())
}

fn main() -> ExitCode {
    let result = parse_args().and_then(|args| run(&args));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("stream-replica-rust-producer: {message}");
            ExitCode::FAILURE
        }
    }
}
