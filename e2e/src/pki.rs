//! Self-signed PKI for a loopback control plane, made with the `openssl` command line tool:
//! a CA, the apiserver's serving certificate, an admin client certificate (system:masters) and the
//! service-account signing key pair.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::{Error, Result, io};

/// Paths of the generated PKI files.
#[derive(Debug, Clone)]
pub struct Pki {
    pub dir: PathBuf,
}

impl Pki {
    pub fn ca_crt(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }
    pub fn ca_key(&self) -> PathBuf {
        self.dir.join("ca.key")
    }
    pub fn apiserver_crt(&self) -> PathBuf {
        self.dir.join("apiserver.crt")
    }
    pub fn apiserver_key(&self) -> PathBuf {
        self.dir.join("apiserver.key")
    }
    pub fn admin_crt(&self) -> PathBuf {
        self.dir.join("admin.crt")
    }
    pub fn admin_key(&self) -> PathBuf {
        self.dir.join("admin.key")
    }
    pub fn sa_key(&self) -> PathBuf {
        self.dir.join("sa.key")
    }
    pub fn sa_pub(&self) -> PathBuf {
        self.dir.join("sa.pub")
    }

    /// Generate the PKI into `dir` unless it already exists there (reused across `make dev` runs).
    pub fn ensure(dir: &Path) -> Result<Pki> {
        let pki = Pki {
            dir: dir.to_path_buf(),
        };
        if pki.admin_crt().exists() && pki.sa_pub().exists() && pki.apiserver_crt().exists() {
            return Ok(pki);
        }
        std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
        let d = |f: &str| dir.join(f).display().to_string();
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "3650",
            "-keyout",
            &d("ca.key"),
            "-out",
            &d("ca.crt"),
            "-subj",
            "/CN=tessera-local-ca",
        ])?;
        let ext = dir.join("apiserver.ext");
        std::fs::write(&ext, "subjectAltName=IP:127.0.0.1,IP:10.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc\nextendedKeyUsage=serverAuth\n")
            .map_err(io("writing apiserver.ext"))?;
        issue(dir, "apiserver", "/CN=kube-apiserver", &ext)?;
        let client_ext = dir.join("client.ext");
        std::fs::write(&client_ext, "extendedKeyUsage=clientAuth\n")
            .map_err(io("writing client.ext"))?;
        issue(
            dir,
            "admin",
            "/O=system:masters/CN=tessera-admin",
            &client_ext,
        )?;
        openssl(&["genrsa", "-out", &d("sa.key"), "2048"])?;
        openssl(&["rsa", "-in", &d("sa.key"), "-pubout", "-out", &d("sa.pub")])?;
        Ok(pki)
    }
}

fn issue(dir: &Path, name: &str, subject: &str, ext: &Path) -> Result<()> {
    let d = |f: String| dir.join(f).display().to_string();
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        &d(format!("{name}.key")),
        "-out",
        &d(format!("{name}.csr")),
        "-subj",
        subject,
    ])?;
    openssl(&[
        "x509",
        "-req",
        "-in",
        &d(format!("{name}.csr")),
        "-CA",
        &d("ca.crt".into()),
        "-CAkey",
        &d("ca.key".into()),
        "-CAcreateserial",
        "-days",
        "3650",
        "-extfile",
        &ext.display().to_string(),
        "-out",
        &d(format!("{name}.crt")),
    ])
}

fn openssl(args: &[&str]) -> Result<()> {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .map_err(io("running openssl (install Debian's openssl)"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(Error::Command {
            cmd: format!("openssl {}", args.join(" ")),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }
}
