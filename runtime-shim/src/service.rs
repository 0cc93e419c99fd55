//! The CRI service: routes each call to the Xen runtime or the upstream runtime.
//!
//! - RunPodSandbox goes by `runtime_handler`; every later call by who owns the id.
//! - Lists merge both sides. With an upstream configured but down, a list fails with
//!   `Unavailable` rather than silently hiding the upstream's pods from kubelet; Xen-owned ids
//!   keep working. Without an upstream (a Xen-only node) lists hold Xen pods only.
//! - Images go by `ImageSpec.runtime_handler` (KEP-4216): the Xen handler's images live in the
//!   shim's own store, the rest in the upstream's; on a Xen-only node (no upstream) all of them
//!   live in the shim's store. A Xen CreateContainer whose image the store lacks pulls it first,
//!   with the credentials of a recent delegated pull of the same image (kubelet sends no handler
//!   on pulls unless the RuntimeClassInImageCriAPI gate is on).

use std::sync::Arc;

use tonic::{Request, Response, Status};
use tracing::warn;

use crate::cri;
use crate::cri::image_service_server::ImageService;
use crate::cri::runtime_service_server::RuntimeService;
use crate::error::ShimError;
use crate::image::PullAuthCache;
use crate::upstream::Upstream;
use crate::xen::XenRuntime;

#[derive(Debug, Clone)]
pub struct Shim {
    pub upstream: Option<Upstream>,
    pub xen: Option<Arc<XenRuntime>>,
    /// Reported by RuntimeConfig when the upstream cannot say (containerd < 1.7) or is absent.
    pub cgroup_driver: cri::CgroupDriver,
    /// Credentials of delegated pulls, for Xen CreateContainer's pull of a missing image.
    pub pull_auth: Arc<PullAuthCache>,
    /// VGpuClaim lookups (None without apiserver access).
    pub claims: Option<crate::vgpu::ClaimResolver>,
    /// Honour `tessera.dev/vgpu-allocation` (tests and Xen-only nodes without an apiserver).
    pub allow_allocation_annotation: bool,
}

type R<T> = Result<Response<T>, Status>;

/// Runs blocking Xen work off the async runtime.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ShimError> + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Status::internal(format!("xen worker panicked: {e}")))?
        .map_err(Status::from)
}

impl Shim {
    fn xen_for_handler(&self, handler: &str) -> Option<Arc<XenRuntime>> {
        self.xen
            .as_ref()
            .filter(|x| x.handler() == handler)
            .cloned()
    }

    /// Image calls: the Xen store for the Xen handler, and for every image on a Xen-only node
    /// (no upstream to hold the others).
    fn xen_for_image(&self, spec: Option<&cri::ImageSpec>) -> Option<Arc<XenRuntime>> {
        if self.upstream.is_none() {
            return self.xen.clone();
        }
        self.xen_for_handler(handler_of(spec))
    }

    fn xen_sandbox(&self, id: &str) -> Option<Arc<XenRuntime>> {
        self.xen.as_ref().filter(|x| x.owns_sandbox(id)).cloned()
    }

    fn xen_container(&self, id: &str) -> Option<Arc<XenRuntime>> {
        self.xen.as_ref().filter(|x| x.owns_container(id)).cloned()
    }

    fn up(&self, handler: &str) -> Result<&Upstream, Status> {
        self.upstream.as_ref().ok_or_else(|| {
            ShimError::NoUpstream {
                handler: handler.to_string(),
            }
            .into()
        })
    }
}

/// Forwards one unary call to the upstream runtime service.
macro_rules! fwd_rt {
    ($self:ident, $req:ident, $method:ident) => {{
        let up = $self.up("")?;
        up.runtime()
            .$method($req.into_inner())
            .await
            .map_err(|s| up.map_status(s))
    }};
}

/// Forwards a Stop/Remove call; CRI makes these idempotent, so the upstream's NotFound (containerd
/// 1.6 answers it for ids it never knew) becomes success.
macro_rules! fwd_idempotent {
    ($self:ident, $req:ident, $method:ident, $resp:expr) => {{
        let up = $self.up("")?;
        match up.runtime().$method($req.into_inner()).await {
            Err(s) if s.code() == tonic::Code::NotFound => Ok(Response::new($resp)),
            r => r.map_err(|s| up.map_status(s)),
        }
    }};
}

