//! Writes the golden vectors of the grain replication contract as the Rust primary's crates
//! (serde + rmp-serde + serde_bytes) really encode a `ReplicationEntry`.
//!
//!     cargo run --release -- OUT_DIR      # OUT_DIR is schemas/vectors/rust in the repo
//!
//! Deterministic: same crates, same bytes. `tests/test_rust_vectors.py` runs it and fails when
//! the committed files drift; the same test decodes every vector with both Python decoders.
//! OUT_DIR gets `valid/` and `invalid/` (one `<name>.json` + `<name>.msgpack` per case, the
//! format of `schemas/vectors/{valid,invalid}`, see schemas/README.md) and `versions.json`.
use serde::Serialize;
use serde_json::{json, Value};
use std::{env, fs, path::Path, process::ExitCode};

/// The primary's entry type: a unit enum, as serde names its variants.
#[derive(Clone, Copy, Serialize)]
enum EntryType {
    FullState,
    Delta,
}

impl EntryType {
    fn name(self) -> &'static str {
        match self {
            EntryType::FullState => "FullState",
            EntryType::Delta => "Delta",
        }
    }
}

/// The primary's struct, field order as on the primary: `payload: Vec<u8>` (rmp-serde writes
/// an array of ints).
#[derive(Serialize)]
struct ReplicationEntry {
    grain_type: String,
    grain_key: String,
    sequence: u64,
    timestamp_millis: i64,
    source_cluster: String,
    entry_type: EntryType,
    payload: Vec<u8>,
}

/// The same struct with `#[serde(with = "serde_bytes")]` on the payload (msgpack bin).
#[derive(Serialize)]
struct ReplicationEntryBytes {
    grain_type: String,
    grain_key: String,
    sequence: u64,
    timestamp_millis: i64,
    source_cluster: String,
    entry_type: EntryType,
    #[serde(with = "serde_bytes")]
    payload: Vec<u8>,
}

/// A later version of the struct with a field appended: the positional form gets an 8th
/// element, the named form an 8th key. Contract 1.1 ignores both.
#[derive(Serialize)]
struct ReplicationEntryV2 {
    grain_type: String,
    grain_key: String,
    sequence: u64,
    timestamp_millis: i64,
    source_cluster: String,
    entry_type: EntryType,
    #[serde(with = "serde_bytes")]
    payload: Vec<u8>,
    trace_id: Option<String>,
}

/// A struct that lost its payload: six elements in the positional form. Invalid.
#[derive(Serialize)]
struct ReplicationEntryNoPayload {
    grain_type: String,
    grain_key: String,
    sequence: u64,
    timestamp_millis: i64,
    source_cluster: String,
    entry_type: EntryType,
}

#[derive(Clone)]
struct Fields {
    grain_type: String,
    grain_key: String,
    sequence: u64,
    timestamp_millis: i64,
    source_cluster: String,
    entry_type: EntryType,
    payload: Vec<u8>,
}

impl Fields {
    fn base() -> Self {
        Fields {
            grain_type: "account".into(),
            grain_key: "acct-0001".into(),
            sequence: 7,
            timestamp_millis: 1_700_000_000_123,
            source_cluster: "eu-west-1".into(),
            entry_type: EntryType::FullState,
            payload: b"\x00\x01\x7f\x80\xfe\xff state bytes".to_vec(),
        }
    }
    fn vec(&self) -> ReplicationEntry {
        ReplicationEntry {
            grain_type: self.grain_type.clone(),
            grain_key: self.grain_key.clone(),
            sequence: self.sequence,
            timestamp_millis: self.timestamp_millis,
            source_cluster: self.source_cluster.clone(),
            entry_type: self.entry_type,
            payload: self.payload.clone(),
        }
    }
    fn bytes(&self) -> ReplicationEntryBytes {
        ReplicationEntryBytes {
            grain_type: self.grain_type.clone(),
            grain_key: self.grain_key.clone(),
            sequence: self.sequence,
            timestamp_millis: self.timestamp_millis,
            source_cluster: self.source_cluster.clone(),
            entry_type: self.entry_type,
            payload: self.payload.clone(),
        }
    }
    fn key(&self) -> String {
        format!("{}/{}", self.grain_type, self.grain_key)
    }
    fn expected(&self) -> Value {
        json!({
            "grain_type": self.grain_type,
            "grain_key": self.grain_key,
            "sequence": self.sequence,
            "timestamp_millis": self.timestamp_millis,
            "source_cluster": self.source_cluster,
            "entry_type": self.entry_type.name(),
            "payload": base64(&self.payload),
        })
    }
}

#[derive(Clone, Copy)]
enum Form {
    Named,
    Positional,
}

