//! Image references, normalised the way containerd and Docker do (docker.io/library/NAME:latest).

use crate::error::{Result, ShimError};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// Registry host\[:port\], e.g. `docker.io`, `127.0.0.1:5000`.
    pub registry: String,
    /// Repository path, e.g. `library/busybox`.
    pub repository: String,
    pub tag: Option<String>,
    /// `sha256:<hex>`
    pub digest: Option<String>,
}

impl Reference {
    pub fn parse(s: &str) -> Result<Self> {
        let bad = |why: &str| ShimError::Image {
            reference: s.to_string(),
            message: format!("not a valid image reference: {why}"),
        };
        if s.is_empty() || s.contains(char::is_whitespace) {
            return Err(bad("empty or contains whitespace"));
        }
        let (rest, digest) = match s.split_once('@') {
            Some((r, d)) => {
                let hex = d
                    .strip_prefix("sha256:")
                    .ok_or_else(|| bad("digest must be sha256:<hex>"))?;
                if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(bad("digest must be sha256 and 64 hex digits"));
                }
                (r, Some(d.to_ascii_lowercase()))
            }
            None => (s, None),
        };
        let (name, tag) = match rest.rfind(':') {
            Some(i) if !rest[i + 1..].contains('/') => {
                (&rest[..i], Some(rest[i + 1..].to_string()))
            }
            _ => (rest, None),
        };
        if name.is_empty() {
            return Err(bad("no repository name"));
        }
        let first = name.split('/').next().unwrap_or(name);
        let has_registry = name.contains('/')
            && (first.contains('.') || first.contains(':') || first == "localhost");
        let (registry, repository) = if has_registry {
            let (r, p) = name.split_at(first.len());
            (r.to_string(), p.trim_start_matches('/').to_string())
        } else if name.contains('/') {
            ("docker.io".to_string(), name.to_string())
        } else {
            ("docker.io".to_string(), format!("library/{name}"))
        };
        if repository.is_empty()
            || !repository
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-/".contains(&b))
        {
            return Err(bad(
                "repository must be lower-case letters, digits, '.', '_', '-', '/'",
            ));
        }
        let tag = match (&tag, &digest) {
            (None, None) => Some("latest".to_string()),
            _ => tag,
        };
        Ok(Reference {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// `registry/repository`
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// The canonical string: name:tag, name@digest or name:tag@digest.
    pub fn canonical(&self) -> String {
        let mut s = self.name();
        if let Some(t) = &self.tag {
            s.push(':');
            s.push_str(t);
        }
        if let Some(d) = &self.digest {
            s.push('@');
            s.push_str(d);
        }
        s
    }

    /// What the registry API's manifest endpoint is asked for.
    pub fn manifest_ref(&self) -> &str {
        self.digest
            .as_deref()
            .or(self.tag.as_deref())
            .unwrap_or("latest")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_like_containerd() {
        let r = Reference::parse("busybox").unwrap();
        assert_eq!(r.canonical(), "docker.io/library/busybox:latest");
        let r = Reference::parse("127.0.0.1:5000/test/busybox:1.36").unwrap();
        assert_eq!(r.registry, "127.0.0.1:5000");
        assert_eq!(r.repository, "test/busybox");
        assert_eq!(r.tag.as_deref(), Some("1.36"));
        let d = format!("sha256:{}", "a".repeat(64));
        let r = Reference::parse(&format!("gcr.io/x/y@{d}")).unwrap();
        assert_eq!(r.tag, None);
        assert_eq!(r.manifest_ref(), d);
        assert_eq!(
            Reference::parse("localhost/foo").unwrap().registry,
            "localhost"
        );
        assert_eq!(
            Reference::parse("user/app:v1").unwrap().canonical(),
            "docker.io/user/app:v1"
        );
    }

    #[test]
    fn rejects_bad_references() {
        for s in ["", "a b", "Busybox", "x@sha256:zz", "x@md5:00", ":tag"] {
            assert!(Reference::parse(s).is_err(), "{s}");
        }
    }
}