/// Forwards to the upstream, or answers `$default` on a Xen-only node.
macro_rules! fwd_or {
    ($self:ident, $req:ident, $client:ident, $method:ident, $default:expr) => {{
        match &$self.upstream {
            Some(up) => up
                .$client()
                .$method($req.into_inner())
                .await
                .map_err(|s| up.map_status(s)),
            None => Ok(Response::new($default)),
        }
    }};
}

macro_rules! fwd_img {
    ($self:ident, $req:ident, $method:ident) => {{
        let up = $self.up("")?;
        up.image()
            .$method($req.into_inner())
            .await
            .map_err(|s| up.map_status(s))
    }};
}

fn xen_unimplemented(what: &str) -> Status {
    ShimError::Unimplemented(format!("{what} is not supported for tessera-xen pods")).into()
}

#[tonic::async_trait]
impl RuntimeService for Shim {
    async fn version(&self, req: Request<cri::VersionRequest>) -> R<cri::VersionResponse> {
        Ok(Response::new(cri::VersionResponse {
            version: req.into_inner().version.max("0.1.0".into()),
            runtime_name: "tessera-shim".into(),
            runtime_version: env!("CARGO_PKG_VERSION").into(),
            runtime_api_version: "v1".into(),
        }))
    }

    async fn run_pod_sandbox(
        &self,
        req: Request<cri::RunPodSandboxRequest>,
    ) -> R<cri::RunPodSandboxResponse> {
        if let Some(x) = self.xen_for_handler(&req.get_ref().runtime_handler) {
            let config = req
                .into_inner()
                .config
                .ok_or_else(|| Status::invalid_argument("RunPodSandbox without config"))?;
            let id = blocking(move || x.run_pod_sandbox(config)).await?;
            return Ok(Response::new(cri::RunPodSandboxResponse {
                pod_sandbox_id: id,
            }));
        }
        let handler = req.get_ref().runtime_handler.clone();
        let up = self.up(&handler)?;
        up.runtime()
            .run_pod_sandbox(req.into_inner())
            .await
            .map_err(|s| up.map_status(s))
    }

    async fn stop_pod_sandbox(
        &self,
        req: Request<cri::StopPodSandboxRequest>,
    ) -> R<cri::StopPodSandboxResponse> {
        if let Some(x) = self.xen_sandbox(&req.get_ref().pod_sandbox_id) {
            let id = req.into_inner().pod_sandbox_id;
            blocking(move || x.stop_pod_sandbox(&id)).await?;
            return Ok(Response::new(cri::StopPodSandboxResponse {}));
        }
        fwd_idempotent!(self, req, stop_pod_sandbox, cri::StopPodSandboxResponse {})
    }

    async fn remove_pod_sandbox(
        &self,
        req: Request<cri::RemovePodSandboxRequest>,
    ) -> R<cri::RemovePodSandboxResponse> {
        if let Some(x) = self.xen_sandbox(&req.get_ref().pod_sandbox_id) {
            let id = req.into_inner().pod_sandbox_id;
            blocking(move || x.remove_pod_sandbox(&id)).await?;
            return Ok(Response::new(cri::RemovePodSandboxResponse {}));
        }
        fwd_idempotent!(
            self,
            req,
            remove_pod_sandbox,
            cri::RemovePodSandboxResponse {}
        )
    }

    async fn pod_sandbox_status(
        &self,
        req: Request<cri::PodSandboxStatusRequest>,
    ) -> R<cri::PodSandboxStatusResponse> {
        if let Some(x) = self.xen_sandbox(&req.get_ref().pod_sandbox_id) {
            let id = req.into_inner().pod_sandbox_id;
            return Ok(Response::new(
                blocking(move || x.pod_sandbox_status(&id)).await?,
            ));
        }
        fwd_rt!(self, req, pod_sandbox_status)
    }

    async fn list_pod_sandbox(
        &self,
        req: Request<cri::ListPodSandboxRequest>,
    ) -> R<cri::ListPodSandboxResponse> {
        let filter = req.get_ref().filter.clone();
        let mut items = match &self.xen {
            Some(x) => {
                let x = x.clone();
                let f = filter.clone();
                blocking(move || x.list_pod_sandbox(f.as_ref())).await?
            }
            None => Vec::new(),
        };
        let xen_only = filter.as_ref().is_some_and(|f| !f.id.is_empty()) && !items.is_empty();
        if let (Some(up), false) = (&self.upstream, xen_only) {
            let r = up
                .runtime()
                .list_pod_sandbox(req.into_inner())
                .await
                .map_err(|s| up.map_status(s))?;
            items.extend(r.into_inner().items);
        }
        Ok(Response::new(cri::ListPodSandboxResponse { items }))
    }