impl Form {
    fn tag(self) -> &'static str {
        match self {
            Form::Named => "named",
            Form::Positional => "positional",
        }
    }
    fn call(self) -> &'static str {
        match self {
            Form::Named => "rmp_serde::to_vec_named",
            Form::Positional => "rmp_serde::to_vec",
        }
    }
    fn encode<T: Serialize>(self, value: &T) -> Vec<u8> {
        match self {
            Form::Named => rmp_serde::to_vec_named(value),
            Form::Positional => rmp_serde::to_vec(value),
        }
        .expect("rmp-serde encodes the struct")
    }
}

#[derive(Clone, Copy)]
enum Payload {
    Vec,
    SerdeBytes,
}

impl Payload {
    fn tag(self) -> &'static str {
        match self {
            Payload::Vec => "vec",
            Payload::SerdeBytes => "bytes",
        }
    }
    fn what(self) -> &'static str {
        match self {
            Payload::Vec => "payload: Vec<u8> (an array of ints)",
            Payload::SerdeBytes => "payload: Vec<u8> with #[serde(with = \"serde_bytes\")] (bin)",
        }
    }
    fn encode(self, form: Form, fields: &Fields) -> Vec<u8> {
        match self {
            Payload::Vec => form.encode(&fields.vec()),
            Payload::SerdeBytes => form.encode(&fields.bytes()),
        }
    }
}

struct Case {
    name: String,
    description: String,
    key: String,
    value: Vec<u8>,
    /// valid: the decoded fields; invalid: None
    expected: Option<Value>,
    /// invalid: (substring of the reason, grain the error names)
    reason_contains: Option<(String, Value)>,
}

fn valid(name: String, description: String, fields: &Fields, value: Vec<u8>) -> Case {
    Case {
        name,
        description,
        key: fields.key(),
        value,
        expected: Some(fields.expected()),
        reason_contains: None,
    }
}

fn cases() -> Vec<Case> {
    let forms = [Form::Named, Form::Positional];
    let payloads = [Payload::Vec, Payload::SerdeBytes];
    let mut out = Vec::new();

    // Every form: named/positional x Vec<u8>/serde_bytes x FullState/Delta.
    for form in forms {
        for payload in payloads {
            for entry_type in [EntryType::FullState, EntryType::Delta] {
                let mut f = Fields::base();
                f.entry_type = entry_type;
                if let EntryType::Delta = entry_type {
                    f.sequence = 8;
                }
                out.push(valid(
                    format!("{}_{}_{}", form.tag(), payload.tag(), snake(entry_type)),
                    format!(
                        "{} of a {} entry, {}.",
                        form.call(),
                        entry_type.name(),
                        payload.what()
                    ),
                    &f,
                    payload.encode(form, &f),
                ));
            }
        }
    }

    // Edge values, in both forms (serde_bytes payload unless the payload is the point).
    type Edit = fn(&mut Fields);
    let edges: [(&str, &str, Payload, Edit); 7] = [
        (
            "max_sequence",
            "sequence u64::MAX (msgpack uint 64)",
            Payload::SerdeBytes,
            |f| f.sequence = u64::MAX,
        ),
        (
            "min_timestamp",
            "timestamp_millis i64::MIN (msgpack int 64)",
            Payload::SerdeBytes,
            |f| f.timestamp_millis = i64::MIN,
        ),
        (
            "negative_timestamp",
            "timestamp_millis -1 (negative fixint)",
            Payload::SerdeBytes,
            |f| f.timestamp_millis = -1,
        ),
        (
            "empty_payload_vec",
            "an empty Vec<u8> payload (empty array)",
            Payload::Vec,
            |f| f.payload = Vec::new(),
        ),
        (
            "empty_payload_bytes",
            "an empty serde_bytes payload (empty bin)",
            Payload::SerdeBytes,
            |f| f.payload = Vec::new(),
        ),
        (
            "non_ascii",
            "non-ASCII grain_type, grain_key and source_cluster (UTF-8 in key and value)",
            Payload::SerdeBytes,
            |f| {
                f.grain_type = "compte-é".into();
                f.grain_key = "clé-ü-日本-🦀".into();
                f.source_cluster = "eu-ouest-☃".into();
            },
        ),
        (
            "grain_key_with_slash",
            "a grain_key containing '/' (the key splits at the first '/')",
            Payload::Vec,
            |f| {
                f.grain_type = "order".into();
                f.grain_key = "eu/2024/000042".into();
            },
        ),
    ];
    for form in forms {
        for (name, what, payload, edit) in edges.iter() {
            let mut f = Fields::base();
            edit(&mut f);
            out.push(valid(
                format!("{}_{}", form.tag(), name),
                format!("{} with {}; {}.", form.call(), what, payload.what()),
                &f,
                payload.encode(form, &f),
            ));
        }
    }

    // A later struct version with a field appended: ignored in both forms.
    for form in forms {
        let f = Fields::base();
        let v2 = ReplicationEntryV2 {
            trace_id: Some("trace-42".into()),
            ..as_v2(&f)
        };
        out.push(valid(
            format!("{}_appended_field", form.tag()),
            format!(
                "{} of a later struct with a field appended after payload (trace_id: \
                 Option<String>): the extra {} is ignored.",
                form.call(),
                match form {
                    Form::Named => "map key",
                    Form::Positional => "8th array element",
                }
            ),
            &f,
            form.encode(&v2),
        ));
    }

    // Invalid: a struct without the payload field, positional form: a 6-element array.
    let f = Fields::base();
    let short = ReplicationEntryNoPayload {
        grain_type: f.grain_type.clone(),
        grain_key: f.grain_key.clone(),
        sequence: f.sequence,
        timestamp_millis: f.timestamp_millis,
        source_cluster: f.source_cluster.clone(),
        entry_type: f.entry_type,
    };
    for form in forms {
        out.push(Case {
            name: format!("{}_missing_payload", form.tag()),
            description: format!(
                "{} of a struct without the payload field ({}): invalid, payload is missing.",
                form.call(),
                match form {
                    Form::Named => "a map of six keys",
                    Form::Positional => "an array of six elements",
                }
            ),
            key: f.key(),
            value: form.encode(&short),
            expected: None,
            reason_contains: Some((
                "payload: Field required".into(),
                json!({"grain_type": f.grain_type, "grain_key": f.grain_key}),
            )),
        });
    }
    out
}

