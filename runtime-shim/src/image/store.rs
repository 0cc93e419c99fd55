//! The shim's own image store for Xen pods: an OCI content store (`blobs/sha256/<hex>`) plus an
//! index of references (`refs.json`, replaced atomically). Images arrive by registry pull
//! (`registry.rs`) or from an OCI image layout directory or its tarball (`import_layout`).

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tracing::info;

use super::reference::Reference;
use crate::error::{Result, ShimError};

pub const MT_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MT_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MT_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const MT_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    #[serde(default)]
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    #[serde(default)]
    pub media_type: Option<String>,
    #[serde(default)]
    pub config: Option<Descriptor>,
    #[serde(default)]
    pub layers: Vec<Descriptor>,
    #[serde(default)]
    pub manifests: Vec<Descriptor>,
}

/// The part of the image config the shim needs.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ImageConfig {
    #[serde(rename = "Entrypoint", default)]
    pub entrypoint: Option<Vec<String>>,
    #[serde(rename = "Cmd", default)]
    pub cmd: Option<Vec<String>>,
    #[serde(rename = "Env", default)]
    pub env: Option<Vec<String>>,
    #[serde(rename = "WorkingDir", default)]
    pub working_dir: Option<String>,
    #[serde(rename = "User", default)]
    pub user: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct ConfigFile {
    #[serde(default)]
    config: ImageConfig,
}

/// One stored image.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct StoredImage {
    /// The config digest (the image id, as containerd reports it).
    pub id: String,
    pub manifest_digest: String,
    pub repo_tags: Vec<String>,
    pub repo_digests: Vec<String>,
    /// Sum of config and compressed layer sizes.
    pub size: u64,
    pub config: ImageConfig,
    pub layers: Vec<Descriptor>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Index {
    images: Vec<StoredImage>,
}

#[derive(Debug)]
pub struct ImageStore {
    root: PathBuf,
    index: Mutex<()>,
}

pub fn sha256_hex(data: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(data);
    format!("{:x}", h.finalize())
}

fn hex_of(digest: &str) -> Result<&str> {
    match digest.strip_prefix("sha256:") {
        Some(h) if h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()) => Ok(h),
        _ => Err(ShimError::Image {
            reference: digest.to_string(),
            message: "only sha256 digests of 64 hex digits are supported".into(),
        }),
    }
}

