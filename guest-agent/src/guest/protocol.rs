//! The shim ↔ guest agent protocol (docs/xen-guest-protocol.md): key names, value types and
//! the encoding of log chunks and exec results.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};

use super::error::{AgentError, Result};

/// The only protocol version this agent speaks.
pub const PROTOCOL_VERSION: &str = "1";
/// Longest value this agent writes. xenstored refuses (ENOSPC) a node of an unprivileged domain
/// whose stored size (a small header, the permissions, the value) reaches its per-domain
/// `entry-size` quota, 2048 bytes by default; the 4096-byte wire payload limit only binds dom0.
pub const GUEST_VALUE_MAX: usize = 1900;
/// Raw bytes per log / exec output chunk: 1350 bytes are 1800 base64 characters, which with the
/// log chunk's JSON wrapper (~60 bytes) stays under [`GUEST_VALUE_MAX`].
pub const CHUNK_BYTES: usize = 1350;
/// Unconsumed `log/<seq>` chunks the guest keeps before it stops reading the pipes.
pub const MAX_UNCONSUMED_LOG_CHUNKS: usize = 256;
/// Cap of each exec output stream.
pub const EXEC_OUTPUT_CAP: usize = 256 * 1024;
/// An exec result whose inline form is longer than this moves its output to chunk keys.
pub const INLINE_RESULT_MAX: usize = GUEST_VALUE_MAX;

/// Key paths below `D = /local/domain/<domid>`.
#[derive(Debug, Clone)]
pub struct Keys {
    /// `D`
    pub domain: String,
}

impl Keys {
    pub fn new(domid: u32) -> Self {
        Keys {
            domain: format!("/local/domain/{domid}"),
        }
    }
    /// Host → guest key `D/tessera/<rel>`.
    pub fn host(&self, rel: &str) -> String {
        format!("{}/tessera/{rel}", self.domain)
    }
    /// Guest → host key `D/data/tessera/<rel>`.
    pub fn guest(&self, rel: &str) -> String {
        format!("{}/data/tessera/{rel}", self.domain)
    }
}

/// `D/tessera/pod`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodInfo {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub namespace: String,
    #[serde(default)]
    pub uid: String,
}

/// `D/tessera/container/spec`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerSpec {
    #[serde(default)]
    pub id: String,
    pub args: Vec<String>,
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default)]
    pub working_dir: String,
    #[serde(default = "default_device")]
    pub rootfs_device: String,
    #[serde(default = "default_fstype")]
    pub rootfs_type: String,
    #[serde(default)]
    pub tty: bool,
}

fn default_device() -> String {
    "xvda".to_string()
}
fn default_fstype() -> String {
    "ext4".to_string()
}

impl ContainerSpec {
    pub fn parse(s: &str) -> Result<Self> {
        let spec: ContainerSpec = serde_json::from_str(s).map_err(|e| AgentError::Json {
            context: "container/spec".into(),
            source: e,
        })?;
        if spec.args.is_empty() || spec.args[0].is_empty() {
            return Err(AgentError::BadKey {
                key: "container/spec".into(),
                why: "args is empty".into(),
            });
        }
        if spec.rootfs_device.contains('/') || spec.rootfs_device.is_empty() {
            return Err(AgentError::BadKey {
                key: "container/spec".into(),
                why: format!("rootfsDevice {:?} is not a device name", spec.rootfs_device),
            });
        }
        for e in &spec.env {
            if !e.contains('=') {
                return Err(AgentError::BadKey {
                    key: "container/spec".into(),
                    why: format!("env entry {e:?} is not K=V"),
                });
            }
        }
        Ok(spec)
    }

    /// The working directory inside the rootfs (`/` when unset).
    pub fn cwd(&self) -> &str {
        if self.working_dir.is_empty() {
            "/"
        } else {
            &self.working_dir
        }
    }
}

/// `D/tessera/exec/<n>/request`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExecRequest {
    pub cmd: Vec<String>,
    #[serde(default)]
    pub timeout_seconds: u64,
}