    async fn create_container(
        &self,
        req: Request<cri::CreateContainerRequest>,
    ) -> R<cri::CreateContainerResponse> {
        if let Some(x) = self.xen_sandbox(&req.get_ref().pod_sandbox_id) {
            let r = req.into_inner();
            let config = r
                .config
                .ok_or_else(|| Status::invalid_argument("CreateContainer without config"))?;
            // The vGPU allocation comes from the pod's VGpuClaim (apiserver), checked first: a claim
            // that is not bound yet fails the create before any pull.
            let pod = match r.sandbox_config.clone() {
                Some(c) => c,
                None => {
                    let (x2, sid) = (x.clone(), r.pod_sandbox_id.clone());
                    blocking(move || x2.sandbox_config(&sid)).await?
                }
            };
            let meta = pod.metadata.clone().unwrap_or_default();
            let vgpu = crate::vgpu::for_pod(
                &pod.annotations,
                &meta.namespace,
                &meta.uid,
                self.claims.as_ref(),
                self.allow_allocation_annotation,
            )
            .await?;
            // kubelet's pull may have gone to containerd (no handler in the ImageSpec): pull
            // into the Xen store now, with the credentials of that pull when there were any.
            let image = config
                .image
                .as_ref()
                .map(|i| i.image.clone())
                .unwrap_or_default();
            let (x2, name) = (x.clone(), image.clone());
            if !image.is_empty() && blocking(move || x2.images().find(&name)).await?.is_none() {
                let auth = self.pull_auth.get(&image);
                crate::image::registry::pull(x.images(), &image, auth.as_ref())
                    .await
                    .map_err(|e| {
                        Status::from(ShimError::Image {
                            reference: image.clone(),
                            message: format!(
                                "not in the shim's image store and pulling it failed: {e}"
                            ),
                        })
                    })?;
            }
            let id = blocking(move || x.create_container(&r.pod_sandbox_id, config, vgpu)).await?;
            return Ok(Response::new(cri::CreateContainerResponse {
                container_id: id,
            }));
        }
        fwd_rt!(self, req, create_container)
    }

    async fn start_container(
        &self,
        req: Request<cri::StartContainerRequest>,
    ) -> R<cri::StartContainerResponse> {
        if let Some(x) = self.xen_container(&req.get_ref().container_id) {
            let id = req.into_inner().container_id;
            blocking(move || x.start_container(&id)).await?;
            return Ok(Response::new(cri::StartContainerResponse {}));
        }
        fwd_rt!(self, req, start_container)
    }

    async fn stop_container(
        &self,
        req: Request<cri::StopContainerRequest>,
    ) -> R<cri::StopContainerResponse> {
        if let Some(x) = self.xen_container(&req.get_ref().container_id) {
            let r = req.into_inner();
            blocking(move || x.stop_container(&r.container_id, r.timeout)).await?;
            return Ok(Response::new(cri::StopContainerResponse {}));
        }
        fwd_idempotent!(self, req, stop_container, cri::StopContainerResponse {})
    }

    async fn remove_container(
        &self,
        req: Request<cri::RemoveContainerRequest>,
    ) -> R<cri::RemoveContainerResponse> {
        if let Some(x) = self.xen_container(&req.get_ref().container_id) {
            let id = req.into_inner().container_id;
            blocking(move || x.remove_container(&id)).await?;
            return Ok(Response::new(cri::RemoveContainerResponse {}));
        }
        fwd_idempotent!(self, req, remove_container, cri::RemoveContainerResponse {})
    }

    async fn list_containers(
        &self,
        req: Request<cri::ListContainersRequest>,
    ) -> R<cri::ListContainersResponse> {
        let filter = req.get_ref().filter.clone();
        let mut containers = match &self.xen {
            Some(x) => {
                let x = x.clone();
                let f = filter.clone();
                blocking(move || x.list_containers(f.as_ref())).await?
            }
            None => Vec::new(),
        };
        let xen_only = filter.as_ref().is_some_and(|f| {
            (!f.id.is_empty() && !containers.is_empty())
                || (!f.pod_sandbox_id.is_empty() && self.xen_sandbox(&f.pod_sandbox_id).is_some())
        });
        if let (Some(up), false) = (&self.upstream, xen_only) {
            let r = up
                .runtime()
                .list_containers(req.into_inner())
                .await
                .map_err(|s| up.map_status(s))?;
            containers.extend(r.into_inner().containers);
        }
        Ok(Response::new(cri::ListContainersResponse { containers }))
    }