fn as_v2(f: &Fields) -> ReplicationEntryV2 {
    ReplicationEntryV2 {
        grain_type: f.grain_type.clone(),
        grain_key: f.grain_key.clone(),
        sequence: f.sequence,
        timestamp_millis: f.timestamp_millis,
        source_cluster: f.source_cluster.clone(),
        entry_type: f.entry_type,
        payload: f.payload.clone(),
        trace_id: None,
    }
}

fn snake(entry_type: EntryType) -> &'static str {
    match entry_type {
        EntryType::FullState => "full_state",
        EntryType::Delta => "delta",
    }
}

fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn write_json(path: &Path, value: &Value) -> std::io::Result<()> {
    // serde_json's Map is a BTreeMap here (no preserve_order): keys come out sorted.
    let mut text = serde_json::to_string_pretty(value).expect("JSON of a Value");
    text.push('\n');
    fs::write(path, text)
}

fn run(out_dir: &Path) -> std::io::Result<(usize, usize)> {
    let (mut n_valid, mut n_invalid) = (0, 0);
    for group in ["valid", "invalid"] {
        let folder = out_dir.join(group);
        fs::create_dir_all(&folder)?;
        for entry in fs::read_dir(&folder)? {
            let path = entry?.path();
            let ext = path.extension().and_then(|e| e.to_str());
            if path.is_file() && matches!(ext, Some("json") | Some("msgpack")) {
                fs::remove_file(&path)?;
            }
        }
    }
    for case in cases() {
        let mut doc = json!({
            "description": case.description,
            "key": case.key,
            "value_file": format!("{}.msgpack", case.name),
        });
        let group = if let Some(expected) = case.expected {
            doc["expected"] = expected;
            n_valid += 1;
            "valid"
        } else {
            let (reason, grain) = case.reason_contains.expect("a case is valid or invalid");
            doc["reason_contains"] = Value::String(reason);
            doc["grain"] = grain;
            n_invalid += 1;
            "invalid"
        };
        let folder = out_dir.join(group);
        write_json(&folder.join(format!("{}.json", case.name)), &doc)?;
        fs::write(folder.join(format!("{}.msgpack", case.name)), &case.value)?;
    }
    let mut crates = serde_json::Map::new();
    for pair in env!("VECTORS_CRATE_VERSIONS").split(',') {
        let (name, version) = pair.split_once('=').expect("name=version");
        crates.insert(name.into(), Value::String(version.into()));
    }
    write_json(
        &out_dir.join("versions.json"),
        &json!({
            "generator": "schemas/vectors/rust-gen (cargo run --release -- schemas/vectors/rust)",
            "rustc": env!("VECTORS_RUSTC_VERSION"),
            "crates": crates,
        }),
    )?;
    Ok((n_valid, n_invalid))
}

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    if args.len() != 1 {
        eprintln!("usage: stream-replica-rust-vectors OUT_DIR");
        return ExitCode::from(2);
    }
    match run(Path::new(&args[0])) {
        Ok((v, i)) => {
            println!(
                "wrote {v} valid and {i} invalid Rust vectors to {}",
                args[0]
            );
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!(
                "stream-replica-rust-vectors: cannot write {}: {err}",
                args[0]
            );
            ExitCode::FAILURE
        }
    }
}