impl ExecRequest {
    pub fn parse(s: &str) -> Result<Self> {
        let r: ExecRequest = serde_json::from_str(s).map_err(|e| AgentError::Json {
            context: "exec request".into(),
            source: e,
        })?;
        if r.cmd.is_empty() || r.cmd[0].is_empty() {
            return Err(AgentError::BadKey {
                key: "exec request".into(),
                why: "cmd is empty".into(),
            });
        }
        Ok(r)
    }
}

/// Which pipe a log chunk came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    Stdout,
    Stderr,
}

/// `D/data/tessera/log/<seq>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogChunk {
    pub stream: Stream,
    /// Unix time in nanoseconds.
    pub t: u128,
    /// base64 of at most [`CHUNK_BYTES`] bytes.
    pub data: String,
}

impl LogChunk {
    pub fn new(stream: Stream, t: u128, bytes: &[u8]) -> Self {
        LogChunk {
            stream,
            t,
            data: B64.encode(bytes),
        }
    }
    pub fn to_json(&self) -> Result<String> {
        serde_json::to_string(self).map_err(|e| AgentError::Json {
            context: "log chunk".into(),
            source: e,
        })
    }
    pub fn decode_data(&self) -> Result<Vec<u8>> {
        decode_b64(&self.data)
    }
}

pub fn decode_b64(s: &str) -> Result<Vec<u8>> {
    B64.decode(s)
        .map_err(|e| AgentError::Protocol(format!("base64: {e}")))
}

pub fn encode_b64(b: &[u8]) -> String {
    B64.encode(b)
}

/// `D/data/tessera/exec/<n>/result`. Output is inline (`stdout`/`stderr`) when the whole value
/// fits in one xenstore write; otherwise the inline fields are empty and `stdoutChunks` /
/// `stderrChunks` say how many `exec/<n>/stdout/<i>` / `exec/<n>/stderr/<i>` keys (base64 of at
/// most [`CHUNK_BYTES`] each) hold it, written before the result.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExecResult {
    pub exit_code: i32,
    pub stdout: String,
    pub stderr: String,
    pub timed_out: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdout_chunks: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stderr_chunks: Option<usize>,
    /// Why the output is missing (the guest could not write its keys).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The result written when the output keys could not be written: the exit code survives.
pub fn encode_exec_failure(exit_code: i32, timed_out: bool, why: &str) -> Result<String> {
    let mut why = why.to_string();
    why.truncate(512);
    serde_json::to_string(&ExecResult {
        exit_code,
        timed_out,
        truncated: true,
        error: Some(why),
        ..Default::default()
    })
    .map_err(|e| AgentError::Json {
        context: "exec result".into(),
        source: e,
    })
}

/// What the agent writes for one finished exec: extra chunk keys (relative to
/// `data/tessera/exec/<n>/`) and then the result value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecWrites {
    pub chunks: Vec<(String, String)>,
    pub result: String,
}

/// Encodes an exec outcome for xenstore: inline when small, chunked otherwise.
pub fn encode_exec_result(
    exit_code: i32,
    stdout: &[u8],
    stderr: &[u8],
    timed_out: bool,
    truncated: bool,
) -> Result<ExecWrites> {
    let json = |r: &ExecResult| {
        serde_json::to_string(r).map_err(|e| AgentError::Json {
            context: "exec result".into(),
            source: e,
        })
    };
    let mut r = ExecResult {
        exit_code,
        stdout: B64.encode(stdout),
        stderr: B64.encode(stderr),
        timed_out,
        truncated,
        stdout_chunks: None,
        stderr_chunks: None,
        error: None,
    };
    let inline = json(&r)?;
    if inline.len() <= INLINE_RESULT_MAX {
        return Ok(ExecWrites {
            chunks: Vec::new(),
            result: inline,
        });
    }
    let mut chunks = Vec::new();
    for (name, bytes) in [("stdout", stdout), ("stderr", stderr)] {
        for (i, c) in bytes.chunks(CHUNK_BYTES).enumerate() {
            chunks.push((format!("{name}/{i}"), B64.encode(c)));
        }
    }
    r.stdout = String::new();
    r.stderr = String::new();
    r.stdout_chunks = Some(stdout.len().div_ceil(CHUNK_BYTES));
    r.stderr_chunks = Some(stderr.len().div_ceil(CHUNK_BYTES));
    Ok(ExecWrites {
        chunks,
        result: json(&r)?,
    })
}