    async fn container_status(
        &self,
        req: Request<cri::ContainerStatusRequest>,
    ) -> R<cri::ContainerStatusResponse> {
        if let Some(x) = self.xen_container(&req.get_ref().container_id) {
            let id = req.into_inner().container_id;
            return Ok(Response::new(
                blocking(move || x.container_status(&id)).await?,
            ));
        }
        fwd_rt!(self, req, container_status)
    }

    async fn update_container_resources(
        &self,
        req: Request<cri::UpdateContainerResourcesRequest>,
    ) -> R<cri::UpdateContainerResourcesResponse> {
        if self.xen_container(&req.get_ref().container_id).is_some() {
            return Err(xen_unimplemented(
                "UpdateContainerResources (a domain's memory and vcpus are fixed at creation)",
            ));
        }
        fwd_rt!(self, req, update_container_resources)
    }

    async fn reopen_container_log(
        &self,
        req: Request<cri::ReopenContainerLogRequest>,
    ) -> R<cri::ReopenContainerLogResponse> {
        if let Some(x) = self.xen_container(&req.get_ref().container_id) {
            let id = req.into_inner().container_id;
            blocking(move || x.reopen_container_log(&id)).await?;
            return Ok(Response::new(cri::ReopenContainerLogResponse {}));
        }
        fwd_rt!(self, req, reopen_container_log)
    }

    async fn exec_sync(&self, req: Request<cri::ExecSyncRequest>) -> R<cri::ExecSyncResponse> {
        if let Some(x) = self.xen_container(&req.get_ref().container_id) {
            let r = req.into_inner();
            return Ok(Response::new(
                blocking(move || x.exec_sync(&r.container_id, &r.cmd, r.timeout)).await?,
            ));
        }
        fwd_rt!(self, req, exec_sync)
    }

    async fn exec(&self, req: Request<cri::ExecRequest>) -> R<cri::ExecResponse> {
        if self.xen_container(&req.get_ref().container_id).is_some() {
            return Err(xen_unimplemented("streaming Exec (use ExecSync)"));
        }
        fwd_rt!(self, req, exec)
    }

    async fn attach(&self, req: Request<cri::AttachRequest>) -> R<cri::AttachResponse> {
        if self.xen_container(&req.get_ref().container_id).is_some() {
            return Err(xen_unimplemented("Attach"));
        }
        fwd_rt!(self, req, attach)
    }

    async fn port_forward(
        &self,
        req: Request<cri::PortForwardRequest>,
    ) -> R<cri::PortForwardResponse> {
        if self.xen_sandbox(&req.get_ref().pod_sandbox_id).is_some() {
            return Err(xen_unimplemented(
                "PortForward (Xen pods have no pod network yet)",
            ));
        }
        fwd_rt!(self, req, port_forward)
    }

    async fn container_stats(
        &self,
        req: Request<cri::ContainerStatsRequest>,
    ) -> R<cri::ContainerStatsResponse> {
        if let Some(x) = self.xen_container(&req.get_ref().container_id) {
            let id = req.into_inner().container_id;
            let stats = blocking(move || x.container_stats(&id)).await?;
            return Ok(Response::new(cri::ContainerStatsResponse {
                stats: Some(stats),
            }));
        }
        fwd_rt!(self, req, container_stats)
    }

    async fn list_container_stats(
        &self,
        req: Request<cri::ListContainerStatsRequest>,
    ) -> R<cri::ListContainerStatsResponse> {
        let filter = req.get_ref().filter.clone();
        let mut stats = match &self.xen {
            Some(x) => {
                let x = x.clone();
                let f = filter.clone();
                blocking(move || x.list_container_stats(f.as_ref())).await?
            }
            None => Vec::new(),
        };
        if let Some(up) = &self.upstream {
            let r = up
                .runtime()
                .list_container_stats(req.into_inner())
                .await
                .map_err(|s| up.map_status(s))?;
            stats.extend(r.into_inner().stats);
        }
        Ok(Response::new(cri::ListContainerStatsResponse { stats }))
    }

    async fn pod_sandbox_stats(
        &self,
        req: Request<cri::PodSandboxStatsRequest>,
    ) -> R<cri::PodSandboxStatsResponse> {
        if self.xen_sandbox(&req.get_ref().pod_sandbox_id).is_some() {
            return Err(xen_unimplemented("PodSandboxStats (use ContainerStats)"));
        }
        fwd_rt!(self, req, pod_sandbox_stats)
    }