impl ImageStore {
    pub fn open(root: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        fs::create_dir_all(root.join("blobs/sha256")).map_err(|e| ShimError::io(&root, e))?;
        Ok(ImageStore {
            root,
            index: Mutex::new(()),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn blob_path(&self, digest: &str) -> Result<PathBuf> {
        Ok(self.root.join("blobs/sha256").join(hex_of(digest)?))
    }

    pub fn has_blob(&self, digest: &str) -> bool {
        self.blob_path(digest).map(|p| p.exists()).unwrap_or(false)
    }

    /// Stores `data` under `digest` after checking it; written to a temporary file and renamed so
    /// that a crash never leaves a blob with the wrong content.
    pub fn put_blob(&self, digest: &str, data: &[u8]) -> Result<()> {
        let hex = hex_of(digest)?;
        let got = sha256_hex(data);
        if got != hex.to_ascii_lowercase() {
            return Err(ShimError::Image {
                reference: digest.to_string(),
                message: format!("content digest mismatch: got sha256:{got}"),
            });
        }
        let path = self.blob_path(digest)?;
        if path.exists() {
            return Ok(());
        }
        let tmp = path.with_extension("partial");
        fs::write(&tmp, data).map_err(|e| ShimError::io(&tmp, e))?;
        fs::rename(&tmp, &path).map_err(|e| ShimError::io(&path, e))
    }

    pub fn read_blob(&self, digest: &str) -> Result<Vec<u8>> {
        let p = self.blob_path(digest)?;
        fs::read(&p).map_err(|e| ShimError::io(&p, e))
    }

    fn load_index(&self) -> Result<Index> {
        let p = self.root.join("refs.json");
        match fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b).map_err(|source| ShimError::Json {
                what: p.display().to_string(),
                source,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Index::default()),
            Err(e) => Err(ShimError::io(&p, e)),
        }
    }

    fn save_index(&self, idx: &Index) -> Result<()> {
        let p = self.root.join("refs.json");
        let tmp = self.root.join("refs.json.tmp");
        let data = serde_json::to_vec_pretty(idx).map_err(|source| ShimError::Json {
            what: "image index".into(),
            source,
        })?;
        fs::write(&tmp, data).map_err(|e| ShimError::io(&tmp, e))?;
        fs::rename(&tmp, &p).map_err(|e| ShimError::io(&p, e))
    }

    pub fn list(&self) -> Result<Vec<StoredImage>> {
        let _g = self.index.lock();
        Ok(self.load_index()?.images)
    }

    /// Finds an image by id (full or unique prefix), tag, digest reference or repo digest.
    pub fn find(&self, image: &str) -> Result<Option<StoredImage>> {
        let images = self.list()?;
        let id = image.strip_prefix("sha256:").unwrap_or(image);
        if let Some(i) = images.iter().find(|i| {
            i.id == image || (id.len() >= 12 && i.id.trim_start_matches("sha256:").starts_with(id))
        }) {
            return Ok(Some(i.clone()));
        }
        let Ok(r) = Reference::parse(image) else {
            return Ok(None);
        };
        let canon = r.canonical();
        Ok(images.into_iter().find(|i| {
            i.repo_tags.contains(&canon)
                || r.digest.as_ref().is_some_and(|d| {
                    i.repo_digests.contains(&format!("{}@{d}", r.name()))
                        || (r.tag.is_none() && i.manifest_digest == *d)
                })
        }))
    }

    /// Records an image whose manifest and config blobs are already stored; the tag moves to it.
    pub fn record(&self, reference: &Reference, manifest_digest: &str) -> Result<StoredImage> {
        let manifest: Manifest = serde_json::from_slice(&self.read_blob(manifest_digest)?)
            .map_err(|source| ShimError::Json {
                what: format!("manifest {manifest_digest}"),
                source,
            })?;
        let config_desc = manifest.config.ok_or_else(|| ShimError::Image {
            reference: reference.canonical(),
            message: "manifest has no config".into(),
        })?;
        let cfg: ConfigFile = serde_json::from_slice(&self.read_blob(&config_desc.digest)?)
            .map_err(|source| ShimError::Json {
                what: format!("image config {}", config_desc.digest),
                source,
            })?;
        for l in &manifest.layers {
            if !self.has_blob(&l.digest) {
                return Err(ShimError::Image {
                    reference: reference.canonical(),
                    message: format!("layer {} is not in the store", l.digest),
                });
            }
        }
        let _g = self.index.lock();
        let mut idx = self.load_index()?;
        let tag = reference
            .tag
            .as_ref()
            .map(|t| format!("{}:{t}", reference.name()));
        let repo_digest = format!("{}@{manifest_digest}", reference.name());
        if let Some(t) = &tag {
            for i in idx.images.iter_mut() {
                i.repo_tags.retain(|x| x != t);
            }
        }
        let pos = idx.images.iter().position(|i| i.id == config_desc.digest);
        let entry = match pos {
            Some(p) => &mut idx.images[p],
            None => {
                idx.images.push(StoredImage {
                    id: config_desc.digest.clone(),
                    manifest_digest: manifest_digest.to_string(),
                    repo_tags: Vec::new(),
                    repo_digests: Vec::new(),
                    size: config_desc.size + manifest.layers.iter().map(|l| l.size).sum::<u64>(),
                    config: cfg.config.clone(),
                    layers: manifest.layers.clone(),
                });
                let n = idx.images.len() - 1;
                &mut idx.images[n]
            }
        };
        if let Some(t) = tag {
            entry.repo_tags.push(t);
        }
        if !entry.repo_digests.contains(&repo_digest) {
            entry.repo_digests.push(repo_digest);
        }
        let out = entry.clone();
        idx.images
            .retain(|i| !(i.repo_tags.is_empty() && i.repo_digests.is_empty()));
        self.save_index(&idx)?;
        info!(image = %reference.canonical(), id = %out.id, "image stored");
        Ok(out)
    }

    /// Removes an image from the index and deletes blobs no other image uses. Missing is not an error.
    pub fn remove(&self, image: &str) -> Result<bool> {
        let Some(found) = self.find(image)? else {
            return Ok(false);
        };
        let _g = self.index.lock();
        let mut idx = self.load_index()?;
        idx.images.retain(|i| i.id != found.id);
        self.save_index(&idx)?;
        let mut keep: Vec<&str> = Vec::new();
        for i in &idx.images {
            keep.push(&i.id);
            keep.push(&i.manifest_digest);
            keep.extend(i.layers.iter().map(|l| l.digest.as_str()));
        }
        let mut gone = vec![found.id.clone(), found.manifest_digest.clone()];
        gone.extend(found.layers.iter().map(|l| l.digest.clone()));
        for d in gone.iter().filter(|d| !keep.contains(&d.as_str())) {
            if let Ok(p) = self.blob_path(d) {
                let _ = fs::remove_file(p);
            }
        }
        info!(image, id = %found.id, "image removed");
        Ok(true)
    }

    /// Imports every tagged image of an OCI image layout (a directory, or a tar of one such as
    /// `skopeo copy ... oci-archive:`). Tags come from `org.opencontainers.image.ref.name`
    /// annotations; `name` names the repository they belong to.
    pub fn import_layout(&self, source: &Path, name: &str) -> Result<Vec<StoredImage>> {
        let dir;
        let _tmp;
        if source.is_dir() {
            dir = source.to_path_buf();
        } else {
            let t = tempfile_dir(&self.root)?;
            let f = fs::File::open(source).map_err(|e| ShimError::io(source, e))?;
            tar::Archive::new(f)
                .unpack(&t)
                .map_err(|e| ShimError::io(source, e))?;
            dir = t.clone();
            _tmp = RemoveOnDrop(t);
        }
        let idx_path = dir.join("index.json");
        let index: Manifest =
            serde_json::from_slice(&fs::read(&idx_path).map_err(|e| ShimError::io(&idx_path, e))?)
                .map_err(|source| ShimError::Json {
                    what: idx_path.display().to_string(),
                    source,
                })?;
        let copy = |digest: &str| -> Result<()> {
            let p = dir.join("blobs/sha256").join(hex_of(digest)?);
            let mut data = Vec::new();
            fs::File::open(&p)
                .and_then(|mut f| f.read_to_end(&mut data))
                .map_err(|e| ShimError::io(&p, e))?;
            self.put_blob(digest, &data)
        };
        let mut out = Vec::new();
        for m in &index.manifests {
            let tag = m
                .annotations
                .as_ref()
                .and_then(|a| a.get("org.opencontainers.image.ref.name"))
                .cloned()
                .unwrap_or_else(|| "latest".into());
            let reference = Reference::parse(&format!("{name}:{tag}"))?;
            copy(&m.digest)?;
            let manifest: Manifest =
                serde_json::from_slice(&self.read_blob(&m.digest)?).map_err(|source| {
                    ShimError::Json {
                        what: format!("manifest {}", m.digest),
                        source,
                    }
                })?;
            if let Some(c) = &manifest.config {
                copy(&c.digest)?;
            }
            for l in &manifest.layers {
                copy(&l.digest)?;
            }
            out.push(self.record(&reference, &m.digest)?);
        }
        if out.is_empty() {
            return Err(ShimError::Image {
                reference: source.display().to_string(),
                message: "the OCI layout's index.json lists no image".into(),
            });
        }
        Ok(out)
    }
}

struct RemoveOnDrop(PathBuf);
impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn tempfile_dir(root: &Path) -> Result<PathBuf> {
    let p = root.join(format!(
        "tmp-{}-{}",
        std::process::id(),
        crate::util::unique_suffix()
    ));
    fs::create_dir_all(&p).map_err(|e| ShimError::io(&p, e))?;
    Ok(p)
}
