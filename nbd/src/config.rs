//! Configuration of an NBD export: one YAML file format that mirrors the command-line flags
//! (the flags win where both are given), validated into [`Settings`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::proto;

/// Which store backs the export.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    Host,
    Vram,
}

impl std::str::FromStr for BackendKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "host" => Ok(Self::Host),
            "vram" => Ok(Self::Vram),
            other => Err(Error::Config(format!(
                "backend {other:?}: expected 'host' or 'vram'"
            ))),
        }
    }
}

/// A size as written by a person: bytes, `4G`, `512MiB`, or (where allowed) `auto`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum SizeText {
    Bytes(u64),
    Text(String),
}

/// A resolved export size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SizeSpec {
    Bytes(u64),
    /// Free VRAM minus the reserve (VRAM backend only).
    Auto,
}

/// Parse `4096`, `4K`, `4KiB`, `1.5G` is refused (whole numbers only), `auto`.
pub fn parse_size(s: &str) -> Result<SizeSpec> {
    let t = s.trim();
    if t.eq_ignore_ascii_case("auto") {
        return Ok(SizeSpec::Auto);
    }
    parse_bytes(t).map(SizeSpec::Bytes)
}

/// Parse a byte count with an optional binary suffix (K, M, G, T; `KiB` / `KB` spellings accepted).
pub fn parse_bytes(s: &str) -> Result<u64> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| Error::BadSize(s.to_string()))?;
    let shift = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        _ => return Err(Error::BadSize(s.to_string())),
    };
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| Error::BadSize(s.to_string()))
}

fn size_text(v: &SizeText) -> Result<SizeSpec> {
    match v {
        SizeText::Bytes(n) => Ok(SizeSpec::Bytes(*n)),
        SizeText::Text(s) => parse_size(s),
    }
}

fn bytes_text(field: &str, v: &SizeText) -> Result<u64> {
    match size_text(v)? {
        SizeSpec::Bytes(n) => Ok(n),
        SizeSpec::Auto => Err(Error::Config(format!(
            "{field}: 'auto' is only valid for size"
        ))),
    }
}

/// The config file (YAML). Every key is optional; unknown keys are an error.
///
/// ```yaml
/// socket: /run/tessera/vram.sock   # unix socket path
/// tcp: 127.0.0.1:10809             # optional TCP listener (loopback unless allow_remote)
/// size: 4G                         # or auto (VRAM: free VRAM minus reserve)
/// backend: vram                    # host | vram
/// export: ""                       # export name
/// metrics: 127.0.0.1:9464          # Prometheus text on GET /metrics
/// max_bytes: 16G                   # cap: GpuRaidPolicy.maxVramBytes or the VGpuClaim's memory
/// reserve: 1G                      # VRAM left free when size is auto
/// device: 0                        # CUDA device ordinal
/// allow_remote: false              # permit a non-loopback TCP address (NBD has no authentication)
/// ```
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub socket: Option<PathBuf>,
    pub tcp: Option<String>,
    pub size: Option<SizeText>,
    pub backend: Option<BackendKind>,
    pub export: Option<String>,
    pub metrics: Option<String>,
    pub max_bytes: Option<SizeText>,
    pub reserve: Option<SizeText>,
    pub device: Option<usize>,
    pub allow_remote: Option<bool>,
}

impl FileConfig {
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::ConfigRead {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text).map_err(|e| match e {
            Error::ConfigParse { source, .. } => Error::ConfigParse {
                path: path.to_path_buf(),
                source,
            },
            other => other,
        })
    }

    pub fn parse(text: &str) -> Result<Self> {
        // An empty file is a valid, empty configuration.
        if text.trim().is_empty() {
            return Ok(Self::default());
        }
        serde_yaml::from_str(text).map_err(|source| Error::ConfigParse {
            path: PathBuf::from("<config>"),
            source,
        })
    }

    /// Fields set in `over` replace ours (command-line flags over the file).
    pub fn overlay(self, over: FileConfig) -> FileConfig {
        FileConfig {
            socket: over.socket.or(self.socket),
            tcp: over.tcp.or(self.tcp),
            size: over.size.or(self.size),
            backend: over.backend.or(self.backend),
            export: over.export.or(self.export),
            metrics: over.metrics.or(self.metrics),
            max_bytes: over.max_bytes.or(self.max_bytes),
            reserve: over.reserve.or(self.reserve),
            device: over.device.or(self.device),
            allow_remote: over.allow_remote.or(self.allow_remote),
        }
    }

    /// Check everything and resolve it.
    pub fn validate(self) -> Result<Settings> {
        let backend = self.backend.unwrap_or(BackendKind::Host);
        let size = match &self.size {
            Some(v) => size_text(v)?,
            None => {
                return Err(Error::Config(
                    "size is required (e.g. --size 4G, or auto for the VRAM backend)".into(),
                ));
            }
        };
        if let SizeSpec::Bytes(n) = size
            && (n == 0 || n % 512 != 0)
        {
            return Err(Error::Config(format!(
                "size {n} must be a positive multiple of 512 bytes"
            )));
        }
        if size == SizeSpec::Auto && backend == BackendKind::Host {
            return Err(Error::Config(
                "size auto needs the VRAM backend; give the host backend a size".into(),
            ));
        }
        let max_bytes = self
            .max_bytes
            .as_ref()
            .map(|v| bytes_text("max_bytes", v))
            .transpose()?;
        if let (Some(cap), SizeSpec::Bytes(n)) = (max_bytes, size)
            && n > cap
        {
            return Err(Error::Config(format!("size {n} exceeds max_bytes {cap}")));
        }
        let reserve = self
            .reserve
            .as_ref()
            .map(|v| bytes_text("reserve", v))
            .transpose()?
            .unwrap_or(1 << 30);
        let allow_remote = self.allow_remote.unwrap_or(false);
        let tcp = self
            .tcp
            .as_deref()
            .map(|t| parse_addr("tcp", t))
            .transpose()?;
        if let Some(a) = tcp
            && !a.ip().is_loopback()
            && !allow_remote
        {
            return Err(Error::Config(format!(
                "tcp {a} is not a loopback address: NBD has no authentication; set allow_remote to permit it"
            )));
        }
        if self.socket.is_none() && tcp.is_none() {
            return Err(Error::Config(
                "nothing to listen on: give socket and/or tcp".into(),
            ));
        }
        let metrics = self
            .metrics
            .as_deref()
            .map(|t| parse_addr("metrics", t))
            .transpose()?;
        let export = self.export.unwrap_or_default();
        if export.len() > proto::MAX_STRING_LEN || export.contains('\0') {
            return Err(Error::Config(
                "export name must be at most 4096 bytes and contain no NUL".into(),
            ));
        }
        Ok(Settings {
            socket: self.socket,
            tcp,
            size,
            backend,
            export,
            metrics,
            max_bytes,
            reserve,
            device: self.device.unwrap_or(0),
        })
    }
}