    async fn list_pod_sandbox_stats(
        &self,
        req: Request<cri::ListPodSandboxStatsRequest>,
    ) -> R<cri::ListPodSandboxStatsResponse> {
        fwd_or!(
            self,
            req,
            runtime,
            list_pod_sandbox_stats,
            cri::ListPodSandboxStatsResponse::default()
        )
    }

    async fn update_runtime_config(
        &self,
        req: Request<cri::UpdateRuntimeConfigRequest>,
    ) -> R<cri::UpdateRuntimeConfigResponse> {
        fwd_or!(
            self,
            req,
            runtime,
            update_runtime_config,
            cri::UpdateRuntimeConfigResponse {}
        )
    }

    async fn status(&self, req: Request<cri::StatusRequest>) -> R<cri::StatusResponse> {
        let mut resp = match &self.upstream {
            Some(up) => match up.runtime().status(req.into_inner()).await {
                Ok(r) => r.into_inner(),
                Err(s) => {
                    let s = up.map_status(s);
                    warn!(error = %s.message(), "upstream status");
                    cri::StatusResponse {
                        status: Some(cri::RuntimeStatus {
                            conditions: vec![cri::RuntimeCondition {
                                r#type: "RuntimeReady".into(),
                                status: false,
                                reason: "UpstreamUnavailable".into(),
                                message: s.message().into(),
                            }],
                        }),
                        ..Default::default()
                    }
                }
            },
            None => cri::StatusResponse {
                status: Some(cri::RuntimeStatus {
                    conditions: vec![
                        cri::RuntimeCondition {
                            r#type: "RuntimeReady".into(),
                            status: self.xen.is_some(),
                            ..Default::default()
                        },
                        cri::RuntimeCondition {
                            r#type: "NetworkReady".into(),
                            status: true,
                            ..Default::default()
                        },
                    ],
                }),
                ..Default::default()
            },
        };
        if let Some(x) = &self.xen {
            resp.runtime_handlers.push(cri::RuntimeHandler {
                name: x.handler().to_string(),
                features: Some(cri::RuntimeHandlerFeatures::default()),
            });
        }
        Ok(Response::new(resp))
    }

    async fn checkpoint_container(
        &self,
        req: Request<cri::CheckpointContainerRequest>,
    ) -> R<cri::CheckpointContainerResponse> {
        if self.xen_container(&req.get_ref().container_id).is_some() {
            return Err(xen_unimplemented("CheckpointContainer"));
        }
        fwd_rt!(self, req, checkpoint_container)
    }

    type GetContainerEventsStream = tonic::Streaming<cri::ContainerEventResponse>;

    async fn get_container_events(
        &self,
        req: Request<cri::GetEventsRequest>,
    ) -> R<Self::GetContainerEventsStream> {
        // Only the upstream's events are streamed; kubelet's generic PLEG relists Xen pods.
        fwd_rt!(self, req, get_container_events)
    }

    async fn list_metric_descriptors(
        &self,
        req: Request<cri::ListMetricDescriptorsRequest>,
    ) -> R<cri::ListMetricDescriptorsResponse> {
        fwd_or!(
            self,
            req,
            runtime,
            list_metric_descriptors,
            cri::ListMetricDescriptorsResponse::default()
        )
    }

    async fn list_pod_sandbox_metrics(
        &self,
        req: Request<cri::ListPodSandboxMetricsRequest>,
    ) -> R<cri::ListPodSandboxMetricsResponse> {
        fwd_or!(
            self,
            req,
            runtime,
            list_pod_sandbox_metrics,
            cri::ListPodSandboxMetricsResponse::default()
        )
    }

    async fn runtime_config(
        &self,
        req: Request<cri::RuntimeConfigRequest>,
    ) -> R<cri::RuntimeConfigResponse> {
        let own = || {
            Response::new(cri::RuntimeConfigResponse {
                linux: Some(cri::LinuxRuntimeConfiguration {
                    cgroup_driver: self.cgroup_driver as i32,
                }),
            })
        };
        match &self.upstream {
            // containerd < 1.7 has no RuntimeConfig: answer with the configured driver, which
            // must match the upstream's (SystemdCgroup in containerd's config).
            Some(up) => match up.runtime().runtime_config(req.into_inner()).await {
                Err(s) if s.code() == tonic::Code::Unimplemented => Ok(own()),
                r => r.map_err(|s| up.map_status(s)),
            },
            None => Ok(own()),
        }
    }

