//! Turns an image's layers into an ext4 disk image for a domain: layers are applied in order into a
//! scratch directory (OCI whiteouts honoured, paths confined by `tar`'s `unpack_in`), then
//! `mke2fs -d` builds the filesystem from it without mounting anything.

use std::fs;
use std::io::Read;
use std::path::{Component, Path};

use flate2::read::GzDecoder;
use tracing::{debug, info};

use super::store::{ImageStore, StoredImage};
use crate::command::CommandRunner;
use crate::error::{Result, ShimError};

fn layer_reader<'a>(media_type: &str, data: &'a [u8]) -> Result<Box<dyn Read + 'a>> {
    let gz = data.starts_with(&[0x1f, 0x8b]);
    if media_type.ends_with("zstd") {
        return Err(ShimError::Image {
            reference: media_type.into(),
            message: "zstd-compressed layers are not supported; push the image with gzip layers"
                .into(),
        });
    }
    Ok(if gz {
        Box::new(GzDecoder::new(data))
    } else {
        Box::new(data)
    })
}

fn remove_any(p: &Path) {
    match fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => {
            let _ = fs::remove_dir_all(p);
        }
        Ok(_) => {
            let _ = fs::remove_file(p);
        }
        Err(_) => {}
    }
}

/// Applies one layer tar stream onto `dir`.
pub fn apply_layer(dir: &Path, reader: impl Read) -> Result<()> {
    let mut ar = tar::Archive::new(reader);
    ar.set_preserve_permissions(true);
    ar.set_preserve_ownerships(true);
    ar.set_unpack_xattrs(false);
    ar.set_overwrite(true);
    for entry in ar.entries().map_err(|e| ShimError::io(dir, e))? {
        let mut entry = entry.map_err(|e| ShimError::io(dir, e))?;
        let path = entry
            .path()
            .map_err(|e| ShimError::io(dir, e))?
            .into_owned();
        if path.components().any(|c| matches!(c, Component::ParentDir)) {
            return Err(ShimError::Image {
                reference: path.display().to_string(),
                message: "layer entry escapes the rootfs (..)".into(),
            });
        }
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let parent = path.parent().unwrap_or(Path::new(""));
        if name == ".wh..wh..opq" {
            // Opaque directory: drop what lower layers put there.
            if let Ok(rd) = fs::read_dir(dir.join(parent)) {
                for e in rd.flatten() {
                    remove_any(&e.path());
                }
            }
            continue;
        }
        if let Some(hidden) = name.strip_prefix(".wh.") {
            remove_any(&dir.join(parent).join(hidden));
            continue;
        }
        // A file replacing a directory (or the reverse) must not merge with it.
        let target = dir.join(&path);
        if let Ok(m) = fs::symlink_metadata(&target)
            && (m.is_dir() != entry.header().entry_type().is_dir())
        {
            remove_any(&target);
        }
        let et = entry.header().entry_type();
        if et.is_character_special() || et.is_block_special() || et.is_fifo() {
            debug!(path = %path.display(), "device or fifo in a layer skipped (the guest has devtmpfs)");
            continue;
        }
        entry
            .unpack_in(dir)
            .map_err(|e| ShimError::io(&target, e))?;
    }
    Ok(())
}

/// Bytes used by the files under `dir` (apparent sizes, plus 4 KiB per inode for metadata).
fn tree_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        if let Ok(rd) = fs::read_dir(&d) {
            for e in rd.flatten() {
                if let Ok(m) = e.metadata() {
                    total += 4096 + if m.is_file() { m.len() } else { 0 };
                    if m.is_dir() {
                        stack.push(e.path());
                    }
                }
            }
        }
    }
    total
}

/// Builds `disk` (raw ext4) with the image's filesystem. `extra_mib` of free space is added.
pub fn build_rootfs_disk(
    store: &ImageStore,
    image: &StoredImage,
    scratch: &Path,
    disk: &Path,
    extra_mib: u64,
    mke2fs: &str,
    runner: &dyn CommandRunner,
) -> Result<u64> {
    let _ = fs::remove_dir_all(scratch);
    fs::create_dir_all(scratch).map_err(|e| ShimError::io(scratch, e))?;
    let result = (|| {
        for l in &image.layers {
            let data = store.read_blob(&l.digest)?;
            apply_layer(scratch, layer_reader(&l.media_type, &data)?)?;
        }
        let bytes = tree_bytes(scratch);
        let mib = (bytes * 5 / 4) / (1 << 20) + extra_mib + 16;
        let scratch_s = scratch.display().to_string();
        let disk_s = disk.display().to_string();
        let size = format!("{mib}M");
        info!(disk = %disk_s, image = %image.id, size_mib = mib, "mke2fs rootfs");
        runner.check(
            mke2fs,
            &[
                "-q",
                "-F",
                "-t",
                "ext4",
                "-L",
                "tessera-root",
                "-d",
                &scratch_s,
                &disk_s,
                &size,
            ],
        )?;
        Ok(mib)
    })();
    let _ = fs::remove_dir_all(scratch);
    if result.is_err() {
        let _ = fs::remove_file(disk);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_of(entries: &[(&str, Option<&[u8]>)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(0);
            match data {
                Some(d) => {
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_size(d.len() as u64);
                    h.set_mode(0o644);
                    h.set_cksum();
                    b.append_data(&mut h, path, *d).unwrap();
                }
                None => {
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_size(0);
                    h.set_mode(0o755);
                    h.set_cksum();
                    b.append_data(&mut h, path, &[][..]).unwrap();
                }
            }
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn whiteouts_and_opaque_dirs() {
        let d = tempfile::tempdir().unwrap();
        let l1 = tar_of(&[
            ("etc/", None),
            ("etc/a", Some(b"1")),
            ("etc/b", Some(b"2")),
            ("var/", None),
            ("var/x", Some(b"x")),
        ]);
        let l2 = tar_of(&[
            ("etc/.wh.a", Some(b"")),
            ("var/.wh..wh..opq", Some(b"")),
            ("var/y", Some(b"y")),
        ]);
        apply_layer(d.path(), &l1[..]).unwrap();
        apply_layer(d.path(), &l2[..]).unwrap();
        assert!(!d.path().join("etc/a").exists());
        assert_eq!(fs::read(d.path().join("etc/b")).unwrap(), b"2");
        assert!(!d.path().join("var/x").exists());
        assert_eq!(fs::read(d.path().join("var/y")).unwrap(), b"y");
    }

    #[test]
    fn gzip_layers_are_detected() {
        use std::io::Write;
        let raw = tar_of(&[("f", Some(b"data"))]);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&raw).unwrap();
        let gz = gz.finish().unwrap();
        let d = tempfile::tempdir().unwrap();
        apply_layer(
            d.path(),
            layer_reader("application/vnd.oci.image.layer.v1.tar+gzip", &gz).unwrap(),
        )
        .unwrap();
        assert_eq!(fs::read(d.path().join("f")).unwrap(), b"data");
        assert!(layer_reader("application/vnd.oci.image.layer.v1.tar+zstd", &gz).is_err());
    }
}
