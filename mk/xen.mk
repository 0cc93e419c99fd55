# Xen lane (issue 7): Xen 4.17 + Debian 6.1 dom0 under qemu TCG, real `xl create` of PV domains
# whose /init is tessera-guest-agent. Scripts: hack/xen/. XEN_DOM0_TEST / XEN_DOM0_BINS: see
# hack/xen/e2e-xen.sh.
.PHONY: e2e-xen xen-guest-image

e2e-xen: ## Xen lane under qemu TCG: guest agent in real PV domains (XEN_DOM0_TEST, XEN_DOM0_BINS)
	@bash hack/xen/e2e-xen.sh

xen-guest-image: ## build (or reuse) the tessera-xen guest kernel + initramfs under ~/.cache/tessera
	@bash hack/xen/build-guest-image.sh
