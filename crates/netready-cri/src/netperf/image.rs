//! Images of netperf pods are never pulled: `PullImage` (which carries the sandbox config)
//! answers at once with a stable id derived from the image name, and kubelet creates the
//! container with it.
//!
//! The other image calls carry no pod, so with an upstream runtime they are upstream's alone:
//! an image a netperf pod "has" must not look present to a real pod that needs it pulled. With
//! no upstream (a netperf-only node) netready is the whole image service and answers them as a
//! runtime with an empty image store would, plus the images its pods "pulled".

use sha2::{Digest, Sha256};
use tonic::Status;

use super::NetperfRuntime;
use crate::cri;

/// The image id netperf pods get for `name`: `sha256:` + sha256 of a prefix and the name, so
/// the same name always gets the same id and it never collides with a real image's digest.
pub fn netperf_image_id(name: &str) -> String {
    let digest = Sha256::digest(format!("netready-netperf-image:{name}").as_bytes());
    format!("sha256:{}", hex::encode(digest))
}

/// The CRI image of a pulled name: a digest reference (`name@sha256:…`) is a repo digest,
/// anything else a tag, as containerd reports them. It has no layers: size 0.
fn to_cri(name: &str, id: &str) -> cri::Image {
    let (repo_tags, repo_digests) = if name.contains('@') {
        (Vec::new(), vec![name.to_owned()])
    } else {
        (vec![name.to_owned()], Vec::new())
    };
    cri::Image {
        id: id.to_owned(),
        repo_tags,
        repo_digests,
        spec: Some(cri::ImageSpec {
            image: id.to_owned(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Every pulled image, in a stable order: by tags, then digests (digest references have no
/// tag), then id, so the reply never depends on the store's hash order.
fn listed<'a>(images: impl Iterator<Item = (&'a String, &'a String)>) -> Vec<cri::Image> {
    let mut all: Vec<_> = images.map(|(n, id)| to_cri(n, id)).collect();
    all.sort_by(|a, b| {
        (&a.repo_tags, &a.repo_digests, &a.id).cmp(&(&b.repo_tags, &b.repo_digests, &b.id))
    });
    all
}

fn image_name(spec: Option<cri::ImageSpec>) -> Result<String, Status> {
    spec.map(|i| i.image)
        .filter(|i| !i.is_empty())
        .ok_or_else(|| Status::invalid_argument("image.image: empty"))
}

impl NetperfRuntime {
    pub(super) async fn pull_image(
        &self,
        req: cri::PullImageRequest,
    ) -> Result<cri::PullImageResponse, Status> {
        let name = image_name(req.image)?;
        let id = netperf_image_id(&name);
        self.store().images.insert(name, id.clone());
        Ok(cri::PullImageResponse { image_ref: id })
    }

    /// The pulled image `name` names: a name as pulled, or an image id (kubelet passes ids too).
    fn find_image(&self, name: &str) -> Option<cri::Image> {
        let store = self.store();
        if let Some(id) = store.images.get(name) {
            return Some(to_cri(name, id));
        }
        store
            .images
            .iter()
            .find(|(_, id)| *id == name)
            .map(|(n, id)| to_cri(n, id))
    }

    pub(super) async fn image_status(
        &self,
        req: cri::ImageStatusRequest,
    ) -> Result<cri::ImageStatusResponse, Status> {
        let name = image_name(req.image)?;
        // An image not present is OK with no image (as containerd answers): kubelet pulls it.
        Ok(cri::ImageStatusResponse {
            image: self.find_image(&name),
            info: Default::default(),
        })
    }

    pub(super) async fn list_images(
        &self,
        req: cri::ListImagesRequest,
    ) -> Result<cri::ListImagesResponse, Status> {
        let wanted = req
            .filter
            .and_then(|f| f.image)
            .map(|i| i.image)
            .filter(|i| !i.is_empty());
        let images = match wanted {
            Some(name) => self.find_image(&name).into_iter().collect(),
            None => {
                let store = self.store();
                listed(store.images.iter())
            }
        };
        Ok(cri::ListImagesResponse { images })
    }

    pub(super) async fn remove_image(
        &self,
        req: cri::RemoveImageRequest,
    ) -> Result<cri::RemoveImageResponse, Status> {
        let name = image_name(req.image)?;
        // Removing an image that is not there succeeds (the CRI contract); an id removes every
        // name it has, as in containerd.
        let mut store = self.store();
        if store.images.remove(&name).is_none() {
            store.images.retain(|_, id| *id != name);
        }
        Ok(cri::RemoveImageResponse {})
    }

    pub(super) async fn image_fs_info(
        &self,
        _req: cri::ImageFsInfoRequest,
    ) -> Result<cri::ImageFsInfoResponse, Status> {
        // Images take no space; the mountpoint is netready's state dir, a real directory
        // kubelet can measure the filesystem of (capacity, for image garbage collection).
        let fs = cri::FilesystemUsage {
            timestamp: super::cri_time(&netready_cni::Stamp::now()),
            fs_id: Some(cri::FilesystemIdentifier {
                mountpoint: self.inner.state.root().display().to_string(),
            }),
            used_bytes: Some(cri::UInt64Value { value: 0 }),
            inodes_used: Some(cri::UInt64Value { value: 0 }),
        };
        Ok(cri::ImageFsInfoResponse {
            image_filesystems: vec![fs],
            container_filesystems: Vec::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_references_are_repo_digests() {
        let i = to_cri("busybox:1.36", "sha256:aa");
        assert_eq!((i.repo_tags.len(), i.repo_digests.len()), (1, 0));
        let i = to_cri("busybox@sha256:bb", "sha256:aa");
        assert_eq!(i.repo_digests, ["busybox@sha256:bb"]);
        assert!(i.repo_tags.is_empty());
        assert_eq!(i.size, 0);
    }

    #[test]
    fn images_are_listed_in_one_order_whatever_the_store_order() {
        let names = [
            "registry.invalid/b@sha256:02",
            "busybox:1.36",
            "registry.invalid/a@sha256:01",
            "alpine:3",
            "registry.invalid/a@sha256:00",
        ];
        let pairs: Vec<(String, String)> = names
            .iter()
            .map(|n| (n.to_string(), netperf_image_id(n)))
            .collect();
        let order = |imgs: Vec<cri::Image>| -> Vec<String> {
            imgs.into_iter()
                .map(|i| i.repo_tags.into_iter().chain(i.repo_digests).collect())
                .collect()
        };
        let forward = order(listed(pairs.iter().map(|(n, i)| (n, i))));
        let backward = order(listed(pairs.iter().rev().map(|(n, i)| (n, i))));
        assert_eq!(forward, backward);
        assert_eq!(
            forward,
            [
                "registry.invalid/a@sha256:00",
                "registry.invalid/a@sha256:01",
                "registry.invalid/b@sha256:02",
                "alpine:3",
                "busybox:1.36",
            ]
        );
    }
}