/// Exit code as the protocol reports it: the code, or `128+N` when killed by signal N.
pub fn exit_code_of(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt as _;
    match (status.code(), status.signal()) {
        (Some(c), _) => c,
        (None, Some(s)) => 128 + s,
        (None, None) => 255,
    }
}

/// Unix time in nanoseconds.
pub fn now_ns() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_parses_the_documented_shape() {
        let s = r#"{"id":"c1","args":["/bin/echo","hello"],"env":["A=b"],"workingDir":"/tmp","rootfsDevice":"xvda","rootfsType":"ext4","tty":false}"#;
        let spec = ContainerSpec::parse(s).expect("parses");
        assert_eq!(spec.args, vec!["/bin/echo", "hello"]);
        assert_eq!(spec.cwd(), "/tmp");
        let min = ContainerSpec::parse(r#"{"args":["true"]}"#).expect("defaults");
        assert_eq!(
            (
                min.rootfs_device.as_str(),
                min.rootfs_type.as_str(),
                min.cwd()
            ),
            ("xvda", "ext4", "/")
        );
    }

    #[test]
    fn bad_specs_are_refused() {
        assert!(ContainerSpec::parse(r#"{"args":[]}"#).is_err());
        assert!(ContainerSpec::parse(r#"{"args":["x"],"rootfsDevice":"../sda"}"#).is_err());
        assert!(ContainerSpec::parse(r#"{"args":["x"],"env":["NOEQ"]}"#).is_err());
        assert!(ContainerSpec::parse("not json").is_err());
    }

    #[test]
    fn a_full_log_chunk_fits_one_xenstore_write() {
        let c = LogChunk::new(Stream::Stderr, u128::from(u64::MAX), &[0xffu8; CHUNK_BYTES]);
        let json = c.to_json().expect("json");
        let path = Keys::new(u32::MAX).guest("log/4294967295");
        assert!(path.len() + 1 + json.len() <= super::super::xenbus::XENSTORE_PAYLOAD_MAX);
        assert!(json.len() <= GUEST_VALUE_MAX, "{} bytes", json.len());
        assert!(json.starts_with(r#"{"stream":"stderr","t":"#));
        assert_eq!(c.decode_data().expect("b64"), vec![0xffu8; CHUNK_BYTES]);
    }

    #[test]
    fn exec_result_inline_then_chunked() {
        let w = encode_exec_result(0, b"hi\n", b"", false, false).expect("enc");
        assert!(w.chunks.is_empty());
        assert_eq!(
            w.result,
            r#"{"exitCode":0,"stdout":"aGkK","stderr":"","timedOut":false}"#
        );
        let big = vec![b'a'; 5000];
        let w = encode_exec_result(1, &big, b"e", false, true).expect("enc");
        let r: ExecResult = serde_json::from_str(&w.result).expect("json");
        assert_eq!(
            (r.stdout_chunks, r.stderr_chunks, r.truncated),
            (Some(4), Some(1), true)
        );
        assert_eq!(w.chunks.len(), 5);
        assert_eq!(w.chunks[0].0, "stdout/0");
        assert_eq!(w.chunks[4].0, "stderr/0");
        assert!(w.chunks.iter().all(|(_, v)| v.len() <= GUEST_VALUE_MAX));
        assert!(w.result.len() <= GUEST_VALUE_MAX);
        let mut back = Vec::new();
        for (k, v) in &w.chunks {
            if k.starts_with("stdout/") {
                back.extend(decode_b64(v).expect("b64"));
            }
        }
        assert_eq!(back, big);
    }

    #[test]
    fn a_failed_output_write_still_reports_the_exit_code() {
        let v = encode_exec_failure(3, false, &"x".repeat(5000)).expect("enc");
        let r: ExecResult = serde_json::from_str(&v).expect("json");
        assert_eq!((r.exit_code, r.truncated), (3, true));
        assert_eq!(r.error.as_deref().map(str::len), Some(512));
        assert!(v.len() <= GUEST_VALUE_MAX);
    }
}
