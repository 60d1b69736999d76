//! Images of netperf pods are never pulled: `PullImage` (which carries the sandbox config)
//! answers at once with a stable id derived from the image name, and kubelet creates the
//! container with it. `ImageStatus` is not answered here: it carries no pod, and an image a
//! netperf pod "has" must not look present to a real pod that needs it pulled.

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

impl NetperfRuntime {
    pub(super) async fn pull_image(
        &self,
        req: cri::PullImageRequest,
    ) -> Result<cri::PullImageResponse, Status> {
        let spec = req
            .image
            .filter(|i| !i.image.is_empty())
            .ok_or_else(|| Status::invalid_argument("image.image: empty"))?;
        Ok(cri::PullImageResponse {
            image_ref: netperf_image_id(&spec.image),
        })
    }
}