    async fn update_pod_sandbox_resources(
        &self,
        req: Request<cri::UpdatePodSandboxResourcesRequest>,
    ) -> R<cri::UpdatePodSandboxResourcesResponse> {
        if self.xen_sandbox(&req.get_ref().pod_sandbox_id).is_some() {
            return Err(xen_unimplemented("UpdatePodSandboxResources"));
        }
        fwd_rt!(self, req, update_pod_sandbox_resources)
    }
}

fn handler_of(spec: Option<&cri::ImageSpec>) -> &str {
    spec.map(|s| s.runtime_handler.as_str()).unwrap_or("")
}

fn to_cri_image(x: &XenRuntime, i: &crate::image::StoredImage) -> cri::Image {
    cri::Image {
        id: i.id.clone(),
        repo_tags: i.repo_tags.clone(),
        repo_digests: i.repo_digests.clone(),
        size: i.size,
        username: i.config.user.clone().unwrap_or_default(),
        spec: Some(cri::ImageSpec {
            image: i.id.clone(),
            runtime_handler: x.handler().to_string(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[tonic::async_trait]
impl ImageService for Shim {
    async fn list_images(
        &self,
        req: Request<cri::ListImagesRequest>,
    ) -> R<cri::ListImagesResponse> {
        let mut images = Vec::new();
        if let Some(x) = &self.xen {
            let x2 = x.clone();
            let wanted = req.get_ref().filter.as_ref().and_then(|f| f.image.clone());
            let stored = blocking(move || x2.images().list()).await?;
            for i in &stored {
                let keep = match &wanted {
                    Some(s) if !s.image.is_empty() => {
                        i.id == s.image
                            || i.repo_tags.contains(&s.image)
                            || i.repo_digests.contains(&s.image)
                    }
                    _ => true,
                };
                if keep {
                    images.push(to_cri_image(x, i));
                }
            }
        }
        if let Some(up) = &self.upstream {
            let r = up
                .image()
                .list_images(req.into_inner())
                .await
                .map_err(|s| up.map_status(s))?;
            images.extend(r.into_inner().images);
        }
        Ok(Response::new(cri::ListImagesResponse { images }))
    }

    async fn image_status(
        &self,
        req: Request<cri::ImageStatusRequest>,
    ) -> R<cri::ImageStatusResponse> {
        if let Some(x) = self.xen_for_image(req.get_ref().image.as_ref()) {
            let name = req
                .get_ref()
                .image
                .as_ref()
                .map(|s| s.image.clone())
                .unwrap_or_default();
            let x2 = x.clone();
            let found = blocking(move || x2.images().find(&name)).await?;
            return Ok(Response::new(cri::ImageStatusResponse {
                image: found.as_ref().map(|i| to_cri_image(&x, i)),
                info: Default::default(),
            }));
        }
        fwd_img!(self, req, image_status)
    }

    async fn pull_image(&self, req: Request<cri::PullImageRequest>) -> R<cri::PullImageResponse> {
        if let Some(x) = self.xen_for_image(req.get_ref().image.as_ref()) {
            let name = req
                .get_ref()
                .image
                .as_ref()
                .map(|s| s.image.clone())
                .unwrap_or_default();
            let auth = req.get_ref().auth.clone();
            let image = crate::image::registry::pull(x.images(), &name, auth.as_ref()).await?;
            return Ok(Response::new(cri::PullImageResponse {
                image_ref: image.id,
            }));
        }
        if let Some(spec) = &req.get_ref().image {
            self.pull_auth
                .remember(&spec.image, req.get_ref().auth.as_ref());
        }
        fwd_img!(self, req, pull_image)
    }

    async fn remove_image(
        &self,
        req: Request<cri::RemoveImageRequest>,
    ) -> R<cri::RemoveImageResponse> {
        if let Some(x) = self.xen_for_image(req.get_ref().image.as_ref()) {
            let name = req
                .get_ref()
                .image
                .as_ref()
                .map(|s| s.image.clone())
                .unwrap_or_default();
            blocking(move || x.images().remove(&name)).await?;
            return Ok(Response::new(cri::RemoveImageResponse {}));
        }
        fwd_img!(self, req, remove_image)
    }

    async fn image_fs_info(
        &self,
        req: Request<cri::ImageFsInfoRequest>,
    ) -> R<cri::ImageFsInfoResponse> {
        fwd_or!(
            self,
            req,
            image,
            image_fs_info,
            cri::ImageFsInfoResponse::default()
        )
    }
}
