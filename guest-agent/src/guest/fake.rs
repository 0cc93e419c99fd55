//! In-memory xenstore for unit tests (shared between the agent under test and the test acting
//! as the host). Watches fire like xenstored's: once on registration, then for every write or
//! removal at or below the watched path.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::error::{AgentError, Result};
use super::xenbus::{Store, WatchEvent};

#[derive(Default)]
struct Inner {
    kv: BTreeMap<String, String>,
    watches: Vec<(String, String)>,
    events: VecDeque<WatchEvent>,
    closed: bool,
    /// The most `log/` children seen at once (back-pressure test).
    max_log_children: usize,
}

#[derive(Clone, Default)]
pub struct FakeStore {
    inner: Arc<(Mutex<Inner>, Condvar)>,
    /// Home of relative paths: `/local/domain/<domid>`.
    home: String,
}

fn under(path: &str, base: &str) -> bool {
    path == base || path.starts_with(&format!("{base}/"))
}

impl FakeStore {
    pub fn new(domid: u32) -> Self {
        let s = FakeStore {
            inner: Arc::default(),
            home: format!("/local/domain/{domid}"),
        };
        s.lock()
            .kv
            .insert(format!("{}/domid", s.home), domid.to_string());
        s
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.0.lock().expect("fake store lock")
    }

    fn abs(&self, path: &str) -> String {
        if path.starts_with('/') {
            path.to_string()
        } else {
            format!("{}/{path}", self.home)
        }
    }

    fn fire(&self, g: &mut Inner, path: &str) {
        let hits: Vec<WatchEvent> = g
            .watches
            .iter()
            .filter(|(w, _)| under(path, w))
            .map(|(_, t)| WatchEvent {
                path: path.to_string(),
                token: t.clone(),
            })
            .collect();
        if !hits.is_empty() {
            g.events.extend(hits);
            self.inner.1.notify_all();
        }
    }

    /// The host side: write a key (fires watches).
    pub fn host_write(&self, path: &str, value: &str) {
        let path = self.abs(path);
        let mut g = self.lock();
        g.kv.insert(path.clone(), value.to_string());
        self.fire(&mut g, &path);
    }

    pub fn get(&self, path: &str) -> Option<String> {
        self.lock().kv.get(&self.abs(path)).cloned()
    }

    pub fn children(&self, path: &str) -> Vec<String> {
        children(&self.lock(), &self.abs(path))
    }

    pub fn host_rm(&self, path: &str) {
        let path = self.abs(path);
        let mut g = self.lock();
        g.kv.retain(|k, _| !under(k, &path));
        self.fire(&mut g, &path);
    }

    pub fn close(&self) {
        self.lock().closed = true;
        self.inner.1.notify_all();
    }

    pub fn max_log_children(&self) -> usize {
        self.lock().max_log_children
    }

    /// Waits until `path` has a value for which `pred` holds.
    pub fn wait_for(
        &self,
        path: &str,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> Option<String> {
        let path = self.abs(path);
        let t0 = Instant::now();
        let mut g = self.lock();
        loop {
            if let Some(v) = g.kv.get(&path)
                && pred(v)
            {
                return Some(v.clone());
            }
            let left = timeout.checked_sub(t0.elapsed())?;
            g = self
                .inner
                .1
                .wait_timeout(g, left.min(Duration::from_millis(20)))
                .expect("cv")
                .0;
        }
    }
}

fn children(g: &Inner, path: &str) -> Vec<String> {
    let prefix = format!("{path}/");
    let mut out: Vec<String> =
        g.kv.keys()
            .filter_map(|k| k.strip_prefix(&prefix))
            .map(|rest| rest.split('/').next().unwrap_or_default().to_string())
            .collect();
    out.dedup();
    out
}

impl Store for FakeStore {
    fn read(&mut self, path: &str) -> Result<Option<String>> {
        let path = self.abs(path);
        let g = self.lock();
        if let Some(v) = g.kv.get(&path) {
            return Ok(Some(v.clone()));
        }
        Ok((!children(&g, &path).is_empty()).then(String::new))
    }

    fn write(&mut self, path: &str, value: &str) -> Result<()> {
        let path = self.abs(path);
        if !path.contains("/data/") {
            return Err(AgentError::Xenstore {
                op: "WRITE",
                path,
                errno: "EACCES".into(),
            });
        }
        // xenstored's default entry-size quota for an unprivileged domain: the stored node
        // (header + one permission + value) must stay under 2048 bytes.
        if 16 + 8 + value.len() >= 2048 {
            return Err(AgentError::Xenstore {
                op: "WRITE",
                path,
                errno: "ENOSPC".into(),
            });
        }
        // xenstored's default entry-size quota for an unprivileged domain: the stored node
        // (header + one permission + value) must stay under 2048 bytes.
        if 16 + 8 + value.len() >= 2048 {
            return Err(AgentError::Xenstore {
                op: "WRITE",
                path,
                errno: "ENOSPC".into(),
            });
        }
        let mut g = self.lock();
        g.kv.insert(path.clone(), value.to_string());
        if let Some(i) = path.find("/data/tessera/log/") {
            let n = children(&g, &path[..i + "/data/tessera/log".len()]).len();
            g.max_log_children = g.max_log_children.max(n);
        }
        self.fire(&mut g, &path);
        self.inner.1.notify_all();
        Ok(())
    }

    fn directory(&mut self, path: &str) -> Result<Vec<String>> {
        let path = self.abs(path);
        Ok(children(&self.lock(), &path))
    }

    fn rm(&mut self, path: &str) -> Result<()> {
        self.host_rm(path);
        Ok(())
    }

    fn watch(&mut self, path: &str, token: &str) -> Result<()> {
        let path = self.abs(path);
        let mut g = self.lock();
        g.watches.push((path.clone(), token.to_string()));
        g.events.push_back(WatchEvent {
            path,
            token: token.to_string(),
        });
        Ok(())
    }

    fn next_event(&mut self, timeout: Duration) -> Result<Option<WatchEvent>> {
        let t0 = Instant::now();
        let mut g = self.lock();
        loop {
            if g.closed {
                return Err(AgentError::Closed);
            }
            if let Some(ev) = g.events.pop_front() {
                return Ok(Some(ev));
            }
            let Some(left) = timeout.checked_sub(t0.elapsed()) else {
                return Ok(None);
            };
            g = self.inner.1.wait_timeout(g, left).expect("cv").0;
        }
    }
}