fn parse_addr(field: &str, t: &str) -> Result<SocketAddr> {
    t.parse().map_err(|_| {
        Error::Config(format!(
            "{field}: {t:?} is not an address like 127.0.0.1:10809"
        ))
    })
}

/// Validated settings of one export.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub socket: Option<PathBuf>,
    pub tcp: Option<SocketAddr>,
    pub size: SizeSpec,
    pub backend: BackendKind,
    pub export: String,
    pub metrics: Option<SocketAddr>,
    pub max_bytes: Option<u64>,
    pub reserve: u64,
    pub device: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_bytes("4096").expect("n"), 4096);
        assert_eq!(parse_bytes("4G").expect("n"), 4 << 30);
        assert_eq!(parse_bytes("512MiB").expect("n"), 512 << 20);
        assert_eq!(parse_bytes("1t").expect("n"), 1 << 40);
        assert!(parse_bytes("1.5G").is_err());
        assert!(parse_bytes("G").is_err());
        assert!(parse_bytes("99999999999T").is_err());
        assert_eq!(parse_size("auto").expect("auto"), SizeSpec::Auto);
    }

    #[test]
    fn file_and_flags_merge_and_validate() {
        let f = FileConfig::parse("socket: /tmp/x.sock\nsize: 1G\nbackend: vram\nmax_bytes: 2G\nmetrics: 127.0.0.1:9464\n")
            .expect("parse");
        let flags = FileConfig {
            size: Some(SizeText::Text("512M".into())),
            ..Default::default()
        };
        let s = f.overlay(flags).validate().expect("valid");
        assert_eq!(s.size, SizeSpec::Bytes(512 << 20));
        assert_eq!(s.backend, BackendKind::Vram);
        assert_eq!(s.max_bytes, Some(2 << 30));
        assert_eq!(s.reserve, 1 << 30);
    }

    #[test]
    fn clear_errors() {
        let e = FileConfig::parse("sise: 1G\n").expect_err("unknown key");
        assert!(e.to_string().contains("unknown field"), "{e}");
        let e = FileConfig::parse("socket: /x\nsize: 3G\nmax_bytes: 2G\n")
            .expect("parse")
            .validate()
            .expect_err("cap");
        assert!(e.to_string().contains("exceeds max_bytes"), "{e}");
        let e = FileConfig::parse("tcp: 0.0.0.0:10809\nsize: 1G\n")
            .expect("parse")
            .validate()
            .expect_err("remote");
        assert!(e.to_string().contains("loopback"), "{e}");
        let e = FileConfig::parse("socket: /x\nsize: auto\n")
            .expect("parse")
            .validate()
            .expect_err("auto host");
        assert!(e.to_string().contains("VRAM"), "{e}");
        let e = FileConfig::parse("size: 1G\n")
            .expect("parse")
            .validate()
            .expect_err("no listener");
        assert!(e.to_string().contains("nothing to listen on"), "{e}");
        let e = FileConfig::parse("socket: /x\nsize: 1000\n")
            .expect("parse")
            .validate()
            .expect_err("512");
        assert!(e.to_string().contains("multiple of 512"), "{e}");
        let e = FileConfig::parse("socket: /x\nsize: 1G\nbackend: disk\n").expect_err("backend");
        assert!(e.to_string().contains("unknown variant"), "{e}");
    }
}
