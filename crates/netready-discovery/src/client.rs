//! The API client, from the node's kubeconfig (or, when asked, the pod's service account), and
//! a stamp of the credential files so a rotated certificate makes a new client.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use kube::config::{KubeConfigOptions, Kubeconfig};

use crate::{DiscoveryConfig, Error};

/// A client as the config asks.
pub async fn build(cfg: &DiscoveryConfig) -> Result<kube::Client, Error> {
    let config = if cfg.in_cluster {
        kube::Config::incluster().map_err(|e| Error::Config {
            origin: "the pod's service account".into(),
            reason: e.to_string(),
        })?
    } else {
        let kc = Kubeconfig::read_from(&cfg.kubeconfig).map_err(|e| Error::Config {
            origin: cfg.kubeconfig.display().to_string(),
            reason: e.to_string(),
        })?;
        kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
            .await
            .map_err(|e| Error::Config {
                origin: cfg.kubeconfig.display().to_string(),
                reason: e.to_string(),
            })?
    };
    kube::Client::try_from(config).map_err(|e| Error::Config {
        origin: cfg.kubeconfig.display().to_string(),
        reason: e.to_string(),
    })
}

/// Identity of one file's content as far as `stat` tells (through symlinks: kubelet rotates
/// `kubelet-client-current.pem` by swapping a symlink).
type FileStamp = (PathBuf, Option<(u64, u64, i64, i64, u64)>);

/// The stamps of every credential file.
pub type Stamp = Vec<FileStamp>;

fn stamp(path: &Path) -> FileStamp {
    let meta = std::fs::metadata(path)
        .ok()
        .map(|m| (m.dev(), m.ino(), m.mtime(), m.mtime_nsec(), m.size()));
    (path.to_owned(), meta)
}

/// The kubeconfig and every file it names (CA, client certificate and key, token file). When
/// this changes, the credentials did.
pub fn credentials_stamp(cfg: &DiscoveryConfig) -> Stamp {
    if cfg.in_cluster {
        let dir = Path::new("/var/run/secrets/kubernetes.io/serviceaccount");
        return ["token", "ca.crt"]
            .iter()
            .map(|f| stamp(&dir.join(f)))
            .collect();
    }
    let mut out = vec![stamp(&cfg.kubeconfig)];
    if let Ok(kc) = Kubeconfig::read_from(&cfg.kubeconfig) {
        let files = kc
            .clusters
            .iter()
            .filter_map(|c| c.cluster.as_ref()?.certificate_authority.clone())
            .chain(kc.auth_infos.iter().flat_map(|a| {
                let a = a.auth_info.as_ref();
                [
                    a.and_then(|a| a.client_certificate.clone()),
                    a.and_then(|a| a.client_key.clone()),
                    a.and_then(|a| a.token_file.clone()),
                ]
                .into_iter()
                .flatten()
            }));
        out.extend(files.map(|f| stamp(Path::new(&f))));
    }
    out
}
