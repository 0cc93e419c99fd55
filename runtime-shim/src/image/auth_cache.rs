//! Registry credentials seen in delegated PullImage calls, kept briefly so that a Xen
//! CreateContainer can pull the same image into the shim's store.
//!
//! Why: kubelet sends `ImageSpec.runtime_handler` only with the alpha gate
//! RuntimeClassInImageCriAPI, so on most clusters the pull of a tessera-xen pod's image reaches
//! containerd, and the Xen side learns about the image only at CreateContainer, without
//! credentials. kubelet pulls right before it creates, so a few minutes of memory is enough.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::cri;

const TTL: Duration = Duration::from_secs(600);
const MAX_ENTRIES: usize = 256;

#[derive(Default)]
pub struct PullAuthCache {
    entries: Mutex<HashMap<String, (Instant, cri::AuthConfig)>>,
}

// Never print credentials.
impl std::fmt::Debug for PullAuthCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.entries.lock().map(|e| e.len()).unwrap_or(0);
        write!(f, "PullAuthCache({n} entries)")
    }
}

impl PullAuthCache {
    pub fn remember(&self, image: &str, auth: Option<&cri::AuthConfig>) {
        let Some(auth) = auth else { return };
        if let Ok(mut e) = self.entries.lock() {
            e.retain(|_, (t, _)| t.elapsed() < TTL);
            if e.len() >= MAX_ENTRIES
                && let Some(oldest) = e
                    .iter()
                    .min_by_key(|(_, (t, _))| *t)
                    .map(|(k, _)| k.clone())
            {
                e.remove(&oldest);
            }
            e.insert(image.to_string(), (Instant::now(), auth.clone()));
        }
    }

    pub fn get(&self, image: &str) -> Option<cri::AuthConfig> {
        let e = self.entries.lock().ok()?;
        e.get(image)
            .filter(|(t, _)| t.elapsed() < TTL)
            .map(|(_, a)| a.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_by_image_and_hides_secrets() {
        let c = PullAuthCache::default();
        c.remember("a/b:1", None);
        assert!(c.get("a/b:1").is_none());
        let auth = cri::AuthConfig {
            username: "u".into(),
            password: "secret".into(),
            ..Default::default()
        };
        c.remember("a/b:1", Some(&auth));
        assert_eq!(c.get("a/b:1").unwrap().password, "secret");
        assert!(c.get("a/b:2").is_none());
        assert!(!format!("{c:?}").contains("secret"));
        for i in 0..(MAX_ENTRIES + 10) {
            c.remember(&format!("x/{i}"), Some(&auth));
        }
        assert_eq!(c.entries.lock().unwrap().len(), MAX_ENTRIES);
    }
}
