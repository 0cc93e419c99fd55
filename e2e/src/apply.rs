//! Server-side apply of YAML manifests, and CRD installation.

use std::path::Path;
use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::discovery::pinned_kind;
use kube::runtime::wait::{await_condition, conditions};
use kube::{Api, Client};

use crate::error::{Error, Result, io};

/// Field manager of everything the e2e tooling applies.
pub const FIELD_MANAGER: &str = "tessera-e2e";

/// Parse a multi-document YAML stream into objects (empty documents skipped).
pub fn parse_documents(text: &str, file: &str) -> Result<Vec<DynamicObject>> {
    let mut out = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(text) {
        let v: serde_yaml::Value =
            serde::Deserialize::deserialize(doc).map_err(|source| Error::Yaml {
                file: file.to_string(),
                source,
            })?;
        if v.is_null() {
            continue;
        }
        let obj: DynamicObject = serde_yaml::from_value(v).map_err(|source| Error::Yaml {
            file: file.to_string(),
            source,
        })?;
        out.push(obj);
    }
    Ok(out)
}

/// Server-side apply one object (namespaced objects without a namespace go to `default_ns`).
pub async fn apply_object(
    client: &Client,
    obj: &DynamicObject,
    default_ns: Option<&str>,
) -> Result<DynamicObject> {
    let types = obj
        .types
        .as_ref()
        .ok_or_else(|| Error::Invalid("object without apiVersion/kind".into()))?;
    let gvk = GroupVersionKind::try_from(types).map_err(|e| Error::Invalid(e.to_string()))?;
    let (ar, caps) = pinned_kind(client, &gvk).await?;
    let name = obj
        .metadata
        .name
        .clone()
        .ok_or_else(|| Error::Invalid(format!("{} without a name", gvk.kind)))?;
    let api: Api<DynamicObject> = match caps.scope {
        kube::discovery::Scope::Namespaced => {
            let ns = obj
                .metadata
                .namespace
                .as_deref()
                .or(default_ns)
                .unwrap_or("default");
            Api::namespaced_with(client.clone(), ns, &ar)
        }
        kube::discovery::Scope::Cluster => Api::all_with(client.clone(), &ar),
    };
    let pp = PatchParams::apply(FIELD_MANAGER).force();
    Ok(api.patch(&name, &pp, &Patch::Apply(obj)).await?)
}

/// Server-side apply every document of a YAML file.
pub async fn apply_file(
    client: &Client,
    path: &Path,
    default_ns: Option<&str>,
) -> Result<Vec<DynamicObject>> {
    let text = std::fs::read_to_string(path).map_err(io(format!("reading {}", path.display())))?;
    let mut out = Vec::new();
    for obj in parse_documents(&text, &path.display().to_string())? {
        out.push(apply_object(client, &obj, default_ns).await?);
    }
    Ok(out)
}

/// Apply every CRD manifest in `dir` and wait until each is Established.
pub async fn install_crds(client: &Client, dir: &Path) -> Result<Vec<String>> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let mut names = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map_err(io(format!("reading {}", dir.display())))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    entries.sort();
    for path in entries {
        let text =
            std::fs::read_to_string(&path).map_err(io(format!("reading {}", path.display())))?;
        let crd: CustomResourceDefinition =
            serde_yaml::from_str(&text).map_err(|source| Error::Yaml {
                file: path.display().to_string(),
                source,
            })?;
        let name = crd
            .metadata
            .name
            .clone()
            .ok_or_else(|| Error::Invalid("CRD without name".into()))?;
        api.patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&crd),
        )
        .await?;
        names.push(name);
    }
    for name in &names {
        let est = await_condition(api.clone(), name, conditions::is_crd_established());
        tokio::time::timeout(Duration::from_secs(30), est)
            .await
            .map_err(|_| Error::Invalid(format!("CRD {name} not Established within 30s")))?
            .map_err(|e| Error::Invalid(format!("waiting for CRD {name}: {e}")))?;
    }
    Ok(names)
}
